/**
 * npm run bench:sync — LAN sync on loopback: two Strata devices (real daemons, real mounts, their
 * own SoftHSM2 tokens, enrolled with invite/join) against two Syncthing instances (Debian's
 * package; loopback only, discovery and relays off, watcher delay 1 s), in one run.
 *
 * Phases, each for both systems (Strata first, then Syncthing), all timed from write-complete on
 * A to identical on B (see scripts/bench-sync/workload.ts for how "identical" is checked):
 *   big      a 256 MiB random file made outside, `cp` into A's folder; time from cp's exit
 *   delta    `dd conv=notrunc` of 1 MiB of random data centred on the middle of that file; time,
 *            and bytes B received for it (each system's own counter, and kernel TCP bytes)
 *   small    `cp -r` of 1,000 files of 1–4 KiB in 10 directories
 *   latency  overwrite of a 100-byte file, 5 times; the median
 * It prints a table and, last, exactly one line:
 *   sync big_s=… small_s=… latency_ms=… delta_bytes=… big_vs_syncthing=… small_vs_syncthing=…
 *        latency_vs_syncthing=…
 * (delta_bytes = Strata's block bytes received by B; ratios = Syncthing's time / Strata's,
 * > 1 means Strata is faster). Needs root and /dev/fuse; installs syncthing with apt-get if
 * missing. Each phase is bounded (300 s) and the whole run too (15 min); every mount is unmounted,
 * every process started stopped by pid and the temp dir removed, on success, failure or Ctrl-C.
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import { BenchTimeoutError, Cleanups, elapsed, log, run, sleep } from './bench-sync/proc.js'
import { strataPair } from './bench-sync/strata-pair.js'
import { syncthingPair } from './bench-sync/syncthing-pair.js'
import type { SyncPair } from './bench-sync/sync-pair.js'
import {
  BIG_BYTES, LATENCY_BYTES, MIB, PATCH_BYTES, PATCH_OFFSET, SMALL_DIRS, SMALL_FILES,
  type Inputs, type Observed, makeInputs, sha256File, smallIdentical, smallPresent, waitIdentical
} from './bench-sync/workload.js'

const EXIT = { OK: 0, FAILURE: 1, SIGNAL: 130 } as const
const PHASE_TIMEOUT_MS = 300_000
const DEADLINE_MS = 15 * 60_000
const LATENCY_REPS = 5
/** Pause between phases and before reading byte counters (trailing index/ack messages). */
const SETTLE_MS = 2000

const here = dirname(fileURLToPath(import.meta.url))
const REPO = resolve(here, here.includes('/dist/') ? '../..' : '..')
const STRATA_BIN = join(REPO, 'bin/strata.js')

const cleanups = new Cleanups()

interface Result {
  big?: Observed & { cpS: number, bytes: number }
  delta?: Observed & { bytes: number, wire: number, wireSockets: number }
  small?: Observed & { cpS: number }
  latency?: { ms: number[], medianMs: number }
  cpu: Record<string, number>
}

async function cpuSeconds (pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11] ?? 0) + Number(f[12] ?? 0)) / 100
}

/** Run `fn` and add the CPU seconds both device processes used meanwhile to `r.cpu[phase]`. */
async function withCpu<T> (pair: SyncPair, r: Result, phase: string, fn: () => Promise<T>): Promise<T> {
  const [a, b] = pair.pids()
  const before = await cpuSeconds(a) + await cpuSeconds(b)
  try { return await fn() } finally { r.cpu[phase] = await cpuSeconds(a) + await cpuSeconds(b) - before }
}

async function phaseBig (pair: SyncPair, inputs: Inputs, r: Result): Promise<void> {
  const dest = join(pair.dirA, 'big.bin')
  const target = join(pair.dirB, 'big.bin')
  const before = await pair.received()
  await withCpu(pair, r, 'big', async () => {
    const copy = await run('cp', [inputs.big, dest], { timeoutMs: PHASE_TIMEOUT_MS })
    const since = performance.now()
    const o = await waitIdentical(`${pair.name} big`, since,
      async () => (await stat(target)).size === BIG_BYTES,
      async () => await sha256File(target) === inputs.bigSha, PHASE_TIMEOUT_MS)
    await sleep(SETTLE_MS)
    r.big = { ...o, cpS: copy.ms / 1000, bytes: await pair.received() - before }
  })
}

