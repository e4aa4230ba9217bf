/**
 * The attacks of the hostile device (hostile-peer.ts): each misbehaves on the real protocols
 * against one honest daemon (`target`) and returns what it did and saw, for the scenario to judge
 * against the daemon's own report (`strata status --json`).
 */
import { randomBytes } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection, PrivateKey, Stream } from '@libp2p/interface'
import type { Strata } from '../../daemon/strata.js'
import type { SyncNode } from '../../daemon/sync.js'
import { createStrataNode, type StrataNode } from '../../net/node.js'
import { BLOCKS_PROTOCOL, BLOCKS_MAX_INBOUND_STREAMS, BLOCKS_MAX_OUTBOUND_STREAMS } from '../../net/constants.js'
import { MAX_REQUEST_BYTES, STATUS_BLOCK, decodeRequest, encodeReply } from '../../net/block-messages.js'
import { FrameReader, encodeVarint, writeFrame } from '../../net/wire.js'
import { frames, type Frames } from '../../net/log/frames.js'
import {
  LOG_PROTOCOL, decodeEntry, encodeEntry, encodeMessage, entryHash, openPayload, sealPayload, signEntry,
  type DeviceList, type HeadRef, type LogStore, type Message
} from '../../net/log/index.js'

export interface HostileKit {
  strata: Strata
  node: StrataNode
  peerId: string
  privateKey: PrivateKey
  /** Absent for a device of no team. */
  devices?: DeviceList
  logs?: LogStore
  /** The honest daemon: a multiaddr with /p2p/<id>. */
  target: string
  /** The daemon's sync stack, for the modes that take part in sync. */
  sync?: SyncNode
}

export type Attack = (k: HostileKit) => Promise<Record<string, unknown>>

const wait = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const errName = (err: unknown): string => (err as Error)?.name ?? String(err)

function team (k: HostileKit): { devices: DeviceList, logs: LogStore } {
  if (k.devices === undefined || k.logs === undefined) throw new Error('this attack needs an enrolled data dir (strata join)')
  return { devices: k.devices, logs: k.logs }
}

/** How the honest side ended a stream we abused, within `ms`: 'reset', 'closed' or 'still-open'. */
async function ending (stream: Stream, ms: number): Promise<string> {
  if (stream.status !== 'open') return stream.status
  return await new Promise(resolve => {
    const timer = setTimeout(() => { resolve('still-open') }, ms)
    stream.addEventListener('close', evt => { clearTimeout(timer); resolve(evt.error != null ? 'reset' : 'closed') }, { once: true })
  })
}

async function dialTarget (k: HostileKit, force = false): Promise<Connection> {
  return await k.node.dial(multiaddr(k.target), { signal: AbortSignal.timeout(15_000), force })
}

// --- unenrolled ------------------------------------------------------------------------------

/** A device of another team dials three times and tries to open the sync protocols. */
const unenrolled: Attack = async k => {
  const outcomes: string[] = []
  for (let i = 0; i < 3; i++) {
    let conn: Connection
    try {
      conn = await dialTarget(k, true)
    } catch (err) { outcomes.push(`dial failed: ${errName(err)}`); continue }
    for (const protocol of [LOG_PROTOCOL, BLOCKS_PROTOCOL]) {
      try {
        const s = await conn.newStream(protocol, { signal: AbortSignal.timeout(10_000) })
        outcomes.push(`stream opened: ${protocol}`)
        s.abort(new Error('done'))
      } catch (err) { outcomes.push(`stream refused: ${errName(err)}`) }
    }
    await conn.close().catch(() => {})
  }
  return { outcomes, opened: outcomes.filter(o => o.startsWith('stream opened')).length }
}

// --- tampered blocks -------------------------------------------------------------------------

/** Takes part in sync, but answers every block request with random bytes. */
const tamperedBlocks: Attack = async k => {
  let served = 0
  await k.node.unhandle(BLOCKS_PROTOCOL)
  await k.node.handle(BLOCKS_PROTOCOL, async stream => {
    const reader = new FrameReader(stream, { maxMessageBytes: MAX_REQUEST_BYTES })
    try {
      while (true) {
        const msg = await reader.read()
        if (msg == null) break
        for (const id of decodeRequest(msg)) {
          await writeFrame(stream, encodeReply({ status: STATUS_BLOCK, id, bytes: randomBytes(64 * 1024) }))
          served++
        }
      }
      await stream.close()
    } catch (err) {
      stream.abort(err as Error)
    } finally {
      reader.detach()
    }
  }, { maxInboundStreams: BLOCKS_MAX_INBOUND_STREAMS, maxOutboundStreams: BLOCKS_MAX_OUTBOUND_STREAMS })
  setInterval(() => { process.stdout.write(JSON.stringify({ progress: { served, applied: k.sync?.service.status().entriesApplied ?? 0 } }) + '\n') }, 500).unref()
  return { tampering: true }
}

// --- a hostile log-sync peer -----------------------------------------------------------------

/**
 * Serve `/strata/log/1` with crafted answers, open a session to the target claiming `heads`,
 * and collect the gets it sends us. `answer` builds the entries for each get.
 */
