import { randomBytes } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import { GCM_IV_BYTES, GCM_TAG_BYTES } from './constants.js'
import { InvalidKeyArgumentError, SealedDataError } from './errors.js'
import { ckrName } from './pkcs11-errors.js'
import type { KeyHandle, Pkcs11Token } from './token.js'
import { sessionRunner } from './token-session.js'
import type { SessionRunner } from './token-session.js'

const {
  CKA_CLASS, CKA_DECRYPT, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE, CKA_LABEL, CKA_PRIVATE,
  CKA_SENSITIVE, CKA_TOKEN, CKA_VALUE_LEN, CKA_WRAP, CKA_UNWRAP, CKK_AES, CKM_AES_KEY_GEN, CKO_SECRET_KEY
} = pkcs11js

/** Label (and CKA_ID) of the device-local vault key in the token. */
export const DEVICE_KEY_LABEL = 'strata-device-v1'

/** Largest plaintext the vault seals: it is for small secrets (keys), not data. */
export const MAX_SEALED_PLAINTEXT = 64 * 1024

/** Largest caller AAD. */
export const MAX_SEALED_AAD = 4096

const FORMAT = 0x01
const HEADER = 1 + GCM_IV_BYTES
const AAD_PREFIX = new TextEncoder().encode('strata/device-vault/v1\0')

/** GCM tag failures: SoftHSM reports CKR_GENERAL_ERROR, others CKR_ENCRYPTED_DATA_INVALID. */
const OPEN_FAILED = new Set(['CKR_GENERAL_ERROR', 'CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_DATA_INVALID'])

/** Seals small device-local secrets (e.g. the device's libp2p key) under a token key. */
export interface Vault {
  /** Encrypt: returns a self-describing blob. `aad` binds the blob to its purpose. */
  seal (plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array>
  /** Decrypt a blob from seal() with the same aad; the returned buffer is the caller's to zero. Throws SealedDataError. */
  open (blob: Uint8Array, aad: Uint8Array): Promise<Uint8Array>
}

export interface DeviceVaultComponents {
  token: Pkcs11Token
}

/**
 * A device-local AES-256 key in the token (`strata-device-v1`: private, sensitive,
 * non-extractable, encrypt/decrypt only; made on first use) sealing small secrets with
 * CKM_AES_GCM inside the token.
 *
 * Blob: 0x01 | IV (12 bytes, random) | ciphertext | tag (16 bytes); associated data
 * "strata/device-vault/v1\0" || aad.
 */
export class DeviceVault implements Vault {
  private readonly token: Pkcs11Token
  private readonly run: SessionRunner
  private key: Promise<KeyHandle[]> | undefined

  constructor (components: DeviceVaultComponents) {
    this.token = components.token
    this.run = sessionRunner(components.token)
  }

  async seal (plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!(plaintext instanceof Uint8Array) || plaintext.byteLength === 0 || plaintext.byteLength > MAX_SEALED_PLAINTEXT) throw new InvalidKeyArgumentError(`plaintext must be 1-${MAX_SEALED_PLAINTEXT} bytes`)
    checkAad(aad)
    return await this._seal(plaintext, aad)
  }

  async open (blob: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (!(blob instanceof Uint8Array)) throw new SealedDataError('not bytes')
    checkAad(aad)
    if (blob.byteLength < HEADER + 1 + GCM_TAG_BYTES || blob.byteLength > HEADER + MAX_SEALED_PLAINTEXT + GCM_TAG_BYTES) throw new SealedDataError(`blob of ${blob.byteLength} bytes is not a sealed blob`)
    if (blob[0] !== FORMAT) throw new SealedDataError(`unknown blob format ${blob[0] ?? 0}`)
    return await this._open(blob, aad)
  }

  /** The vault key, created if the token has none. */
  async ensureKey (): Promise<void> {
    await this.keys()
  }

  private async _seal (plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const [key] = await this.keys()
    if (key === undefined) throw new SealedDataError('no device key')
    const iv = new Uint8Array(randomBytes(GCM_IV_BYTES))
    const sealed = await this.token.encrypt(key, plaintext, { iv, aad: fullAad(aad) })
    const out = new Uint8Array(HEADER + sealed.byteLength)
    out[0] = FORMAT
    out.set(iv, 1)
    out.set(sealed, HEADER)
    return out
  }

  private async _open (blob: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const iv = blob.slice(1, HEADER)
    const data = blob.subarray(HEADER)
    let failure: unknown
    // Normally one key; two processes racing on first use may each have made one.
    for (const key of await this.keys()) {
      try {
        return await this.token.decrypt(key, data, { iv, aad: fullAad(aad) })
      } catch (err) {
        const ckr = ckrName(err)
        if (ckr === undefined || !OPEN_FAILED.has(ckr)) throw err
        failure = err
      }
    }
    throw new SealedDataError('authentication failed (tampered, sealed with another device key, or for another purpose)', { cause: failure })
  }

  private async keys (): Promise<KeyHandle[]> {
    this.key ??= this.findOrCreate().catch((err: unknown) => {
      this.key = undefined
      throw err
    })
    return await this.key
  }

  private async findOrCreate (): Promise<KeyHandle[]> {
    const found = (await this.token.findSecretKeys(DEVICE_KEY_LABEL)).filter(k => k.label === DEVICE_KEY_LABEL)
    if (found.length > 0) return found.map(k => k.handle)
    await this.run('generate', async (s, p) => await p.C_GenerateKeyAsync(s, { mechanism: CKM_AES_KEY_GEN }, [
      { type: CKA_CLASS, value: CKO_SECRET_KEY },
      { type: CKA_KEY_TYPE, value: CKK_AES },
      { type: CKA_VALUE_LEN, value: 32 },
      { type: CKA_TOKEN, value: true },
      { type: CKA_PRIVATE, value: true },
      { type: CKA_SENSITIVE, value: true },
      { type: CKA_EXTRACTABLE, value: false },
      { type: CKA_ENCRYPT, value: true },
      { type: CKA_DECRYPT, value: true },
      { type: CKA_WRAP, value: false },
      { type: CKA_UNWRAP, value: false },
      { type: CKA_LABEL, value: DEVICE_KEY_LABEL },
      { type: CKA_ID, value: Buffer.from(DEVICE_KEY_LABEL) }
    ]))
    // Found again by label: the token then re-finds it after a module re-initialisation, when
    // the raw handle from C_GenerateKey may name another key.
    const made = (await this.token.findSecretKeys(DEVICE_KEY_LABEL)).filter(k => k.label === DEVICE_KEY_LABEL)
    if (made.length === 0) throw new SealedDataError('the device key just made is not on the token')
    return made.map(k => k.handle)
  }
}

function checkAad (aad: Uint8Array): void {
  if (!(aad instanceof Uint8Array) || aad.byteLength > MAX_SEALED_AAD) throw new InvalidKeyArgumentError(`aad must be at most ${MAX_SEALED_AAD} bytes`)
}

function fullAad (aad: Uint8Array): Uint8Array {
  const out = new Uint8Array(AAD_PREFIX.byteLength + aad.byteLength)
  out.set(AAD_PREFIX)
  out.set(aad, AAD_PREFIX.byteLength)
  return out
}
