/**
 * The signed device list over a real classic-level: founding, adding, removal (permanent, wins),
 * merge from any order of arrival, buffering of records whose signer is unknown, persistence,
 * the local last-seen times, and the remembered listen addresses of devices.
 */
import t, { type Test } from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { DeviceList, newTeamId, decodeRecord, encodeRecord, signRecord } from '../net/log/index.js'
import { PeerAddressBook, dialableAddrs, isLoopback, MAX_ADDRS_PER_PEER } from '../net/peer-addresses.js'
import { multiaddr } from '@multiformats/multiaddr'
import { format } from 'node:util'

function tempDb (t: Test): ClassicLevel<string, Uint8Array> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-netdev-'))
  const db = new ClassicLevel<string, Uint8Array>(dir, { keyEncoding: 'utf8', valueEncoding: 'view' })
  t.teardown(async () => { await db.close(); rmSync(dir, { recursive: true, force: true }) })
  return db
}

let lists = 0
async function list (db: ClassicLevel<string, Uint8Array>, key: PrivateKey, teamId: Uint8Array, founder: string, name = `l${lists++}`): Promise<DeviceList> {
  const l = new DeviceList({ db: db.sublevel<string, Uint8Array>(name, { valueEncoding: 'view' }), privateKey: key }, { teamId, founder })
  await l.open()
  return l
}

interface Key { key: PrivateKey, id: string }
async function keys (n: number): Promise<Key[]> {
  return await Promise.all(Array.from({ length: n }, async () => {
    const key = await generateKeyPair('Ed25519')
    return { key, id: peerIdFromPrivateKey(key).toString() }
  }))
}

/** A deterministic shuffle (mulberry32), so a failing order can be reproduced. */
function shuffle<T> (items: T[], seed: number): T[] {
  let s = seed >>> 0
  const rnd = (): number => { s = (s + 0x6D2B79F5) >>> 0; let x = s; x = Math.imul(x ^ (x >>> 15), x | 1); x ^= x + Math.imul(x ^ (x >>> 7), x | 61); return ((x ^ (x >>> 14)) >>> 0) / 4294967296 }
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [out[i], out[j]] = [out[j] as T, out[i] as T] }
  return out
}

t.test('the founder starts a team and adds devices; names, membership, last seen', async t => {
  const db = tempDb(t)
  const [a, b] = await keys(2) as [Key, Key]
  const teamId = newTeamId()
  const la = await list(db, a.key, teamId, a.id)
  t.equal(la.isMember(a.id), false, 'no member before the founding record')
  await la.found({ name: 'laptop' })
  await la.add({ device: b.id, name: 'phone ☎' })
  t.same(la.members().map(m => [m.id, m.name, m.addedBy]).sort(), [[a.id, 'laptop', a.id], [b.id, 'phone ☎', a.id]].sort())
  t.equal(la.isMember(b.id), true)
  t.equal(la.lastSeen(b.id), undefined)
  await la.touch(b.id, 1000)
  await la.touch(b.id, 500)
  t.equal(la.lastSeen(b.id), 1000, 'last seen never goes back')
  t.equal(la.members().find(m => m.id === b.id)?.lastSeen, 1000)
  await t.rejects(la.add({ device: b.id, name: 'x'.repeat(65) }), { name: 'InvalidArgumentError' })
  await t.rejects(la.remove(a.id), { name: 'InvalidArgumentError' }, 'the founder cannot be removed')
  // B, knowing only its team id and founder, learns the list by merging A's records
  const lb = await list(db, b.key, teamId, a.id)
  const r = await lb.merge(la.records())
  t.same(r.rejected, [])
  t.same(lb.members().map(m => m.id).sort(), [a.id, b.id].sort())
  t.same(lb.records(), la.records())
})

t.test('a non-founder cannot start a team; non-members cannot add', async t => {
  const db = tempDb(t)
  const [a, b, c] = await keys(3) as [Key, Key, Key]
  const teamId = newTeamId()
  const lb = await list(db, b.key, teamId, a.id)
  await t.rejects(lb.found({ name: 'b' }), { name: 'NotMemberError' })
  await t.rejects(lb.add({ device: c.id, name: 'c' }), { name: 'NotMemberError' })
  // a self-signed add by someone other than the founder is never grounded
  const self = await signRecord(b.key, { team: teamId, op: 'add', device: b.id, name: 'b', by: b.id, at: 1 })
  const r = await lb.merge([encodeRecord(self)])
  t.equal(r.buffered, 1)
  t.equal(lb.isMember(b.id), false)
  t.same(lb.records(), [], 'buffered records are not gossiped')
})

