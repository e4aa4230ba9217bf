/**
 * LogStore over a real classic-level: chains across stores, tamper, replay, fork, gap, membership,
 * applied cursors after a reopen. Device keys are real Ed25519 libp2p keys.
 */
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { ClassicLevel } from 'classic-level'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { DeviceList, LogStore, newTeamId, encodeEntry, decodeEntry, signEntry, sealPayload, entryHash } from '../net/log/index.js'
import type { ProblemKind } from '../net/log/index.js'

const NS = 'ns0'
const logKey = new Uint8Array(32).fill(7)
const keyFor = async (): Promise<Uint8Array> => logKey

interface Dev { key: PrivateKey, id: string, devices: DeviceList, logs: LogStore, dir: string, db: ClassicLevel<string, Uint8Array> }

async function device (t: Test, teamId: Uint8Array, founder: PrivateKey | undefined, key?: PrivateKey): Promise<Dev> {
  key ??= await generateKeyPair('Ed25519')
  const id = peerIdFromPrivateKey(key).toString()
  const dir = mkdtempSync(join(tmpdir(), 'strata-netlog-'))
  const db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' })
  t.teardown(async () => { await db.close(); rmSync(dir, { recursive: true, force: true }) })
  const founderId = peerIdFromPrivateKey(founder ?? key).toString()
  const devices = new DeviceList({ db: db.sublevel<string, Uint8Array>('dev', { valueEncoding: 'view' }), privateKey: key }, { teamId, founder: founderId })
  await devices.open()
  const logs = new LogStore({ db: db.sublevel<string, Uint8Array>('log', { valueEncoding: 'view' }), privateKey: key, devices, keyFor })
  await logs.open()
  return { key, id, devices, logs, dir, db }
}

/** A founder A and a member B that share the device list. */
async function team (t: Test): Promise<{ a: Dev, b: Dev, teamId: Uint8Array }> {
  const teamId = newTeamId()
  const a = await device(t, teamId, undefined)
  await a.devices.found({ name: 'a' })
  const b = await device(t, teamId, a.key)
  await a.devices.add({ device: b.id, name: 'b' })
  await b.devices.merge(a.devices.records())
  return { a, b, teamId }
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s)
const str = (b: Uint8Array): string => new TextDecoder().decode(b)
const kinds = (r: { rejected: Array<{ error: { kind: ProblemKind } }> }): ProblemKind[] => r.rejected.map(x => x.error.kind)

async function entriesOf (d: Dev, device = d.id, from = 1): Promise<Uint8Array[]> {
  return await d.logs.range(NS, device, from, 256)
}

t.test('entries chain across two stores; duplicates are ignored', async t => {
  const { a, b } = await team(t)
  for (let i = 1; i <= 5; i++) {
    const { entry } = await a.logs.append(NS, text(`change ${i}`))
    t.equal(entry.seq, i)
  }
  const enc = await entriesOf(a)
  t.equal(enc.length, 5)
  const r = await b.logs.accept(enc, { from: a.id })
  t.same(r.accepted.map(e => [e.seq, str(e.payload)]), [1, 2, 3, 4, 5].map(i => [i, `change ${i}`]))
  t.same(r.rejected, [])
  t.same(b.logs.heads(NS), { [a.id]: 5 })
  t.same(b.logs.head(NS, a.id)?.hash, a.logs.head(NS, a.id)?.hash)
  t.same(b.logs.namespaces(), [NS])
  const again = await b.logs.accept(enc)
  t.equal(again.duplicates, 5)
  t.equal(again.accepted.length, 0)
  t.same(b.logs.problems(), [], 'duplicates are no problem')
  // entries stored by B are byte-identical to A's (B can serve them to others)
  t.same(await entriesOf(b, a.id), enc)
})

t.test('concurrent appends chain correctly', async t => {
  const { a, b } = await team(t)
  const done = await Promise.all(Array.from({ length: 30 }, async (_, i) => await a.logs.append(NS, text(`c${i}`))))
  t.same(done.map(d => d.entry.seq).sort((x, y) => x - y), Array.from({ length: 30 }, (_, i) => i + 1))
  const r = await b.logs.accept(await entriesOf(a))
  t.equal(r.accepted.length, 30)
  t.same(r.rejected, [])
})

