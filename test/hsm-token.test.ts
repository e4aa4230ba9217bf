import t from 'tap'
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import {
  Pkcs11Token, ModuleNotFoundError, TokenNotFoundError, WrongPinError, PinLockedError, PinMissingError,
  TokenError, TokenUnavailableError, InvalidKeyArgumentError, ModuleProbeError, readPin, keyCheckValue, kcvEqual
} from '../hsm/index.js'
import { makeToken, openToken, lockUserPin, tokenStoreDir } from './helpers/softhsm.js'

const aad = new TextEncoder().encode('test-aad')

t.test('PIN checks', async t => {
  const tok = await makeToken(t)
  // Wrong PIN while nothing of ours is logged in: the token itself refuses it.
  await t.rejects(Pkcs11Token.open({ module: tok.module, label: tok.label, pin: 'wrong-pin' }), WrongPinError)
  await t.rejects(Pkcs11Token.open({ module: tok.module, label: tok.label, pin: 'x' }), { name: 'WrongPinError' })
  const token = await openToken(tok)
  // Login state is per application; a second instance with a wrong PIN must still be refused.
  await t.rejects(Pkcs11Token.open({ module: tok.module, label: tok.label, pin: 'wrong-pin' }), WrongPinError)
  const second = await Pkcs11Token.open({ module: tok.module, label: tok.label, pin: new TextEncoder().encode(tok.pin) })
  await second.close()
  // The first instance keeps working after the second closed.
  t.equal((await token.random(16)).byteLength, 16)
  await token.close()
})

t.test('module and token lookup errors', async t => {
  const tok = await makeToken(t)
  await t.rejects(Pkcs11Token.open({ module: '/nonexistent/libpkcs11.so', label: tok.label, pin: tok.pin }), ModuleNotFoundError)
  const notALibrary = join(tok.dir, 'not-a-module.so')
  writeFileSync(notALibrary, 'hello')
  await t.rejects(Pkcs11Token.open({ module: notALibrary, label: tok.label, pin: tok.pin }), ModuleNotFoundError)
  await t.rejects(Pkcs11Token.open({ module: tok.module, label: 'no-such-token', pin: tok.pin }), TokenNotFoundError)
  await t.rejects(Pkcs11Token.initToken({ module: tok.module, label: tok.label, soPin: 'so', userPin: '1234' }), InvalidKeyArgumentError)
})

t.test('secret key attributes: sensitive, value never readable', async t => {
  const tok = await makeToken(t)
  const token = await openToken(tok)
  t.teardown(async () => { await token.close() })
  const key = await token.generateSecretKey({ label: 'strata-tek-v1', id: new TextEncoder().encode('strata-tek-v1') })
  t.equal(key.label, 'strata-tek-v1')
  t.equal(key.checkValue.byteLength, 3, 'CKA_CHECK_VALUE is 3 bytes')

  // Look at the object with raw pkcs11js, sharing the module (and login) of this process.
  const { PKCS11, CKA_VALUE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_TOKEN, CKA_PRIVATE, CKA_ENCRYPT, CKA_DECRYPT, CKF_SERIAL_SESSION } = pkcs11js
  const raw = new PKCS11()
  raw.load(tok.module)
  const slot = raw.C_GetSlotList(true).find(s => raw.C_GetTokenInfo(s).label.replace(/[\0 ]+$/, '') === tok.label)
  if (slot === undefined) throw new Error('slot not found')
  const s = raw.C_OpenSession(slot, CKF_SERIAL_SESSION)
  const handle = Buffer.from(key.handle)
  const attrs = raw.C_GetAttributeValue(s, handle, [
    { type: CKA_SENSITIVE }, { type: CKA_EXTRACTABLE }, { type: CKA_TOKEN }, { type: CKA_PRIVATE }, { type: CKA_ENCRYPT }, { type: CKA_DECRYPT }
  ])
  t.same(attrs.map(a => a.value[0]), [1, 1, 1, 1, 1, 1], 'sensitive, extractable (wrapped only), token, private, encrypt, decrypt')
  t.throws(() => raw.C_GetAttributeValue(s, handle, [{ type: CKA_VALUE }]), { message: /CKR_ATTRIBUTE_SENSITIVE/ })
  raw.C_CloseSession(s)

  const found = await token.findSecretKeys('strata-tek-')
  t.equal(found.length, 1)
  t.same(found[0]?.checkValue, key.checkValue)
  t.same(await token.findSecretKeys('other-'), [])

  await token.destroyObject(key.handle)
  t.same(await token.findSecretKeys('strata-tek-'), [])
})