t.test('records merge to one result from any order of arrival; removal wins and is permanent', async t => {
  const db = tempDb(t)
  const [a, b, c, d, e] = await keys(5) as [Key, Key, Key, Key, Key]
  const teamId = newTeamId()
  const rec = async (by: Key, op: 'add' | 'remove', who: Key, at: number): Promise<Uint8Array> =>
    encodeRecord(await signRecord(by.key, { team: teamId, op, device: who.id, name: op === 'add' ? `n-${at}` : '', by: by.id, at }))
  const records = [
    await rec(a, 'add', a, 1),
    await rec(a, 'add', b, 2),
    await rec(b, 'add', c, 3), // C is vouched for by B only
    await rec(a, 'add', d, 4),
    await rec(d, 'add', e, 5),
    await rec(b, 'remove', e, 1), // removal wins even though its time is earlier than E's add
    await rec(a, 'add', e, 9) // a re-add of a removed device is refused
  ]
  const expectMembers = [a.id, b.id, c.id, d.id].sort()
  for (let seed = 1; seed <= 24; seed++) {
    const l = await list(db, a.key, teamId, a.id)
    const order = shuffle(records, seed)
    // one at a time (records arrive before their signer's add) or all at once
    if (seed % 2 === 0) for (const r of order) await l.merge([r])
    else await l.merge(order)
    t.same(l.members().map(m => m.id).sort(), expectMembers, `order ${seed}: members`)
    t.equal(l.removed(e.id), true, `order ${seed}: E removed`)
    t.equal(l.bufferedCount(), 0)
    t.equal(l.records().length, records.length)
  }
  const l = await list(db, a.key, teamId, a.id)
  await l.merge(records)
  await t.rejects(l.add({ device: e.id, name: 'again' }), { name: 'DeviceRemovedError' })
  t.equal(l.isMember(e.id), false)
  // the list merges idempotently
  const before = l.records()
  const r = await l.merge([...records, ...records])
  t.equal(r.added, 0)
  t.same(l.records(), before)
})

t.test('removing a device also drops the devices only it vouched for', async t => {
  const db = tempDb(t)
  const [a, b, c] = await keys(3) as [Key, Key, Key]
  const teamId = newTeamId()
  const la = await list(db, a.key, teamId, a.id)
  await la.found({ name: 'a' })
  await la.add({ device: b.id, name: 'b' })
  const lb = await list(db, b.key, teamId, a.id)
  await lb.merge(la.records())
  await lb.add({ device: c.id, name: 'c' })
  await la.merge(lb.records())
  t.equal(la.isMember(c.id), true)
  let changes = 0
  la.addEventListener('change', () => { changes++ })
  await la.remove(b.id)
  t.equal(changes, 1)
  t.equal(la.isMember(b.id), false)
  t.equal(la.isMember(c.id), false, 'C was vouched for by B only')
  t.equal(la.removed(c.id), false)
  // a member re-adds C: C is a member again, B stays out (a removed device cannot vouch)
  await la.add({ device: c.id, name: 'c' })
  t.equal(la.isMember(c.id), true)
  const lateAdd = await signRecord(b.key, { team: teamId, op: 'add', device: (await keys(1))[0]?.id as string, name: 'late', by: b.id, at: Date.now() })
  await la.merge([encodeRecord(lateAdd)])
  t.equal(la.members().length, 2, 'an add by a removed device does not count')
})

t.test('records whose signer is not known yet are buffered, then applied', async t => {
  const db = tempDb(t)
  const [a, b, c] = await keys(3) as [Key, Key, Key]
  const teamId = newTeamId()
  const la = await list(db, a.key, teamId, a.id)
  await la.found({ name: 'a' })
  const byB = encodeRecord(await signRecord(b.key, { team: teamId, op: 'add', device: c.id, name: 'c', by: b.id, at: 5 }))
  let r = await la.merge([byB])
  t.equal(r.buffered, 1)
  t.equal(la.isMember(c.id), false)
  await la.add({ device: b.id, name: 'b' })
  t.equal(la.isMember(c.id), true, 'the buffered add applied once its signer was added')
  t.equal(la.bufferedCount(), 0)
  r = await la.merge([byB])
  t.equal(r.added, 0)
})

t.test('bad signatures, other teams, malformed and founder removals are refused', async t => {
  const db = tempDb(t)
  const [a, b] = await keys(2) as [Key, Key]
  const teamId = newTeamId()
  const la = await list(db, a.key, teamId, a.id)
  await la.found({ name: 'a' })
  const good = encodeRecord(await signRecord(a.key, { team: teamId, op: 'add', device: b.id, name: 'b', by: a.id, at: 5 }))
  const flipped = new Uint8Array(good)
  flipped[flipped.byteLength - 1] = (flipped[flipped.byteLength - 1] as number) ^ 1
  const otherTeam = encodeRecord(await signRecord(a.key, { team: newTeamId(), op: 'add', device: b.id, name: 'b', by: a.id, at: 5 }))
  const lying = { ...decodeRecord(good), by: b.id }
  const removeFounder = encodeRecord(await signRecord(a.key, { team: teamId, op: 'remove', device: a.id, name: '', by: a.id, at: 6 }))
  const r = await la.merge([flipped, otherTeam, encodeRecord(lying), good.subarray(0, 20), removeFounder])
  t.same(r.rejected.map(e => e.name), ['BadSignatureError', 'TeamMismatchError', 'BadSignatureError', 'MalformedError', 'InvalidArgumentError'])
  t.equal(la.isMember(b.id), false)
  t.equal(la.isMember(a.id), true)
})

