/**
 * npm run bench:fs — the drive through a real FUSE mount, against gocryptfs (the encrypted-FUSE
 * peer, from Debian) and a no-op fuse-native filesystem (the ceiling), in one run on one machine.
 *
 * Per filesystem, in this order of phases:
 *   seq-write     dd bs=1M conv=fsync of 1 GiB of random data (pre-generated in /dev/shm), MB/s
 *   seq-read      dd bs=1M of the same file after sync + drop_caches, MB/s
 *   small-*       one python3 process: create (50 dirs, 5,000 files of 4 KiB, each with distinct
 *                 random bytes: open O_CREAT|O_EXCL / write / close), stat, read (open / read to
 *                 EOF / close), delete (unlink, rmdir); seconds per phase, no cache drops between
 *   tree-*        tar xf of a real source tree (≥ 10,000 files, a tarball cached under /tmp, copied
 *                 to /dev/shm for the run), then rm -rf; seconds
 *   randrw        fio 4 KiB random read/write (psync, buffered) on a 256 MiB file, 20 s; IOPS
 * The daemon of each filesystem is sampled throughout (/proc/PID/status VmRSS, and VmHWM before
 * unmount; /proc/PID/stat CPU time per phase). The no-op filesystem counts the FUSE ops of each
 * phase. It prints one table and, last, one line:
 *   fs write=… read=… write_vs_gocryptfs=… read_vs_gocryptfs=… smallfiles_vs_gocryptfs=…
 *      tree_vs_gocryptfs=… randrw_vs_gocryptfs=… rss_mib=…
 * (ratios > 1 mean Strata is faster; rss_mib = peak Strata daemon RSS over the whole run).
 *
 * Options: --quick (256 MiB, 1,000 files, ~2,000-file tree, 5 s fio), --only strata|gocryptfs|noop
 * (comma list), --phases seq,small,tree,fio (comma list), --noop-opts JSON (fuse options for the
 * no-op filesystem, e.g. '{"attrTimeout":1}'), --order strata,gocryptfs,noop.
 * Needs root and /dev/fuse; installs gocryptfs and fio with apt-get if missing. Every mount is
 * unmounted and every process started is stopped (by PID) on success, failure or Ctrl-C.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

// ---- options ---------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    only: { type: 'string' },
    phases: { type: 'string' },
    order: { type: 'string' },
    'noop-opts': { type: 'string' }
  }
})
const QUICK = opt.quick === true
const FS_NAMES = ['strata', 'gocryptfs', 'noop'] as const
type FsName = typeof FS_NAMES[number]
const ALL_PHASES = ['seq', 'small', 'tree', 'fio'] as const
type PhaseGroup = typeof ALL_PHASES[number]
function list<T extends string> (value: string | undefined, all: readonly T[], what: string): T[] {
  if (value === undefined) return [...all]
  const got = value.split(',').map(s => s.trim()).filter(Boolean)
  for (const g of got) if (!(all as readonly string[]).includes(g)) throw new Error(`--${what}: unknown "${g}" (one of ${all.join(', ')})`)
  return got as T[]
}
const order = list(opt.order, FS_NAMES, 'order')
const only = new Set(list(opt.only, FS_NAMES, 'only'))
const systems = order.filter(f => only.has(f))
const phases = new Set(list(opt.phases, ALL_PHASES, 'phases'))
const noopOpts = JSON.parse(opt['noop-opts'] ?? '{}') as Record<string, unknown>

const MIB = 1024 * 1024
const SEQ_MIB = QUICK ? 256 : 1024
const SMALL_FILES = QUICK ? 1000 : 5000
const SMALL_DIRS = 50
const FIO_SECONDS = QUICK ? 5 : 20
const FIO_SIZE = '256m'
const TREE_MIN_FILES = QUICK ? 2000 : 10_000
/** The whole run is bounded: past this, it stops what runs, cleans up and fails. */
const DEADLINE_MS = (QUICK ? 15 : 50) * 60_000

const here = dirname(fileURLToPath(import.meta.url))
const REPO = resolve(here, here.includes(`${'/'}dist${'/'}`) ? '../..' : '..')
const STRATA_BIN = join(REPO, 'bin/strata.js')
const NOOP_JS = join(REPO, 'dist/scripts/bench-fs/noop-fs.js')
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'
const TREE_CACHE = '/tmp/strata-bench-fs-cache'

const log = (msg: string): void => { process.stderr.write(`[bench:fs ${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${msg}\n`) }
const t0 = performance.now()
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

// ---- processes, cleanup ----------------------------------------------------------------------

const children = new Set<ChildProcess>()
const cleanups: Array<{ what: string, fn: () => Promise<void> }> = []
let aborted: string | undefined
let cleaning: Promise<void> | undefined

