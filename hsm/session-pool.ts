import { HsmClosedError } from './errors.js'

interface Waiter<S> { resolve: (s: S) => void, reject: (err: unknown) => void }

/**
 * A fixed number of PKCS#11 sessions, lent out one operation at a time (a session runs at most
 * one cryptographic operation). Sessions are opened lazily; a broken session is closed and
 * replaced by a fresh one on the next acquire. After `reset()` (the module was re-initialised)
 * every session opened before is dead: dropped, never closed (its handle may now name another
 * application's session), and never lent out again.
 */
export class SessionPool<S> {
  private readonly free: S[] = []
  private readonly waiters: Array<Waiter<S>> = []
  private readonly size: number
  private readonly openSession: () => S
  private readonly closeSession: (s: S) => void
  /** Sessions of the current generation (free or lent out). */
  private readonly current = new Set<S>()
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
    this.current.add(s)
    this.free.push(s)
  }

  /** False for a session opened before the last reset(): it must not be used. */
  isCurrent (s: S): boolean {
    return this.current.has(s)
  }

  /** The module was re-initialised: forget every session (lent-out ones are dropped on release). */
  reset (): void {
    this.live -= this.free.length
    this.free.length = 0
    this.current.clear()
  }

  async acquire (): Promise<S> {
    if (this.closed) throw new HsmClosedError('token')
    const s = this.free.pop()
    if (s !== undefined) { this.busy++; return s }
    if (this.live < this.size) {
      const fresh = this.openSession()
      this.current.add(fresh)
      this.live++
      this.busy++
      return fresh
    }
    return await new Promise<S>((resolve, reject) => { this.waiters.push({ resolve, reject }) })
  }

  /** Give a session back; `broken` closes it (e.g. after CKR_SESSION_HANDLE_INVALID). */
  release (s: S, broken = false): void {
    const stale = !this.current.has(s)
    if (broken || stale || this.closed) {
      this.live--
      this.current.delete(s)
      if (!stale) { try { this.closeSession(s) } catch {} }
      const waiter = this.closed ? undefined : this.waiters.shift()
      if (waiter !== undefined) {
        try {
          const fresh = this.openSession()
          this.current.add(fresh)
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
        this.current.delete(s)
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