t.test('tampered signature, payload, prev hash and key are rejected and reported, never stored', async t => {
  const { a, b, teamId } = await team(t)
  await a.logs.append(NS, text('one'))
  const [first] = await entriesOf(a) as [Uint8Array]
  const flip = (bytes: Uint8Array, at: number): Uint8Array => { const c = new Uint8Array(bytes); c[at] = (c[at] as number) ^ 1; return c }
  // last byte is in the signature; a payload byte sits just before the 64-byte signature
  let r = await b.logs.accept([flip(first, first.byteLength - 1)])
  t.same(kinds(r), ['signature'])
  r = await b.logs.accept([flip(first, first.byteLength - 64 - 5)])
  t.same(kinds(r), ['signature'], 'the signature covers the payload')
  // a correctly signed entry whose prev is not the head's hash
  await b.logs.accept([first])
  const bad = await signEntry(a.key, teamId, { ns: NS, device: a.id, seq: 2, prev: new Uint8Array(32).fill(9), time: Date.now(), payload: sealPayload(logKey, { ns: NS, device: a.id, seq: 2 }, text('x')) })
  r = await b.logs.accept([encodeEntry(bad)])
  t.same(kinds(r), ['chain'])
  // correctly signed and chained, but the payload is sealed under another key
  const wrongKey = await signEntry(a.key, teamId, { ns: NS, device: a.id, seq: 2, prev: entryHash(first), time: Date.now(), payload: sealPayload(new Uint8Array(32), { ns: NS, device: a.id, seq: 2 }, text('x')) })
  r = await b.logs.accept([encodeEntry(wrongKey)])
  t.same(kinds(r), ['payload'])
  // the payload AAD binds seq: a payload moved to another seq does not open
  const moved = await signEntry(a.key, teamId, { ns: NS, device: a.id, seq: 2, prev: entryHash(first), time: Date.now(), payload: decodeEntry(first).payload })
  r = await b.logs.accept([encodeEntry(moved)])
  t.same(kinds(r), ['payload'])
  // signed for another team
  const other = await signEntry(a.key, newTeamId(), { ns: NS, device: a.id, seq: 2, prev: entryHash(first), time: Date.now(), payload: sealPayload(logKey, { ns: NS, device: a.id, seq: 2 }, text('x')) })
  r = await b.logs.accept([encodeEntry(other)])
  t.same(kinds(r), ['signature'])
  r = await b.logs.accept([new Uint8Array([1, 2, 3])])
  t.same(kinds(r), ['malformed'])
  t.same(b.logs.heads(NS), { [a.id]: 1 }, 'nothing rejected was stored')
  t.same((await entriesOf(b, a.id)).length, 1)
  const problems = b.logs.problems()
  t.same(problems.map(p => p.kind), ['signature', 'signature', 'chain', 'payload', 'payload', 'signature', 'malformed'])
  t.equal(problems[2]?.device, a.id)
  t.equal(problems[2]?.ns, NS)
  t.equal(problems[2]?.seq, 2)
  t.equal(b.logs.problemCount(), 7)
})

t.test('replayed old entries: identical ones are ignored, different ones are rollback/fork', async t => {
  const { a, b, teamId } = await team(t)
  for (let i = 1; i <= 5; i++) await a.logs.append(NS, text(`v${i}`))
  const enc = await entriesOf(a)
  await b.logs.accept(enc)
  let r = await b.logs.accept([enc[1] as Uint8Array])
  t.equal(r.duplicates, 1, 'an identical replay is harmless')
  t.same(r.rejected, [])
  const forge = async (seq: number, prev: Uint8Array): Promise<Uint8Array> => encodeEntry(await signEntry(a.key, teamId, { ns: NS, device: a.id, seq, prev, time: Date.now(), payload: sealPayload(logKey, { ns: NS, device: a.id, seq }, text('other')) }))
  r = await b.logs.accept([await forge(2, entryHash(enc[0] as Uint8Array))])
  t.same(kinds(r), ['rollback'], 'older than the accepted head and different')
  r = await b.logs.accept([await forge(5, entryHash(enc[3] as Uint8Array))])
  t.same(kinds(r), ['fork'], 'a second entry for the head seq')
  t.same(b.logs.heads(NS), { [a.id]: 5 })
  t.same(await entriesOf(b, a.id), enc, 'the accepted entries are untouched')
})

