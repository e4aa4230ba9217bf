/**
 * Pure, synchronous block and key crypto (see FORMAT.md). No I/O, no logging, no FUSE.
 *
 * A stored block is  [0x01][nonce:12][AES-256-GCM(BEK, padded plaintext)][tag:16]
 * and its id is SHA-256 of those stored bytes, so anyone can verify a block without keys.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

export const BLOCK_FORMAT = 1
export const NONCE_LEN = 12
export const TAG_LEN = 16
export const KEY_LEN = 32
export const BLOCK_OVERHEAD = 1 + NONCE_LEN + TAG_LEN
/** Smallest padded plaintext of a block: short files do not reveal their exact size. */
export const MIN_PADDED = 4096
/** node:crypto's GCM is fastest fed 256 KiB–1 MiB per update() (DESIGN.md section 7). */
const SLICE = 256 * 1024

export type RandomSource = (n: number) => Buffer

export interface SealedBlock {
  /** The bytes the block store keeps. */
  stored: Buffer
  /** SHA-256 of stored. */
  id: Buffer
}

/**
 * Padded length of a block holding `len` plaintext bytes: the next power of two, at least
 * MIN_PADDED and at most the block size, so the stored length reveals only a size bucket.
 */
export function paddedLength (len: number, blockSize: number): number {
  if (len >= blockSize) return blockSize
  let p = MIN_PADDED
  while (p < len) p *= 2
  return Math.min(p, blockSize)
}

export function blockAad (namespace: string): Buffer {
  return Buffer.from(`strata/blk/v1|${namespace}`)
}

/** Encrypt `plaintext` (zero-padded to `padded` bytes) under `bek`. */
export function sealBlock (bek: Uint8Array, plaintext: Uint8Array, padded: number, aad: Uint8Array, random: RandomSource = randomBytes): SealedBlock {
  if (bek.length !== KEY_LEN) throw new TypeError('BEK must be 32 bytes')
  if (plaintext.length > padded) throw new RangeError('plaintext longer than its padded length')
  const nonce = random(NONCE_LEN)
  const out = Buffer.allocUnsafe(BLOCK_OVERHEAD + padded)
  out[0] = BLOCK_FORMAT
  nonce.copy(out, 1)
  const cipher = createCipheriv('aes-256-gcm', bek, nonce)
  cipher.setAAD(aad)
  let pos = 1 + NONCE_LEN
  for (let off = 0; off < plaintext.length; off += SLICE) {
    const part = cipher.update(plaintext.subarray(off, Math.min(off + SLICE, plaintext.length)))
    part.copy(out, pos); pos += part.length
  }
  if (padded > plaintext.length) {
    const pad = cipher.update(Buffer.alloc(padded - plaintext.length))
    pad.copy(out, pos); pos += pad.length
  }
  const fin = cipher.final(); fin.copy(out, pos); pos += fin.length
  cipher.getAuthTag().copy(out, pos)
  const id = createHash('sha256').update(out).digest()
  return { stored: out, id }
}

export type OpenResult = { ok: true, plaintext: Buffer } | { ok: false, problem: 'hash' | 'tag' | 'format' }

/** Verify the stored bytes against `id` (when given) and decrypt. Never returns unverified bytes. */
export function openBlock (bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, id?: Uint8Array): OpenResult {
  if (stored.length < BLOCK_OVERHEAD || stored[0] !== BLOCK_FORMAT) return { ok: false, problem: 'format' }
  if (id !== undefined && !blockIdMatches(stored, id)) return { ok: false, problem: 'hash' }
  const buf = Buffer.from(stored.buffer, stored.byteOffset, stored.length)
  const nonce = buf.subarray(1, 1 + NONCE_LEN)
  const tag = buf.subarray(buf.length - TAG_LEN)
  const ct = buf.subarray(1 + NONCE_LEN, buf.length - TAG_LEN)
  const decipher = createDecipheriv('aes-256-gcm', bek, nonce)
  decipher.setAAD(aad)
  decipher.setAuthTag(tag)
  const plaintext = Buffer.allocUnsafe(ct.length)
  let pos = 0
  for (let off = 0; off < ct.length; off += SLICE) {
    const part = decipher.update(ct.subarray(off, Math.min(off + SLICE, ct.length)))
    part.copy(plaintext, pos); pos += part.length
  }
  try {
    const fin = decipher.final(); fin.copy(plaintext, pos)
  } catch {
    plaintext.fill(0)
    return { ok: false, problem: 'tag' }
  }
  return { ok: true, plaintext }
}

export function blockId (stored: Uint8Array): Buffer {
  return createHash('sha256').update(stored).digest()
}

export function blockIdMatches (stored: Uint8Array, id: Uint8Array): boolean {
  const h = blockId(stored)
  return id.length === h.length && timingSafeEqual(h, id)
}

/** Keyed hash of plaintext for dedup within a namespace: no outsider can test for known content. */
export function dedupTag (dedupKey: Uint8Array, plaintext: Uint8Array): Buffer {
  return createHmac('sha256', dedupKey).update(plaintext).digest()
}

/**
 * Wrap a 32-byte key (a BEK or the namespace metadata key) under a NEK: AES-256-GCM with a
 * random nonce, AAD binding what it protects. Output: [nonce:12][ct:32][tag:16] = 60 bytes.
 */
export function wrapKey (kek: Uint8Array, key: Uint8Array, aad: Uint8Array, random: RandomSource = randomBytes): Buffer {
  const nonce = random(NONCE_LEN)
  const c = createCipheriv('aes-256-gcm', kek, nonce)
  c.setAAD(aad)
  const ct = Buffer.concat([c.update(key), c.final()])
  return Buffer.concat([nonce, ct, c.getAuthTag()])
}

/** Inverse of wrapKey; undefined when authentication fails. */
export function unwrapKey (kek: Uint8Array, wrapped: Uint8Array, aad: Uint8Array): Buffer | undefined {
  if (wrapped.length !== NONCE_LEN + KEY_LEN + TAG_LEN) return undefined
  const w = Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.length)
  try {
    const d = createDecipheriv('aes-256-gcm', kek, w.subarray(0, NONCE_LEN))
    d.setAAD(aad)
    d.setAuthTag(w.subarray(NONCE_LEN + KEY_LEN))
    return Buffer.concat([d.update(w.subarray(NONCE_LEN, NONCE_LEN + KEY_LEN)), d.final()])
  } catch {
    return undefined
  }
}
