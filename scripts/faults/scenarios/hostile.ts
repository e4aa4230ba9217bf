/**
 * Hostile peers against a real daemon (B) that also syncs with an honest device (A). The hostile
 * device is a real data dir — enrolled with `strata join`, or of another team — driven by
 * scripts/faults/hostile-peer.ts instead of the daemon. Each scenario checks that B rejects and
 * reports it (`strata status --json`), keeps serving A, and stays within a memory bound.
 *
 * Each needs three enrolled drives (30-45 s here), so `--quick` (in `npm test`) runs only the
 * tampered-block and replay scenarios; the unenrolled, fork, malformed and flood attacks run in
 * the full run, and npm test covers them at protocol level (net-*.test.ts, sync-daemon.test.ts).
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { strata as strataCli, treeHash, type Drive } from '../../../test/helpers/mount.js'
import { firstDrive, ok, status, until } from '../../../test/helpers/team.js'
import type { FaultContext, Scenario } from '../harness.js'
import { address, alive, fsckClean, hostile, joinWith, rss, sha, stillSyncing, writeRandom } from '../team-faults.js'

const MiB = 1024 * 1024
/**
 * Growth of B's resident memory an attack may cause at most. Measured from just after the
 * attack until B has synced again (for tampered blocks: fetched and read a 12 MiB file), so it
 * includes the daemon's bounded caches filling: the block cache (32 MiB of plaintext), the
 * buffer pool's free list (16 blocks), LevelDB's block cache and memtable (12 MiB). Those alone
 * are ~60 MiB; what the bound is for is growth without a bound (per block or per message of
 * the attack). Measured for tampered blocks on 2026-12-03: 41–61 MiB at c3a778a, 52–80 MiB at
 * the next session's code.
 */
const RSS_BOUND = 96 * MiB

interface Trio { a: Drive, b: Drive, bAddr: string, hDir: string, hId: string }

/**
 * A and B, and an enrolled device H (invited by B) that ran as a daemon (so it holds A's log and,
 * with `hWrites`, entries of its own that B accepted), then stopped: its data dir is the
 * hostile tool's.
 */
async function trio (ctx: FaultContext, hWrites = false): Promise<Trio> {
  const a = await firstDrive(ctx)
  const b = await joinWith(ctx, a, 'b')
  const bAddr = (await address(b)).addr
  const h = await joinWith(ctx, b, 'hostile')
  const hId = (await address(h)).id
  await writeRandom(`${a.mnt}/from-a.bin`, 200_000)
  if (hWrites) {
    const want = await writeRandom(`${h.mnt}/from-h.bin`, 100_000)
    ctx.check(await until(async () => await sha(`${b.mnt}/from-h.bin`) === want, 60_000), 'B did not get H\'s file while H was honest')
  }
  ctx.check(await until(async () => await sha(`${h.mnt}/from-a.bin`) === await sha(`${a.mnt}/from-a.bin`), 60_000), 'H did not sync A\'s file while honest')
  await h.unmount()
  return { a, b, bAddr, hDir: h.dataDir, hId }
}

async function syncStatus (d: Drive): Promise<any> { return (await status(d)).sync }

/** B is alive, still syncs with A, and its memory grew less than the bound. */
async function stillServing (ctx: FaultContext, t: { a: Drive, b: Drive }, rssBefore: number, label: string): Promise<void> {
  const pid = t.b.pid() ?? ctx.fail('no daemon pid for B')
  ctx.check(alive(pid), `B's daemon died under ${label}`)
  await stillSyncing(ctx, t.a, t.b, label)
  const grew = rss(pid) - rssBefore
  ctx.log(`B's RSS grew by ${(grew / MiB).toFixed(1)} MiB`)
  ctx.check(grew < RSS_BOUND, `B's memory grew by ${(grew / MiB).toFixed(0)} MiB under ${label} (bound ${RSS_BOUND / MiB} MiB)`)
}

function problemsFrom (s: any, peer: string, kind: string): any[] {
  return (s.logProblems as any[]).filter(p => p.from === peer && p.kind === kind)
}

const unenrolledDevice: Scenario = {
  name: 'hostile-unenrolled-device',
  slow: true,
  injects: 'a device of another team (its own token and TEK) dials the daemon: closed after Noise before any protocol, reported in status.sync.refusedPeers',
  run: async ctx => {
    const a = await firstDrive(ctx)
    const b = await joinWith(ctx, a, 'b')
    const bAddr = (await address(b)).addr
    const xDir = `${ctx.tmp()}/x`
    await ok(['init', '--data', xDir])
    const before = rss(b.pid() ?? ctx.fail('no pid for B'))
    const x = hostile(ctx, xDir, bAddr, 'unenrolled')
    const xId = await x.peer
    const r = await x.result
    ctx.log(`outcomes: ${JSON.stringify(r.outcomes)}`)
    ctx.check(r.opened === 0, `a device of another team opened a protocol stream: ${JSON.stringify(r.outcomes)}`)
    const refused = (await syncStatus(b)).refusedPeers
    ctx.check(refused.count >= 1 && (refused.recent as any[]).some(p => p.peer === xId), `B's status does not report the refused device: ${JSON.stringify(refused)}`)
    await stillServing(ctx, { a, b }, before, 'an unenrolled device')
  }
}