t.test('an answer to a fetch holds only the log asked for: replays and strays are rejected and reported', async t => {
  const { a, b } = await team(t)
  for (let i = 1; i <= 4; i++) await a.logs.append(NS, text(`v${i}`))
  await b.logs.append(NS, text('b1'))
  const enc = await entriesOf(a)
  await b.logs.accept(enc.slice(0, 3))
  const expect = { ns: NS, device: a.id, from: 4 }
  let r = await b.logs.accept([enc[0] as Uint8Array, enc[1] as Uint8Array], { from: a.id, expect })
  t.same(kinds(r), ['replay', 'replay'], 'entries already held, below the seq asked from')
  t.equal(r.duplicates, 0)
  const stray = (await entriesOf(b, b.id))[0] as Uint8Array
  r = await a.logs.accept([stray], { from: b.id, expect: { ns: NS, device: a.id, from: 5 } })
  t.same(kinds(r), ['unexpected'], 'an entry of another log than the one asked for')
  t.same(a.logs.heads(NS), { [a.id]: 4 }, 'the stray entry was not stored')
  r = await b.logs.accept([enc[3] as Uint8Array, enc[3] as Uint8Array], { from: a.id, expect })
  t.equal(r.accepted.length, 1, 'what was asked for is accepted')
  t.equal(r.duplicates, 1, 'a repeat at or above the seq asked from is an ordinary duplicate')
  t.same(b.logs.problems().map(p => [p.kind, p.from]), [['replay', a.id], ['replay', a.id]], 'reported with the peer it came from')
})

t.test('a fork: a device that lost its state, and one signing twice', async t => {
  const { a, b, teamId } = await team(t)
  for (let i = 1; i <= 3; i++) await a.logs.append(NS, text(`v${i}`))
  await b.logs.accept(await entriesOf(a))
  // A loses its data and starts again with the same key: its seq 1..4 differ from what B holds
  const lost = await device(t, teamId, a.key, a.key)
  await lost.devices.merge(a.devices.records())
  for (let i = 1; i <= 4; i++) await lost.logs.append(NS, text(`new ${i}`))
  const r = await b.logs.accept(await entriesOf(lost))
  t.same(kinds(r), ['rollback', 'rollback', 'fork', 'chain'], 'seq 1-3 differ from accepted ones; 4 chains onto the rejected 3')
  t.same(r.needed, [])
  t.equal(r.accepted.length, 0)
  t.same(b.logs.heads(NS), { [a.id]: 3 })
  // a hostile A signs two different entries for seq 4
  const head = b.logs.head(NS, a.id)?.hash as Uint8Array
  const twice = await Promise.all(['x', 'y'].map(async s => encodeEntry(await signEntry(a.key, teamId, { ns: NS, device: a.id, seq: 4, prev: head, time: Date.now(), payload: sealPayload(logKey, { ns: NS, device: a.id, seq: 4 }, text(s)) }))))
  const r2 = await b.logs.accept(twice)
  t.equal(r2.accepted.length, 1)
  t.same(kinds(r2), ['fork'])
})

