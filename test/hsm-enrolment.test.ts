import t from 'tap'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { renameSync } from 'node:fs'
import { join } from 'node:path'
import pkcs11js from 'pkcs11js'
import {
  DeviceVault, DEVICE_KEY_LABEL, EnrolmentStateError, InvalidKeyArgumentError, KeyCustodyError, KeyHierarchy,
  MemoryKeyRecordStore, Pkcs11Token, SealedDataError, TeamDestroyedError, TeamDisabledError, TokenEnrolment, TokenUnavailableError
} from '../hsm/index.js'
import type { KeyRecordStore, WrappedTek } from '../hsm/index.js'
import { sessionRunner } from '../hsm/token-session.js'
import { makeToken, openToken } from './helpers/softhsm.js'

interface T { teardown: (fn: () => void | Promise<void>) => void }

/** A fresh token, opened; closed at teardown. */
async function token (t: T): Promise<Pkcs11Token> {
  const tok = await makeToken(t)
  const token = await openToken(tok)
  t.teardown(async () => { await token.close() })
  return token
}

/** An enrolled device: token + key hierarchy with one namespace. */
async function inviter (t: T): Promise<{ token: Pkcs11Token, kh: KeyHierarchy, store: KeyRecordStore, enrolment: TokenEnrolment }> {
  const tk = await token(t)
  const store = new MemoryKeyRecordStore()
  const kh = await KeyHierarchy.open({ token: tk, store })
  t.teardown(async () => { await kh.close() })
  await kh.createNamespace('ns-a')
  return { token: tk, kh, store, enrolment: new TokenEnrolment({ token: tk, keys: kh }) }
}

/** Attribute values of an object, or the CKR name the token answered. */
async function attribute (tk: Pkcs11Token, handle: Uint8Array, type: number): Promise<Buffer | string> {
  const run = sessionRunner(tk)
  return await run('getAttributes', async (s, p) => {
    try {
      return p.C_GetAttributeValue(s, Buffer.from(handle), [{ type }])[0]?.value ?? 'none'
    } catch (err) {
      return /CKR_[A-Z_]+/.exec((err as Error).message)?.[0] ?? 'error'
    }
  })
}

t.test('token-to-token TEK transfer: both tokens then unwrap the same NEK', async t => {
  const a = await inviter(t)
  const joinToken = await token(t)
  const joining = new TokenEnrolment({ token: joinToken })

  const pair = await joining.createEnrolmentKeyPair()
  t.ok(pair.publicKeySpki.byteLength > 300, 'an RSA 3072 SPKI')
  const wrapped = await a.enrolment.wrapTekFor(pair.publicKeySpki)
  t.equal(wrapped.version, 1)
  t.equal(wrapped.kcv.byteLength, 8)
  t.equal(wrapped.wrapped.byteLength, 384)

  const received = await joining.receiveTek(wrapped)
  t.same(received, { version: 1, label: 'strata-tek-v1' })

  // The enrolment key pair is gone; exactly one TEK object with the hierarchy's attributes.
  const teks = await joinToken.findSecretKeys('strata-')
  t.same(teks.map(k => k.label), ['strata-tek-v1'])
  const tek = teks[0]
  if (tek === undefined) throw new Error('no TEK')
  t.same(Buffer.from(tek.id).toString(), 'strata-tek-v1')
  t.equal(await attribute(joinToken, tek.handle, pkcs11js.CKA_VALUE), 'CKR_ATTRIBUTE_SENSITIVE', 'CKA_VALUE cannot be read')
  t.same(await attribute(joinToken, tek.handle, pkcs11js.CKA_SENSITIVE), Buffer.from([1]))
  t.same(await attribute(joinToken, tek.handle, pkcs11js.CKA_TOKEN), Buffer.from([1]))
  t.same(await attribute(joinToken, tek.handle, pkcs11js.CKA_EXTRACTABLE), Buffer.from([1]), 'extractable (wrapped only), like every TEK, so it can enrol others')
  t.same(await joinToken.keyUsage(tek.handle), { encrypt: true, decrypt: true })
  const rsa = await run(joinToken, async (s, p) => {
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA }])
    try { return p.C_FindObjects(s, 10).length } finally { p.C_FindObjectsFinal(s) }
  })
  t.equal(rsa, 0, 'no RSA objects left in the joining token')

  // The joining device's hierarchy adopts the TEK and reads the NEK the inviter wrapped.
  const bStore = new MemoryKeyRecordStore()
  for await (const [k, v] of a.store.entries('nek/')) await bStore.put(k, v)
  const kb = await KeyHierarchy.open({ token: joinToken, store: bStore })
  t.teardown(async () => { await kb.close() })
  const nekA = Buffer.from((await a.kh.nek('ns-a')).key)
  const nekB = Buffer.from((await kb.nek('ns-a')).key)
  t.ok(nekA.equals(nekB), 'same NEK on both devices')
  t.same(await kb.verifyKeys(), [])
  // And the other way: a namespace made on the new device is readable by the inviter.
  await kb.createNamespace('ns-b')
  for await (const [k, v] of bStore.entries('nek/ns-b/')) await a.store.put(k, v)
  t.ok(Buffer.from((await a.kh.nek('ns-b')).key).equals(Buffer.from((await kb.nek('ns-b')).key)))
  // Enrolling again into a token that holds a TEK is refused.
  const again = await joining.createEnrolmentKeyPair()
  await t.rejects(joining.receiveTek(await a.enrolment.wrapTekFor(again.publicKeySpki)), EnrolmentStateError)
})

