/** Every fault scenario, in the order the runner runs them (one file per fault area). */
import type { Scenario } from '../harness.js'
import { tokenScenarios } from './token.js'

export const scenarios: Scenario[] = [
  ...tokenScenarios
]
