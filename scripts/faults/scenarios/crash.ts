/**
 * Crash faults (issue 5, "Crash"): SIGKILL of the daemon at a random instant (drawn from the
 * seeded rng) during fsync-acknowledged writes, directory-fsync-acknowledged renames, a NEK
 * rotation, and a block exchange. After each restart — `strata mount` right away, which must
 * recover the stale mount itself — fsck is clean and everything acknowledged is there.
 *
 * Each scenario sets its deployment up once (`prepare`) and every iteration is one kill of its
 * daemon: the drive carries what earlier iterations left, so an iteration checks its own
 * acknowledged data and that of the KEEP - 1 iterations before it (which this kill must not
 * damage either), then deletes older data so the drive, and with it each iteration, stays small.
 */
import { mkdirSync, readdirSync, readFileSync, lstatSync, rmSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ClassicLevel } from 'classic-level'
import { makeDrive, treeHash, type Drive } from '../../../test/helpers/mount.js'
import { firstDrive, joinDrive, until } from '../../../test/helpers/team.js'
import { request, socketPath } from '../../../daemon/control.js'
import type { FsckReport } from '../../../fs/volume/index.js'
import {
  PY, checkAcked, isMounted, killDaemon, killedDaemonError, remountAfterKill, running, sleep, spawnLines, startWriter, within, type Writer
} from '../../../test/helpers/crash.js'
import { sha, writeRandom } from '../team-faults.js'
import type { FaultContext, Scenario } from '../harness.js'

const RENAMER = fileURLToPath(new URL('../../../../test/fixtures/ack-renamer.py', import.meta.url))
/** A client of a killed daemon must fail within this bound, not hang. */
const CLIENT_BOUND_MS = 30_000
/** Iterations whose data stays on a shared drive and is checked again: this one and the two before. */
const KEEP = 3
const MIB = 1024 * 1024

/** SIGKILL the drive's daemon and wait until it has exited; its pid. */
async function kill (ctx: FaultContext, d: Drive): Promise<number> {
  const pid = d.pid()
  if (pid === undefined) ctx.fail('no daemon pid (daemon.json) to kill')
  ctx.check(await killDaemon(pid), `daemon ${pid} still runs 30 s after SIGKILL`)
  return pid
}

/** Kill the drive's daemon, then restart it. */
async function killAndRestart (ctx: FaultContext, d: Drive, options: RestartOptions = {}): Promise<void> {
  await restart(ctx, d, await kill(ctx, d), options)
}

interface RestartOptions { clients?: Array<Promise<unknown>>, fsck?: boolean }

/** After the kill of daemon `pid`: wait for its clients to fail, remount at once; fsck unless told not to. */
async function restart (ctx: FaultContext, d: Drive, pid: number, options: RestartOptions): Promise<void> {
  for (const c of options.clients ?? []) ctx.check(await within(c, CLIENT_BOUND_MS), 'a client still blocks 30 s after its daemon was killed (an application hangs)')
  const logFrom = logSize(d)
  const r = await remountAfterKill(d.mnt, d.dataDir, pid)
  ctx.check(r.immediate === undefined, `strata mount right after kill -9 did not recover the stale mount: ${r.immediate ?? ''}; the daemon logged: ${daemonLines(d, logFrom)}`)
  ctx.check(d.pid() !== pid && isMounted(d.mnt), 'no new daemon or no mount after strata mount')
  ctx.log(`killed daemon ${pid}, remounted (daemon ${String(d.pid())})`)
  if (options.fsck !== false) await checkFsck(ctx, d, 'after the restart')
}

function logSize (d: Drive): number {
  try { return statSync(join(d.dataDir, 'strata.log')).size } catch { return 0 }
}

/** The daemon's own log lines (not FUSE's debug output) and errors, from byte `from` on. */
function daemonLines (d: Drive, from: number): string {
  const text = readFileSync(join(d.dataDir, 'strata.log')).subarray(from).toString('utf8')
  return text.split('\n').filter(l => /strata|error/i.test(l)).slice(0, 12).join(' | ')
}

/**
 * The fsck `strata fsck` asks a mounted drive's daemon for (every block verified), requested
 * over its control socket: the same check without starting a CLI process in every iteration.
 */
async function checkFsck (ctx: FaultContext, d: Drive, when: string): Promise<void> {
  const r = await request(socketPath(d.dataDir), 'fsck', { repair: false, quick: false }, undefined, 120_000) as FsckReport
  ctx.check(r.ok, `fsck ${when} (${d.dataDir}): ${r.problems.slice(0, 5).map(p => `${p.kind} ${p.path} ${p.detail}`).join(' | ')}`)
}

