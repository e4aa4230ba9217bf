import '../net/shim.js'
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { ClassicLevel } from 'classic-level'
import { createLibp2p } from 'libp2p'
import type { Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { DeviceVault, KeyHierarchy, MemoryKeyRecordStore, TokenEnrolment } from '../hsm/index.js'
import type { Pkcs11Token } from '../hsm/index.js'
import { loadOrCreateDeviceIdentity, DEVICE_KEY_FILE } from '../net/identity.js'
import { decodeInvite, encodeInvite, InviteBook, inviteProof } from '../net/invite.js'
import type { Invite, InviteStore } from '../net/invite.js'
import { ENROL_PROTOCOL, handleEnrol, joinTeam } from '../net/enrol-protocol.js'
import { FrameReader } from '../net/wire.js'
import {
  DeviceKeyCorruptError, DeviceKeyForeignError, EnrolRefusedError, InvalidInviteCodeError, InviteDamagedError,
  InviteExpiredError, InviteProofError, InviterUnreachableError, InviteUnknownError, InviteUsedError
} from '../net/enrol-errors.js'
import { makeToken, openToken } from './helpers/softhsm.js'

interface T { teardown: (fn: () => void | Promise<void>) => void }

function tempDir (t: T): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-enrol-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

async function token (t: T): Promise<Pkcs11Token> {
  const tk = await openToken(await makeToken(t))
  t.teardown(async () => { await tk.close() })
  return tk
}

async function invitesDb (t: T): Promise<{ store: InviteStore, reopen: () => Promise<InviteStore> }> {
  const path = join(tempDir(t), 'db')
  let db = new ClassicLevel<string, Uint8Array>(path, { keyEncoding: 'utf8', valueEncoding: 'view' })
  t.teardown(async () => { await db.close() })
  const sub = (): InviteStore => db.sublevel<string, Uint8Array>('invites', { keyEncoding: 'utf8', valueEncoding: 'view' })
  return {
    store: sub(),
    reopen: async () => {
      await db.close()
      db = new ClassicLevel<string, Uint8Array>(path, { keyEncoding: 'utf8', valueEncoding: 'view' })
      return sub()
    }
  }
}

/** A device: token, vault-sealed identity, libp2p node on 127.0.0.1 (TCP + Noise + yamux). */
async function device (t: T): Promise<{ token: Pkcs11Token, node: Libp2p, peerId: string, dir: string }> {
  const tk = await token(t)
  const dir = tempDir(t)
  const identity = await loadOrCreateDeviceIdentity({ dir, vault: new DeviceVault({ token: tk }) })
  const node = await createLibp2p({
    privateKey: identity.privateKey,
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()]
  })
  t.teardown(async () => { await node.stop() })
  return { token: tk, node, peerId: identity.peerId, dir }
}

/** An enrolled inviting device serving '/strata/enrol/1'; the bundle is its NEK records. */
async function inviter (t: T, clock: { now: number } = { now: Date.now() }): Promise<Awaited<ReturnType<typeof device>> & { book: InviteBook, kh: KeyHierarchy, enrolled: string[] }> {
  const d = await device(t)
  const keys = new MemoryKeyRecordStore()
  const kh = await KeyHierarchy.open({ token: d.token, store: keys })
  t.teardown(async () => { await kh.close() })
  await kh.createNamespace('ns-a')
  const { store } = await invitesDb(t)
  const book = new InviteBook({ store }, { teamId: 'team-1', peerId: d.peerId, addresses: () => d.node.getMultiaddrs().map(String), now: () => clock.now })
  const enrolled: string[] = []
  const handler = await handleEnrol({
    node: d.node,
    invites: book,
    enrolment: new TokenEnrolment({ token: d.token, keys: kh }),
    onEnrolled: async (peerId, name) => {
      enrolled.push(`${peerId} ${name}`)
      const records: Record<string, string> = {}
      for await (const [k, v] of keys.entries('nek/')) records[k] = Buffer.from(v).toString('base64')
      return { bundle: new TextEncoder().encode(JSON.stringify(records)) }
    }
  })
  t.teardown(async () => { await handler.stop() })
  return { ...d, book, kh, enrolled }
}

