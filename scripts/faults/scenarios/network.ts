/**
 * Network faults between real daemons on loopback: a peer killed mid-transfer, connections cut
 * again and again by a proxy, and a partition with edits on both sides. B reaches A only through
 * the proxy (B listens nowhere, so A cannot dial it directly, and A announces the proxy's
 * address as its own), which the proxy can cut or drop.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { sh, type Drive } from '../../../test/helpers/mount.js'
import { firstDrive, ok, same, status, until } from '../../../test/helpers/team.js'
import { processAlive, request, socketPath } from '../../../daemon/control.js'
import type { FsckReport } from '../../../fs/volume/index.js'
import type { FaultContext, Scenario } from '../harness.js'
import { TcpProxy, type CutPlan } from '../tcp-proxy.js'
import { verifyAcked, writeAcked, type Acked } from '../workload.js'
import { address, fsckClean, joinWith, overwriteRandom, remount, sha, writeRandom } from '../team-faults.js'

const MiB = 1024 * 1024

/**
 * `strata status --json` of a mounted drive: the daemon's answer over its control socket, as the
 * CLI asks for it, without starting a CLI process per poll.
 */
async function daemonStatus (d: Drive): Promise<any> {
  return await request(socketPath(d.dataDir), 'status', {}, undefined, 30_000)
}

/** Wait until B has a log session with A (a bound, not a timing claim). */
async function connected (ctx: FaultContext, b: Drive, aId: string, ms = 60_000): Promise<void> {
  ctx.check(await until(async () => ((await daemonStatus(b)).sync.peers as string[]).includes(aId), ms), `B did not connect to A within ${ms / 1000} s`)
}

/** A, and B joined to it that reaches A only through a proxy (stopped at teardown). */
async function proxiedPair (ctx: FaultContext, cut?: () => CutPlan | undefined): Promise<{ a: Drive, b: Drive, proxy: TcpProxy, aId: string }> {
  const a = await firstDrive(ctx)
  const { id: aId, port } = await address(a)
  // The enrolment (`strata join`) reaches A through the proxy too, since A announces it, and
  // must not be cut: cutting starts once B has joined, before B's daemon first connects.
  let armed = false
  const proxy = await TcpProxy.start({ target: { host: '127.0.0.1', port }, cut: () => armed ? cut?.() : undefined })
  ctx.teardown(async () => { await proxy.stop() })
  // A tells B (identify, the invite) to reach it at the proxy: otherwise B learns A's own
  // address on the first connection and redials that, around the proxy. A keeps its port.
  await a.unmount()
  const file = join(a.dataDir, 'strata.json')
  const cfg = JSON.parse(readFileSync(file, 'utf8'))
  writeFileSync(file, JSON.stringify({ ...cfg, sync: { ...cfg.sync, announce: [`/ip4/127.0.0.1/tcp/${proxy.port}`] } }))
  await remount(a)
  const b = await joinWith(ctx, a, 'b', sync => ({ ...sync, listen: [], peers: [`/ip4/127.0.0.1/tcp/${proxy.port}/p2p/${aId}`] }), () => { armed = true })
  return { a, b, proxy, aId }
}

/** `n` small files of random sizes under dir (made on the mount), written with one shell. */
async function smallFiles (ctx: FaultContext, dir: string, n: number): Promise<void> {
  const sizes = Array.from({ length: n }, () => ctx.rng.int(0, 20_000))
  const r = await sh(`mkdir -p "${dir}" && cd "${dir}" && ${sizes.map((s, i) => `head -c ${s} /dev/urandom > f${i}`).join(' && ')} && sync`)
  if (r.code !== 0) ctx.fail(`writing small files failed: ${r.stderr}`)
}

/** A and B joined and connected once, for every iteration; A's id. */
interface Pair { a: Drive, b: Drive, aId: string }

/**
 * `strata fsck` of a mounted drive: the daemon's full fsck (every block verified), asked over its
 * control socket as the CLI asks for it, without starting a CLI process per iteration.
 */
async function daemonFsckClean (ctx: FaultContext, d: Drive, who: string): Promise<void> {
  const r = await request(socketPath(d.dataDir), 'fsck', { repair: false, quick: false }, undefined, 120_000) as FsckReport
  ctx.check(r.ok, `fsck on ${who} is not clean: ${r.problems.slice(0, 5).map(p => `${p.kind} ${p.path} ${p.detail}`).join(' | ')}`)
}

/** Names, types and sizes under a mount, without reading contents: a cheap first test of `same`. */
async function listing (d: Drive): Promise<string> {
  return (await sh(`cd "${d.mnt}" && find . -mindepth 1 -printf '%y %P %s\\n' | sort`)).stdout
}