/** Append `round` to the rounds kept on a shared drive; `remove` the data of the rounds beyond `keep`. */
function keepRecent<T> (rounds: T[], round: T, remove: (old: T) => void, keep = KEEP): void {
  rounds.push(round)
  while (rounds.length > keep) remove(rounds.shift() as T)
}

/** Start the acknowledging writer; it is killed at teardown if it still runs. */
function writer (ctx: FaultContext, log: string, markers: string, size: number): Writer {
  const w = startWriter(log, markers, size)
  ctx.teardown(() => { if (w.child.exitCode === null) w.child.kill('SIGKILL') })
  return w
}

/** Wait (bounded) until the writer acknowledged record `target`. */
async function awaitAcks (ctx: FaultContext, w: Writer, target: number): Promise<void> {
  for (const end = Date.now() + 120_000; w.acked() < target && w.child.exitCode === null && Date.now() < end;) await sleep(5)
  ctx.check(w.acked() >= target, `the writer acknowledged only ${w.acked() + 1} records before the kill: ${w.lines.slice(-3).join(' | ')}`)
}

/** A client of a killed daemon must fail as killedDaemonError allows; else the daemon's errors say why. */
function checkDisconnected (ctx: FaultContext, d: Drive, lines: string[], who: string, recordSize = 0): void {
  const err = lines.find(l => l.startsWith('ERR ')) ?? `(no ERR line: ${lines.slice(-3).join(' | ')})`
  const logged = readFileSync(join(d.dataDir, 'strata.log'), 'utf8').split('\n').filter(l => / error /.test(l)).slice(-5)
  if (killedDaemonError(err, logged, recordSize)) {
    if (/^ERR 5 EIO /.test(err) && !/short write/.test(err)) ctx.log(`${who}: ${err} at the kill, no daemon error: a reply cut by the kill`)
    return
  }
  ctx.fail(`${who} failed with something else than ENOTCONN/ECONNABORTED: ${err}; the daemon's last errors: ${logged.join(' | ')}`)
}

/** What one iteration's writer left: its log and markers are named after the iteration. */
interface WriteRound { iteration: number, size: number, acked: number }

const writerLog = (d: Drive, iteration: number): { log: string, markers: string } =>
  ({ log: join(d.mnt, `w${iteration}.log`), markers: join(d.mnt, `m${iteration}`) })

/** Run the writer of this iteration until it acknowledged `target`, `size`-byte records. */
async function writeRound (ctx: FaultContext, d: Drive, size: number, target: number): Promise<Writer> {
  const f = writerLog(d, ctx.iteration)
  const w = writer(ctx, f.log, f.markers, size)
  await awaitAcks(ctx, w, target)
  return w
}

/** After a kill: the killed writer failed as a client of a dead daemon should; keep its round and check every kept one. */
function checkRounds (ctx: FaultContext, d: Drive, rounds: WriteRound[], w: Writer, size: number): void {
  checkDisconnected(ctx, d, w.lines, 'the writer', size)
  keepRecent(rounds, { iteration: ctx.iteration, size, acked: w.acked() }, old => {
    const f = writerLog(d, old.iteration)
    rmSync(f.log)
    rmSync(f.markers, { recursive: true })
  })
  ctx.log(`${size}-byte records, ${w.acked() + 1} acknowledged`)
  for (const r of rounds) {
    const f = writerLog(d, r.iteration)
    const bad = checkAcked(f.log, f.markers, r.size, r.acked)
    ctx.check(bad === '', `after the kill of iteration ${ctx.iteration + 1}, the records acknowledged in iteration ${r.iteration + 1}: ${bad}`)
  }
}

/** Content of file id k in ack-renamer.py. */
function renamerContent (k: number): Buffer {
  const line = Buffer.from(`content ${k}\n`)
  const n = 100 + 37 * k
  return Buffer.concat(Array.from({ length: Math.ceil(n / line.length) + 1 }, () => line)).subarray(0, n)
}

/** Every file under root: relative path -> renamer content id; throws on bytes no id explains. */
function filesUnder (root: string): Record<string, number> {
  const out: Record<string, number> = {}
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name)
      if (lstatSync(p).isDirectory()) { walk(p); continue }
      const data = readFileSync(p)
      const m = /^content (\d+)\n/.exec(data.subarray(0, 32).toString('latin1'))
      const k = m === null ? -1 : Number(m[1])
      if (k < 0 || !data.equals(renamerContent(k))) throw new Error(`${relative(root, p)} holds bytes no file had (${data.length} bytes)`)
      out[relative(root, p)] = k
    }
  }
  walk(root)
  return out
}

