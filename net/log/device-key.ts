/**
 * Device identities: a device id is the (base58btc) peer id string of its Ed25519 key, so the
 * public key that verifies a device's signatures is recovered from the id itself.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { PublicKey } from '@libp2p/interface'
import { DEVICE_PATTERN } from './constants.js'
import { BadSignatureError } from './errors.js'

const cache = new Map<string, PublicKey>()
const CACHE_MAX = 1024

/**
 * The Ed25519 public key named by a device id. Throws BadSignatureError for anything that is not
 * the canonical string of an Ed25519 peer id (nothing can be verified against it).
 */
export function devicePublicKey (id: string): PublicKey {
  const hit = cache.get(id)
  if (hit !== undefined) return hit
  if (!DEVICE_PATTERN.test(id)) throw new BadSignatureError('device id is not a peer id string')
  let key: PublicKey | undefined
  try {
    const peer = peerIdFromString(id)
    if (peer.type === 'Ed25519' && peer.toString() === id) key = peer.publicKey
  } catch {
    key = undefined
  }
  if (key === undefined) throw new BadSignatureError('device id is not the canonical id of an Ed25519 key')
  if (cache.size >= CACHE_MAX) cache.clear()
  cache.set(id, key)
  return key
}

/** Verify an Ed25519 signature by a device; false for a bad signature or an unusable id. */
export async function verifyByDevice (id: string, data: Uint8Array, sig: Uint8Array): Promise<boolean> {
  let key: PublicKey
  try {
    key = devicePublicKey(id)
  } catch {
    return false
  }
  try {
    return await key.verify(data, sig)
  } catch {
    return false
  }
}
