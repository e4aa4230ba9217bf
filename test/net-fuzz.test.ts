/**
 * Bounded fuzzing of every net/log decoder: log entries, device records and each log-sync
 * message, fed ≥ 1,000 random and mutated inputs each (bit flips, truncation, extension, length
 * and integer fields maxed at every offset). Only MalformedError may be thrown; anything that
 * decodes must re-encode to the same bytes (the formats are canonical). Then the stateful
 * consumers (LogStore.accept, DeviceList.merge) and a live node get mutated input and must
 * answer with typed rejections only. The seed is printed; FUZZ_SEED=<n> replays a run.
 */
import '../net/shim.js'
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  DeviceList, LogStore, LOG_PROTOCOL, logSync, newTeamId, decodeEntry, encodeEntry, decodeRecord, encodeRecord,
  decodeMessage, encodeMessage, LogError
} from '../net/log/index.js'
import type { Message } from '../net/log/index.js'

const seed = Number(process.env.FUZZ_SEED ?? (Date.now() % 2 ** 31))
t.comment(`FUZZ_SEED=${seed}`)
let state = seed >>> 0
function rnd (): number {
  state = (state + 0x6D2B79F5) >>> 0
  let x = state
  x = Math.imul(x ^ (x >>> 15), x | 1)
  x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
  return ((x ^ (x >>> 14)) >>> 0) / 4294967296
}
const int = (n: number): number => Math.floor(rnd() * n)
const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256))

/** Random and mutated variants of valid encodings: at least `n` inputs. */
function * inputs (valid: Uint8Array[], n: number): Generator<Uint8Array> {
  let count = 0
  // length and integer fields maxed, at every offset of every valid sample (windows of 1, 2, 4, 8)
  for (const v of valid) {
    for (let i = 0; i < Math.min(v.byteLength, 400); i++) {
      for (const w of [1, 2, 4, 8]) {
        if (i + w > v.byteLength) continue
        const m = new Uint8Array(v)
        m.fill(0xff, i, i + w)
        yield m; count++
      }
    }
  }
  while (count < n) {
    const v = valid[int(valid.length)] as Uint8Array
    const kind = int(6)
    let m: Uint8Array
    if (kind === 0) {
      m = bytes(int(600))
    } else if (kind === 1) {
      m = new Uint8Array(v)
      for (let k = 1 + int(8); k > 0 && m.byteLength > 0; k--) { const at = int(m.byteLength); m[at] = (m[at] as number) ^ (1 << int(8)) }
    } else if (kind === 2) {
      m = v.slice(0, int(v.byteLength))
    } else if (kind === 3) {
      m = new Uint8Array([...v, ...bytes(1 + int(64))])
    } else if (kind === 4) {
      m = new Uint8Array(v)
      if (m.byteLength > 0) m[int(m.byteLength)] = [0, 0xff, 0x7f, 0x80][int(4)] as number
    } else {
      // splice: a valid prefix followed by a random tail
      m = new Uint8Array([...v.slice(0, int(v.byteLength)), ...bytes(int(200))])
    }
    yield m; count++
  }
}

function fuzz (name: string, valid: Uint8Array[], decode: (b: Uint8Array) => unknown, encode: (x: any) => Uint8Array, n = 1500): void {
  t.test(`${name} decoder`, async t => {
    for (const v of valid) t.same(encode(decode(v)), v, 'valid samples round-trip')
    let decoded = 0
    let refused = 0
    let other: unknown
    let total = 0
    for (const input of inputs(valid, n)) {
      total++
      try {
        const x = decode(input)
        decoded++
        const again = encode(x)
        if (Buffer.compare(Buffer.from(again), Buffer.from(input)) !== 0) { other = new Error(`non-canonical input decoded: ${Buffer.from(input).toString('hex').slice(0, 200)}`); break }
      } catch (err) {
        if (err instanceof LogError && err.name === 'MalformedError') { refused++; continue }
        other = err
        break
      }
    }
    t.equal(other, undefined, 'only MalformedError is thrown')
    t.ok(total >= 1000, `${total} inputs`)
    // opaque regions (payload, signature, entry frames) stay decodable; the rest must be refused
    t.ok(refused > 0, `${refused} refused, ${decoded} decoded (and re-encoded identically)`)
  })
}

const keyA = await generateKeyPair('Ed25519')
const idA = peerIdFromPrivateKey(keyA).toString()
const keyB = await generateKeyPair('Ed25519')
const idB = peerIdFromPrivateKey(keyB).toString()
const teamId = newTeamId()
const logKey = new Uint8Array(32).fill(5)
const keyFor = async (): Promise<Uint8Array> => logKey

const dir = mkdtempSync(join(tmpdir(), 'strata-netfuzz-'))
const db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' })
t.teardown(async () => { await db.close(); rmSync(dir, { recursive: true, force: true }) })
const sub = (name: string): any => db.sublevel<string, Uint8Array>(name, { valueEncoding: 'view' })