const canonical = (s: Record<string, number>): string => JSON.stringify(Object.entries(s).sort(([a], [b]) => a < b ? -1 : 1))

/** Run the renamer in `root` until it acknowledged rename `target`: the states it reported, and it. */
async function renameRound (ctx: FaultContext, root: string, target: number): Promise<{ seen: { acked?: Record<string, number>, pending?: Record<string, number> }, r: ReturnType<typeof spawnLines>, n: () => number }> {
  const seen: { acked?: Record<string, number>, pending?: Record<string, number> } = {}
  let n = -1
  const r = spawnLines(PY, [RENAMER, root, String(ctx.rng.int(0, 2 ** 30)), String(ctx.rng.int(6, 16))], line => {
    const [word, rest] = [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)]
    if (word === 'STATE') seen.acked = seen.pending = JSON.parse(rest) as Record<string, number>
    else if (word === 'PENDING') seen.pending = JSON.parse(rest) as Record<string, number>
    else if (word === 'ACK') { seen.acked = seen.pending; n = Number(rest) }
  })
  ctx.teardown(() => { if (r.child.exitCode === null) r.child.kill('SIGKILL') })
  for (const end = Date.now() + 120_000; n < target && r.child.exitCode === null && Date.now() < end;) await sleep(5)
  ctx.check(n >= target, `the renamer acknowledged only ${n + 1} renames: ${r.lines.slice(-3).join(' | ')}`)
  return { seen, r, n: () => n }
}

/**
 * True once every thread of a killed process has exited. Its main thread is a zombie first; the
 * others (and with them its open files and the LevelDB lock) may take some ms more, and init
 * reaps the zombie only a second or two later.
 */
function threadsGone (pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).length <= 1 && !running(pid)
  } catch {
    return true
  }
}

/**
 * Raw view of the LevelDB of a volume whose daemon `pid` was killed (once its lock is free): NEK
 * versions of a namespace and its rotation record.
 */