class CmdError extends Error {
  constructor (message: string, readonly stdout: string, readonly stderr: string) { super(message) }
}

interface RunResult { stdout: string, stderr: string, ms: number }

/** Run a command (never a shell unless asked), bounded in time; rejects on a non-zero exit. */
async function run (cmd: string, args: string[], o: { timeoutMs?: number, env?: NodeJS.ProcessEnv, allowFail?: boolean } = {}): Promise<RunResult & { code: number | null }> {
  if (aborted !== undefined) throw new Error(`aborted: ${aborted}`)
  const timeoutMs = Math.min(o.timeoutMs ?? 600_000, Math.max(1000, DEADLINE_MS - (performance.now() - t0)))
  return await new Promise((resolve, reject) => {
    const start = performance.now()
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env })
    children.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL') }, timeoutMs)
    child.on('error', err => { clearTimeout(timer); children.delete(child); reject(err) })
    child.on('close', (code, signal) => {
      const ms = performance.now() - start
      clearTimeout(timer)
      children.delete(child)
      if (timedOut) reject(new CmdError(`${cmd} ${args.join(' ')}: timed out after ${(timeoutMs / 1000).toFixed(0)} s`, stdout, stderr))
      else if ((code !== 0 || signal !== null) && o.allowFail !== true) reject(new CmdError(`${cmd} ${args.join(' ')}: exit ${String(code ?? signal)}: ${stderr.trim().slice(-2000)}`, stdout, stderr))
      else resolve({ stdout, stderr, ms, code })
    })
  })
}

function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}
async function waitExit (pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (!alive(pid) || (await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')).split(') ')[1]?.startsWith('Z') === true) return true
    await sleep(50)
  }
  return !alive(pid)
}
/** SIGTERM, then SIGKILL: only the pid given (a process this run started). */
async function stopPid (pid: number, what: string): Promise<void> {
  if (!alive(pid)) return
  try { process.kill(pid, 'SIGTERM') } catch { return }
  if (await waitExit(pid, 10_000)) return
  log(`${what} (pid ${pid}) ignored SIGTERM: SIGKILL`)
  try { process.kill(pid, 'SIGKILL') } catch {}
  await waitExit(pid, 5000)
}

async function mounted (mnt: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  const esc = mnt.replace(/[ \t\n\\]/g, c => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)
  return info.split('\n').some(l => l.split(' ')[4] === esc)
}
async function lazyUnmount (mnt: string): Promise<void> {
  if (await mounted(mnt)) await run('fusermount', ['-uz', mnt], { timeoutMs: 30_000, allowFail: true }).catch(() => {})
  if (await mounted(mnt)) await run('umount', ['-l', mnt], { timeoutMs: 30_000, allowFail: true }).catch(() => {})
}

async function cleanup (): Promise<void> {
  cleaning ??= (async () => {
    for (const c of children) if (c.pid !== undefined && c.exitCode === null) { try { process.kill(c.pid, 'SIGKILL') } catch {} }
    const saved = aborted
    aborted = undefined // let cleanup commands run
    while (cleanups.length > 0) {
      const c = cleanups.pop()
      if (c === undefined) break
      try { await c.fn() } catch (err) { log(`cleanup ${c.what}: ${(err as Error).message}`) }
    }
    aborted = saved
  })()
  await cleaning
}
function onSignal (sig: NodeJS.Signals): void {
  if (aborted !== undefined) return
  aborted = sig
  log(`${sig}: stopping, unmounting and cleaning up`)
  cleanup().finally(() => { process.exit(130) })
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)
process.on('SIGHUP', onSignal)
const deadline = setTimeout(() => {
  aborted = 'deadline'
  log(`the run passed its ${DEADLINE_MS / 60_000} min bound: stopping`)
  for (const c of children) if (c.pid !== undefined) { try { process.kill(c.pid, 'SIGKILL') } catch {} }
}, DEADLINE_MS)
deadline.unref()

/** A function that runs once; later calls share the first call's promise. */
function once (fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined
  return async () => { p ??= fn(); await p }
}

// ---- daemon sampling ------------------------------------------------------------------------

interface Sampler { pid: number, peakKb: number, phasePeakKb: number, stop: () => void }
async function statusKb (pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(s)
  return m === null ? 0 : Number(m[1])
}
function sample (pid: number): Sampler {
  const s: Sampler = { pid, peakKb: 0, phasePeakKb: 0, stop: () => { clearInterval(timer) } }
  const timer = setInterval(() => {
    statusKb(pid, 'VmRSS').then(kb => { s.peakKb = Math.max(s.peakKb, kb); s.phasePeakKb = Math.max(s.phasePeakKb, kb) }, () => {})
  }, 100)
  return s
}
/** utime + stime of a process, seconds. */
async function cpuSeconds (pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11] ?? 0) + Number(f[12] ?? 0)) / 100
}

