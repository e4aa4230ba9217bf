/** A bounded list of rejected log entries (most recent last), for status. */
import type { ProblemKind } from './errors.js'

export interface Problem {
  kind: ProblemKind
  /** author device of the entry ('' when the bytes did not decode) */
  device: string
  ns: string
  /** 0 when the bytes did not decode */
  seq: number
  /** when it was rejected (ms) */
  time: number
  detail: string
  /** the peer it came from, if known */
  from?: string
}

export class ProblemList {
  private readonly items: Problem[] = []
  private total = 0

  constructor (private readonly max: number) {}

  add (p: Problem): void {
    this.items.push(p)
    this.total++
    if (this.items.length > this.max) this.items.splice(0, this.items.length - this.max)
  }

  list (): Problem[] {
    return this.items.map(p => ({ ...p }))
  }

  /** Every problem ever recorded (including those dropped from the list). */
  count (): number {
    return this.total
  }
}