// Real samples: A founds a team, adds B, appends entries; B holds its own list and store.
const devA = new DeviceList({ db: sub('devA'), privateKey: keyA }, { teamId, founder: idA })
await devA.open()
await devA.found({ name: 'a' })
await devA.add({ device: idB, name: 'b ünïcode' })
await devA.remove(peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString())
const logsA = new LogStore({ db: sub('logA'), privateKey: keyA, devices: devA, keyFor })
await logsA.open()
const entries: Uint8Array[] = []
for (const p of ['', 'x', 'a longer payload '.repeat(20)]) entries.push((await logsA.append('ns-1', new TextEncoder().encode(p))).bytes)
entries.push((await logsA.append('0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef', new Uint8Array(3))).bytes)
const records = devA.records()
const messages: Message[] = [
  { type: 'hello', team: teamId, records, heads: logsA.allHeads() },
  { type: 'hello', team: teamId, records: [], heads: [] },
  { type: 'notify', ns: 'ns-1', device: idA, seq: 3 },
  { type: 'get', ns: 'ns-1', device: idA, from: 1, limit: 128 },
  { type: 'entry', bytes: entries[1] as Uint8Array },
  { type: 'end' }
]

fuzz('log entry', entries, decodeEntry, encodeEntry)
fuzz('device record', records, decodeRecord, encodeRecord)
for (const m of messages) fuzz(`message ${m.type}${m.type === 'hello' ? ` (${m.records.length} records)` : ''}`, [encodeMessage(m)], decodeMessage, encodeMessage, 1000)

t.test('LogStore.accept and DeviceList.merge answer mutated input with typed rejections only', async t => {
  const devB = new DeviceList({ db: sub('devB'), privateKey: keyB }, { teamId, founder: idA })
  await devB.open()
  await devB.merge(records)
  const logsB = new LogStore({ db: sub('logB'), privateKey: keyB, devices: devB, keyFor })
  await logsB.open()
  let n = 0
  const batch: Uint8Array[] = []
  const genuine = new Set(entries.map(e => Buffer.from(e).toString('hex')))
  for (const input of inputs(entries, 1000)) {
    if (genuine.has(Buffer.from(input).toString('hex'))) continue // a mutation that changed nothing
    n++
    batch.push(input)
    if (batch.length === 50) {
      const r = await logsB.accept(batch.splice(0))
      for (const x of r.rejected) if (!(x.error instanceof LogError)) t.fail('untyped rejection')
    }
  }
  await logsB.accept(batch.splice(0))
  t.ok(n >= 1000)
  t.same(logsB.heads('ns-1'), {}, 'no mutated entry was accepted')
  // the genuine entries still go in afterwards
  const r = await logsB.accept(entries)
  t.equal(r.accepted.length, 4)
  let rejected = 0
  for (const input of inputs(records, 1000)) {
    const res = await devB.merge([input])
    rejected += res.rejected.length
    for (const e of res.rejected) if (!(e instanceof LogError)) t.fail('untyped rejection')
  }
  t.ok(rejected > 500)
  t.same(devB.members().map(m => m.id).sort(), [idA, idB].sort(), 'membership unchanged')
})

t.test('a live node answers mutated frames by aborting streams, and keeps serving', async t => {
  const devB = new DeviceList({ db: sub('devB2'), privateKey: keyB }, { teamId, founder: idA })
  await devB.open()
  await devB.merge(records)
  const logsB = new LogStore({ db: sub('logB2'), privateKey: keyB, devices: devB, keyFor })
  await logsB.open()
  const base = { addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] }
  const b = await createLibp2p({ ...base, privateKey: keyB, services: { logSync: logSync({ logs: logsB, devices: devB }, { helloTimeoutMs: 200 }) } })
  const a = await createLibp2p({ ...base, privateKey: keyA })
  t.teardown(async () => { await a.stop(); await b.stop() })
  const addr = b.getMultiaddrs()[0]
  if (addr === undefined) throw new Error('no address')
  const frames = [...inputs(messages.map(m => encodeMessage(m)), 0)].filter(() => rnd() < 0.02).slice(0, 120)
  let sent = 0
  const one = async (frame: Uint8Array): Promise<void> => {
    const s = await a.dialProtocol(addr, LOG_PROTOCOL)
    const len: number[] = []
    let n = frame.byteLength
    while (n >= 0x80) { len.push((n & 0x7f) | 0x80); n >>>= 7 }
    len.push(n)
    try {
      s.send(new Uint8Array([...len, ...frame]))
      s.send(frame) // and the raw bytes once more, as a second (garbage) frame
    } catch {} // the node closed the stream at the first bad frame: that is its answer
    await s.close().catch(() => {})
    sent++
  }
  for (let i = 0; i < frames.length; i += 8) await Promise.all(frames.slice(i, i + 8).map(one))
  t.equal(sent, frames.length)
  // the node still serves a correct fetch afterwards
  await logsB.accept(entries)
  const s = await a.dialProtocol(addr, LOG_PROTOCOL)
  const { lpStream } = await import('@libp2p/utils')
  const lp = lpStream(s)
  await lp.write(encodeMessage({ type: 'get', ns: 'ns-1', device: idA, from: 1, limit: 10 }))
  const got: Message[] = []
  while (true) {
    const m = decodeMessage((await lp.read()).subarray())
    got.push(m)
    if (m.type === 'end') break
  }
  t.same(got.map(m => m.type), ['entry', 'entry', 'entry', 'end'])
  t.ok(b.services.logSync.stats().protocolErrors > 0)
})