t.test('device identity: created once, sealed, 0600; corrupt, foreign and other-token files refused', async t => {
  const tk = await token(t)
  const vault = new DeviceVault({ token: tk })
  const dir = tempDir(t)
  const a = await loadOrCreateDeviceIdentity({ dir, vault })
  const path = join(dir, DEVICE_KEY_FILE)
  t.equal(statSync(path).mode & 0o777, 0o600)
  const file = readFileSync(path)
  t.notOk(file.includes(Buffer.from(a.privateKey.raw.subarray(0, 32))), 'the key is not in the file in plaintext')
  t.notOk(file.includes(Buffer.from(privateKeyToProtobuf(a.privateKey))))
  const b = await loadOrCreateDeviceIdentity({ dir, vault })
  t.equal(b.peerId, a.peerId, 'the same identity after a restart')
  t.ok(b.privateKey.equals(a.privateKey))
  t.equal(a.peerId, a.privateKey.publicKey.toString())

  const flipped = Buffer.from(file)
  flipped[flipped.length - 3] = (flipped[flipped.length - 3] ?? 0) ^ 0x04
  writeFileSync(path, flipped)
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault }), DeviceKeyCorruptError)
  writeFileSync(path, 'ssh-ed25519 AAAA... not ours\n')
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault }), DeviceKeyForeignError)
  writeFileSync(path, file.subarray(0, 5))
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault }), DeviceKeyForeignError)
  writeFileSync(path, file.subarray(0, file.length - 1))
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault }), DeviceKeyCorruptError)
  writeFileSync(path, Buffer.alloc(100_000))
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault }), DeviceKeyForeignError)
  writeFileSync(path, file)
  await t.rejects(loadOrCreateDeviceIdentity({ dir, vault: new DeviceVault({ token: await token(t) }) }), DeviceKeyCorruptError, 'sealed by another token')
  t.equal((await loadOrCreateDeviceIdentity({ dir, vault })).peerId, a.peerId, 'the intact file still loads')
})

const peerA = '12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA'

function sample (over: Partial<Invite> = {}): Invite {
  return { version: 1, teamId: 'team-1', inviterPeerId: peerA, addresses: ['/ip4/192.168.1.5/tcp/4001', '/ip4/127.0.0.1/tcp/4001'], secret: new Uint8Array(32).fill(7), expiresAt: 1_900_000_000_000, ...over }
}

t.test('invite codes: round trip, damaged and malformed codes give named errors', async t => {
  const code = encodeInvite(sample())
  t.match(code, /^strata1-[A-Za-z0-9_-]+$/, 'one token, no spaces')
  t.same(decodeInvite(code), sample())
  t.same(decodeInvite(`  ${code}\n`), sample(), 'surrounding whitespace is ignored')

  // Every single-character typo is caught by the checksum (or the alphabet check).
  let damaged = 0
  for (let i = 'strata1-'.length; i < code.length; i += 3) {
    const typo = code.slice(0, i) + (code[i] === 'A' ? 'B' : 'A') + code.slice(i + 1)
    try { decodeInvite(typo); t.fail(`typo at ${i} accepted`) } catch (err) { if (err instanceof InviteDamagedError) damaged++; else t.fail(`typo at ${i}: ${String(err)}`) }
  }
  t.ok(damaged > 10)
  t.throws(() => decodeInvite(code.slice(0, -6)), InviteDamagedError, 'cut short')
  t.throws(() => decodeInvite(code.slice(0, 20) + ' ' + code.slice(20)), { name: 'InvalidInviteCodeError', problem: /characters/ })
  t.throws(() => decodeInvite('hello'), { name: 'InvalidInviteCodeError', problem: /start with/ })
  t.throws(() => decodeInvite('strata2-AAAA'), { name: 'InvalidInviteCodeError', problem: /incompatible/ })
  t.throws(() => decodeInvite('strata1-'), InvalidInviteCodeError)
  t.throws(() => decodeInvite('strata1-' + 'A'.repeat(5000)), { name: 'InvalidInviteCodeError', problem: /longer/ })
  t.throws(() => decodeInvite(42 as unknown as string), InvalidInviteCodeError)

  t.throws(() => encodeInvite(sample({ addresses: Array(9).fill('/ip4/1.2.3.4/tcp/1') })), { name: 'InvalidInviteCodeError', problem: /addresses/ })
  t.throws(() => encodeInvite(sample({ addresses: ['/ip4/1.2.3.4/tcp/1/p2p/' + peerA] })), { name: 'InvalidInviteCodeError', problem: /p2p/ })
  t.throws(() => encodeInvite(sample({ addresses: ['/dns4/' + 'a'.repeat(260) + '/tcp/1'] })), { name: 'InvalidInviteCodeError', problem: /256/ })
  t.throws(() => encodeInvite(sample({ addresses: ['not a multiaddr'] })), { name: 'InvalidInviteCodeError', problem: /multiaddr/ })
  t.throws(() => encodeInvite(sample({ inviterPeerId: 'nobody' })), { name: 'InvalidInviteCodeError', problem: /peer id/ })
  t.throws(() => encodeInvite(sample({ secret: new Uint8Array(31) })), { name: 'InvalidInviteCodeError', problem: /secret/ })
  t.throws(() => encodeInvite(sample({ teamId: 'a b' })), { name: 'InvalidInviteCodeError', problem: /team id/ })

  // Well-checksummed but malformed bodies (what a buggy or hostile encoder could produce).
  const { createHash } = await import('node:crypto')
  const wrap = (body: Buffer): string => 'strata1-' + Buffer.concat([body, createHash('sha256').update(body).digest().subarray(0, 4)]).toString('base64url')
  t.throws(() => decodeInvite(wrap(Buffer.from([2]))), { name: 'InvalidInviteCodeError', problem: /version/ })
  t.throws(() => decodeInvite(wrap(Buffer.from([1, 10, 65]))), { name: 'InvalidInviteCodeError', problem: /ends inside the team id/ })
  t.throws(() => decodeInvite(wrap(Buffer.from([1, 1, 0xff]))), { name: 'InvalidInviteCodeError', problem: /UTF-8|team id/ })
  const good = Buffer.from(code.slice(8), 'base64url')
  const body = good.subarray(0, good.length - 4)
  t.throws(() => decodeInvite(wrap(Buffer.concat([body, Buffer.from([0])]))), { name: 'InvalidInviteCodeError', problem: /trailing/ })
  // Random bytes with a valid checksum: always a typed error, never anything else.
  for (let i = 0; i < 300; i++) {
    try { decodeInvite(wrap(randomBytes(1 + (i % 120)))) } catch (err) { if (!(err instanceof InvalidInviteCodeError)) t.fail(String(err)) }
  }
})

