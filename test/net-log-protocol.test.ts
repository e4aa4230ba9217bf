/**
 * The log-sync protocol between real libp2p nodes (TCP + Noise + yamux on 127.0.0.1): catch-up
 * after being offline, push notifications, relay across three devices, hostile streams.
 */
import '../net/shim.js'
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { ClassicLevel } from 'classic-level'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { DeviceList, LogStore, LOG_PROTOCOL, logSync, logSyncForNode, newTeamId, encodeMessage } from '../net/log/index.js'
import type { AcceptedEntry, LogSync, LogSyncInit } from '../net/log/index.js'

const NS = 'ns0'
const logKey = new Uint8Array(32).fill(3)
const keyFor = async (): Promise<Uint8Array> => logKey
const text = (s: string): Uint8Array => new TextEncoder().encode(s)
const str = (b: Uint8Array): string => new TextDecoder().decode(b)

interface Dev { key: PrivateKey, id: string, devices: DeviceList, logs: LogStore, node: Libp2p, sync: LogSync }

async function device (t: Test, teamId: Uint8Array, founder: string | undefined, options: { attach?: boolean, init?: LogSyncInit } = {}): Promise<Dev> {
  const key = await generateKeyPair('Ed25519')
  const id = peerIdFromPrivateKey(key).toString()
  const dir = mkdtempSync(join(tmpdir(), 'strata-netlogp-'))
  const db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' })
  const devices = new DeviceList({ db: db.sublevel<string, Uint8Array>('dev', { valueEncoding: 'view' }), privateKey: key }, { teamId, founder: founder ?? id })
  await devices.open()
  const logs = new LogStore({ db: db.sublevel<string, Uint8Array>('log', { valueEncoding: 'view' }), privateKey: key, devices, keyFor })
  await logs.open()
  const base = { privateKey: key, addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] }
  let node: Libp2p
  let sync: LogSync
  if (options.attach === true) {
    // the way the daemon can attach it to net/node.ts's node: after start
    node = await createLibp2p(base)
    sync = logSyncForNode(node, { logs, devices }, options.init)
    await sync.start()
  } else {
    const n = await createLibp2p({ ...base, services: { logSync: logSync({ logs, devices }, options.init) } })
    node = n
    sync = n.services.logSync
  }
  t.teardown(async () => {
    await sync.stop()
    await node.stop()
    await db.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return { key, id, devices, logs, node, sync }
}

/** A team of n devices that all know the full device list. */
async function team (t: Test, n: number, attachAt = -1, init?: LogSyncInit): Promise<Dev[]> {
  const teamId = newTeamId()
  const first = await device(t, teamId, undefined, { attach: attachAt === 0, init })
  await first.devices.found({ name: 'd0' })
  const devs = [first]
  for (let i = 1; i < n; i++) {
    const d = await device(t, teamId, first.id, { attach: attachAt === i, init })
    await first.devices.add({ device: d.id, name: `d${i}` })
    devs.push(d)
  }
  for (const d of devs.slice(1)) await d.devices.merge(first.devices.records())
  return devs
}

/** Resolves once `count` entries of `from`'s log were accepted by `dev` (event-driven, no polling). */
async function acceptedFrom (dev: Dev, device: string, count: number): Promise<AcceptedEntry[]> {
  return await new Promise(resolve => {
    const got: AcceptedEntry[] = []
    const on = (evt: CustomEvent<{ ns: string, entries: AcceptedEntry[] }>): void => {
      for (const e of evt.detail.entries) if (e.device === device) got.push(e)
      if (got.length >= count) { dev.sync.removeEventListener('accepted', on); resolve(got) }
    }
    dev.sync.addEventListener('accepted', on)
  })
}

async function connect (a: Dev, b: Dev): Promise<void> {
  const addr = b.node.getMultiaddrs()[0]
  if (addr === undefined) throw new Error('no listen address')
  await a.node.dial(addr)
}

/** Resolves with the next protocol error `dev` reports. */
async function protocolError (dev: Dev): Promise<{ peer: string, error: Error }> {
  return await new Promise(resolve => {
    dev.sync.addEventListener('protocol-error', evt => { resolve(evt.detail) }, { once: true })
  })
}

/** Resolves when a stream closes (any reason). */
async function closed (stream: Stream): Promise<void> {
  if (stream.status === 'closed' || stream.status === 'aborted' || stream.status === 'reset') return
  await new Promise<void>(resolve => { stream.addEventListener('close', () => { resolve() }, { once: true }) })
}

t.test('a push notification brings an append on A to B at once', async t => {
  const [a, b] = await team(t, 2) as [Dev, Dev]
  const first = acceptedFrom(b, a.id, 1)
  await a.logs.append(NS, text('before connecting'))
  await connect(a, b)
  t.same((await first).map(e => str(e.payload)), ['before connecting'], 'hello heads trigger a fetch')
  for (let i = 0; i < 3; i++) {
    const next = acceptedFrom(b, a.id, 1)
    const { entry } = await a.logs.append(NS, text(`live ${i}`))
    const [got] = await next
    t.equal(got?.seq, entry.seq)
    t.equal(str(got?.payload ?? new Uint8Array()), `live ${i}`)
  }
  // and the other way round over the same connection
  const back = acceptedFrom(a, b.id, 1)
  await b.logs.append(NS, text('from b'))
  t.equal(str((await back)[0]?.payload ?? new Uint8Array()), 'from b')
  t.ok(a.sync.stats().notifiesSent >= 3)
  t.ok(b.sync.stats().notifiesReceived >= 3)
  t.equal(b.devices.lastSeen(a.id) !== undefined, true, 'contact updates last seen')
})

t.test('catch-up of 500 entries after being offline', async t => {
  const [a, b] = await team(t, 2) as [Dev, Dev]
  await connect(a, b)
  const one = acceptedFrom(b, a.id, 1)
  await a.logs.append(NS, text('e1'))
  await one
  await a.node.hangUp(b.node.peerId)
  for (let i = 2; i <= 501; i++) await a.logs.append(NS, text(`e${i}`))
  t.same(b.logs.heads(NS), { [a.id]: 1 }, 'B was offline')
  const rest = acceptedFrom(b, a.id, 500)
  const fetchesBefore = b.sync.stats().fetches
  await connect(b, a)
  const got = await rest
  t.same(got.map(e => e.seq), Array.from({ length: 500 }, (_, i) => i + 2), 'in log order')
  t.equal(got.every(e => str(e.payload) === `e${e.seq}`), true, 'payloads decrypted')
  t.same(b.logs.heads(NS), { [a.id]: 501 })
  t.same(b.logs.head(NS, a.id)?.hash, a.logs.head(NS, a.id)?.hash)
  t.ok(b.sync.stats().fetches - fetchesBefore >= 4, 'in batches (128 per fetch)')
  t.same(b.logs.problems(), [])
})

t.test('three devices relay: A → B → C without a connection between A and C', async t => {
  const [a, b, c] = await team(t, 3, 1) as [Dev, Dev, Dev]
  await connect(a, b)
  await connect(c, b)
  t.equal(a.node.getConnections(c.node.peerId).length, 0)
  const atC = acceptedFrom(c, a.id, 2)
  await a.logs.append(NS, text('one'))
  await a.logs.append(NS, text('two'))
  t.same((await atC).map(e => str(e.payload)), ['one', 'two'])
  t.same(c.logs.head(NS, a.id)?.hash, a.logs.head(NS, a.id)?.hash)
})

t.test('hostile streams are aborted and logged; the node keeps serving', async t => {
  const [a, b] = await team(t, 2, -1, { helloTimeoutMs: 300 }) as [Dev, Dev]
  const stranger = (await team(t, 1))[0] as Dev
  await connect(a, b)
  const warm = acceptedFrom(b, a.id, 1)
  await a.logs.append(NS, text('warm'))
  await warm
  const addr = b.node.getMultiaddrs()[0]
  if (addr === undefined) throw new Error('no address')
  const hostile: Array<{ why: string, bytes: Uint8Array, error: string }> = [
    { why: 'unknown message type', bytes: lp(Uint8Array.of(0xee, 1, 2, 3)), error: 'MalformedError' },
    { why: 'a frame length beyond the limit', bytes: varint(16 * 1024 * 1024), error: 'InvalidDataLengthError' },
    { why: 'a frame length with too many varint bytes', bytes: Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x0f), error: 'InvalidDataLengthLengthError' },
    { why: 'an entry frame opening a stream', bytes: lp(encodeMessage({ type: 'entry', bytes: randomBytes(100) })), error: 'ProtocolError' },
    { why: 'a hello of another team', bytes: lp(encodeMessage({ type: 'hello', team: newTeamId(), records: [], heads: [] })), error: 'TeamMismatchError' },
    { why: 'a hello with trailing bytes', bytes: lp(new Uint8Array([...encodeMessage({ type: 'hello', team: b.devices.teamId, records: [], heads: [] }), 0])), error: 'MalformedError' },
    { why: 'a get with limit 0', bytes: lp(new Uint8Array([3, 3, 110, 115, 48, 1, 65, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])), error: 'MalformedError' }
  ]
  // a member (A, over its own node) sends each on a fresh stream
  for (const h of hostile) {
    const reported = protocolError(b)
    const stream = await a.node.dialProtocol(addr, LOG_PROTOCOL)
    stream.send(h.bytes)
    const { peer, error } = await reported
    await closed(stream)
    t.equal(error.name, h.error, h.why)
    t.equal(peer, a.id)
  }
  // a non-member's correct hello is refused
  const refused = protocolError(b)
  const s2 = await stranger.node.dialProtocol(addr, LOG_PROTOCOL)
  s2.send(lp(encodeMessage({ type: 'hello', team: b.devices.teamId, records: [], heads: [] })))
  t.equal((await refused).error.name, 'NotMemberError')
  await closed(s2)
  // a frame that never completes is dropped after the hello timeout, and counted (FORMAT.md §6)
  const timedOut = protocolError(b)
  const slow = await a.node.dialProtocol(addr, LOG_PROTOCOL)
  slow.send(Uint8Array.of(100, 1))
  await closed(slow)
  t.pass('an incomplete first frame times out')
  const late = await timedOut
  t.equal(late.error.name, 'ProtocolError', 'a first message that never arrives is a protocol error')
  t.equal(late.peer, a.id)
  t.equal(b.sync.stats().protocolErrors, hostile.length + 2)
  // B still serves A over the session it had all along
  const after = acceptedFrom(b, a.id, 1)
  await a.logs.append(NS, text('still here'))
  t.equal(str((await after)[0]?.payload ?? new Uint8Array()), 'still here')
  t.same(b.logs.problems(), [], 'no entry was rejected: nothing hostile reached the store')
})

t.test('a removed device gets no session and none of its entries are fetched', async t => {
  const [a, b, c] = await team(t, 3) as [Dev, Dev, Dev]
  await c.logs.append(NS, text('c1'))
  await a.devices.remove(c.id)
  await b.devices.merge(a.devices.records())
  // C does not know it was removed: it opens a session to B with a hello naming its entry
  const refused = protocolError(b)
  await connect(c, b)
  const { peer, error } = await refused
  t.equal(peer, c.id)
  t.equal(error.name, 'NotMemberError')
  t.equal(b.logs.heads(NS)[c.id], undefined)
  t.equal(b.sync.peers().includes(c.id), false, 'no session with a removed device')
  t.equal(b.sync.stats().fetches, 0)
})

function varint (n: number): Uint8Array {
  const len: number[] = []
  while (n >= 0x80) { len.push((n & 0x7f) | 0x80); n >>>= 7 }
  len.push(n)
  return Uint8Array.from(len)
}

/** One varint length-prefixed frame. */
function lp (frame: Uint8Array): Uint8Array {
  const len = varint(frame.byteLength)
  const out = new Uint8Array(len.byteLength + frame.byteLength)
  out.set(len, 0)
  out.set(frame, len.byteLength)
  return out
}