t.test('the list persists; a database of another team is refused', async t => {
  const db = tempDb(t)
  const [a, b] = await keys(2) as [Key, Key]
  const teamId = newTeamId()
  const la = await list(db, a.key, teamId, a.id, 'p')
  await la.found({ name: 'a' })
  await la.add({ device: b.id, name: 'b' })
  await la.touch(b.id, 12345)
  await la.remove(b.id)
  await la.close()
  const again = await list(db, a.key, teamId, a.id, 'p')
  t.same(again.members().map(m => m.id), [a.id])
  t.equal(again.removed(b.id), true)
  t.equal(again.lastSeen(b.id), 12345)
  const other = new DeviceList({ db: db.sublevel<string, Uint8Array>('p', { valueEncoding: 'view' }), privateKey: a.key }, { teamId: newTeamId(), founder: a.id })
  await t.rejects(other.open(), { name: 'TeamMismatchError' })
})

t.test('remembered listen addresses: only dialable TCP ones, replaced as announced, damaged records ignored', async t => {
  const db = tempDb(t)
  const errors: string[] = []
  const book = new PeerAddressBook(db.sublevel<string, Uint8Array>('addrs', { valueEncoding: 'view' }), { error: (fmt: string, ...args: unknown[]) => { errors.push(format(fmt, ...args)) } })
  const [d] = await keys(1)
  const id = (d as Key).id
  t.same(dialableAddrs([
    multiaddr('/ip4/127.0.0.1/tcp/4001'), multiaddr(`/ip4/10.0.0.5/tcp/4001/p2p/${id}`), multiaddr('/ip6/::1/tcp/4002'),
    multiaddr('/ip4/10.0.0.5/udp/4001/quic-v1'), multiaddr('/dns4/example.org/tcp/1'), multiaddr(`/ip4/1.2.3.4/tcp/1/p2p/${id}/p2p-circuit`), multiaddr('/ip4/127.0.0.1/tcp/4001')
  ], { sameHost: true }), ['/ip4/127.0.0.1/tcp/4001', '/ip4/10.0.0.5/tcp/4001', '/ip6/::1/tcp/4002'], 'TCP over IP only, without /p2p/, each once')
  t.same(dialableAddrs([multiaddr('/ip4/127.0.0.1/tcp/1'), multiaddr('/ip4/192.168.1.2/tcp/1'), multiaddr('/ip6/::1/tcp/1'), multiaddr('/ip4/127.9.9.9/tcp/1')]),
    ['/ip4/192.168.1.2/tcp/1'], 'loopback addresses only for a peer on this host')
  t.equal(isLoopback(multiaddr('/ip4/127.0.0.1/tcp/5')), true)
  t.equal(isLoopback(multiaddr('/ip4/10.1.1.1/tcp/5')), false)
  t.equal(dialableAddrs(Array.from({ length: 40 }, (_, i) => multiaddr(`/ip4/10.0.0.${i}/tcp/1`))).length, MAX_ADDRS_PER_PEER, 'at most MAX_ADDRS_PER_PEER')

  t.same(await book.get(id), [], 'nothing known at first')
  t.equal(await book.remember(id, ['/ip4/127.0.0.1/tcp/4001']), true)
  t.equal(await book.remember(id, ['/ip4/127.0.0.1/tcp/4001']), false, 'the same announcement writes nothing')
  t.equal(await book.remember(id, ['/ip4/127.0.0.1/tcp/5001']), true)
  t.same(await book.get(id), ['/ip4/127.0.0.1/tcp/5001'], 'the latest announcement replaces the earlier one')

  for (const bad of ['not json', '{"a":1}', '[1,2]', '["/ip4/999.1.1.1/tcp/1"]', JSON.stringify(Array(17).fill('/ip4/1.1.1.1/tcp/1'))]) {
    await db.sublevel<string, Uint8Array>('addrs', { valueEncoding: 'view' }).put(id, Buffer.from(bad))
    t.same(await book.get(id), [], `damaged record ${bad.slice(0, 30)} gives no addresses`)
  }
  t.equal(errors.length, 5, 'each damaged record is logged')
  t.match(errors[0], new RegExp(`addresses of device ${id} are damaged`))
  await book.forget(id)
  t.same(await book.get(id), [], 'forgotten')
})