t.test('invite book: hashed records, single use (also concurrently), expiry, proof binding, persistence', async t => {
  const { store, reopen } = await invitesDb(t)
  const clock = { now: 1_000_000 }
  const book = new InviteBook({ store }, { teamId: 'team-1', peerId: peerA, addresses: () => ['/ip4/127.0.0.1/tcp/4001/p2p/' + peerA, '/ip4/10.0.0.2/tcp/4001'], now: () => clock.now })
  const code = await book.create({ ttlMs: 60_000 })
  const inv = decodeInvite(code)
  t.same(inv.addresses, ['/ip4/10.0.0.2/tcp/4001', '/ip4/127.0.0.1/tcp/4001'], 'LAN address first, /p2p/ dropped')
  t.equal(inv.expiresAt, 1_060_000)
  const { createHash } = await import('node:crypto')
  const stored = await store.get(createHash('sha256').update(inv.secret).digest('hex'))
  t.ok(stored, 'record keyed by SHA-256(secret)')
  t.same(JSON.parse(Buffer.from(stored ?? []).toString()), { v: 1, expiresAt: 1_060_000, used: false }, 'only expiry and used flag stored')

  const joiner = '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq'
  const spki = randomBytes(300)
  const proof = inviteProof(inv.secret, joiner, spki)
  await t.rejects(book.redeem({ secret: inv.secret, proof, joinerPeerId: peerA, spki }), InviteProofError, 'proof for another peer id')
  await t.rejects(book.redeem({ secret: inv.secret, proof, joinerPeerId: joiner, spki: randomBytes(300) }), InviteProofError, 'proof for another key')
  await t.rejects(book.redeem({ secret: randomBytes(32), proof, joinerPeerId: joiner, spki }), InviteUnknownError)
  const results = await Promise.allSettled([1, 2, 3, 4].map(async () => { await book.redeem({ secret: inv.secret, proof, joinerPeerId: joiner, spki }) }))
  t.equal(results.filter(r => r.status === 'fulfilled').length, 1, 'exactly one of four concurrent redeems wins')
  t.ok(results.every(r => r.status === 'fulfilled' || (r.reason as Error).name === 'InviteUsedError'))

  const later = decodeInvite(await book.create({ ttlMs: 1000 }))
  clock.now += 1000
  await t.rejects(book.redeem({ secret: later.secret, proof: inviteProof(later.secret, joiner, spki), joinerPeerId: joiner, spki }), InviteExpiredError)

  const book2 = new InviteBook({ store: await reopen() }, { teamId: 'team-1', peerId: peerA, addresses: () => ['/ip4/10.0.0.2/tcp/4001'], now: () => clock.now })
  await t.rejects(book2.redeem({ secret: inv.secret, proof, joinerPeerId: joiner, spki }), InviteUsedError, 'used flag survives a restart')
  await t.rejects(new InviteBook({ store }, { teamId: 't', peerId: peerA, addresses: () => [] }).create(), { name: 'InvalidInviteCodeError', problem: /no address/ })
})