async function run<T> (tk: Pkcs11Token, fn: (s: Buffer, p: InstanceType<typeof pkcs11js.PKCS11>) => Promise<T> | T): Promise<T> {
  return await sessionRunner(tk)('test', async (s, p) => await fn(s, p))
}

async function tekCount (tk: Pkcs11Token): Promise<number> {
  return (await tk.findSecretKeys('strata-')).length
}

t.test('a damaged wrapped key or a wrong check value is refused and leaves nothing behind', async t => {
  const a = await inviter(t)
  const joinToken = await token(t)
  const joining = new TokenEnrolment({ token: joinToken })

  const flip = async (mutate: (w: WrappedTek) => WrappedTek): Promise<void> => {
    const pair = await joining.createEnrolmentKeyPair()
    const w = await a.enrolment.wrapTekFor(pair.publicKeySpki)
    await t.rejects(joining.receiveTek(mutate(w)), KeyCustodyError)
    t.equal(await tekCount(joinToken), 0, 'no TEK object left')
    // The key pair was destroyed even though the transfer failed.
    await t.rejects(joining.receiveTek(w), EnrolmentStateError)
  }
  await flip(w => { const b = new Uint8Array(w.wrapped); b[100] = (b[100] ?? 0) ^ 0x01; return { ...w, wrapped: b } })
  await flip(w => { const b = new Uint8Array(w.wrapped); b[0] = (b[0] ?? 0) ^ 0x80; return { ...w, wrapped: b } })
  await flip(w => { const k = new Uint8Array(w.kcv); k[7] = (k[7] ?? 0) ^ 0x01; return { ...w, kcv: k } })
  await flip(w => ({ ...w, wrapped: w.wrapped.subarray(1) }))

  // Wrapped for another key pair (a stale or foreign transfer).
  const other = new TokenEnrolment({ token: await token(t) })
  const otherPair = await other.createEnrolmentKeyPair({})
  await joining.createEnrolmentKeyPair()
  await t.rejects(joining.receiveTek(await a.enrolment.wrapTekFor(otherPair.publicKeySpki)), KeyCustodyError)
  t.equal(await tekCount(joinToken), 0)

  // Malformed arguments are refused before touching the token.
  await joining.createEnrolmentKeyPair()
  const good = await a.enrolment.wrapTekFor((await joining.createEnrolmentKeyPair()).publicKeySpki)
  await t.rejects(joining.receiveTek({ ...good, kcv: new Uint8Array(3) }), InvalidKeyArgumentError)
  await t.rejects(joining.receiveTek({ ...good, version: 0 }), InvalidKeyArgumentError)
  await t.rejects(joining.receiveTek({ ...good, wrapped: new Uint8Array(0) }), InvalidKeyArgumentError)
  // ...and the pending pair still works afterwards.
  t.same(await joining.receiveTek(good), { version: 1, label: 'strata-tek-v1' })
})

t.test('wrapTekFor refuses bad public keys, a disabled and a destroyed team', async t => {
  const a = await inviter(t)
  const joining = new TokenEnrolment({ token: await token(t) })
  await t.rejects(a.enrolment.wrapTekFor(new Uint8Array([1, 2, 3])), InvalidKeyArgumentError)
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' })
  await t.rejects(a.enrolment.wrapTekFor(new Uint8Array(ec)), InvalidKeyArgumentError)
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ type: 'spki', format: 'der' })
  await t.rejects(a.enrolment.wrapTekFor(new Uint8Array(small)), InvalidKeyArgumentError)

  const pair = await joining.createEnrolmentKeyPair()
  await a.kh.disableTeam()
  await t.rejects(a.enrolment.wrapTekFor(pair.publicKeySpki), TeamDisabledError)
  // Without the hierarchy the token state alone still refuses.
  await t.rejects(new TokenEnrolment({ token: a.token }).wrapTekFor(pair.publicKeySpki), TeamDisabledError)
  await a.kh.enableTeam()
  t.equal((await a.enrolment.wrapTekFor(pair.publicKeySpki)).version, 1)
  await a.kh.rotateTek()
  t.equal((await a.enrolment.wrapTekFor(pair.publicKeySpki)).version, 2, 'the current TEK after a rotation')
  await a.kh.destroyTeam()
  await t.rejects(a.enrolment.wrapTekFor(pair.publicKeySpki), TeamDestroyedError)
})

