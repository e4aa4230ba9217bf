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
/**
 * Bytes per update(). A tight single-thread loop is fastest fed 256 KiB–1 MiB (DESIGN.md §7),
 * but node:crypto allocates and zeroes a new output buffer per update(): on the crypto workers
 * 256 KiB outputs came from fresh pages (page faults, kernel time), 32 KiB ones from reused heap.
 * Measured on the worker pool sealing 512 MiB: 2.6–3.2 worker CPU-s/GB at 32 KiB versus 3.6–5.0
 * at 256 KiB, with a third of the page faults.
 */
const SLICE = 32 * 1024

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
  return sealBlockInto(bek, plaintext, padded, aad, Buffer.allocUnsafe(BLOCK_OVERHEAD + padded), { random })
}

export interface SealIntoOptions {
  /** Also compute dedupTag(dedupKey, plaintext), in the same pass over the plaintext. */
  dedupKey?: Uint8Array
  random?: RandomSource
}

const ZEROS = Buffer.alloc(SLICE)

/**
 * sealBlock writing the stored bytes into `out` (at least BLOCK_OVERHEAD + padded bytes; the
 * result's `stored` is a view of it). One pass over the data: each slice is dedup-hashed,
 * encrypted and id-hashed while it is in the cache. Same output as sealBlock and dedupTag.
 */
export function sealBlockInto (bek: Uint8Array, plaintext: Uint8Array, padded: number, aad: Uint8Array, out: Uint8Array, options: SealIntoOptions = {}): SealedBlock & { tag?: Buffer } {
  if (bek.length !== KEY_LEN) throw new TypeError('BEK must be 32 bytes')
  if (plaintext.length > padded) throw new RangeError('plaintext longer than its padded length')
  if (out.length < BLOCK_OVERHEAD + padded) throw new RangeError('output buffer too small')
  const stored = Buffer.from(out.buffer, out.byteOffset, BLOCK_OVERHEAD + padded)
  const nonce = (options.random ?? randomBytes)(NONCE_LEN)
  stored[0] = BLOCK_FORMAT
  nonce.copy(stored, 1)
  const mac = options.dedupKey === undefined ? undefined : createHmac('sha256', options.dedupKey)
  const cipher = createCipheriv('aes-256-gcm', bek, nonce)
  cipher.setAAD(aad)
  const hash = createHash('sha256').update(stored.subarray(0, 1 + NONCE_LEN))
  let pos = 1 + NONCE_LEN
  const put = (part: Buffer): void => { hash.update(part); part.copy(stored, pos); pos += part.length }
  for (let off = 0; off < plaintext.length; off += SLICE) {
    const slice = plaintext.subarray(off, Math.min(off + SLICE, plaintext.length))
    mac?.update(slice)
    put(cipher.update(slice))
  }
  for (let left = padded - plaintext.length; left > 0; left -= SLICE) put(cipher.update(ZEROS.subarray(0, Math.min(left, SLICE))))
  put(cipher.final())
  put(cipher.getAuthTag())
  return { stored, id: hash.digest(), ...(mac === undefined ? {} : { tag: mac.digest() }) }
}

export type OpenResult = { ok: true, plaintext: Buffer } | { ok: false, problem: 'hash' | 'tag' | 'format' }

/** Verify the stored bytes against `id` (when given) and decrypt. Never returns unverified bytes. */
export function openBlock (bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, id?: Uint8Array): OpenResult {
  if (stored.length < BLOCK_OVERHEAD || stored[0] !== BLOCK_FORMAT) return { ok: false, problem: 'format' }
  return openBlockInto(bek, stored, aad, id, Buffer.allocUnsafe(stored.length - BLOCK_OVERHEAD))
}

/**
 * openBlock decrypting into `out` (at least stored.length - BLOCK_OVERHEAD bytes; the plaintext
 * is a view of it). One pass: each slice is id-hashed and decrypted while it is in the cache;
 * the hash, then the tag, are checked at the end and on failure `out` is zeroed, so unverified
 * bytes are never returned. Same results as openBlock.
 */
export function openBlockInto (bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, id: Uint8Array | undefined, out: Uint8Array): OpenResult {
  if (stored.length < BLOCK_OVERHEAD || stored[0] !== BLOCK_FORMAT) return { ok: false, problem: 'format' }
  const len = stored.length - BLOCK_OVERHEAD
  if (out.length < len) throw new RangeError('output buffer too small')
  const buf = Buffer.from(stored.buffer, stored.byteOffset, stored.length)
  const plaintext = Buffer.from(out.buffer, out.byteOffset, len)
  const hash = id === undefined ? undefined : createHash('sha256').update(buf.subarray(0, 1 + NONCE_LEN))
  const tag = buf.subarray(buf.length - TAG_LEN)
  const ct = buf.subarray(1 + NONCE_LEN, buf.length - TAG_LEN)
  const decipher = createDecipheriv('aes-256-gcm', bek, buf.subarray(1, 1 + NONCE_LEN))
  decipher.setAAD(aad)
  decipher.setAuthTag(tag)
  let pos = 0
  for (let off = 0; off < ct.length; off += SLICE) {
    const slice = ct.subarray(off, Math.min(off + SLICE, ct.length))
    hash?.update(slice)
    const part = decipher.update(slice)
    part.copy(plaintext, pos); pos += part.length
  }
  if (hash !== undefined && id !== undefined) {
    const h = hash.update(tag).digest()
    if (id.length !== h.length || !timingSafeEqual(h, id)) {
      plaintext.fill(0)
      return { ok: false, problem: 'hash' }
    }
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
