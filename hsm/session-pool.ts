import { HsmClosedError } from './errors.js'

interface Waiter<S> { resolve: (s: S) => void, reject: (err: unknown) => void }

/**
 * A fixed number of PKCS#11 sessions, lent out one operation at a time (a session runs at most
 * one cryptographic operation). Sessions are opened lazily; a broken session is closed and
 * replaced by a fresh one on the next acquire.
 */
export class SessionPool<S> {
  private readonly free: S[] = []
  private readonly waiters: Array<Waiter<S>> = []
  private readonly size: number
  private readonly openSession: () => S
  private readonly closeSession: (s: S) => void
  private live = 0
  private busy = 0
  private closed = false
  private drained: (() => void) | undefined

  constructor (init: { size: number, open: () => S, close: (s: S) => void }) {
    this.size = Math.max(1, Math.floor(init.size))
    this.openSession = init.open
    this.closeSession = init.close
  }

  /** Add an already open session (e.g. the one used to log in). */
  adopt (s: S): void {
    this.live++
    this.free.push(s)
  }

  async acquire (): Promise<S> {
    if (this.closed) throw new HsmClosedError('token')
    const s = this.free.pop()
    if (s !== undefined) { this.busy++; return s }
    if (this.live < this.size) {
      const fresh = this.openSession()
      this.live++
      this.busy++
      return fresh
    }
    return await new Promise<S>((resolve, reject) => { this.waiters.push({ resolve, reject }) })
  }

  /** Give a session back; `broken` closes it (e.g. after CKR_SESSION_HANDLE_INVALID). */
  release (s: S, broken = false): void {
    if (broken || this.closed) {
      this.live--
      try { this.closeSession(s) } catch {}
      const waiter = this.closed ? undefined : this.waiters.shift()
      if (waiter !== undefined) {
        try {
          const fresh = this.openSession()
          this.live++
          waiter.resolve(fresh)
          return
        } catch (err) {
          waiter.reject(err)
        }
      }
      this.busy--
      this.checkDrained()
      return
    }
    const waiter = this.waiters.shift()
    if (waiter !== undefined) { waiter.resolve(s); return }
    this.busy--
    this.free.push(s)
  }

  /** Refuse new work, wait for running operations, close every session. */
  async close (): Promise<void> {
    if (!this.closed) {
      this.closed = true
      for (const w of this.waiters.splice(0)) w.reject(new HsmClosedError('token'))
      for (const s of this.free.splice(0)) {
        this.live--
        try { this.closeSession(s) } catch {}
      }
    }
    if (this.busy > 0) await new Promise<void>(resolve => { this.drained = resolve })
  }

  private checkDrained (): void {
    if (this.busy === 0 && this.drained !== undefined) {
      const d = this.drained
      this.drained = undefined
      d()
    }
  }
}