t.test('receiveTek without a key pair is a state error', async t => {
  const joining = new TokenEnrolment({ token: await token(t) })
  await t.rejects(joining.receiveTek({ wrapped: new Uint8Array(384), version: 1, kcv: new Uint8Array(8) }), EnrolmentStateError)
  await joining.createEnrolmentKeyPair({ })
  await joining.discardEnrolmentKeyPair()
  await t.rejects(joining.receiveTek({ wrapped: new Uint8Array(384), version: 1, kcv: new Uint8Array(8) }), EnrolmentStateError)
})

t.test('device vault: seal/open with AAD, tamper and wrong context refused, key non-extractable', async t => {
  const tk = await token(t)
  const vault = new DeviceVault({ token: tk })
  const aad = new TextEncoder().encode('strata/test/v1')
  const secret = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])
  const blob = await vault.seal(secret, aad)
  t.equal(blob.byteLength, 1 + 12 + 8 + 16)
  t.notOk(Buffer.from(blob).includes(Buffer.from(secret)), 'plaintext not in the blob')
  t.same(await vault.open(blob, aad), secret)
  t.same(await vault.open(await vault.seal(secret, new Uint8Array(0)), new Uint8Array(0)), secret, 'empty AAD')
  await t.rejects(vault.seal(new Uint8Array(0), aad), InvalidKeyArgumentError, 'nothing to seal')

  const keys = (await tk.findSecretKeys(DEVICE_KEY_LABEL))
  t.equal(keys.length, 1, 'one device key, made on first use')
  const key = keys[0]
  if (key === undefined) throw new Error('no key')
  t.same(await attribute(tk, key.handle, pkcs11js.CKA_EXTRACTABLE), Buffer.from([0]))
  t.same(await attribute(tk, key.handle, pkcs11js.CKA_SENSITIVE), Buffer.from([1]))
  t.equal(await attribute(tk, key.handle, pkcs11js.CKA_VALUE), 'CKR_ATTRIBUTE_SENSITIVE')

  await t.rejects(vault.open(blob, new TextEncoder().encode('strata/other/v1')), SealedDataError)
  for (const at of [1, 13, blob.byteLength - 1]) {
    const bad = new Uint8Array(blob)
    bad[at] = (bad[at] ?? 0) ^ 0x01
    await t.rejects(vault.open(bad, aad), SealedDataError, `bit flip at ${at}`)
  }
  const badFormat = new Uint8Array(blob)
  badFormat[0] = 2
  await t.rejects(vault.open(badFormat, aad), SealedDataError)
  await t.rejects(vault.open(blob.subarray(0, 20), aad), SealedDataError)
  await t.rejects(vault.seal(new Uint8Array(64 * 1024 + 1), aad), InvalidKeyArgumentError)

  // A second instance (daemon restart) finds the same key; another token's vault cannot open it.
  t.same(await new DeviceVault({ token: tk }).open(blob, aad), secret)
  await t.rejects(new DeviceVault({ token: await token(t) }).open(blob, aad), SealedDataError)
})

t.test('device vault: its key stays right across a module re-initialisation (the token went away and came back)', async t => {
  const tok = await makeToken(t)
  const tk = await openToken(tok)
  t.teardown(async () => { await tk.close() })
  const aad = new TextEncoder().encode('strata/test/v1')
  const secret = new Uint8Array(randomBytes(32))
  // Keys made before and after the device key, so that the re-initialised module numbers them afresh.
  for (let i = 0; i < 4; i++) await tk.generateSecretKey({ label: `before-${i}`, id: new Uint8Array([i]) })
  const vault = new DeviceVault({ token: tk })
  const blob = await vault.seal(secret, aad)
  for (let i = 0; i < 4; i++) await tk.generateSecretKey({ label: `after-${i}`, id: new Uint8Array([i]) })
  const dir = join(tok.dir, 'tokens')
  renameSync(dir, `${dir}.away`)
  let restored = false
  t.teardown(() => { if (!restored) renameSync(`${dir}.away`, dir) })
  await t.rejects(vault.open(blob, aad), TokenUnavailableError, 'the token is gone')
  renameSync(`${dir}.away`, dir)
  restored = true
  let back: Uint8Array | undefined
  for (let i = 0; i < 100 && back === undefined; i++) {
    back = await vault.open(blob, aad).catch(async (err: unknown) => {
      if (!(err instanceof TokenUnavailableError)) throw err
      await new Promise(resolve => setTimeout(resolve, 100))
      return undefined
    })
  }
  t.same(back, secret, 'what was sealed before opens after the re-initialisation')
  t.same(await new DeviceVault({ token: tk }).open(await vault.seal(secret, aad), aad), secret, 'and what is sealed after is under the same key')
})
