import { createHash, createPublicKey, randomBytes } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import { KCV_BYTES, KEY_BYTES, TEK_LABEL_PREFIX } from './constants.js'
import { kcvEqual } from './custody.js'
import {
  EnrolmentStateError, InvalidKeyArgumentError, KeyCustodyError, TeamDestroyedError, TeamDisabledError
} from './errors.js'
import { checkVersion, tekKey } from './nek-record.js'
import { ckrName } from './pkcs11-errors.js'
import type { KeyHandle, Pkcs11Token, SecretKeyInfo } from './token.js'
import { asBuffer, plain, sessionRunner } from './token-session.js'
import type { SessionRunner } from './token-session.js'
import type { AbortOptions, KeyService } from './types.js'
import { Mutex } from './mutex.js'

const {
  CKA_CLASS, CKA_DECRYPT, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE, CKA_LABEL, CKA_MODULUS,
  CKA_MODULUS_BITS, CKA_PRIVATE, CKA_PUBLIC_EXPONENT, CKA_SENSITIVE, CKA_SIGN, CKA_TOKEN, CKA_UNWRAP,
  CKA_VALUE_LEN, CKA_VERIFY, CKA_WRAP, CKG_MGF1_SHA1, CKK_AES, CKK_RSA, CKM_RSA_PKCS_KEY_PAIR_GEN,
  CKM_RSA_PKCS_OAEP, CKM_SHA_1, CKO_PUBLIC_KEY, CKO_SECRET_KEY, CK_PARAMS_RSA_OAEP
} = pkcs11js

/** CKZ_DATA_SPECIFIED: the OAEP label source (empty label). pkcs11js exports no constant for it. */
const CKZ_DATA_SPECIFIED = 1

/**
 * RSA-OAEP with SHA-1 and MGF1-SHA1. SoftHSM 2.6.1 answers CKR_ARGUMENTS_BAD to C_WrapKey with
 * OAEP-SHA256/MGF1-SHA256 (measured), so SHA-1 it is: OAEP's security does not rest on SHA-1's
 * collision resistance, and the wrapped TEK crosses only a Noise channel to the enrolling device.
 */
const OAEP = {
  mechanism: CKM_RSA_PKCS_OAEP,
  parameter: { type: CK_PARAMS_RSA_OAEP, hashAlg: CKM_SHA_1, mgf: CKG_MGF1_SHA1, source: CKZ_DATA_SPECIFIED }
}

/**
 * Transfer check value of a TEK, computed inside the token on both sides:
 * SHA-256("strata/tek-kcv/v1" || AES-GCM(TEK, iv = "strata/kcv/1", aad = "strata/tek-kcv/v1", 16 zero bytes))[0..8].
 * (SoftHSM reports no CKA_CHECK_VALUE for an unwrapped key, so the token's own check value cannot
 * be compared. The IV is fixed but so are the plaintext and AAD: every call gives the same output,
 * and it never reveals E_K(0), GCM's hash key.)
 */
const KCV_IV = new TextEncoder().encode('strata/kcv/1')
const KCV_AAD = new TextEncoder().encode('strata/tek-kcv/v1')

/** Labels of the enrolment key pair and of a received TEK before its check passed. */
const ENROL_PREFIX = 'strata-enrol-'
const STAGING_PREFIX = 'strata-enrol-tek-v'

/** Return values with which tokens report an unwrap that failed (OAEP padding check, bad length). */
const UNWRAP_FAILED = new Set([
  'CKR_GENERAL_ERROR', 'CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_DATA_INVALID',
  'CKR_WRAPPED_KEY_INVALID', 'CKR_WRAPPED_KEY_LEN_RANGE', 'CKR_DATA_LEN_RANGE'
])

export interface TokenEnrolmentComponents {
  token: Pkcs11Token
  /** The key hierarchy of this device (inviting side: refuses a disabled or destroyed team). */
  keys?: Pick<KeyService, 'teamState'>
}

export interface TokenEnrolmentInit {
  /** RSA modulus size of the enrolment key pair (default 3072). */
  modulusBits?: 2048 | 3072 | 4096
}

export interface EnrolmentKeyPair {
  /** DER SubjectPublicKeyInfo of the RSA public key; the private half never leaves the token. */
  publicKeySpki: Uint8Array
  /** Label of the (session) key objects in the token. */
  label: string
}

/** A TEK wrapped for one enrolment key pair. Nothing in it is secret without that key pair. */
export interface WrappedTek {
  wrapped: Uint8Array
  version: number
  /** Transfer check value (8 bytes), see KCV_IV above. */
  kcv: Uint8Array
}

export interface ReceivedTek {
  version: number
  label: string
}

interface PendingPair { label: string, privateKey: KeyHandle, modulusBytes: number }

