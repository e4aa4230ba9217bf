// net/block-messages.ts: the messages of '/strata/blocks/1' (each is the body of one frame, see
// wire.ts). Decoders are total: any byte string either decodes or throws ProtocolError.
//
//   request  = 0x01 || id_1 || ... || id_n            1 <= n <= 64, each id 32 bytes
//   reply    = status || id || payload                one per requested id, in request order
//     status 0x00 BLOCK    payload = the stored bytes (1 .. maxBlockBytes)
//     status 0x01 MISSING  payload empty (absent, unreadable or corrupt here)
//
// A client may pipeline several requests on one stream; the server answers them in order and
// closes its end after the client closed its own.
//
// '/strata/blocks-have/1' (HAVE_PROTOCOL): the dialer tells the listener which blocks it just
// stored, so the listener may fetch them before the log entry naming them arrives. One-way:
//   have     = 0x02 || id_1 || ... || id_n            1 <= n <= 64, each id 32 bytes
import { Uint8ArrayList } from 'uint8arraylist'
import { BLOCK_ID_BYTES, MAX_IDS_PER_REQUEST } from './constants.js'
import { InvalidParametersError, ProtocolError } from './errors.js'

export const MSG_REQUEST = 0x01
export const MSG_HAVE = 0x02
export const HAVE_PROTOCOL = '/strata/blocks-have/1'
export const STATUS_BLOCK = 0x00
export const STATUS_MISSING = 0x01

/** Largest request body. */
export const MAX_REQUEST_BYTES = 1 + MAX_IDS_PER_REQUEST * BLOCK_ID_BYTES
/** Largest reply body for a given block limit. */
export function maxReplyBytes (maxBlockBytes: number): number {
  return 1 + BLOCK_ID_BYTES + maxBlockBytes
}

export type BlockReply =
  | { status: typeof STATUS_BLOCK, id: Uint8Array, bytes: Uint8Array }
  | { status: typeof STATUS_MISSING, id: Uint8Array }

const asBytes = (msg: Uint8Array | Uint8ArrayList): Uint8Array => msg instanceof Uint8Array ? msg : msg.subarray()

/** Check a block id argument (not network input: throws InvalidParametersError). */
export function checkBlockId (id: unknown): asserts id is Uint8Array {
  if (!(id instanceof Uint8Array) || id.byteLength !== BLOCK_ID_BYTES) throw new InvalidParametersError(`a block id is ${BLOCK_ID_BYTES} bytes`)
}

export function encodeRequest (ids: Uint8Array[]): Uint8Array {
  return encodeIds(MSG_REQUEST, ids)
}

/** Decode a request body into its ids (copies, independent of the input buffer). */
export function decodeRequest (msg: Uint8Array | Uint8ArrayList): Uint8Array[] {
  return decodeIds(MSG_REQUEST, msg, 'block request')
}

export function encodeHave (ids: Uint8Array[]): Uint8Array {
  return encodeIds(MSG_HAVE, ids)
}

/** Decode a have body into its ids (copies). */
export function decodeHave (msg: Uint8Array | Uint8ArrayList): Uint8Array[] {
  return decodeIds(MSG_HAVE, msg, 'have message')
}

function encodeIds (type: number, ids: Uint8Array[]): Uint8Array {
  if (ids.length < 1 || ids.length > MAX_IDS_PER_REQUEST) throw new InvalidParametersError(`a message carries 1..${MAX_IDS_PER_REQUEST} ids`)
  const out = new Uint8Array(1 + ids.length * BLOCK_ID_BYTES)
  out[0] = type
  ids.forEach((id, i) => { checkBlockId(id); out.set(id, 1 + i * BLOCK_ID_BYTES) })
  return out
}

function decodeIds (type: number, msg: Uint8Array | Uint8ArrayList, what: string): Uint8Array[] {
  if (msg.byteLength > MAX_REQUEST_BYTES) throw new ProtocolError(`${what} of ${msg.byteLength} bytes exceeds ${MAX_REQUEST_BYTES}`)
  const b = asBytes(msg)
  if (b.byteLength < 1 || b[0] !== type) throw new ProtocolError(`not a ${what}`)
  const body = b.byteLength - 1
  if (body === 0 || body % BLOCK_ID_BYTES !== 0) throw new ProtocolError(`${what} body of ${body} bytes is not 1..${MAX_IDS_PER_REQUEST} ids`)
  const ids: Uint8Array[] = []
  for (let at = 1; at < b.byteLength; at += BLOCK_ID_BYTES) ids.push(b.slice(at, at + BLOCK_ID_BYTES))
  return ids
}

/** The parts of a reply frame (the block bytes are not copied). */
export function encodeReply (reply: BlockReply): Uint8Array[] {
  checkBlockId(reply.id)
  return reply.status === STATUS_BLOCK ? [Uint8Array.of(STATUS_BLOCK), reply.id, reply.bytes] : [Uint8Array.of(STATUS_MISSING), reply.id]
}

/** Decode a reply body; a BLOCK's bytes are a view of the input, valid while the caller keeps it. */
export function decodeReply (msg: Uint8Array | Uint8ArrayList, maxBlockBytes: number): BlockReply {
  if (msg.byteLength > maxReplyBytes(maxBlockBytes)) throw new ProtocolError(`reply of ${msg.byteLength} bytes exceeds the block limit`)
  if (msg.byteLength < 1 + BLOCK_ID_BYTES) throw new ProtocolError('reply too short')
  const b = asBytes(msg)
  const id = b.slice(1, 1 + BLOCK_ID_BYTES)
  switch (b[0]) {
    case STATUS_BLOCK: {
      if (b.byteLength === 1 + BLOCK_ID_BYTES) throw new ProtocolError('empty block')
      return { status: STATUS_BLOCK, id, bytes: b.subarray(1 + BLOCK_ID_BYTES) }
    }
    case STATUS_MISSING:
      if (b.byteLength !== 1 + BLOCK_ID_BYTES) throw new ProtocolError('MISSING reply with a payload')
      return { status: STATUS_MISSING, id }
    default:
      throw new ProtocolError(`unknown reply status ${String(b[0])}`)
  }
}
