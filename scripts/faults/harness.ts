/**
 * The fault runner's contract with its scenarios. A scenario injects one kind of fault into a
 * live deployment (real daemons, mounts, SoftHSM tokens, libp2p over loopback), keeps a workload
 * running, and checks the data. It fails by throwing (`ctx.check`, `ctx.fail`, or any error);
 * everything it starts is registered with `ctx.teardown` and undone even when it fails.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'

export interface Scenario<S = unknown> {
  /** Says what it injects: `<area>-<fault>`, e.g. `token-removed-and-restored`. */
  name: string
  /** One line for `--list` and the README. */
  injects: string
  /** Randomised: repeated `iterations` times in the full run (at least 50), once in --quick. */
  randomised?: boolean
  /** Left out of --quick (the full run only). */
  slow?: boolean
  /** Bound on one iteration (and on `prepare`); the scenario fails when it passes. Default 240 s. */
  timeoutMs?: number
  /**
   * Optional: the deployment (data dirs, tokens, daemons) set up once per scenario and handed to
   * every iteration, so 50 iterations are 50 injections, not 50 set-ups. What it registers with
   * `ctx.teardown` runs after the last iteration (or the first failure: a failed iteration may
   * have left the deployment in any state, so the scenario stops there).
   */
  prepare? (ctx: FaultContext): Promise<S>
  run (ctx: FaultContext, shared: S): Promise<void>
}

export class ScenarioFailure extends Error {
  override name = 'ScenarioFailure'
}

/** A small seeded PRNG (sfc32), so `--seed N` replays a randomised run exactly. */
export class Rng {
  private a: number; private b: number; private c: number; private d: number
  constructor (seed: string) {
    const h = createHash('sha256').update(seed).digest()
    this.a = h.readUInt32LE(0); this.b = h.readUInt32LE(4); this.c = h.readUInt32LE(8); this.d = h.readUInt32LE(12)
    for (let i = 0; i < 16; i++) this.next()
  }

  /** Uniform in [0, 1). */
  next (): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0
    this.d = (this.d + 1) | 0
    this.a = this.b ^ (this.b >>> 9)
    this.b = (this.c + (this.c << 3)) | 0
    this.c = (this.c << 21) | (this.c >>> 11)
    this.c = (this.c + t) | 0
    return (t >>> 0) / 4294967296
  }

  /** Integer in [lo, hi]. */
  int (lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)) }

  pick<T> (items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list')
    return items[this.int(0, items.length - 1)] as T
  }

  bytes (n: number): Buffer {
    const out = Buffer.alloc(n)
    for (let i = 0; i < n; i++) out[i] = this.int(0, 255)
    return out
  }
}

export interface FaultContext {
  /** The short form (in `npm test`): smaller workloads, shorter waits. */
  quick: boolean
  /** The run's seed and this iteration (from 0): the rng is derived from both and the name. */
  seed: number
  iteration: number
  rng: Rng
  /** Undo something at the end, also on failure; run last-registered first. */
  teardown: (fn: () => void | Promise<void>) => void
  /** A fresh temp dir removed at teardown. */
  tmp: (prefix?: string) => string
  /** A progress line, printed (indented) only with --verbose or when the scenario fails. */
  log: (msg: string) => void
  /** Fail with `message` unless `cond`. */
  check: (cond: unknown, message: string) => void
  fail: (message: string) => never
}

export interface IterationResult { ok: boolean, reason?: string, log: string[] }

interface Opts { quick: boolean, seed: number, verbose: boolean }

/** A context whose teardowns and log belong to one unit of work (an iteration, or `prepare`). */
function makeContext (s: Scenario, opts: Opts, iteration: number, label: string): { ctx: FaultContext, teardowns: Array<() => void | Promise<void>>, log: string[] } {
  const teardowns: Array<() => void | Promise<void>> = []
  const log: string[] = []
  const ctx: FaultContext = {
    quick: opts.quick,
    seed: opts.seed,
    iteration,
    rng: new Rng(`${opts.seed}/${s.name}/${label}`),
    teardown: fn => { teardowns.push(fn) },
    tmp: (prefix = 'strata-fault-') => {
      const dir = mkdtempSync(join(tmpdir(), prefix))
      teardowns.push(() => { rmSync(dir, { recursive: true, force: true }) })
      return dir
    },
    log: msg => {
      const line = `  [${s.name}#${label}] ${msg}`
      log.push(line)
      if (opts.verbose) process.stdout.write(line + '\n')
    },
    check: (cond, message) => { if (cond === false || cond === undefined || cond === null || cond === 0) throw new ScenarioFailure(message) },
    fail: message => { throw new ScenarioFailure(message) }
  }
  return { ctx, teardowns, log }
}

async function bounded<T> (work: Promise<T>, limitMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      work,
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new ScenarioFailure(`timed out after ${Math.round(limitMs / 1000)} s`)) }, limitMs) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

function reasonOf (err: unknown): string {
  const e = err as Error
  return e instanceof ScenarioFailure ? e.message : `${e.name}: ${e.message}`
}

async function undo (teardowns: Array<() => void | Promise<void>>, log: string[]): Promise<void> {
  for (const fn of teardowns.reverse()) {
    try { await fn() } catch (err) { log.push(`  teardown: ${(err as Error).message}`) }
  }
}

/**
 * Run a scenario: `prepare` once if it has one, then `iterations` iterations, stopping at the
 * first failure; every teardown runs, also on failure and timeout. `onFailureLog` receives the
 * failing unit's log lines.
 */
export async function runScenario (s: Scenario, opts: Opts & { iterations: number }): Promise<IterationResult & { ran: number }> {
  const limit = s.timeoutMs ?? 240_000
  const setup = makeContext(s, opts, -1, 'setup')
  let shared: unknown
  try {
    if (s.prepare !== undefined) shared = await bounded(s.prepare(setup.ctx), limit)
  } catch (err) {
    await undo(setup.teardowns, setup.log)
    return { ok: false, reason: `set-up: ${reasonOf(err)}`, log: setup.log, ran: 0 }
  }
  let result: IterationResult & { ran: number } = { ok: true, log: [], ran: 0 }
  for (let i = 0; i < opts.iterations; i++) {
    const it = makeContext(s, opts, i, String(i))
    try {
      await bounded(s.run(it.ctx, shared), limit)
      result.ran++
    } catch (err) {
      result = { ok: false, reason: opts.iterations > 1 ? `iteration ${i + 1} of ${opts.iterations}: ${reasonOf(err)}` : reasonOf(err), log: [...setup.log, ...it.log], ran: i }
    }
    await undo(it.teardowns, it.log)
    if (!result.ok) break
  }
  await undo(setup.teardowns, result.ok ? setup.log : result.log)
  return result
}