class LogPeer {
  readonly gets: Array<Extract<Message, { type: 'get' }>> = []
  private session: Frames | undefined

  constructor (private readonly k: HostileKit, private readonly answer: (get: Extract<Message, { type: 'get' }>) => Promise<Uint8Array[]>) {}

  async start (heads: HeadRef[]): Promise<void> {
    const { devices } = team(this.k)
    await this.k.node.handle(LOG_PROTOCOL, async stream => {
      const f = frames(stream)
      try {
        const m = await f.read()
        if (m.type === 'get') {
          this.gets.push(m)
          for (const bytes of await this.answer(m)) await f.write({ type: 'entry', bytes })
          await f.write({ type: 'end' })
          await stream.close()
          return
        }
        while (true) await f.read() // the target's session: hello, notifications
      } catch (err) { stream.abort(err as Error) }
    }, { maxInboundStreams: 64, maxOutboundStreams: 64 })
    const conn = await dialTarget(this.k)
    const stream = await conn.newStream(LOG_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
    this.session = frames(stream)
    await this.session.write({ type: 'hello', team: devices.teamId, records: devices.records(), heads })
  }

  async notify (h: HeadRef): Promise<void> {
    await this.session?.write({ type: 'notify', ...h })
  }

  /** Wait until `n` gets arrived (bounded), then a little more for the target to judge them. */
  async served (n: number, ms = 30_000): Promise<boolean> {
    const end = Date.now() + ms
    while (this.gets.length < n && Date.now() < end) await wait(100)
    await wait(1000)
    return this.gets.length >= n
  }
}

/** The log of another member with the most entries here, and our own. */
function logsHeld (k: HostileKit): { ns: string, other: HeadRef, own: HeadRef | undefined } {
  const { logs } = team(k)
  const ns = k.strata.vol.rootNamespace
  const heads = logs.allHeads().filter(h => h.ns === ns)
  const other = heads.filter(h => h.device !== k.peerId).sort((a, b) => b.seq - a.seq)[0]
  if (other === undefined) throw new Error('this device holds no other device\'s log to replay')
  return { ns, other, own: heads.find(h => h.device === k.peerId) }
}

/** Claims to be ahead on logs, then answers each get with old entries it captured earlier. */
const replayedEntries: Attack = async k => {
  const { logs } = team(k)
  const { ns, other, own } = logsHeld(k)
  const claimed: HeadRef[] = [{ ns, device: other.device, seq: other.seq + 100 }]
  if (own !== undefined) claimed.push({ ns, device: k.peerId, seq: own.seq + 100 })
  let replayed = 0
  const peer = new LogPeer(k, async get => {
    // Old entries of the log asked for, and one of another log.
    const old = await logs.range(ns, get.device, 1, Math.min(8, get.from - 1))
    const stray = await logs.range(ns, get.device === other.device ? (own?.device ?? other.device) : other.device, 1, 1)
    replayed += old.length + stray.length
    return [...old, ...stray]
  })
  await peer.start(claimed)
  const ok = await peer.served(claimed.length)
  return { gets: peer.gets.length, allServed: ok, replayed, logs: claimed.map(h => h.device) }
}

/** Two different entries with one sequence number on its own log, twice. */
const forkedLog: Attack = async k => {
  const { devices, logs } = team(k)
  const { ns, own } = logsHeld(k)
  if (own === undefined) throw new Error('this device has no log of its own to fork (write something while it runs as a daemon)')
  const [lastBytes] = await logs.range(ns, k.peerId, own.seq, 1)
  if (lastBytes === undefined) throw new Error('own head entry missing')
  const last = decodeEntry(lastBytes)
  const key = (await k.strata.vol.meta.nsKeys(ns)).log
  const plain = openPayload(key, { ns, device: k.peerId, seq: own.seq }, last.payload)
  const forge = async (seq: number, prev: Uint8Array): Promise<Uint8Array> => encodeEntry(await signEntry(k.privateKey, devices.teamId, {
    ns, device: k.peerId, seq, prev, time: Date.now(), payload: sealPayload(key, { ns, device: k.peerId, seq }, plain)
  }))
  const seq = own.seq + 1
  const first = await forge(seq, entryHash(lastBytes))
  const second = await forge(seq, entryHash(lastBytes))
  const third = await forge(seq, entryHash(lastBytes))
  const next = await forge(seq + 1, entryHash(third))
  const answers = [[first, second], [third, next]]
  const peer = new LogPeer(k, async () => answers.shift() ?? [])
  await peer.start([{ ns, device: k.peerId, seq }])
  const round1 = await peer.served(1)
  await peer.notify({ ns, device: k.peerId, seq: seq + 1 })
  const round2 = await peer.served(2)
  return { forkedSeq: seq, gets: peer.gets.length, round1, round2, entries: { first: Buffer.from(entryHash(first)).toString('hex') } }
}

// --- malformed and oversized -----------------------------------------------------------------

function malformedCases (teamless: Uint8Array): Record<string, Uint8Array[]> {
  const frame = (body: Uint8Array): Uint8Array => Buffer.concat([encodeVarint(body.byteLength), body])
  return {
    oversized: [encodeVarint(64 * 1024 * 1024), randomBytes(256 * 1024)],
    'length-prefix-too-long': [Buffer.alloc(10, 0xff)],
    random: [randomBytes(8 * 1024)],
    truncated: [encodeVarint(200), randomBytes(100)],
    'unknown-type': [frame(Buffer.concat([Uint8Array.of(0x7f), randomBytes(40)]))],
    'wrong-team-hello': [frame(encodeMessage({ type: 'hello', team: teamless, records: [], heads: [] }))],
    silent: []
  }
}

/** Each case on each protocol on its own stream; ends write after sending; waits for the target to end it. */
const malformed: Attack = async k => {
  const conn = await dialTarget(k)
  const cases = malformedCases(randomBytes(16))
  const runs: Array<Promise<[string, string]>> = []
  for (const protocol of [LOG_PROTOCOL, BLOCKS_PROTOCOL]) {
    for (const [name, chunks] of Object.entries(cases)) {
      if (protocol === BLOCKS_PROTOCOL && name === 'wrong-team-hello') continue
      runs.push((async (): Promise<[string, string]> => {
        const label = `${protocol} ${name}`
        try {
          const s = await conn.newStream(protocol, { signal: AbortSignal.timeout(10_000) })
          for (const c of chunks) if (!s.send(c)) await s.onDrain({ signal: AbortSignal.timeout(10_000) }).catch(() => {})
          if (name === 'truncated') await s.close({ signal: AbortSignal.timeout(5000) }).catch(() => {})
          return [label, await ending(s, 20_000)]
        } catch (err) { return [label, `refused: ${errName(err)}`] }
      })())
    }
  }
  const outcomes = Object.fromEntries(await Promise.all(runs))
  return { outcomes, stillOpen: Object.entries(outcomes).filter(([, v]) => v === 'still-open').map(([n]) => n) }
}

// --- stream and connection flood -------------------------------------------------------------

async function openMany (conn: Connection, protocol: string, n: number): Promise<{ opened: Stream[], refused: number }> {
  const r = await Promise.allSettled(Array.from({ length: n }, async () => await conn.newStream(protocol, { signal: AbortSignal.timeout(15_000) })))
  const opened = r.flatMap(x => x.status === 'fulfilled' ? [x.value] : [])
  return { opened, refused: n - opened.length }
}

async function sequential<T> (n: number, fn: () => Promise<T>): Promise<T[]> {
  const out: T[] = []
  for (let i = 0; i < n; i++) out.push(await fn())
  return out
}

/** Hundreds of streams on one connection, many more connections, and strangers' connections. */
const streamFlood: Attack = async k => {
  const conn = await dialTarget(k)
  const log = await openMany(conn, LOG_PROTOCOL, 300)
  const blocks = await openMany(conn, BLOCKS_PROTOCOL, 100)
  const extra: Connection[] = []
  let extraFailed = 0
  for (let i = 0; i < 30; i++) {
    try { extra.push(await dialTarget(k, true)) } catch { extraFailed++ }
  }
  const more = await Promise.all(extra.map(async c => await openMany(c, LOG_PROTOCOL, 20)))
  // The strangers come after a pause and one by one: libp2p's per-host inbound rate limit
  // (a few connections a second) would otherwise drop them at TCP accept, before Noise, and the
  // gater that counts refused peers would never see them.
  await wait(1500)
  const strangers = await sequential(8, async () => {
    await wait(300)
    const key = await generateKeyPair('Ed25519')
    const n = await createStrataNode({ privateKey: key, listen: [], mdns: false, allowPeer: () => true })
    // Noise lets the dialer finish its handshake before the target's gater decides, so a
    // dial may resolve: admitted means a protocol stream actually opened.
    try {
      const c = await n.dial(multiaddr(k.target), { signal: AbortSignal.timeout(10_000) })
      await c.newStream(LOG_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
      return 'admitted'
    } catch { return 'refused' } finally { await n.stop() }
  })
  // Hold everything past the target's first-message timeout, then see what it left open.
  await wait(12_000)
  const stillOpen = [...log.opened, ...blocks.opened, ...more.flatMap(m => m.opened)].filter(s => s.status === 'open').length
  for (const c of [conn, ...extra]) await c.close().catch(() => {})
  return {
    logStreams: { opened: log.opened.length, refused: log.refused },
    blockStreams: { opened: blocks.opened.length, refused: blocks.refused },
    connections: { opened: extra.length, failed: extraFailed, streamsOpened: more.reduce((a, m) => a + m.opened.length, 0) },
    strangers: { admitted: strangers.filter(s => s === 'admitted').length, refused: strangers.filter(s => s === 'refused').length },
    stillOpenAfterTimeout: stillOpen
  }
}

export const ATTACKS: Record<string, Attack> = {
  unenrolled,
  'tampered-blocks': tamperedBlocks,
  'replayed-entries': replayedEntries,
  'forked-log': forkedLog,
  malformed,
  'stream-flood': streamFlood
}