t.test('full join over libp2p: TEK token-to-token, bundle, then the code is spent', async t => {
  const a = await inviter(t)
  const b = await device(t)
  const code = await a.book.create({ ttlMs: 60_000 })
  const joining = new TokenEnrolment({ token: b.token })
  const result = await joinTeam({ node: b.node, code, enrolment: joining, deviceName: 'laptop of bob' })
  t.equal(result.inviterPeerId, a.peerId)
  t.equal(result.teamId, 'team-1')
  t.equal(result.tekVersion, 1)
  t.same(a.enrolled, [`${b.peerId} laptop of bob`], 'the authenticated peer id reached onEnrolled')

  // The new device reads the namespace key with its own token.
  const records = JSON.parse(new TextDecoder().decode(result.bundle)) as Record<string, string>
  const store = new MemoryKeyRecordStore()
  for (const [k, v] of Object.entries(records)) await store.put(k, Buffer.from(v, 'base64'))
  const kb = await KeyHierarchy.open({ token: b.token, store })
  t.teardown(async () => { await kb.close() })
  t.ok(Buffer.from((await kb.nek('ns-a')).key).equals(Buffer.from((await a.kh.nek('ns-a')).key)), 'same NEK on both devices')

  // Reuse by a third device is refused, and it leaves no key pair or TEK in that token.
  const c = await device(t)
  await t.rejects(joinTeam({ node: c.node, code, enrolment: new TokenEnrolment({ token: c.token }), deviceName: 'c' }), InviteUsedError)
  t.same(await c.token.findSecretKeys('strata-tek'), [])
  t.same(a.enrolled.length, 1)
})

t.test('expired codes, codes for another inviter, a disabled team', async t => {
  const clock = { now: Date.now() }
  const a = await inviter(t, clock)
  const other = await inviter(t)
  const b = await device(t)
  const enrolment = new TokenEnrolment({ token: b.token })

  const code = await a.book.create({ ttlMs: 1000 })
  clock.now += 5000
  // The joiner checks the expiry itself; with a slow clock it is the inviter that refuses.
  await t.rejects(joinTeam({ node: b.node, code, enrolment, deviceName: 'b', now: () => clock.now }), InviteExpiredError)
  await t.rejects(joinTeam({ node: b.node, code, enrolment, deviceName: 'b', now: () => clock.now - 5000 }), InviteExpiredError)

  // A's secret presented to another inviter: unknown there.
  const inv = decodeInvite(await a.book.create({ ttlMs: 60_000 }))
  const toOther = encodeInvite({ ...inv, inviterPeerId: other.peerId, addresses: other.node.getMultiaddrs().map(m => m.decapsulateCode(421).toString()) })
  await t.rejects(joinTeam({ node: b.node, code: toOther, enrolment, deviceName: 'b' }), InviteUnknownError)
  // A code naming the other device but pointing at A's addresses: Noise proves the mismatch.
  // (A fresh joiner: b already holds a connection to the other device, which libp2p would reuse.)
  const fresh = await device(t)
  const freshEnrolment = new TokenEnrolment({ token: fresh.token })
  const wrongPeer = encodeInvite({ ...inv, inviterPeerId: other.peerId })
  await t.rejects(joinTeam({ node: fresh.node, code: wrongPeer, enrolment: freshEnrolment, deviceName: 'f' }), InviterUnreachableError)
  // Nobody listening at the address.
  const gone = encodeInvite({ ...inv, addresses: ['/ip4/127.0.0.1/tcp/1'] })
  await t.rejects(joinTeam({ node: fresh.node, code: gone, enrolment: freshEnrolment, deviceName: 'f' }), InviterUnreachableError)
  t.same(a.enrolled, [])
  t.same(other.enrolled, [])

  // A disabled team refuses to hand out its key (the code is spent all the same).
  await a.kh.disableTeam()
  await t.rejects(joinTeam({ node: b.node, code: encodeInvite(inv), enrolment, deviceName: 'b' }), EnrolRefusedError)
  await a.kh.enableTeam()
  await t.rejects(joinTeam({ node: b.node, code: encodeInvite(inv), enrolment, deviceName: 'b' }), InviteUsedError)
  t.same(await b.token.findSecretKeys('strata-tek'), [], 'no TEK arrived')
  // And the intact path still works afterwards.
  await joinTeam({ node: b.node, code: await a.book.create({}), enrolment, deviceName: 'b' })
  t.equal(a.enrolled.length, 1)
})