/** What differs between two devices, and what B's sync says, for a failure message. */
async function divergence (a: Drive, b: Drive): Promise<string> {
  const [la, lb] = [new Set((await listing(a)).split('\n')), new Set((await listing(b)).split('\n'))]
  const onlyA = [...la].filter(l => !lb.has(l)).slice(0, 6)
  const onlyB = [...lb].filter(l => !la.has(l)).slice(0, 6)
  const st = (await daemonStatus(b).catch((err: Error) => ({ sync: { error: err.message } }))).sync ?? {}
  const errors = (d: Drive): string => {
    try {
      return readFileSync(join(d.dataDir, 'strata.log'), 'utf8').split('\n').filter(l => / (error|warn) /.test(l)).slice(-4).join(' | ')
    } catch { return '' }
  }
  const tail = (d: Drive): string => {
    try {
      return readFileSync(join(d.dataDir, 'strata.log'), 'utf8').split('\n').filter(l => !/^\s*$/.test(l) && !/strata:libp2p/.test(l)).slice(-12).join(' | ')
    } catch { return '' }
  }
  const alive = (d: Drive): string => { const pid = d.pid(); return pid === undefined ? 'no pid' : `pid ${pid} ${existsSync(`/proc/${pid}`) ? 'alive' : 'gone'}` }
  return `only on A: ${JSON.stringify(onlyA)}; only on B: ${JSON.stringify(onlyB)}; B sync: ${JSON.stringify({ error: st.error, peers: st.peers, apply: st.apply, logProblems: st.logProblems, replicaPending: st.replicaPending, blocks: st.blocks, log: st.log })}; A daemon ${alive(a)}, B daemon ${alive(b)}; A errors: ${errors(a)}; B errors: ${errors(b)}; B log tail: ${tail(b)}`
}

/** Write `files` one after another (each fsync'ed) until one fails; the acknowledged ones. */
async function writeUntilFailure (dir: string, files: Array<{ name: string, bytes: Buffer }>): Promise<Acked[]> {
  const acked: Acked[] = []
  try {
    for (const f of files) acked.push(await writeAcked(dir, f.name, f.bytes))
  } catch {} // the daemon was killed under a write: only what was acknowledged counts
  return acked
}