// ---- the filesystems ------------------------------------------------------------------------

interface Mounted {
  name: FsName
  mnt: string
  pid: number
  sampler: Sampler
  /** Op counts since the last call (no-op filesystem only). */
  counts?: () => Promise<Record<string, number>>
  unmount: () => Promise<void>
}

async function mountStrata (base: string): Promise<Mounted> {
  const data = join(base, 'strata-data')
  const mnt = join(base, 'mnt-strata')
  await mkdir(mnt)
  await run(process.execPath, [STRATA_BIN, 'init', '--data', data], { timeoutMs: 120_000 })
  let pid = 0
  const unmount = once(async (): Promise<void> => {
    if (await mounted(mnt)) {
      const r = await run(process.execPath, [STRATA_BIN, 'unmount', mnt], { timeoutMs: 180_000, allowFail: true }).catch((err: Error) => ({ code: -1, stderr: err.message }))
      if (r.code !== 0) log(`strata unmount failed: ${r.stderr.trim()}`)
    }
    if (pid > 0 && !(await waitExit(pid, 30_000))) await stopPid(pid, 'strata daemon')
    await lazyUnmount(mnt)
  })
  cleanups.push({ what: 'strata unmount', fn: unmount })
  await run(process.execPath, [STRATA_BIN, 'mount', mnt, '--data', data], { timeoutMs: 180_000 })
  pid = (JSON.parse(await readFile(join(data, 'daemon.json'), 'utf8')) as { pid: number }).pid
  if (!(await mounted(mnt))) throw new Error('strata mount returned but the mountpoint is not mounted')
  return { name: 'strata', mnt, pid, sampler: sample(pid), unmount }
}

async function mountGocryptfs (base: string): Promise<Mounted> {
  const cipher = join(base, 'gocryptfs-cipher')
  const mnt = join(base, 'mnt-gocryptfs')
  await mkdir(cipher)
  await mkdir(mnt)
  await run('gocryptfs', ['-q', '-init', '-scryptn', '10', '-extpass', 'echo pw', cipher], { timeoutMs: 60_000 })
  // -fg: the mount is served by this very child, whose pid we own.
  const child = spawn('gocryptfs', ['-fg', '-q', '-extpass', 'echo pw', cipher, mnt], { stdio: ['ignore', 'inherit', 'inherit'] })
  const pid = child.pid ?? 0
  const unmount = once(async (): Promise<void> => {
    if (await mounted(mnt)) await run('fusermount', ['-u', mnt], { timeoutMs: 60_000, allowFail: true }).catch(() => {})
    if (pid > 0 && !(await waitExit(pid, 30_000))) await stopPid(pid, 'gocryptfs')
    await lazyUnmount(mnt)
  })
  cleanups.push({ what: 'gocryptfs unmount', fn: unmount })
  const end = Date.now() + 30_000
  while (!(await mounted(mnt))) {
    if (child.exitCode !== null || Date.now() > end) throw new Error(`gocryptfs did not mount (exit ${String(child.exitCode)})`)
    await sleep(50)
  }
  return { name: 'gocryptfs', mnt, pid, sampler: sample(pid), unmount }
}