t.test('AES-GCM round trip, authentication, enable/disable', async t => {
  const tok = await makeToken(t)
  const token = await openToken(tok)
  t.teardown(async () => { await token.close() })
  const key = await token.generateSecretKey({ label: 'k', id: new Uint8Array([1]) })
  const iv = new Uint8Array(randomBytes(12))
  const plain = new Uint8Array(randomBytes(32))
  const ct = await token.encrypt(key.handle, plain, { iv, aad })
  t.equal(ct.byteLength, 48)
  t.same(await token.decrypt(key.handle, ct, { iv, aad }), plain)
  await t.rejects(token.decrypt(key.handle, ct, { iv, aad: new TextEncoder().encode('other') }), { name: 'TokenError', ckr: 'CKR_GENERAL_ERROR' })
  const bad = ct.slice()
  bad[40] = (bad[40] ?? 0) ^ 1
  await t.rejects(token.decrypt(key.handle, bad, { iv, aad }), TokenError)
  // The session is usable after a failed operation.
  t.same(await token.decrypt(key.handle, ct, { iv, aad }), plain)

  await token.setKeyUsage(key.handle, { encrypt: false, decrypt: false })
  t.same(await token.keyUsage(key.handle), { encrypt: false, decrypt: false })
  await t.rejects(token.decrypt(key.handle, ct, { iv, aad }), { name: 'TokenError', ckr: 'CKR_KEY_FUNCTION_NOT_PERMITTED' })
  await t.rejects(token.encrypt(key.handle, plain, { iv, aad }), { name: 'TokenError', ckr: 'CKR_KEY_FUNCTION_NOT_PERMITTED' })
  await token.setKeyUsage(key.handle, { encrypt: true, decrypt: true })
  t.same(await token.decrypt(key.handle, ct, { iv, aad }), plain)
})

t.test('operations are serialised per session (pool of 2, 64 concurrent calls)', async t => {
  const tok = await makeToken(t)
  const token = await openToken(tok, { sessions: 2 })
  t.teardown(async () => { await token.close() })
  const key = await token.generateSecretKey({ label: 'k', id: new Uint8Array([1]) })
  const jobs = Array.from({ length: 64 }, async () => {
    const iv = new Uint8Array(randomBytes(12))
    const plain = new Uint8Array(randomBytes(32))
    const ct = await token.encrypt(key.handle, plain, { iv, aad })
    return kcvEqual(await token.decrypt(key.handle, ct, { iv, aad }), plain)
  })
  t.same(await Promise.all(jobs), Array(64).fill(true))
})

t.test('fault injection: transient failures are retried on fresh sessions, a persistent one is reported', async t => {
  const tok = await makeToken(t)
  const failing = new Set([2, 3, 5, 6, 7])
  const token = await openToken(tok, {
    faults: {
      failCall: (op, n) => op !== 'random' || !failing.has(n) ? undefined : n === 3 ? 'CKR_SESSION_HANDLE_INVALID' : 'CKR_DEVICE_ERROR',
      stallMs: (op, n) => op === 'random' && n === 4 ? 20 : 0
    }
  })
  t.teardown(async () => { await token.close() })
  const key = await token.generateSecretKey({ label: 'k', id: new Uint8Array([1]) })
  const iv = new Uint8Array(randomBytes(12))
  const ct = await token.encrypt(key.handle, new Uint8Array(32).fill(9), { iv, aad })
  t.equal((await token.random(8)).byteLength, 8)
  t.equal((await token.random(8)).byteLength, 8, 'CKR_DEVICE_ERROR, then a lost session: retried, succeeds')
  await t.rejects(token.random(8), { name: 'TokenError', ckr: 'CKR_DEVICE_ERROR' }, 'three failures in a row are reported')
  t.equal((await token.random(8)).byteLength, 8, 'a fresh session (logged in) replaces the lost ones')
  t.same(await token.decrypt(key.handle, ct, { iv, aad }), new Uint8Array(32).fill(9), 'closing broken sessions did not log out: the key handle still works')
})

t.test('token directory removed and restored: named error meanwhile, recovery without reopening, handles still right', async t => {
  const tok = await makeToken(t)
  const token = await openToken(tok)
  t.teardown(async () => { await token.close() })
  // Two keys, so that a re-initialised module could number them differently.
  const other = await token.generateSecretKey({ label: 'other', id: new Uint8Array([2]) })
  const key = await token.generateSecretKey({ label: 'k', id: new Uint8Array([1]) })
  const iv = new Uint8Array(randomBytes(12))
  const plain = new Uint8Array(randomBytes(32))
  const ct = await token.encrypt(key.handle, plain, { iv, aad })
  const otherCt = await token.encrypt(other.handle, plain, { iv, aad })
  const dir = join(tok.dir, 'tokens')
  renameSync(dir, `${dir}.away`)
  let restored = false
  t.teardown(() => { if (!restored) renameSync(`${dir}.away`, dir) })
  await t.rejects(token.decrypt(key.handle, ct, { iv, aad }), TokenUnavailableError)
  await t.rejects(token.findSecretKeys(''), TokenUnavailableError, 'an unreachable token never answers "no keys"')
  renameSync(`${dir}.away`, dir)
  restored = true
  let back: Uint8Array | undefined
  for (let i = 0; i < 100 && back === undefined; i++) {
    back = await token.decrypt(key.handle, ct, { iv, aad }).catch(async (err: unknown) => {
      if (!(err instanceof TokenUnavailableError)) throw err
      await new Promise(resolve => setTimeout(resolve, 100))
      return undefined
    })
  }
  t.same(back, plain, 'the same handle decrypts with the same key after the module was re-initialised')
  t.same(await token.decrypt(other.handle, otherCt, { iv, aad }), plain)
  t.same((await token.findSecretKeys('')).map(k => k.label).sort(), ['k', 'other'])
})