const peerKilledMidTransfer: Scenario<Pair> = {
  name: 'network-peer-killed-mid-transfer',
  injects: 'SIGKILL of the serving daemon at a random instant while its peer fetches a large file; restart: the peer converges, fsck clean on both',
  randomised: true,
  timeoutMs: 240_000,
  prepare: async ctx => {
    const a = await firstDrive(ctx)
    const b = await joinWith(ctx, a, 'b')
    // A dials B as well (`peer add` is kept across restarts): the session comes back once A is
    // up again, instead of at B's next redial, whose backoff grows while A is down.
    await ok(['peer', 'add', (await address(b)).addr, '--data', a.dataDir])
    return { a, b, aId: (await address(a)).id }
  },
  run: async (ctx, { a, b, aId }) => {
    const t0 = Date.now()
    const el = (): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`
    await connected(ctx, b, aId)
    ctx.log(`${el()}: A and B connected`)
    // Files written one after another (each fsync'ed) while B fetches the earlier ones; the
    // kill lands at a random instant of that stream. Each iteration writes its own directory.
    const dir = join(a.mnt, `it-${ctx.iteration}`)
    mkdirSync(dir)
    const files = Array.from({ length: ctx.rng.int(2, 5) }, (_, i) => ({ name: `f${i + 1}`, bytes: randomBytes(4 * MiB) }))
    const writer = writeUntilFailure(dir, files)
    const delay = ctx.rng.int(0, 1500)
    await new Promise(resolve => setTimeout(resolve, delay))
    const pid = a.pid() ?? ctx.fail('no daemon pid for A')
    process.kill(pid, 'SIGKILL')
    const acked = await writer
    const got = (await daemonStatus(b).catch(() => undefined))?.sync?.blocks?.blocksReceived
    // processAlive counts a zombie as dead: it has exited, only its reaping by init is pending.
    ctx.check(await until(async () => !await processAlive(pid), 10_000), 'A\'s daemon survived SIGKILL')
    ctx.log(`${el()}: A killed ${delay} ms into writing ${files.length} files of 4 MiB (${acked.length} fsync'ed; B had received ${String(got)} blocks in all)`)
    await remount(a)
    ctx.log(`${el()}: A restarted`)
    // A's acknowledged files are read back while B catches up: two checks, run side by side.
    const [lost, converged] = await Promise.all([
      verifyAcked(dir, acked),
      (async () => await until(async () => await listing(a) === await listing(b), 120_000) && await until(same(a, b), 30_000))()
    ])
    ctx.check(lost.length === 0, `A lost fsync-acknowledged files across SIGKILL: ${lost.join('; ')}`)
    if (!converged) ctx.fail(`B did not converge with A within 150 s after A restarted: ${await divergence(a, b)}`)
    ctx.log(`${el()}: ${acked.length} acknowledged files intact on A, B converged`)
    await Promise.all([daemonFsckClean(ctx, a, 'A'), daemonFsckClean(ctx, b, 'B')])
    ctx.log(`${el()}: fsck clean on both`)
    // The next iteration starts from a small tree; its convergence check covers this removal.
    rmSync(dir, { recursive: true })
  }
}

const connectionCutRepeatedly: Scenario = {
  name: 'network-connection-cut-repeatedly',
  injects: 'every connection between two devices cut by a proxy after a random number of bytes or ms: a large file and many small ones still converge both ways, fsck clean',
  timeoutMs: 420_000,
  run: async ctx => {
    // Quick runs move ~10 MiB, in a few seconds now: a connection's budget must stay well
    // below that, or one cut can be all there is (seen: 1 cut, converged through 2 connections).
    const cut = (): CutPlan => ctx.rng.next() < 0.7 ? { bytes: ctx.rng.int(256 * 1024, (ctx.quick ? 2 : 6) * MiB) } : { ms: ctx.rng.int(300, ctx.quick ? 1000 : 3000) }
    const { a, b, proxy, aId } = await proxiedPair(ctx, cut)
    await connected(ctx, b, aId, 120_000)
    const big = ctx.quick ? 8 * MiB : 32 * MiB
    const small = ctx.quick ? 50 : 200
    const want = await writeRandom(`${a.mnt}/big.bin`, big)
    await smallFiles(ctx, `${a.mnt}/small`, small)
    await smallFiles(ctx, `${b.mnt}/from-b`, Math.ceil(small / 10))
    ctx.check(await until(same(a, b), ctx.quick ? 180_000 : 360_000), `A and B did not converge through the cutting proxy (${proxy.stats.cuts} cuts so far)`)
    ctx.check(await sha(`${b.mnt}/big.bin`) === want, 'B holds wrong bytes of the large file')
    ctx.log(`converged through ${proxy.stats.connections} connections, ${proxy.stats.cuts} cut, ${(proxy.stats.bytes / MiB).toFixed(1)} MiB relayed`)
    ctx.check(proxy.stats.cuts >= 2, `the proxy cut only ${proxy.stats.cuts} connections: the fault was not exercised`)
    await fsckClean(ctx, a, 'A')
    await fsckClean(ctx, b, 'B')
  }
}

/** Both versions of `shared.txt` must be present: one under its name, one as a conflict copy. */
async function conflictKept (ctx: FaultContext, d: Drive, versions: string[]): Promise<void> {
  const names = readdirSync(d.mnt)
  const copies = names.filter(n => /^shared \(conflict from .+\)\.txt$/.test(n))
  ctx.check(copies.length === 1, `expected one conflict copy of shared.txt, found: ${names.join(', ')}`)
  const got = [await sha(`${d.mnt}/shared.txt`), await sha(`${d.mnt}/${copies[0] as string}`)].sort()
  ctx.check(JSON.stringify(got) === JSON.stringify([...versions].sort()), 'the conflict copy and the file do not hold both sides\' versions')
}

const partitionThenHeal: Scenario = {
  name: 'network-partition-then-heal',
  injects: 'a partition (the proxy drops and refuses every connection) of 15 s in --quick, 2-3 minutes in the full run, with edits on both sides including one file: heal, converge, a conflict copy keeps both versions',
  timeoutMs: 480_000,
  run: async ctx => {
    const { a, b, proxy, aId } = await proxiedPair(ctx)
    await connected(ctx, b, aId)
    await writeRandom(`${a.mnt}/shared.txt`, 3000)
    ctx.check(await until(same(a, b), 60_000), 'A and B did not converge before the partition')
    const ms = ctx.quick ? 15_000 : ctx.rng.int(120, 180) * 1000
    proxy.partition()
    const started = Date.now()
    ctx.check(await until(async () => ((await status(b)).sync.peers as string[]).length === 0, 30_000), 'B still has a session with A after the partition')
    ctx.log(`partitioned for ${ms / 1000} s`)
    const at = (f: number): Promise<void> => new Promise(resolve => setTimeout(resolve, Math.max(0, started + f * ms - Date.now())))
    await at(ctx.rng.next() * 0.3)
    const onA = await overwriteRandom(`${a.mnt}/shared.txt`, 2000)
    await writeRandom(`${a.mnt}/only-a.bin`, ctx.rng.int(1, 3 * MiB))
    await at(0.3 + ctx.rng.next() * 0.3)
    const onB = await overwriteRandom(`${b.mnt}/shared.txt`, 2500)
    await writeRandom(`${b.mnt}/only-b.bin`, ctx.rng.int(1, 3 * MiB))
    await at(1)
    ctx.check(proxy.stats.refused > 0 || !ctx.quick, 'B never tried to reconnect during the partition')
    proxy.heal()
    if (!await until(same(a, b), 120_000)) {
      const sb = (await status(b)).sync
      ctx.fail(`A and B did not converge within 120 s after the partition healed (B's sessions: ${JSON.stringify(sb.peers)}, apply: ${JSON.stringify(sb.apply)}, proxy: ${JSON.stringify(proxy.stats)}; A: ${readdirSync(a.mnt).join(', ')}; B: ${readdirSync(b.mnt).join(', ')})`)
    }
    await conflictKept(ctx, a, [onA, onB])
    await fsckClean(ctx, a, 'A')
    await fsckClean(ctx, b, 'B')
  }
}

export const networkScenarios: Scenario[] = [peerKilledMidTransfer, connectionCutRepeatedly, partitionThenHeal]
