import { createHmac, timingSafeEqual } from 'node:crypto'
import { KCV_BYTES } from './constants.js'

const KCV_LABEL = 'strata/kcv/v1'

/**
 * Key check value: the first 8 bytes of HMAC-SHA256(key, "strata/kcv/v1"). It identifies a key
 * (detects corruption and mix-ups) without revealing anything usable about it.
 */
export function keyCheckValue (key: Uint8Array): Uint8Array {
  const mac = createHmac('sha256', key).update(KCV_LABEL).digest()
  const out = new Uint8Array(KCV_BYTES)
  out.set(mac.subarray(0, KCV_BYTES))
  mac.fill(0)
  return out
}

/** Constant-time comparison of two check values (false if the lengths differ). */
export function kcvEqual (a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false
  return timingSafeEqual(a, b)
}