async function rotationState (ctx: FaultContext, d: Drive, pid: number, ns: string): Promise<{ versions: number[], pending: boolean }> {
  for (const end = Date.now() + 30_000; !threadsGone(pid) && Date.now() < end;) await sleep(5)
  ctx.check(threadsGone(pid), `threads of the killed daemon ${pid} still run 30 s after the kill`)
  const db = new ClassicLevel<string, Uint8Array>(join(d.dataDir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  try {
    const versions: number[] = []
    for await (const k of db.keys({ gt: `!keys!nek/${ns}/`, lt: `!keys!nek/${ns}/~` })) versions.push(Number(k.slice(k.lastIndexOf('/') + 1)))
    return { versions, pending: await db.get(`!meta!r/${ns}`) !== undefined }
  } finally {
    await db.close()
  }
}

/** The daemon's status over its control socket (no CLI process: cheap enough to poll every few ms). */
async function daemonStatus (d: Drive): Promise<any> {
  return await request(socketPath(d.dataDir), 'status', {}, undefined, 10_000)
}

/** Bytes the drive's block exchange received since its daemon started. */
async function bytesReceived (d: Drive): Promise<number> {
  return Number((await daemonStatus(d)).sync?.blocks?.bytesReceived ?? 0)
}

interface WritesShared { d: Drive, rounds: WriteRound[] }

const crashDuringWrites: Scenario<WritesShared> = {
  name: 'crash-during-writes',
  injects: 'SIGKILL of the daemon at a random instant of an fsync-acknowledging write loop (random record sizes): every acknowledged byte survives, fsck clean',
  randomised: true,
  prepare: async ctx => ({ d: await makeDrive(ctx), rounds: [] }),
  run: async (ctx, { d, rounds }) => {
    // Small records stay in one block; 256 KiB + 1 crosses blocks at varying offsets.
    const size = ctx.rng.pick([512, 4096, 65536, 262_145])
    const w = await writeRound(ctx, d, size, ctx.rng.int(1, size > 65536 ? 12 : 40))
    await sleep(ctx.rng.int(0, 30))
    await killAndRestart(ctx, d, { clients: [w.exited] })
    checkRounds(ctx, d, rounds, w, size)
  }
}

/** The tree each kept iteration's renamer left in its own directory (`r<iteration>`), as it read back. */
interface RenamesShared { d: Drive, rounds: Array<{ iteration: number, tree: string }> }

const crashDuringRenames: Scenario<RenamesShared> = {
  name: 'crash-during-renames',
  injects: 'SIGKILL of the daemon during renames of files and directories (also over existing files), each acknowledged after fsync of the directories: every acknowledged rename is visible, no file lost or duplicated, fsck clean',
  randomised: true,
  prepare: async ctx => ({ d: await makeDrive(ctx), rounds: [] }),
  run: async (ctx, { d, rounds }) => {
    const rootOf = (iteration: number): string => join(d.mnt, `r${iteration}`)
    const root = rootOf(ctx.iteration)
    mkdirSync(root)
    const { seen, r, n } = await renameRound(ctx, root, ctx.rng.int(1, 40))
    await sleep(ctx.rng.int(0, 20))
    await killAndRestart(ctx, d, { clients: [r.exited] })
    checkDisconnected(ctx, d, r.lines, 'the renamer')
    const { acked, pending } = seen
    if (acked === undefined || pending === undefined) return ctx.fail('the renamer reported no state')
    const got = canonical(filesUnder(root))
    ctx.log(`${n() + 1} renames acknowledged; ${Object.keys(acked).length} files`)
    // The rename in flight at the kill may or may not have happened; nothing else may differ.
    ctx.check(got === canonical(acked) || got === canonical(pending),
      `after the kill the tree is neither the acknowledged state nor that plus the pending rename:\n    got      ${got}\n    acked    ${canonical(acked)}\n    pending  ${canonical(pending)}`)
    for (const old of rounds) {
      ctx.check(canonical(filesUnder(rootOf(old.iteration))) === old.tree, `after the kill of iteration ${ctx.iteration + 1}, the tree iteration ${old.iteration + 1} left changed`)
    }
    keepRecent(rounds, { iteration: ctx.iteration, tree: got }, old => { rmSync(rootOf(old.iteration), { recursive: true }) })
  }
}

/** Wait (bounded) until the rotation reported progress `frac` of its work, or finished. */
async function rotateUntil (d: Drive, frac: number): Promise<{ rotation: Promise<void>, at: () => string, finished: () => boolean }> {
  let done = 0; let total = 0; let finished = false
  const rotation = request(socketPath(d.dataDir), 'rotate', { which: 'nek' }, p => { ({ done, total } = p as { done: number, total: number }) })
    .then(() => { finished = true }, () => {})
  for (const end = Date.now() + 120_000; (total === 0 || done < frac * total) && !finished && Date.now() < end;) await sleep(2)
  return { rotation, at: () => `${done}/${total}`, finished: () => finished }
}

/** A namespace's NEK versions and whether a rotation is pending, as the running daemon reports them. */
async function keyState (d: Drive, ns: string): Promise<{ versions: number[], pending: boolean }> {
  const keys = (await daemonStatus(d)).keys as Array<{ ns: string, nekVersions: number[], rotating: boolean }>
  const k = keys.find(x => x.ns === ns)
  return { versions: k?.nekVersions ?? [], pending: k?.rotating ?? false }
}

/** A drive with a big file (its hash known) in namespace `ns`, whose only NEK version is `version`. */
interface RotationShared { d: Drive, ns: string, big: string, want: string, version: number, rounds: WriteRound[] }

const crashDuringNekRotation: Scenario<RotationShared> = {
  name: 'crash-during-nek-rotation',
  injects: 'SIGKILL of the daemon at a random point of `strata rotate nek` (hundreds of block keys) while a writer runs: the restart finishes the rotation (new version only, no pending record), every byte reads back, fsck clean',
  randomised: true,
  prepare: async ctx => {
    // 64 KiB blocks: many block keys to re-wrap for little data.
    const d = await makeDrive(ctx, { init: ['--block-size', '65536'] })
    const big = join(d.mnt, 'big')
    const want = await writeRandom(big, 16 * MIB) // 256 block keys
    const ns = ((await daemonStatus(d)).namespaces as string[])[0] as string
    // A new volume's namespace keys start at version 1.
    return { d, ns, big, want, version: 1, rounds: [] }
  },
  run: async (ctx, s) => {
    const { d, ns } = s
    const w = await writeRound(ctx, d, 4096, 2)
    const frac = 0.05 + ctx.rng.next() * 0.75
    const { rotation, at, finished } = await rotateUntil(d, frac)
    await sleep(ctx.rng.int(0, 40))
    const killedAt = at()
    const pid = await kill(ctx, d)
    ctx.check(await within(rotation, CLIENT_BOUND_MS), 'the rotate request still waits 30 s after its daemon was killed')
    // The dead daemon's LevelDB lock is gone: look at what the crash left before anything resumes.
    const left = await rotationState(ctx, d, pid, ns)
    ctx.log(`killed at ${killedAt} (target ${Math.round(frac * 100)}%)${finished() ? ', after the rotation finished' : ''}: NEK versions ${left.versions.join(',')}, rotation record ${left.pending ? 'present' : 'absent'}`)
    await restart(ctx, d, pid, { clients: [w.exited] })
    ctx.check(await sha(s.big) === s.want, 'the big file reads back different bytes after the interrupted rotation')
    checkRounds(ctx, d, s.rounds, w, 4096)
    // What the restarted daemon holds now (the mount returns once interrupted rotations are finished).
    const after = await keyState(d, ns)
    ctx.check(!after.pending, 'the rotation record is still there: the interrupted rotation was not finished')
    ctx.check(after.versions.length === 1 && (after.versions[0] as number) > s.version, `NEK versions after the restart: ${after.versions.join(',')} (want one, newer than ${s.version})`)
    if (left.pending) ctx.check(after.versions[0] === Math.max(...left.versions), `the resumed rotation ended at version ${String(after.versions[0])}, not the one it had begun (${Math.max(...left.versions)})`)
    s.version = after.versions[0] as number
  }
}

/** Two enrolled devices; the big file A wrote in the iteration before and its hash. */
interface ExchangeShared { a: Drive, b: Drive, rounds: Array<{ name: string, want: string }> }

/**
 * True when both mounts hold the same tree and B holds each of `files` with its hash (from
 * treeHash's sha256sum lines): one read of every file on each device.
 */
async function converged (a: Drive, b: Drive, files: Array<{ name: string, want: string }>): Promise<boolean> {
  const tree = await treeHash(b.mnt)
  return files.every(f => tree.includes(`${f.want}  ./${f.name}\n`)) && tree === await treeHash(a.mnt)
}

const crashDuringBlockExchange: Scenario<ExchangeShared> = {
  name: 'crash-during-block-exchange',
  injects: 'SIGKILL of a device\'s daemon at a random instant while it fetches a big file from another: after the restart the fetch resumes (not from zero), the devices converge, fsck clean on both',
  randomised: true,
  timeoutMs: 300_000,
  prepare: async ctx => {
    const a = await firstDrive(ctx)
    return { a, b: await joinDrive(ctx, a, 'b'), rounds: [] }
  },
  run: async (ctx, { a, b, rounds }) => {
    const mib = 8 // eight blocks: enough to tell a resumed fetch from one that started over
    const total = mib * MIB
    const name = `big${ctx.iteration}`
    // B's counter runs since its daemon started (the restart of the iteration before): count from here.
    const base = await bytesReceived(b)
    // B fetches blocks as A seals them (A announces them): count while A still writes.
    const writing = writeRandom(join(a.mnt, name), total)
    writing.catch(() => {}) // awaited below; a failure before then is no unhandled rejection
    const frac = ctx.rng.next() * 0.8
    let before = 0
    for (const end = Date.now() + 180_000; before < frac * total && Date.now() < end;) {
      before = await bytesReceived(b).then(n => n - base, () => before)
      await sleep(10)
    }
    await sleep(ctx.rng.int(0, 50))
    ctx.log(`killing B after ${(before / MIB).toFixed(1)} of ${mib} MiB received (target ${Math.round(frac * 100)}%)`)
    await killAndRestart(ctx, b, { fsck: false })
    const want = await writing
    // The size shows the file arrived (a cheap probe); then one comparison reads every file.
    const arrived = async (): Promise<boolean> => statSync(join(b.mnt, name)).size === total
    const files = [...rounds, { name, want }]
    ctx.check(await until(arrived, 180_000) && await until(async () => await converged(a, b, files), 60_000),
      `the devices did not converge (B holding ${files.map(f => f.name).join(', ')} with their hashes) within 240 s of the restart`)
    const afterBytes = await bytesReceived(b)
    ctx.log(`after the restart B received ${(afterBytes / MIB).toFixed(1)} MiB`)
    // Blocks stored before the kill are not fetched again (a few in flight at the kill may be).
    if (before >= total / 2) ctx.check(afterBytes < total - before / 2, `after the restart B fetched ${afterBytes} bytes again although it held ${before} of ${total}: the fetch started from zero`)
    await checkFsck(ctx, b, 'on B after the restart')
    await checkFsck(ctx, a, 'on A')
    // Only this file stays (every iteration reads what is kept, on both devices); the deletion
    // reaches B by the next iteration, whose convergence check covers it.
    keepRecent(rounds, { name, want }, old => { rmSync(join(a.mnt, old.name)) }, 1)
  }
}

export const crashScenarios: Scenario[] = [
  crashDuringWrites,
  crashDuringRenames,
  crashDuringNekRotation,
  crashDuringBlockExchange
]