t.test('garbage on the enrol protocol never crashes the server', async t => {
  const a = await inviter(t)
  const m = await device(t)
  const target = a.node.getMultiaddrs()
  const send = async (bytes: Uint8Array[], closeWrite = true): Promise<void> => {
    const stream = await m.node.dialProtocol(target, ENROL_PROTOCOL)
    // The server may close the stream after the first bad bytes: a send after that throws, which
    // is the server doing its job (whether it crashed is checked below, by asking it again).
    try {
      for (const b of bytes) stream.send(b)
      if (closeWrite) await stream.close()
      else stream.abort(new Error('mallory leaves'))
    } catch {}
  }
  const frame = (body: Uint8Array): Uint8Array => Buffer.concat([Buffer.from(varint(body.byteLength)), body])
  const json = (v: unknown): Uint8Array => frame(new TextEncoder().encode(JSON.stringify(v)))
  const garbage: Uint8Array[][] = [
    [], [new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])], [new Uint8Array(varint(100 * 1024 * 1024))],
    [randomBytes(64)], [frame(randomBytes(200))], [json([1, 2])], [json({ v: 2 })], [json({ v: 1 })],
    [json({ v: 1, secret: 'x', proof: 'y', spki: 'z', deviceName: 'n' })],
    [json({ v: 1, secret: Buffer.alloc(32).toString('base64'), proof: Buffer.alloc(32).toString('base64'), spki: 'AAAA', deviceName: '\u0000' })],
    [json({ v: 1, secret: Buffer.alloc(32).toString('base64'), proof: Buffer.alloc(32).toString('base64'), spki: 'AAAA', deviceName: 'x'.repeat(65) })],
    [json({ v: 1, secret: Buffer.alloc(32).toString('base64'), proof: Buffer.alloc(32).toString('base64'), spki: 'AAAA', deviceName: 'mallory' })],
    [json({ v: 1, secret: Buffer.alloc(32).toString('base64'), proof: Buffer.alloc(32).toString('base64'), spki: 'AAAA', deviceName: 'mallory' }), randomBytes(10)],
    [frame(randomBytes(5000)).subarray(0, 3000)]
  ]
  for (const g of garbage) await send(g)
  for (let i = 0; i < 20; i++) await send([randomBytes(1 + i * 37)], i % 2 === 0)
  // A well-formed request for a code that was never issued: answered "unknown"; malformed: "bad-request".
  const ask = async (request: unknown): Promise<unknown> => {
    const stream = await m.node.dialProtocol(target, ENROL_PROTOCOL)
    const reader = new FrameReader(stream, { maxMessageBytes: 8192 })
    try {
      stream.send(json(request))
      const answer = await reader.read()
      return answer == null ? null : JSON.parse(new TextDecoder().decode(answer.subarray()))
    } finally {
      reader.detach()
      await stream.close().catch(() => {})
    }
  }
  const b64 = (n: number): string => randomBytes(n).toString('base64')
  t.same(await ask({ v: 1, secret: b64(32), proof: b64(32), spki: b64(300), deviceName: 'mallory' }), { v: 1, status: 'unknown' })
  t.same(await ask({ v: 1, secret: b64(31), proof: b64(32), spki: b64(300), deviceName: 'mallory' }), { v: 1, status: 'bad-request' })
  t.same(a.enrolled, [])
  // The server still enrols a real device.
  const b = await device(t)
  await joinTeam({ node: b.node, code: await a.book.create({}), enrolment: new TokenEnrolment({ token: b.token }), deviceName: 'b' })
  t.equal(a.enrolled.length, 1)
})

function varint (n: number): number[] {
  const out: number[] = []
  while (n >= 0x80) { out.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  out.push(n)
  return out
}
