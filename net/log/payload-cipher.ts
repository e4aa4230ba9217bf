/**
 * Entry payload encryption: AES-256-GCM (node:crypto) under the namespace log key, a random
 * 12-byte nonce, AAD = domain || ns || device || seq (FORMAT.md §2). Output: nonce || ct || tag.
 */
import { createCipheriv, createDecipheriv, randomBytes as nodeRandomBytes } from 'node:crypto'
import { LOG_KEY_BYTES, MAX_PLAINTEXT_BYTES, NONCE_BYTES, PAYLOAD_AAD_DOMAIN, TAG_BYTES } from './constants.js'
import { InvalidArgumentError, PayloadDecryptError } from './errors.js'
import { Writer, utf8Bytes } from './bytes.js'

export interface PayloadContext { ns: string, device: string, seq: number }

export function payloadAad (ctx: PayloadContext): Uint8Array {
  return new Writer().raw(utf8Bytes(PAYLOAD_AAD_DOMAIN)).str(ctx.ns).str(ctx.device).u64(ctx.seq).finish()
}

function checkKey (key: Uint8Array): void {
  if (key.byteLength !== LOG_KEY_BYTES) throw new InvalidArgumentError('log key must be 32 bytes')
}

export function sealPayload (key: Uint8Array, ctx: PayloadContext, plaintext: Uint8Array, randomBytes: (n: number) => Uint8Array = nodeRandomBytes): Uint8Array {
  checkKey(key)
  if (plaintext.byteLength > MAX_PLAINTEXT_BYTES) throw new InvalidArgumentError(`payload larger than ${MAX_PLAINTEXT_BYTES} bytes`)
  const nonce = randomBytes(NONCE_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES })
  cipher.setAAD(payloadAad(ctx))
  const ct = cipher.update(plaintext)
  const fin = cipher.final()
  const out = new Uint8Array(NONCE_BYTES + ct.byteLength + fin.byteLength + TAG_BYTES)
  out.set(nonce, 0)
  out.set(ct, NONCE_BYTES)
  out.set(fin, NONCE_BYTES + ct.byteLength)
  out.set(cipher.getAuthTag(), out.byteLength - TAG_BYTES)
  return out
}

export function openPayload (key: Uint8Array, ctx: PayloadContext, payload: Uint8Array): Uint8Array {
  checkKey(key)
  if (payload.byteLength < NONCE_BYTES + TAG_BYTES) throw new PayloadDecryptError('too short')
  const decipher = createDecipheriv('aes-256-gcm', key, payload.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES })
  decipher.setAAD(payloadAad(ctx))
  decipher.setAuthTag(payload.subarray(payload.byteLength - TAG_BYTES))
  const ct = payload.subarray(NONCE_BYTES, payload.byteLength - TAG_BYTES)
  try {
    const a = decipher.update(ct)
    const b = decipher.final()
    return new Uint8Array(Buffer.concat([a, b]))
  } catch (err) {
    throw new PayloadDecryptError('authentication failed', { cause: err })
  }
}