const tamperedBlocks: Scenario = {
  name: 'hostile-tampered-blocks',
  injects: 'an enrolled device relays a file\'s log entry but serves random bytes for its blocks while the honest author is offline: rejected by hash, counted in status.sync.blocks.tampered; the data arrives intact once the author is back',
  run: async ctx => {
    const t = await trio(ctx)
    const aAddr = (await address(t.a)).addr
    // B offline while A writes; H (which takes part in sync) gets the entry and the real blocks.
    await t.b.unmount()
    const h = hostile(ctx, t.hDir, t.bAddr, 'tampered-blocks', { stay: true, also: [aAddr] })
    await h.result
    const applied0 = h.progress()?.applied ?? 0
    const want = await writeRandom(`${t.a.mnt}/big.bin`, (ctx.quick ? 6 : 12) * MiB)
    ctx.check(await until(async () => (h.progress()?.applied ?? 0) > applied0, 60_000), 'the hostile device did not get A\'s change')
    // Now only H can serve the blocks B needs: B must refuse every one of them.
    await t.a.unmount()
    await t.b.mount()
    if (!await until(async () => (await syncStatus(t.b)).blocks.tampered >= 1, 90_000)) {
      // A flake seen in ~1 of 5 full runs before session 8. The cause, reproduced by binding B's
      // port while B was offline: B's remembered listen port was taken, so B listens elsewhere,
      // H (which knows only B's old address) cannot reach it, and B did not know H's. B now
      // dials the address H announced by identify (net/peer-addresses.ts). Say what B saw.
      const s = await syncStatus(t.b)
      const portLine = readFileSync(join(t.b.dataDir, 'strata.log'), 'utf8').split('\n').find(l => l.includes('remembered listen port is taken')) ?? 'no "port taken" line in B\'s log'
      ctx.fail(`B never got a tampered block from the hostile device: the fault was not exercised (B listens on ${JSON.stringify(s.addresses)}, H dialled ${t.bAddr}; B's peers ${JSON.stringify(s.peers)}; H is ${await h.peer}; ${portLine})`)
    }
    ctx.check(await sha(`${t.b.mnt}/big.bin`) === undefined, 'B shows the file before any intact copy of its blocks was available')
    const before = rss(t.b.pid() ?? ctx.fail('no pid for B'))
    await t.a.mount()
    ctx.check(await until(async () => await sha(`${t.b.mnt}/big.bin`) === want, 120_000), 'B did not get the right bytes of A\'s file once A was back')
    const blocks = (await syncStatus(t.b)).blocks
    ctx.log(`B's block stats: ${JSON.stringify(blocks)}; the hostile device served ${String(h.progress()?.served)} forged blocks`)
    await fsckClean(ctx, t.b, 'B')
    await stillServing(ctx, t, before, 'tampered blocks')
  }
}

const replayedEntries: Scenario = {
  name: 'hostile-replayed-log-entries',
  injects: 'an enrolled device claims newer log heads and answers with old signed entries (its own and another device\'s) and entries of a log not asked for: rejected as replay/unexpected, reported in status.sync.logProblems, nothing applied',
  run: async ctx => {
    const t = await trio(ctx, true)
    const tree = await treeHash(t.b.mnt)
    const before = rss(t.b.pid() ?? ctx.fail('no pid for B'))
    const r = await hostile(ctx, t.hDir, t.bAddr, 'replayed-entries').result
    ctx.log(`hostile: ${JSON.stringify(r)}`)
    ctx.check(r.gets >= 2, `B asked the hostile device for ${String(r.gets)} log ranges, expected 2`)
    const s = await syncStatus(t.b)
    ctx.check(problemsFrom(s, t.hId, 'replay').length >= 2, `B did not report the replayed entries: ${JSON.stringify(s.logProblems)}`)
    ctx.check(problemsFrom(s, t.hId, 'unexpected').length >= 1, `B did not report the entries of a log it did not ask for: ${JSON.stringify(s.logProblems)}`)
    ctx.check(await treeHash(t.b.mnt) === tree, 'B\'s tree changed after the replay')
    await stillServing(ctx, t, before, 'replayed entries')
  }
}