t.test('readPin', async t => {
  const tok = await makeToken(t)
  const file = join(tok.dir, 'pin')
  writeFileSync(file, '4321\n')
  t.same(await readPin({ pinFile: file }), new TextEncoder().encode('4321'))
  writeFileSync(file, '4321\r\n')
  t.same(await readPin({ pinFile: file, env: 'ignored' }), new TextEncoder().encode('4321'))
  t.same(await readPin({ env: 'abcd\n' }), new TextEncoder().encode('abcd'))
  await t.rejects(readPin({}), PinMissingError)
  await t.rejects(readPin({ pinFile: join(tok.dir, 'missing') }), PinMissingError)
  writeFileSync(file, '\n')
  await t.rejects(readPin({ pinFile: file }), PinMissingError)
  await t.rejects(readPin({ env: '' }), PinMissingError)
  // A PIN read from a file opens the token.
  writeFileSync(file, `${tok.pin}\n`)
  const token = await Pkcs11Token.open({ module: tok.module, label: tok.label, pin: await readPin({ pinFile: file }) })
  await token.close()
})

t.test('key check values', async t => {
  const a = new Uint8Array(32).fill(1)
  const b = a.slice()
  b[31] = 0
  t.equal(keyCheckValue(a).byteLength, 8)
  t.ok(kcvEqual(keyCheckValue(a), keyCheckValue(a.slice())))
  t.notOk(kcvEqual(keyCheckValue(a), keyCheckValue(b)))
  t.notOk(kcvEqual(keyCheckValue(a), keyCheckValue(a).subarray(0, 7)))
})

// Last: needs every token of this process closed, so that SoftHSM re-reads the token file.
t.test('locked PIN -> PinLockedError', async t => {
  const tok = await makeToken(t)
  lockUserPin(tok)
  await t.rejects(Pkcs11Token.open({ module: tok.module, label: tok.label, pin: tok.pin }), PinLockedError)
})

// Also last, for the same reason. SoftHSM2 2.6 calls exit(5) inside C_Initialize when a stored
// byte string's length is absurd (measured). The probe child dies instead of this process.
t.test('a module that would end the process in C_Initialize -> a named token error, nothing lost', async t => {
  const tok = await makeToken(t)
  const token = await openToken(tok)
  await token.generateSecretKey({ label: 'probe-test', id: new Uint8Array([7]) })
  await token.close()
  const file = keyObjectFile(tok)
  const good = readFileSync(file)
  const bad = Buffer.from(good)
  bad.writeBigUInt64BE(1n << 40n, firstByteStringLength(bad))
  writeFileSync(file, bad)
  const err = await Pkcs11Token.open({ module: tok.module, label: tok.label, pin: tok.pin }).then(() => undefined, (e: unknown) => e)
  t.type(err, ModuleProbeError)
  t.type(err, TokenError)
  t.match((err as Error).message, /ended a process with exit code 5/)
  t.match((err as Error).message, join(tok.dir, 'tokens'))
  writeFileSync(file, good)
  const again = await openToken(tok)
  t.equal((await again.random(8)).byteLength, 8, 'the restored file brings the token back')
  await again.close()
})

/** The object file of the one key object in tok's token directory. */
function keyObjectFile (tok: { dir: string, label: string }): string {
  const dir = tokenStoreDir(tok)
  const objects = readdirSync(dir).filter(f => f.endsWith('.object') && f !== 'token.object')
  if (objects.length !== 1) throw new Error(`expected one key object in ${dir}, found ${objects.length}`)
  return join(dir, objects[0] as string)
}

/**
 * Offset of the first byte-string attribute's 64-bit length in a SoftHSM2 object file: a 64-bit
 * generation, then per attribute a 64-bit type, a 64-bit kind and the value (kind 1 bool: 1 byte;
 * 2 ulong: 8 bytes; 3 byte string: 64-bit length, then the bytes).
 */
function firstByteStringLength (bytes: Buffer): number {
  let at = 8
  while (at + 16 <= bytes.byteLength) {
    const kind = bytes.readBigUInt64BE(at + 8)
    at += 16
    if (kind === 3n) return at
    if (kind === 1n) at += 1
    else if (kind === 2n) at += 8
    else throw new Error(`unexpected attribute kind ${kind} at ${at - 8}: not SoftHSM2 2.6's object file format`)
  }
  throw new Error('no byte-string attribute in the object file')
}