async function phaseDelta (pair: SyncPair, inputs: Inputs, r: Result): Promise<void> {
  const fileA = join(pair.dirA, 'big.bin')
  const target = join(pair.dirB, 'big.bin')
  const old = await stat(target, { bigint: true })
  const before = await pair.received()
  const wireBefore = await pair.wireReceived()
  await withCpu(pair, r, 'delta', async () => {
    await run('dd', [`if=${inputs.patch}`, `of=${fileA}`, `bs=${PATCH_BYTES}`, `seek=${PATCH_OFFSET}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none'], { timeoutMs: PHASE_TIMEOUT_MS })
    const since = performance.now()
    const o = await waitIdentical(`${pair.name} 1 MiB change`, since,
      async () => { const s = await stat(target, { bigint: true }); return s.size === BigInt(BIG_BYTES) && (s.mtimeNs !== old.mtimeNs || s.ino !== old.ino) },
      async () => await sha256File(target) === inputs.patchedSha, PHASE_TIMEOUT_MS)
    await sleep(SETTLE_MS)
    const wire = await pair.wireReceived()
    r.delta = { ...o, bytes: await pair.received() - before, wire: wire.bytes - wireBefore.bytes, wireSockets: wire.sockets }
    if (wire.sockets !== wireBefore.sockets) log(`${pair.name}: B's sockets to A changed during the change (${wireBefore.sockets} → ${wire.sockets}): the TCP figure is a lower bound`)
  })
}

async function phaseSmall (pair: SyncPair, inputs: Inputs, r: Result): Promise<void> {
  await withCpu(pair, r, 'small', async () => {
    const copy = await run('cp', ['-r', inputs.smallRoot, join(pair.dirA, 'small')], { timeoutMs: PHASE_TIMEOUT_MS })
    const since = performance.now()
    const o = await waitIdentical(`${pair.name} 1,000 small files`, since,
      async () => await smallPresent(pair.dirB, inputs),
      async () => await smallIdentical(pair.dirB, inputs), PHASE_TIMEOUT_MS)
    r.small = { ...o, cpS: copy.ms / 1000 }
  })
}

async function phaseLatency (pair: SyncPair, r: Result): Promise<void> {
  const fileA = join(pair.dirA, 'lat', 'note.txt')
  const fileB = join(pair.dirB, 'lat', 'note.txt')
  const content = (): Buffer => Buffer.from(randomBytes(LATENCY_BYTES / 2).toString('hex'))
  const arrived = (want: Buffer) => async () => (await readFile(fileB)).equals(want)
  // The file exists on both before the first timed change (not timed).
  await mkdir(dirname(fileA))
  const first = content()
  await writeFile(fileA, first)
  await waitIdentical(`${pair.name} latency setup`, performance.now(), arrived(first), async () => true, PHASE_TIMEOUT_MS)
  await sleep(SETTLE_MS)
  const ms: number[] = []
  await withCpu(pair, r, 'latency', async () => {
    for (let i = 0; i < LATENCY_REPS; i++) {
      const want = content()
      await writeFile(fileA, want) // open O_TRUNC, write, close
      const o = await waitIdentical(`${pair.name} small change ${i + 1}`, performance.now(), arrived(want), async () => true, PHASE_TIMEOUT_MS)
      ms.push(o.seconds * 1000)
      await sleep(1000)
    }
  })
  const sorted = [...ms].sort((x, y) => x - y)
  r.latency = { ms, medianMs: sorted[Math.floor(sorted.length / 2)] ?? NaN }
}

// ---- report ---------------------------------------------------------------------------------

const f2 = (n: number | undefined): string => n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(2)
const ratio = (st: number | undefined, s: number | undefined): number => st !== undefined && s !== undefined && s > 0 ? st / s : NaN
const sum = (x: number | undefined, y: number | undefined): number | undefined => x === undefined || y === undefined ? undefined : x + y
const bytes = (n: number | undefined): string => n === undefined ? '-' : `${n.toLocaleString('en-US')} (${(n / MIB).toFixed(2)} MiB)`

function report (s: Result, st: Result, pairs: { strata: SyncPair, syncthing: SyncPair }, load: { start: number[], end: number[] }): string[] {
  const rows: Array<[string, string, string, string]> = [
    ['big: 256 MiB, cp exit → identical on B (s)', f2(s.big?.seconds), f2(st.big?.seconds), f2(ratio(st.big?.seconds, s.big?.seconds))],
    ['  cp into A (s)', f2(s.big?.cpS), f2(st.big?.cpS), ''],
    ['  cp start → identical on B (s)', f2(sum(s.big?.cpS, s.big?.seconds)), f2(sum(st.big?.cpS, st.big?.seconds)), f2(ratio(sum(st.big?.cpS, st.big?.seconds), sum(s.big?.cpS, s.big?.seconds)))],
    ['  content check on B, not counted (s)', f2(s.big?.verifySeconds), f2(st.big?.verifySeconds), ''],
    ['  bytes B received (own counter)', bytes(s.big?.bytes), bytes(st.big?.bytes), ''],
    ['delta: 1 MiB dd in the middle → identical (s)', f2(s.delta?.seconds), f2(st.delta?.seconds), f2(ratio(st.delta?.seconds, s.delta?.seconds))],
    ['  bytes B received (own counter)', bytes(s.delta?.bytes), bytes(st.delta?.bytes), ''],
    ['  TCP payload bytes B received from A', bytes(s.delta?.wire), bytes(st.delta?.wire), ''],
    ['small: 1,000 files, cp -r exit → identical (s)', f2(s.small?.seconds), f2(st.small?.seconds), f2(ratio(st.small?.seconds, s.small?.seconds))],
    ['  cp -r into A (s)', f2(s.small?.cpS), f2(st.small?.cpS), ''],
    ['  cp -r start → identical on B (s)', f2(sum(s.small?.cpS, s.small?.seconds)), f2(sum(st.small?.cpS, st.small?.seconds)), f2(ratio(sum(st.small?.cpS, st.small?.seconds), sum(s.small?.cpS, s.small?.seconds)))],
    ['  content check on B, not counted (s)', f2(s.small?.verifySeconds), f2(st.small?.verifySeconds), ''],
    ['latency: 100-byte overwrite, median of 5 (ms)', s.latency?.medianMs.toFixed(0) ?? '-', st.latency?.medianMs.toFixed(0) ?? '-', f2(ratio(st.latency?.medianMs, s.latency?.medianMs))],
    ['  samples (ms)', s.latency?.ms.map(m => m.toFixed(0)).join(' ') ?? '-', st.latency?.ms.map(m => m.toFixed(0)).join(' ') ?? '-', '']
  ]
  for (const phase of ['big', 'delta', 'small', 'latency']) rows.push([`CPU s, A+B processes, ${phase}`, f2(s.cpu[phase]), f2(st.cpu[phase]), ''])
  const w = [Math.max(...rows.map(r => r[0].length)), 26, 26, 8]
  const line = (r: string[]): string => r.map((c, i) => i === 0 ? c.padEnd(w[0] ?? 0) : c.padStart(w[i] ?? 0)).join('  ')
  return [
    line(['', 'strata', 'syncthing', 'st/strata']),
    line(['-'.repeat(w[0] ?? 0), '-'.repeat(26), '-'.repeat(26), '-'.repeat(8)]),
    ...rows.map(line),
    '',
    `own counters: strata = ${pairs.strata.receivedWhat}; syncthing = ${pairs.syncthing.receivedWhat}.`,
    'TCP payload = kernel tcp_info bytes_received (ss) of B\'s process on its sockets to A: the same direction (A → B) for both.',
    `times: write-complete on A → first 50 ms poll where B had the file(s) (size; for the change, a new mtime), then confirmed by sha256 of B's copy (${SMALL_FILES} files × sha256 for small).`,
    `machine: ${cpus().length} CPUs shared with other work; load average ${load.start.map(x => x.toFixed(2)).join(' ')} at start, ${load.end.map(x => x.toFixed(2)).join(' ')} at end; total ${elapsed().toFixed(0)} s.`
  ]
}

// ---- main -----------------------------------------------------------------------------------

async function ensureTools (): Promise<void> {
  const have = async (bin: string): Promise<boolean> => (await run('sh', ['-c', `command -v ${bin}`], { allowFail: true })).code === 0
  if (!(await have('syncthing'))) {
    log('installing syncthing from Debian')
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    const r = await run('apt-get', ['install', '-y', 'syncthing'], { env, timeoutMs: 600_000, allowFail: true })
    if (r.code !== 0) {
      await run('apt-get', ['update'], { env, timeoutMs: 600_000 })
      await run('apt-get', ['install', '-y', 'syncthing'], { env, timeoutMs: 600_000 })
    }
  }
  for (const bin of ['cp', 'dd', 'ss', 'fusermount']) if (!(await have(bin))) throw new Error(`${bin} is missing`)
  if (process.getuid?.() !== 0) throw new Error('bench:sync needs root (FUSE mounts with allow_other)')
  if (!existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing')
  if (!existsSync(join(REPO, 'dist/daemon/cli.js'))) throw new Error('dist/ is missing: run npx tsc -p tsconfig.json')
}

async function main (): Promise<number> {
  const load = { start: loadavg(), end: [] as number[] }
  await ensureTools()
  const base = await mkdtemp(join(tmpdir(), 'strata-bench-sync-'))
  cleanups.push('remove temp dir', async () => { await rm(base, { recursive: true, force: true }) })
  log(`temp dir ${base}; making inputs (${BIG_BYTES / MIB} MiB file, ${SMALL_FILES} files in ${SMALL_DIRS} dirs)`)
  const inputs = await makeInputs(join(base, 'inputs'))
  const strata = await strataPair({ base, bin: STRATA_BIN, cleanups })
  const syncthing = await syncthingPair({ base, cleanups })
  const res = new Map<SyncPair, Result>([[strata, { cpu: {} }], [syncthing, { cpu: {} }]])
  const phases: Array<[string, (p: SyncPair, r: Result) => Promise<void>]> = [
    ['big', async (p, r) => { await phaseBig(p, inputs, r) }],
    ['delta', async (p, r) => { await phaseDelta(p, inputs, r) }],
    ['small', async (p, r) => { await phaseSmall(p, inputs, r) }],
    ['latency', async (p, r) => { await phaseLatency(p, r) }]
  ]
  for (const [name, fn] of phases) {
    for (const pair of [strata, syncthing]) {
      log(`${pair.name}: ${name}`)
      const r = res.get(pair) as Result
      await fn(pair, r)
      await sleep(SETTLE_MS)
    }
  }
  const s = res.get(strata) as Result
  const st = res.get(syncthing) as Result
  load.end = loadavg()
  process.stdout.write(report(s, st, { strata, syncthing }, load).join('\n') + '\n\n')
  const need = (n: number | undefined, what: string): number => { if (n === undefined || !Number.isFinite(n)) throw new Error(`no figure for ${what}`); return n }
  const last = [
    'sync',
    `big_s=${need(s.big?.seconds, 'big').toFixed(2)}`,
    `small_s=${need(s.small?.seconds, 'small').toFixed(2)}`,
    `latency_ms=${need(s.latency?.medianMs, 'latency').toFixed(0)}`,
    `delta_bytes=${need(s.delta?.bytes, 'delta')}`,
    `big_vs_syncthing=${need(ratio(st.big?.seconds, s.big?.seconds), 'big ratio').toFixed(2)}`,
    `small_vs_syncthing=${need(ratio(st.small?.seconds, s.small?.seconds), 'small ratio').toFixed(2)}`,
    `latency_vs_syncthing=${need(ratio(st.latency?.medianMs, s.latency?.medianMs), 'latency ratio').toFixed(2)}`
  ].join(' ')
  await cleanups.run()
  process.stdout.write(last + '\n')
  return EXIT.OK
}

let stopping = false
function onSignal (sig: NodeJS.Signals): void {
  if (stopping) return
  stopping = true
  log(`${sig}: stopping, unmounting and cleaning up`)
  cleanups.run().finally(() => { process.exit(EXIT.SIGNAL) })
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)
process.on('SIGHUP', onSignal)

const deadline = setTimeout(() => {
  log(`the run passed its ${DEADLINE_MS / 60_000} min bound: cleaning up and failing`)
  cleanups.run().finally(() => { process.exit(EXIT.FAILURE) })
}, DEADLINE_MS)
deadline.unref()

main().then(code => { process.exitCode = code }, async (err: unknown) => {
  const e = err as Error
  log(`FAILED${e instanceof BenchTimeoutError ? ' (timeout)' : ''}: ${e.stack ?? e.message}`)
  await cleanups.run()
  process.exitCode = EXIT.FAILURE
}).finally(() => { clearTimeout(deadline) })