t.test('a gap is not applied: the needed seq is reported, then the fill is accepted', async t => {
  const { a, b } = await team(t)
  for (let i = 1; i <= 6; i++) await a.logs.append(NS, text(`v${i}`))
  const enc = await entriesOf(a)
  let r = await b.logs.accept(enc.slice(0, 2))
  t.equal(r.accepted.length, 2)
  r = await b.logs.accept(enc.slice(4))
  t.equal(r.accepted.length, 0)
  t.same(r.needed, [{ ns: NS, device: a.id, from: 3 }])
  t.same(r.rejected, [])
  t.same(b.logs.heads(NS), { [a.id]: 2 })
  // the fill arrives shuffled together with the rest: sorted per device, all chain
  r = await b.logs.accept([enc[5], enc[2], enc[4], enc[3]] as Uint8Array[])
  t.same(r.accepted.map(e => e.seq), [3, 4, 5, 6])
  t.same(r.needed, [])
  t.same(b.logs.heads(NS), { [a.id]: 6 })
})

t.test('entries of non-members and removed members are refused', async t => {
  const { a, b, teamId } = await team(t)
  const stranger = await device(t, teamId, a.key)
  await stranger.devices.merge(a.devices.records())
  await stranger.logs.append(NS, text('hello'))
  let r = await b.logs.accept(await entriesOf(stranger))
  t.same(kinds(r), ['not-member'])
  // C is added, writes, then is removed: its entries are refused from then on, also old ones
  const c = await device(t, teamId, a.key)
  await a.devices.add({ device: c.id, name: 'c' })
  await b.devices.merge(a.devices.records())
  await c.devices.merge(a.devices.records())
  await c.logs.append(NS, text('c1'))
  await c.logs.append(NS, text('c2'))
  const cEnc = await entriesOf(c)
  r = await b.logs.accept(cEnc.slice(0, 1))
  t.equal(r.accepted.length, 1)
  await a.devices.remove(c.id)
  await b.devices.merge(a.devices.records())
  t.equal(b.devices.removed(c.id), true)
  r = await b.logs.accept(cEnc.slice(1))
  t.same(kinds(r), ['removed'])
  t.same(b.logs.heads(NS)[c.id], 1)
  t.same(b.logs.problems().map(p => p.kind), ['not-member', 'removed'])
})

t.test('applied cursors and pending entries survive a reopen', async t => {
  const { a, b } = await team(t)
  for (let i = 1; i <= 4; i++) await a.logs.append(NS, text(`v${i}`))
  await b.logs.accept(await entriesOf(a))
  t.same((await b.logs.pending(NS)).map(e => e.seq), [1, 2, 3, 4])
  t.same(await a.logs.pending(NS), [], 'own appends count as applied')
  await b.logs.markApplied(NS, a.id, 2)
  await b.logs.markApplied(NS, a.id, 1)
  t.equal(b.logs.applied(NS, a.id), 2, 'the cursor never goes back')
  await t.rejects(b.logs.markApplied(NS, a.id, 9), { name: 'InvalidArgumentError' })
  // reopen B's store on the same database
  await b.logs.close()
  const again = new LogStore({ db: b.db.sublevel<string, Uint8Array>('log', { valueEncoding: 'view' }), privateKey: b.key, devices: b.devices, keyFor })
  await again.open()
  t.same(again.heads(NS), { [a.id]: 4 })
  t.equal(again.applied(NS, a.id), 2)
  const pending = await again.pending(NS)
  t.same(pending.map(e => [e.seq, str(e.payload)]), [[3, 'v3'], [4, 'v4']])
  t.same((await again.pending(NS, { limit: 1 })).map(e => e.seq), [3])
})

t.test('local input is validated', async t => {
  const { a } = await team(t)
  await t.rejects(a.logs.append('bad/ns', text('x')), { name: 'InvalidArgumentError' })
  await t.rejects(a.logs.append('', text('x')), { name: 'InvalidArgumentError' })
  await t.rejects(a.logs.append(NS, new Uint8Array(1024 * 1024)), { name: 'InvalidArgumentError' })
  const big = await a.logs.append(NS, randomBytes(1024 * 1024 - 28))
  t.equal(big.bytes.byteLength <= 1024 * 1024 + 400, true)
  t.same(decodeEntry(big.bytes).seq, 1)
  await t.rejects(a.logs.range(NS, a.id, 0, 1), { name: 'InvalidArgumentError' })
  await t.rejects(a.logs.range(NS, a.id, 1, 257), { name: 'InvalidArgumentError' })
})
