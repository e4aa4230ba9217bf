/**
 * Metadata records at rest: [0x01][nonce:12][AES-256-GCM(recordKey, body)][tag:16], with the
 * record's own LevelDB key as AAD so a record cannot be moved to another key undetected.
 * Keys derived from the namespace metadata key (NMK) with HKDF-SHA256.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { NONCE_LEN, TAG_LEN, type RandomSource } from './block-crypto.js'

const RECORD_FORMAT = 1

export interface NamespaceKeys {
  /** Encrypts metadata records. */
  record: Buffer
  /** Keys the name-lookup hash. */
  name: Buffer
  /** Keys the plaintext dedup hash. */
  dedup: Buffer
  /** Encrypts the payloads of change-log entries (net/log). */
  log: Buffer
}

export function deriveNamespaceKeys (nmk: Uint8Array, namespace: string): NamespaceKeys {
  const derive = (label: string): Buffer =>
    Buffer.from(hkdfSync('sha256', nmk, Buffer.from(namespace), Buffer.from(`strata/${label}/v1`), 32))
  return { record: derive('record'), name: derive('name'), dedup: derive('dedup'), log: derive('log') }
}

/**
 * Random bytes for record nonces, taken from a pool refilled 8 KiB at a time: a metadata-heavy
 * workload seals tens of records per file, and one `randomBytes` call per 12-byte nonce cost
 * more than the AES-GCM of the record (0.56 s of 5.4 s of daemon CPU creating 2,000 small
 * files). The bytes are the same CSPRNG output, each handed out once.
 */
const POOL_BYTES = 8192
let pool = Buffer.alloc(0)
let poolAt = 0

export function pooledRandom (n: number): Buffer {
  if (n > POOL_BYTES) return randomBytes(n)
  if (poolAt + n > pool.length) { pool = randomBytes(POOL_BYTES); poolAt = 0 }
  const out = Buffer.from(pool.subarray(poolAt, poolAt + n)) // a copy: callers may keep or zero it
  poolAt += n
  return out
}

export function sealRecord (key: Uint8Array, aad: string, body: Uint8Array, random: RandomSource = pooledRandom): Buffer {
  const nonce = random(NONCE_LEN)
  const c = createCipheriv('aes-256-gcm', key, nonce)
  c.setAAD(Buffer.from(aad))
  const ct = c.update(body)
  const fin = c.final()
  return Buffer.concat([Buffer.from([RECORD_FORMAT]), nonce, ct, fin, c.getAuthTag()])
}

/** Undefined when the record fails authentication or is malformed. */
export function openRecord (key: Uint8Array, aad: string, sealed: Uint8Array): Buffer | undefined {
  if (sealed.length < 1 + NONCE_LEN + TAG_LEN || sealed[0] !== RECORD_FORMAT) return undefined
  const s = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length)
  try {
    const d = createDecipheriv('aes-256-gcm', key, s.subarray(1, 1 + NONCE_LEN))
    d.setAAD(Buffer.from(aad))
    d.setAuthTag(s.subarray(s.length - TAG_LEN))
    return Buffer.concat([d.update(s.subarray(1 + NONCE_LEN, s.length - TAG_LEN)), d.final()])
  } catch {
    return undefined
  }
}

/** Keyed hash naming a directory entry: the key of `d/<parent>/<tag>` reveals nothing of the name. */
export function nameTag (nameKey: Uint8Array, parent: number, name: Uint8Array): string {
  return createHmac('sha256', nameKey).update(`${parent}/`).update(name).digest().subarray(0, 16).toString('hex')
}

/** Keyed hash naming an extended attribute record. */
export function xattrTag (nameKey: Uint8Array, ino: number, name: string): string {
  return createHmac('sha256', nameKey).update(`x${ino}/`).update(name).digest().subarray(0, 16).toString('hex')
}