const forkedLog: Scenario = {
  name: 'hostile-forked-log',
  slow: true,
  injects: 'an enrolled device signs different entries with one sequence number (in one answer, and again after the first was accepted): fork rejected, reported in status.sync.logProblems, never applied',
  run: async ctx => {
    const t = await trio(ctx, true)
    const tree = await treeHash(t.b.mnt)
    const before = rss(t.b.pid() ?? ctx.fail('no pid for B'))
    const r = await hostile(ctx, t.hDir, t.bAddr, 'forked-log').result
    ctx.log(`hostile: ${JSON.stringify(r)}`)
    ctx.check(r.round1 === true && r.round2 === true, `B did not ask for the forked log twice: ${JSON.stringify(r)}`)
    const s = await syncStatus(t.b)
    const forks = problemsFrom(s, t.hId, 'fork')
    ctx.check(forks.length >= 2 && forks.every(p => p.seq === r.forkedSeq), `B did not report both forks at seq ${String(r.forkedSeq)}: ${JSON.stringify(s.logProblems)}`)
    ctx.check(problemsFrom(s, t.hId, 'chain').length >= 1, 'B did not reject the entry built on the losing fork')
    ctx.check(await treeHash(t.b.mnt) === tree, 'B\'s tree changed after the fork')
    await fsckClean(ctx, t.b, 'B')
    await stillServing(ctx, t, before, 'a forked log')
  }
}

const malformedAndOversized: Scenario = {
  name: 'hostile-malformed-and-oversized',
  slow: true,
  injects: 'an enrolled device sends oversized frames, over-long length prefixes, random bytes, truncated and unknown messages, a wrong-team hello and silence on /strata/log/1 and /strata/blocks/1: each stream closed with an error and counted, the daemon alive',
  run: async ctx => {
    const t = await trio(ctx)
    const s0 = await syncStatus(t.b)
    const before = rss(t.b.pid() ?? ctx.fail('no pid for B'))
    const r = await hostile(ctx, t.hDir, t.bAddr, 'malformed').result
    ctx.log(`outcomes: ${JSON.stringify(r.outcomes)}`)
    ctx.check((r.stillOpen as string[]).length === 0, `B left these streams open: ${(r.stillOpen as string[]).join(', ')}`)
    const s1 = await syncStatus(t.b)
    const logErrors = s1.log.protocolErrors - s0.log.protocolErrors
    const badStreams = s1.blocks.badStreams - s0.blocks.badStreams
    ctx.log(`counted: ${logErrors} log protocol errors, ${badStreams} bad block streams`)
    ctx.check(logErrors >= 5, `B counted only ${logErrors} log-sync protocol errors for 7 hostile streams`)
    ctx.check(badStreams >= 4, `B counted only ${badStreams} bad block streams for 6 hostile streams`)
    await stillServing(ctx, t, before, 'malformed messages')
  }
}

const streamFlood: Scenario = {
  name: 'hostile-stream-flood',
  slow: true,
  injects: 'an enrolled device opens 400 streams on one connection and 30 more connections with 20 streams each, and 8 strangers connect: refused beyond the limits, idle streams closed, the daemon keeps serving with bounded memory',
  run: async ctx => {
    const t = await trio(ctx)
    const pid = t.b.pid() ?? ctx.fail('no pid for B')
    const before = rss(pid)
    const h = hostile(ctx, t.hDir, t.bAddr, 'stream-flood')
    await h.peer
    // A change made while the flood is on must still arrive.
    await new Promise(resolve => setTimeout(resolve, 3000))
    await stillSyncing(ctx, t.a, t.b, 'the flood (during)')
    const r = await h.result
    ctx.log(`hostile: ${JSON.stringify(r)}`)
    ctx.check(r.strangers.admitted === 0, `${String(r.strangers.admitted)} devices of no team were admitted`)
    ctx.check(r.stillOpenAfterTimeout <= 8, `B kept ${String(r.stillOpenAfterTimeout)} idle streams open past its first-message timeout`)
    const s = await syncStatus(t.b)
    ctx.check(s.refusedPeers.count >= 1, 'B\'s status reports no refused peer after 8 strangers connected')
    ctx.log(`B refused ${String(s.refusedPeers.count)} connections of strangers; log protocol errors ${String(s.log.protocolErrors)}`)
    await stillServing(ctx, t, before, 'a stream flood')
    const r2 = await strataCli(['status', '--data', t.b.dataDir])
    ctx.check(r2.code === 0, 'B does not answer status after the flood')
  }
}

export const hostileScenarios: Scenario[] = [unenrolledDevice, tamperedBlocks, replayedEntries, forkedLog, malformedAndOversized, streamFlood]