/**
 * Token-to-token transfer of the team encryption key (DESIGN.md §2, enrolment). The joining
 * device makes an RSA key pair in its token (createEnrolmentKeyPair) and sends the public key;
 * the inviting device's token wraps its TEK for it (wrapTekFor, C_WrapKey with RSA-OAEP); the
 * joining token unwraps it into a TEK object (receiveTek, C_UnwrapKey). The TEK is never in
 * plaintext in either process.
 *
 * On the joining side receiveTek must run before the device's KeyHierarchy is first started
 * (which would otherwise make a TEK of its own); the hierarchy then adopts the received TEK.
 */
export class TokenEnrolment {
  private readonly token: Pkcs11Token
  private readonly keys: Pick<KeyService, 'teamState'> | undefined
  private readonly modulusBits: number
  private readonly run: SessionRunner
  private pending: PendingPair | undefined
  private readonly mutex = new Mutex()

  constructor (components: TokenEnrolmentComponents, init: TokenEnrolmentInit = {}) {
    this.token = components.token
    this.keys = components.keys
    this.modulusBits = init.modulusBits ?? 3072
    if (![2048, 3072, 4096].includes(this.modulusBits)) throw new InvalidKeyArgumentError('modulusBits must be 2048, 3072 or 4096')
    this.run = sessionRunner(components.token)
  }

  /** Joining side: a new RSA key pair in the token (replacing a pending one). */
  async createEnrolmentKeyPair (options: AbortOptions = {}): Promise<EnrolmentKeyPair> {
    options.signal?.throwIfAborted()
    return await this.exclusive(async () => await this._createEnrolmentKeyPair(options))
  }

  /**
   * Joining side: unwrap a TEK with the pending enrolment key pair into a TEK object of the key
   * hierarchy, check it, and destroy the key pair (also on failure). A bad wrapped key or a wrong
   * check value is a KeyCustodyError and leaves no TEK object behind.
   */
  async receiveTek (tek: WrappedTek, options: AbortOptions = {}): Promise<ReceivedTek> {
    if (tek === null || typeof tek !== 'object') throw new InvalidKeyArgumentError('wrapped TEK')
    checkVersion(tek.version, 'TEK version')
    if (!(tek.wrapped instanceof Uint8Array) || tek.wrapped.byteLength === 0 || tek.wrapped.byteLength > 512) throw new InvalidKeyArgumentError('wrapped TEK must be 1-512 bytes')
    if (!(tek.kcv instanceof Uint8Array) || tek.kcv.byteLength !== KCV_BYTES) throw new InvalidKeyArgumentError(`TEK check value must be ${KCV_BYTES} bytes`)
    options.signal?.throwIfAborted()
    return await this.exclusive(async () => await this._receiveTek(tek, options))
  }

  /** Inviting side: wrap the current TEK for the enrolment public key (DER SPKI, RSA 2048-4096 bits). */
  async wrapTekFor (publicKeySpki: Uint8Array, options: AbortOptions = {}): Promise<WrappedTek> {
    const pub = parseRsaSpki(publicKeySpki)
    options.signal?.throwIfAborted()
    return await this._wrapTekFor(pub, options)
  }

  /** Destroy a pending enrolment key pair (e.g. when a join was abandoned). */
  async discardEnrolmentKeyPair (): Promise<void> {
    await this.exclusive(async () => { await this.discardPending() })
  }

  // --- internals -------------------------------------------------------------------------