async function mountNoop (base: string): Promise<Mounted> {
  const mnt = join(base, 'mnt-noop')
  await mkdir(mnt)
  const child = spawn(process.execPath, [NOOP_JS, mnt, JSON.stringify(noopOpts)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const pid = child.pid ?? 0
  const unmount = once(async (): Promise<void> => {
    if (child.connected) child.send({ cmd: 'unmount' })
    if (pid > 0 && !(await waitExit(pid, 15_000))) await stopPid(pid, 'no-op filesystem')
    await lazyUnmount(mnt)
  })
  cleanups.push({ what: 'noop unmount', fn: unmount })
  const ready = await new Promise<{ ready?: boolean, error?: string, options?: unknown }>((resolve) => {
    const timer = setTimeout(() => { resolve({ error: 'not mounted within 30 s' }) }, 30_000)
    child.once('message', m => { clearTimeout(timer); resolve(m as { ready?: boolean, error?: string }) })
    child.once('exit', code => { clearTimeout(timer); resolve({ error: `exited with ${String(code)}` }) })
  })
  if (ready.ready !== true) throw new Error(`no-op filesystem: ${ready.error ?? 'failed'}`)
  log(`no-op fuse-native filesystem options: ${JSON.stringify(ready.options)}`)
  const counts = async (): Promise<Record<string, number>> => await new Promise((resolve) => {
    const timer = setTimeout(() => { resolve({}) }, 5000)
    child.once('message', m => { clearTimeout(timer); resolve((m as { counts: Record<string, number> }).counts) })
    child.send({ cmd: 'counts' })
  })
  return { name: 'noop', mnt, pid, sampler: sample(pid), counts, unmount }
}

// ---- inputs ---------------------------------------------------------------------------------

async function ensureTools (): Promise<void> {
  const have = async (bin: string): Promise<boolean> => (await run('sh', ['-c', `command -v ${bin}`], { allowFail: true })).code === 0
  const missing: string[] = []
  if (systems.includes('gocryptfs') && !(await have('gocryptfs'))) missing.push('gocryptfs')
  if (phases.has('fio') && !(await have('fio'))) missing.push('fio')
  if (missing.length > 0) {
    log(`installing ${missing.join(' ')} from Debian`)
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    const r = await run('apt-get', ['install', '-y', ...missing], { env, timeoutMs: 600_000, allowFail: true })
    if (r.code !== 0) {
      await run('apt-get', ['update'], { env, timeoutMs: 600_000, allowFail: true })
      await run('apt-get', ['install', '-y', ...missing], { env, timeoutMs: 600_000 })
    }
  }
  for (const bin of ['dd', 'tar', 'fusermount', PYTHON]) if (!(await have(bin))) throw new Error(`${bin} is missing`)
  if (!existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing')
  if (process.getuid?.() !== 0) throw new Error('bench:fs needs root (drop_caches, allow_other mounts)')
  if (systems.includes('noop') && !existsSync(NOOP_JS)) throw new Error(`${NOOP_JS} is missing: run npx tsc -p tsconfig.json`)
  if ((systems.includes('noop') || systems.includes('strata')) && !existsSync(join(REPO, 'build/fuse-native/build/Release/fuse.node'))) throw new Error('the patched fuse-native is not built: bash scripts/build-fuse.sh')
}

/** The source tree: a tarball made once from system directories and cached under /tmp. */
async function treeTarball (): Promise<{ path: string, files: number, bytes: number }> {
  const dirs = QUICK ? ['usr/lib/python3', 'usr/share/perl'] : ['usr/include', 'usr/lib/python3', 'usr/share/perl']
  const name = QUICK ? 'tree-quick.tar' : 'tree.tar'
  const path = join(TREE_CACHE, name)
  const meta = `${path}.json`
  if (existsSync(path) && existsSync(meta)) {
    const m = JSON.parse(await readFile(meta, 'utf8')) as { files: number, bytes: number }
    if (m.files >= TREE_MIN_FILES) return { path, ...m }
  }
  await mkdir(TREE_CACHE, { recursive: true })
  const present = dirs.filter(d => existsSync(`/${d}`))
  log(`making the source-tree tarball ${path} from /${present.join(', /')}`)
  await run('tar', ['cf', `${path}.tmp`, '-C', '/', ...present], { timeoutMs: 600_000 })
  const listing = (await run('tar', ['tvf', `${path}.tmp`], { timeoutMs: 120_000 })).stdout.split('\n')
  const files = listing.filter(l => l.startsWith('-')).length
  let bytes = 0
  for (const l of listing) if (l.startsWith('-')) bytes += Number(l.split(/\s+/)[2] ?? 0)
  if (files < TREE_MIN_FILES) throw new Error(`the source tree has only ${files} files (need ${TREE_MIN_FILES})`)
  await run('mv', [`${path}.tmp`, path])
  await writeFile(meta, JSON.stringify({ files, bytes }))
  return { path, files, bytes }
}

const SMALLFILES_PY = String.raw`
import os, sys, time
root, n, ndirs, verify = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1'
SIZE = 4096
data = memoryview(os.urandom(SIZE * n))
dirs = [os.path.join(root, 'd%02d' % d) for d in range(ndirs)]
paths = [os.path.join(dirs[i % ndirs], 'f%05d' % i) for i in range(n)]
out = {}
def sync(word, phase='', secs=0.0):
    out[phase] = secs
    sys.stdout.write('%s %s %.6f\n' % (word, phase, secs))
    sys.stdout.flush()
    if sys.stdin.readline() != 'go\n':
        raise SystemExit('parent went away')
sync('start', 'begin')
t = time.perf_counter()
for d in dirs:
    os.mkdir(d)
for i, p in enumerate(paths):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if os.write(fd, data[i * SIZE:(i + 1) * SIZE]) != SIZE:
        raise SystemExit('short write ' + p)
    os.close(fd)
sync('done', 'create', time.perf_counter() - t)
t = time.perf_counter()
for p in paths:
    if os.stat(p).st_size != SIZE:
        raise SystemExit('wrong size ' + p)
sync('done', 'stat', time.perf_counter() - t)
t = time.perf_counter()
bad = 0
for i, p in enumerate(paths):
    fd = os.open(p, os.O_RDONLY)
    got = b''
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        got += b
    os.close(fd)
    if len(got) != SIZE or (verify and got != data[i * SIZE:(i + 1) * SIZE]):
        bad += 1
sync('done', 'read', time.perf_counter() - t)
if bad:
    raise SystemExit('%d files read back wrong' % bad)
t = time.perf_counter()
for p in paths:
    os.unlink(p)
for d in dirs:
    os.rmdir(d)
sync('done', 'delete', time.perf_counter() - t)
`

async function dropCaches (): Promise<void> {
  await run('sync', [], { timeoutMs: 300_000 })
  await writeFile('/proc/sys/vm/drop_caches', '3')
}

// ---- phases ---------------------------------------------------------------------------------

interface PhaseStat { seconds: number, cpu: number, peakRssMib: number, ops?: Record<string, number> }
interface FsResult {
  name: FsName
  writeMBs?: number
  readMBs?: number
  small?: Record<SmallPhase, number>
  tree?: { extract: number, remove: number }
  fio?: { readIops: number, writeIops: number }
  phases: Record<string, PhaseStat>
  peakRssMib: number
  hwmMib: number
  error?: string
}

interface PhaseProbe { finish: () => Promise<PhaseStat> }
/** Snapshot the daemon (CPU, RSS, no-op op counts) at the start of a phase. */
async function startPhase (m: Mounted, r: FsResult, name: string): Promise<PhaseProbe> {
  if (m.counts !== undefined) await m.counts()
  const cpu0 = await cpuSeconds(m.pid)
  m.sampler.phasePeakKb = await statusKb(m.pid, 'VmRSS')
  const start = performance.now()
  return {
    finish: async () => {
      const seconds = (performance.now() - start) / 1000
      const cpu = await cpuSeconds(m.pid) - cpu0
      const st: PhaseStat = { seconds, cpu, peakRssMib: Math.max(m.sampler.phasePeakKb, await statusKb(m.pid, 'VmRSS')) / 1024 }
      if (m.counts !== undefined) st.ops = await m.counts()
      r.phases[name] = st
      log(`${m.name} ${name}: ${seconds.toFixed(2)} s, daemon cpu ${cpu.toFixed(2)} s, rss ${st.peakRssMib.toFixed(0)} MiB${st.ops !== undefined ? `, ${opsSummary(st.ops)}` : ''}`)
      return st
    }
  }
}

async function phase<T> (m: Mounted, r: FsResult, name: string, fn: () => Promise<T>): Promise<T> {
  const p = await startPhase(m, r, name)
  const value = await fn()
  await p.finish()
  return value
}

/**
 * The small-file loop: one python3 process that times each phase itself and, between phases,
 * waits for a line on stdin so the daemon's CPU and op counts are taken per phase, untimed.
 */
async function smallFiles (m: Mounted, r: FsResult, script: string, dir: string, verify: boolean): Promise<Record<SmallPhase, number>> {
  if (aborted !== undefined) throw new Error(`aborted: ${aborted}`)
  const child = spawn(PYTHON, [script, dir, String(SMALL_FILES), String(SMALL_DIRS), verify ? '1' : '0'], { stdio: ['pipe', 'pipe', 'pipe'] })
  children.add(child)
  const timer = setTimeout(() => { if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL') }, 1_200_000)
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const lines: string[] = []
  let wake: (() => void) | undefined
  let buf = ''
  let closed = false
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString()
    let i
    while ((i = buf.indexOf('\n')) >= 0) { lines.push(buf.slice(0, i)); buf = buf.slice(i + 1) }
    wake?.()
  })
  const exited = new Promise<number | null>(resolve => { child.on('close', code => { closed = true; clearTimeout(timer); children.delete(child); wake?.(); resolve(code) }) })
  const next = async (): Promise<string | undefined> => {
    while (lines.length === 0 && !closed) await new Promise<void>(resolve => { wake = resolve })
    return lines.shift()
  }
  const times: Partial<Record<SmallPhase, number>> = {}
  let probe: PhaseProbe | undefined
  for (;;) {
    const l = await next()
    if (l === undefined) break
    const [word, ph, secs] = l.split(' ')
    if (word === 'done' && ph !== undefined && probe !== undefined) {
      const st = await probe.finish()
      times[ph as SmallPhase] = Number(secs)
      st.seconds = Number(secs)
    }
    if (word === 'start' || word === 'done') {
      if (ph !== 'delete') probe = await startPhase(m, r, `small-${word === 'start' ? 'create' : SMALL_NEXT[ph as SmallPhase] ?? ''}`)
      child.stdin.write('go\n')
    }
  }
  const code = await exited
  if (code !== 0) throw new Error(`small-file loop failed (exit ${String(code)}): ${stderr.trim().slice(-1000)}`)
  for (const k of SMALL_PHASES) if (times[k] === undefined) throw new Error(`small-file loop: no time for ${k}`)
  return times as Record<SmallPhase, number>
}
const SMALL_PHASES = ['create', 'stat', 'read', 'delete'] as const
type SmallPhase = typeof SMALL_PHASES[number]
const SMALL_NEXT: Partial<Record<SmallPhase, SmallPhase>> = { create: 'stat', stat: 'read', read: 'delete' }

async function benchOne (name: FsName, base: string, shm: string, tree: { path: string } | undefined): Promise<FsResult> {
  const r: FsResult = { name, phases: {}, peakRssMib: 0, hwmMib: 0 }
  log(`mounting ${name}`)
  const m = name === 'strata' ? await mountStrata(base) : name === 'gocryptfs' ? await mountGocryptfs(base) : await mountNoop(base)
  const real = name !== 'noop'
  try {
    if (phases.has('seq')) {
      const src = join(shm, 'random.bin')
      const dst = join(m.mnt, 'seq.bin')
      await dropCaches()
      const w = await phase(m, r, 'seq-write', async () => await run('dd', [`if=${src}`, `of=${dst}`, 'bs=1M', 'conv=fsync'], { timeoutMs: 900_000 }))
      r.writeMBs = SEQ_MIB * MIB / 1e6 / (w.ms / 1000)
      await dropCaches()
      const rd = await phase(m, r, 'seq-read', async () => await run('dd', [`if=${dst}`, 'of=/dev/null', 'bs=1M'], { timeoutMs: 900_000 }))
      r.readMBs = SEQ_MIB * MIB / 1e6 / (rd.ms / 1000)
      const size = (await stat(dst)).size
      if (size !== SEQ_MIB * MIB) throw new Error(`${name}: seq.bin is ${size} bytes, expected ${SEQ_MIB * MIB}`)
      if (real) {
        log(`${name}: verifying the 1 MiB-block file against its source (untimed)`)
        await run('cmp', [src, dst], { timeoutMs: 900_000 })
      }
      await rm(dst)
    }
    if (phases.has('small')) {
      const dir = join(m.mnt, 'small')
      await mkdir(dir)
      r.small = await smallFiles(m, r, join(shm, 'smallfiles.py'), dir, real)
      await rm(dir, { recursive: true })
    }
    if (phases.has('tree') && tree !== undefined) {
      const dir = join(m.mnt, 'tree')
      await mkdir(dir)
      const x = await phase(m, r, 'tree-extract', async () => await run('tar', ['xf', tree.path, '-C', dir], { timeoutMs: 1_800_000 }))
      const d = await phase(m, r, 'tree-delete', async () => await run('rm', ['-rf', dir], { timeoutMs: 1_800_000 }))
      r.tree = { extract: x.ms / 1000, remove: d.ms / 1000 }
    }
    if (phases.has('fio')) {
      const file = join(m.mnt, 'fio.dat')
      const out = await phase(m, r, 'randrw', async () => await run('fio', ['--name=randrw', '--rw=randrw', '--bs=4k', `--size=${FIO_SIZE}`, `--runtime=${FIO_SECONDS}`, '--time_based',
        '--ioengine=psync', '--direct=0', '--fallocate=none', `--filename=${file}`, '--output-format=json'], { timeoutMs: 900_000 }))
      const j = JSON.parse(out.stdout.slice(out.stdout.indexOf('{'))) as { jobs: Array<{ read: { iops: number }, write: { iops: number } }> }
      const job = j.jobs[0]
      if (job === undefined) throw new Error('fio printed no job')
      r.fio = { readIops: job.read.iops, writeIops: job.write.iops }
      await rm(file)
    }
  } catch (err) {
    r.error = (err as Error).message
    log(`${name} FAILED: ${r.error}`)
  } finally {
    r.hwmMib = await statusKb(m.pid, 'VmHWM') / 1024
    log(`unmounting ${name}`)
    const i = cleanups.findIndex(c => c.fn === m.unmount)
    if (i >= 0) cleanups.splice(i, 1)
    await m.unmount()
    m.sampler.stop()
    r.peakRssMib = Math.max(m.sampler.peakKb / 1024, r.hwmMib)
  }
  return r
}

// ---- report ---------------------------------------------------------------------------------

function opsSummary (ops: Record<string, number>): string {
  const total = Object.values(ops).reduce((a, b) => a + b, 0)
  const top = Object.entries(ops).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')
  return `${total} FUSE ops (${top})`
}

const PHASE_NAMES = ['seq-write', 'seq-read', 'small-create', 'small-stat', 'small-read', 'small-delete', 'tree-extract', 'tree-delete', 'randrw']

function printReport (results: Map<FsName, FsResult>, info: string[]): void {
  const s = results.get('strata')
  const g = results.get('gocryptfs')
  const n = results.get('noop')
  type Get = (r: FsResult) => number | undefined
  const rows: string[][] = []
  const fmt = (v: number | undefined, digits: number): string => v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits)
  const ratio = (a: number | undefined, b: number | undefined): string => a === undefined || b === undefined || a === 0 || b === 0 ? '-' : `${(a / b).toFixed(2)}x`
  /** kind 'rate': higher is better (ratio strata/other); 'time': lower is better (other/strata). */
  const row = (label: string, get: Get, kind: 'rate' | 'time' | 'info', digits: number, note = ''): void => {
    const v = (r: FsResult | undefined): number | undefined => r === undefined ? undefined : get(r)
    const sv = v(s); const gv = v(g); const nv = v(n)
    const rel = (o: number | undefined): string => kind === 'info' ? '' : kind === 'rate' ? ratio(sv, o) : ratio(o, sv)
    rows.push([label, fmt(sv, digits), fmt(gv, digits), fmt(nv, digits), rel(gv), rel(nv), note])
  }
  const sumSmall = (r: FsResult): number | undefined => r.small === undefined ? undefined : r.small.create + r.small.stat + r.small.read + r.small.delete
  const sumTree = (r: FsResult): number | undefined => r.tree === undefined ? undefined : r.tree.extract + r.tree.remove
  const iops = (r: FsResult): number | undefined => r.fio === undefined ? undefined : r.fio.readIops + r.fio.writeIops
  row(`seq write ${SEQ_MIB} MiB, MB/s`, r => r.writeMBs, 'rate', 0, 'dd bs=1M conv=fsync')
  row(`seq read ${SEQ_MIB} MiB, MB/s`, r => r.readMBs, 'rate', 0, 'dd bs=1M after drop_caches')
  row(`small files ${SMALL_FILES} x 4 KiB: create, s`, r => r.small?.create, 'time', 2, `${SMALL_DIRS} dirs, one python3 process`)
  row('  stat, s', r => r.small?.stat, 'time', 2)
  row('  read, s', r => r.small?.read, 'time', 2)
  row('  delete, s', r => r.small?.delete, 'time', 2)
  row('  total, s', sumSmall, 'time', 2)
  row('source tree: tar x, s', r => r.tree?.extract, 'time', 2, info[0] ?? '')
  row('  rm -rf, s', r => r.tree?.remove, 'time', 2)
  row('  total, s', sumTree, 'time', 2)
  row('fio 4 KiB randrw: read IOPS', r => r.fio?.readIops, 'rate', 0, `psync, buffered, 256 MiB, ${FIO_SECONDS} s`)
  row('  write IOPS', r => r.fio?.writeIops, 'rate', 0)
  row('  total IOPS', iops, 'rate', 0)
  row('peak daemon RSS, MiB', r => r.peakRssMib, 'info', 0, 'VmRSS sampled every 100 ms, and VmHWM')
  for (const p of PHASE_NAMES) {
    row(`daemon CPU s / wall s: ${p}`, r => r.phases[p]?.cpu, 'info', 1, '')
  }
  for (const p of PHASE_NAMES) {
    row(`peak daemon RSS MiB: ${p}`, r => r.phases[p]?.peakRssMib, 'info', 0)
  }
  if (n !== undefined) {
    for (const [p, st] of Object.entries(n.phases)) {
      if (st.ops === undefined) continue
      const total = Object.values(st.ops).reduce((a, b) => a + b, 0)
      const top = Object.entries(st.ops).sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, v]) => `${k} ${v}`).join(', ')
      rows.push([`FUSE ops (no-op count): ${p}`, '', '', String(total), '', '', top])
    }
  }
  // CPU rows: show "cpu/wall" as cpu seconds with the wall time next to it.
  for (const r of rows) {
    const m = /^daemon CPU s \/ wall s: (.*)$/.exec(r[0] ?? '')
    if (m === null) continue
    const p = m[1] ?? ''
    const cell = (x: FsResult | undefined): string => x?.phases[p] === undefined || x.phases[p].cpu === 0 ? '-' : `${x.phases[p].cpu.toFixed(1)}/${x.phases[p].seconds.toFixed(1)}`
    r[1] = cell(s); r[2] = cell(g); r[3] = cell(n)
  }
  const head = ['', 'strata', 'gocryptfs', 'no-op', 'strata vs gocryptfs', 'strata vs no-op', 'notes']
  const all = [head, ...rows]
  const w = head.map((_, i) => Math.max(...all.map(r => (r[i] ?? '').length)))
  const line = (r: string[]): string => r.map((c, i) => i === 0 || i === r.length - 1 ? c.padEnd(w[i] ?? 0) : c.padStart(w[i] ?? 0)).join('  ').trimEnd()
  console.log('')
  for (const i of info.slice(1)) console.log(i)
  console.log(line(head))
  console.log(w.map(x => '-'.repeat(x)).join('  '))
  for (const r of rows) console.log(line(r))
  for (const r of results.values()) if (r.error !== undefined) console.log(`${r.name} FAILED: ${r.error}`)
  console.log('(ratios > 1 mean Strata is faster: throughput strata/other, time other/strata)')

  const num = (v: number | undefined, d: number): string => v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(d)
  const rr = (a: number | undefined, b: number | undefined): string => a === undefined || b === undefined || a === 0 || b === 0 ? 'n/a' : (a / b).toFixed(2)
  const sg = (get: Get): [number | undefined, number | undefined] => [s === undefined ? undefined : get(s), g === undefined ? undefined : get(g)]
  const [sw, gw] = sg(r => r.writeMBs)
  const [sr, gr] = sg(r => r.readMBs)
  const [ss, gs] = sg(sumSmall)
  const [st, gt] = sg(sumTree)
  const [si, gi] = sg(iops)
  console.log(`fs write=${num(sw, 0)} read=${num(sr, 0)} write_vs_gocryptfs=${rr(sw, gw)} read_vs_gocryptfs=${rr(sr, gr)} smallfiles_vs_gocryptfs=${rr(gs, ss)} tree_vs_gocryptfs=${rr(gt, st)} randrw_vs_gocryptfs=${rr(si, gi)} rss_mib=${num(s?.peakRssMib, 0)}`)
}

