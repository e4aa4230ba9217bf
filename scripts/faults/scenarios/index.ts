/** Every fault scenario, in the order the runner runs them (one file per fault area). */
import type { Scenario } from '../harness.js'
import { tokenScenarios } from './token.js'
import { networkScenarios } from './network.js'
import { hostileScenarios } from './hostile.js'
import { corruptionScenarios } from './corruption.js'
import { crashScenarios } from './crash.js'
import { diskScenarios } from './disk.js'

export const scenarios: Scenario[] = [
  ...tokenScenarios,
  ...networkScenarios,
  ...hostileScenarios,
  ...corruptionScenarios,
  ...crashScenarios,
  ...diskScenarios
]