  private async _createEnrolmentKeyPair (options: AbortOptions): Promise<EnrolmentKeyPair> {
    await this.discardPending()
    // A crash between unwrap and check may have left a staging TEK: it was never verified.
    for (const obj of await this.token.findSecretKeys(STAGING_PREFIX)) await this.token.destroyObject(obj.handle)
    options.signal?.throwIfAborted()
    const label = `${ENROL_PREFIX}${randomBytes(6).toString('hex')}`
    const { privateKey, modulus, exponent } = await this.run('generate', async (s, p) => {
      // Session objects: they vanish with the process, so a crash leaves no key pair behind.
      const pair = await p.C_GenerateKeyPairAsync(s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, [
        { type: CKA_TOKEN, value: false },
        { type: CKA_MODULUS_BITS, value: this.modulusBits },
        { type: CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
        { type: CKA_WRAP, value: true },
        { type: CKA_ENCRYPT, value: false },
        { type: CKA_VERIFY, value: false },
        { type: CKA_LABEL, value: label }
      ], [
        { type: CKA_TOKEN, value: false },
        { type: CKA_PRIVATE, value: true },
        { type: CKA_SENSITIVE, value: true },
        { type: CKA_EXTRACTABLE, value: false },
        { type: CKA_UNWRAP, value: true },
        { type: CKA_DECRYPT, value: false },
        { type: CKA_SIGN, value: false },
        { type: CKA_LABEL, value: label }
      ])
      try {
        const [mod, exp] = p.C_GetAttributeValue(s, pair.publicKey, [{ type: CKA_MODULUS }, { type: CKA_PUBLIC_EXPONENT }])
        if (mod === undefined || exp === undefined) throw new InvalidKeyArgumentError('the token reported no RSA public key')
        return { privateKey: pair.privateKey, modulus: Buffer.from(mod.value), exponent: Buffer.from(exp.value) }
      } catch (err) {
        try { p.C_DestroyObject(s, pair.privateKey) } catch {}
        throw err
      } finally {
        // Only the private half is needed from now on; the public key travels as SPKI.
        try { p.C_DestroyObject(s, pair.publicKey) } catch {}
      }
    })
    this.pending = { label, privateKey, modulusBytes: modulus.byteLength }
    const spki = createPublicKey({ key: { kty: 'RSA', n: b64url(modulus), e: b64url(exponent) }, format: 'jwk' }).export({ type: 'spki', format: 'der' })
    return { publicKeySpki: new Uint8Array(spki), label }
  }

  private async _receiveTek (tek: WrappedTek, options: AbortOptions): Promise<ReceivedTek> {
    const pair = this.pending
    if (pair === undefined) throw new EnrolmentStateError('no enrolment key pair is pending (call createEnrolmentKeyPair first)')
    const label = `${TEK_LABEL_PREFIX}${tek.version}`
    const keyRef = `${tekKey(tek.version)} (enrolment)`
    let staged: KeyHandle | undefined
    try {
      const existing = (await this.token.findSecretKeys(TEK_LABEL_PREFIX)).filter(o => tekVersionOf(o.label) !== undefined)
      if (existing.length > 0) throw new EnrolmentStateError('this token already holds a team key')
      if (tek.wrapped.byteLength !== pair.modulusBytes) throw new KeyCustodyError(keyRef, 'the wrapped key has the wrong length for the enrolment key')
      options.signal?.throwIfAborted()
      const stagingLabel = `${STAGING_PREFIX}${tek.version}`
      await this.run('unwrap', async (s, p) => {
        try {
          await p.C_UnwrapKeyAsync(s, OAEP, asBuffer(pair.privateKey), asBuffer(tek.wrapped), [
            // Exactly the attributes of a TEK made by Pkcs11Token.generateSecretKey (hsm/FORMAT.md).
            { type: CKA_CLASS, value: CKO_SECRET_KEY },
            { type: CKA_KEY_TYPE, value: CKK_AES },
            { type: CKA_TOKEN, value: true },
            { type: CKA_PRIVATE, value: true },
            { type: CKA_SENSITIVE, value: true },
            { type: CKA_EXTRACTABLE, value: true },
            { type: CKA_ENCRYPT, value: true },
            { type: CKA_DECRYPT, value: true },
            { type: CKA_LABEL, value: stagingLabel },
            { type: CKA_ID, value: Buffer.from(stagingLabel) }
          ])
        } catch (err) {
          const ckr = ckrName(err)
          if (ckr !== undefined && UNWRAP_FAILED.has(ckr)) throw new KeyCustodyError(keyRef, 'the token could not unwrap the key (damaged, or wrapped for another key pair)', { cause: err })
          throw err
        }
      })
      // Found again by label: a handle the token lent out stays right across a module
      // re-initialisation, the raw one from C_UnwrapKey could then name another key.
      const handle = (await this.token.findSecretKeys(stagingLabel)).find(k => k.label === stagingLabel)?.handle
      if (handle === undefined) throw new KeyCustodyError(keyRef, 'the unwrapped key is not on the token')
      staged = handle
      const length = await this.token.withKey('getAttributes', handle, async (s, p, raw) => {
        const [len] = p.C_GetAttributeValue(s, raw, [{ type: CKA_VALUE_LEN }])
        return len === undefined || len.value.byteLength === 0 ? 0 : Number(len.value.readUIntLE(0, Math.min(len.value.byteLength, 6)))
      })
      // SoftHSM 2.6.1 reports CKA_VALUE_LEN 0 for unwrapped keys; the check value below then vouches for the key.
      if (length !== 0 && length !== KEY_BYTES) throw new KeyCustodyError(keyRef, `the unwrapped key is ${length} bytes, not an AES-256 key`)
      if (!kcvEqual(await transferKcv(this.token, handle), tek.kcv)) throw new KeyCustodyError(keyRef, 'check value of the unwrapped key does not match the one sent')
      // Checked: give it its real label, under which the key hierarchy adopts it.
      await this.token.withKey('setAttributes', handle, async (s, p, raw) => {
        p.C_SetAttributeValue(s, raw, [{ type: CKA_LABEL, value: label }, { type: CKA_ID, value: Buffer.from(label) }])
      })
      staged = undefined
      return { version: tek.version, label }
    } finally {
      if (staged !== undefined) await this.token.destroyObject(staged).catch(() => {})
      await this.discardPending()
    }
  }

  private async _wrapTekFor (pub: { modulus: Buffer, exponent: Buffer }, options: AbortOptions): Promise<WrappedTek> {
    const state = this.keys === undefined ? 'enabled' : await this.keys.teamState()
    if (state === 'destroyed') throw new TeamDestroyedError()
    if (state === 'disabled') throw new TeamDisabledError()
    const teks = (await this.token.findSecretKeys(TEK_LABEL_PREFIX)).filter(o => tekVersionOf(o.label) !== undefined)
    if (teks.length === 0) throw new TeamDestroyedError()
    if (teks.length > 1) throw new EnrolmentStateError('a TEK rotation is in progress; retry when it has finished')
    const tek = teks[0] as SecretKeyInfo
    const version = tekVersionOf(tek.label) as number
    const usage = await this.token.keyUsage(tek.handle)
    if (!usage.encrypt || !usage.decrypt) throw new TeamDisabledError()
    options.signal?.throwIfAborted()
    const kcv = await transferKcv(this.token, tek.handle)
    const wrapped = await this.token.withKey('wrap', tek.handle, async (s, p, tekRaw) => {
      const wrappingKey = p.C_CreateObject(s, [
        { type: CKA_CLASS, value: CKO_PUBLIC_KEY },
        { type: CKA_KEY_TYPE, value: CKK_RSA },
        { type: CKA_TOKEN, value: false },
        { type: CKA_MODULUS, value: pub.modulus },
        { type: CKA_PUBLIC_EXPONENT, value: pub.exponent },
        { type: CKA_WRAP, value: true },
        { type: CKA_ENCRYPT, value: false },
        { type: CKA_VERIFY, value: false }
      ])
      try {
        return plain(await p.C_WrapKeyAsync(s, OAEP, wrappingKey, tekRaw, Buffer.alloc(pub.modulus.byteLength + 16)))
      } finally {
        try { p.C_DestroyObject(s, wrappingKey) } catch {}
      }
    })
    return { wrapped: new Uint8Array(wrapped), version, kcv }
  }

  private async discardPending (): Promise<void> {
    const pair = this.pending
    this.pending = undefined
    if (pair !== undefined) await this.token.destroyObject(pair.privateKey).catch(() => {})
  }

  private async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.mutex.run(fn)
  }
}