// ---- main -----------------------------------------------------------------------------------

async function main (): Promise<number> {
  const load0 = (await readFile('/proc/loadavg', 'utf8')).trim()
  log(`load average at start: ${load0}; ${QUICK ? 'quick' : 'full'} run of ${systems.join(', ')} (${[...phases].join(', ')})`)
  await ensureTools()
  const tree = phases.has('tree') ? await treeTarball() : undefined

  const base = await mkdtemp('/tmp/strata-bench-fs-')
  const shm = await mkdtemp('/dev/shm/strata-bench-fs-')
  cleanups.push({
    what: 'temp dirs',
    fn: async () => {
      // Never recurse into a mount: unmount anything left under base first, and skip if one stays.
      const left: string[] = []
      for (const d of await readdir(base).catch(() => [])) {
        const p = join(base, d)
        if (await mounted(p)) { await lazyUnmount(p); if (await mounted(p)) left.push(p) }
      }
      if (left.length > 0) { log(`still mounted, not removing ${base}: ${left.join(' ')}`); return }
      await rm(base, { recursive: true, force: true })
      await rm(shm, { recursive: true, force: true })
    }
  })
  await writeFile(join(shm, 'smallfiles.py'), SMALLFILES_PY)
  let shmTree: { path: string } | undefined
  if (tree !== undefined) {
    shmTree = { path: join(shm, 'tree.tar') }
    await copyFile(tree.path, shmTree.path)
  }
  if (phases.has('seq')) {
    log(`generating ${SEQ_MIB} MiB of random data in ${shm}`)
    await run('dd', ['if=/dev/urandom', `of=${join(shm, 'random.bin')}`, 'bs=1M', `count=${SEQ_MIB}`, 'iflag=fullblock'], { timeoutMs: 300_000 })
  }

  const results = new Map<FsName, FsResult>()
  for (const name of systems) {
    if (aborted !== undefined) break
    results.set(name, await benchOne(name, base, shm, shmTree))
  }
  const load1 = (await readFile('/proc/loadavg', 'utf8')).trim()
  await cleanup()
  if (aborted !== undefined) throw new Error(`aborted: ${aborted}`)

  const cpus = (await readFile('/proc/cpuinfo', 'utf8')).split('\n').filter(l => l.startsWith('processor')).length
  const info = [
    tree === undefined ? '' : `${tree.files} files, ${(tree.bytes / MIB).toFixed(0)} MiB`,
    `bench:fs ${QUICK ? '--quick ' : ''}on ${cpus} cores; load average at start ${load0.split(' ').slice(0, 3).join(' ')}, at end ${load1.split(' ').slice(0, 3).join(' ')}`,
    `no-op = patched fuse-native answering every op from memory, discarding data (Strata's mount options${Object.keys(noopOpts).length > 0 ? ` + ${JSON.stringify(noopOpts)}` : ''})`
  ]
  printReport(results, info)
  return [...results.values()].some(r => r.error !== undefined) ? 1 : 0
}

main().then(code => { process.exitCode = code }, async (err: unknown) => {
  log(`failed: ${(err as Error).stack ?? String(err)}`)
  await cleanup()
  process.exitCode = 1
}).finally(() => { clearTimeout(deadline) })