/** The TEK transfer check value, computed by the token (see KCV_IV). */
async function transferKcv (token: Pkcs11Token, handle: KeyHandle): Promise<Uint8Array> {
  let out: Uint8Array
  try {
    out = await token.encrypt(handle, new Uint8Array(16), { iv: KCV_IV, aad: KCV_AAD })
  } catch (err) {
    if (ckrName(err) === 'CKR_KEY_FUNCTION_NOT_PERMITTED') throw new TeamDisabledError({ cause: err })
    throw err
  }
  const digest = createHash('sha256').update(KCV_AAD).update(out).digest()
  return new Uint8Array(digest.subarray(0, KCV_BYTES))
}

/** Modulus and exponent of a DER SPKI RSA public key of 2048-4096 bits. */
function parseRsaSpki (spki: Uint8Array): { modulus: Buffer, exponent: Buffer } {
  if (!(spki instanceof Uint8Array) || spki.byteLength === 0 || spki.byteLength > 1024) throw new InvalidKeyArgumentError('enrolment public key must be a DER SPKI of at most 1024 bytes')
  let jwk: { kty?: string, n?: string, e?: string }
  try {
    const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' })
    if (key.asymmetricKeyType !== 'rsa') throw new Error('not RSA')
    jwk = key.export({ format: 'jwk' })
  } catch (err) {
    throw new InvalidKeyArgumentError('enrolment public key is not an RSA SubjectPublicKeyInfo', { cause: err })
  }
  const modulus = Buffer.from(jwk.n ?? '', 'base64url')
  const exponent = Buffer.from(jwk.e ?? '', 'base64url')
  const bits = modulus.byteLength * 8
  if (bits < 2048 || bits > 4096 || exponent.byteLength === 0) throw new InvalidKeyArgumentError('enrolment public key must be RSA with a 2048-4096 bit modulus')
  return { modulus, exponent }
}

function tekVersionOf (label: string): number | undefined {
  const m = /^strata-tek-v(\d{1,10})$/.exec(label)
  if (m?.[1] === undefined) return undefined
  const v = Number(m[1])
  return v >= 1 ? v : undefined
}

function b64url (b: Buffer): string {
  return b.toString('base64url')
}
