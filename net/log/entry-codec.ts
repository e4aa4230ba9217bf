/**
 * Log entries: the binary, versioned, canonical encoding (FORMAT.md §1), signing and hashing.
 * The decoder treats its input as hostile: every length is checked before it is used, trailing
 * bytes are refused, and it throws only MalformedError.
 */
import { createHash } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import {
  DEVICE_PATTERN, ENTRY_SIG_DOMAIN, FORMAT_VERSION, HASH_BYTES, MAX_DEVICE_BYTES, MAX_NS_BYTES,
  MAX_PAYLOAD_BYTES, NONCE_BYTES, NS_PATTERN, SIG_BYTES, TAG_BYTES, TEAM_ID_BYTES
} from './constants.js'
import { InvalidArgumentError } from './errors.js'
import { Reader, Writer, utf8Bytes } from './bytes.js'
import { verifyByDevice } from './device-key.js'

/** One entry of a device's per-namespace change log. */
export interface LogEntry {
  /** namespace id */
  ns: string
  /** author: the device's peer id string */
  device: string
  /** 1, 2, 3, … per (ns, device) */
  seq: number
  /** SHA-256 of the previous entry's encoding; 32 zero bytes for seq 1 */
  prev: Uint8Array
  /** author's clock, ms since the epoch (informational) */
  time: number
  /** nonce || AES-256-GCM ciphertext || tag, under the namespace log key */
  payload: Uint8Array
  /** Ed25519 over entrySigningBytes */
  sig: Uint8Array
}

export type UnsignedEntry = Omit<LogEntry, 'sig'>

export const ZERO_HASH = new Uint8Array(HASH_BYTES)

function isZero (b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false
  return true
}

/** Check an entry's fields (local input); throws InvalidArgumentError. */
export function checkEntryFields (e: UnsignedEntry): void {
  if (!NS_PATTERN.test(e.ns)) throw new InvalidArgumentError('namespace id must be 1..64 chars of [A-Za-z0-9._-]')
  if (!DEVICE_PATTERN.test(e.device)) throw new InvalidArgumentError('device id must be a base58 peer id string')
  if (!Number.isSafeInteger(e.seq) || e.seq < 1) throw new InvalidArgumentError('seq must be a safe integer >= 1')
  if (e.prev.byteLength !== HASH_BYTES) throw new InvalidArgumentError('prev must be 32 bytes')
  if (e.seq === 1 && !isZero(e.prev)) throw new InvalidArgumentError('prev of seq 1 must be zero')
  if (!Number.isSafeInteger(e.time) || e.time < 0) throw new InvalidArgumentError('time must be a safe integer >= 0')
  if (e.payload.byteLength < NONCE_BYTES + TAG_BYTES || e.payload.byteLength > MAX_PAYLOAD_BYTES) throw new InvalidArgumentError('payload size out of range')
}

function writeBody (w: Writer, e: UnsignedEntry): Writer {
  return w.u8(FORMAT_VERSION).str(e.ns).str(e.device).u64(e.seq).raw(e.prev).u64(e.time).blob(e.payload)
}

/** The bytes an entry's signature covers: domain || team id || body (everything but sig). */
export function entrySigningBytes (teamId: Uint8Array, e: UnsignedEntry): Uint8Array {
  if (teamId.byteLength !== TEAM_ID_BYTES) throw new InvalidArgumentError('team id must be 16 bytes')
  checkEntryFields(e)
  return writeBody(new Writer().raw(utf8Bytes(ENTRY_SIG_DOMAIN)).raw(teamId), e).finish()
}

export function encodeEntry (e: LogEntry): Uint8Array {
  checkEntryFields(e)
  if (e.sig.byteLength !== SIG_BYTES) throw new InvalidArgumentError('sig must be 64 bytes')
  return writeBody(new Writer(), e).raw(e.sig).finish()
}

/** Decode one entry; throws MalformedError on any deviation from the canonical format. */
export function decodeEntry (bytes: Uint8Array): LogEntry {
  const r = new Reader(bytes, 'log entry')
  const version = r.u8()
  if (version !== FORMAT_VERSION) r.fail(`unknown version ${version}`)
  const ns = r.str(MAX_NS_BYTES, 'namespace', NS_PATTERN)
  const device = r.str(MAX_DEVICE_BYTES, 'device', DEVICE_PATTERN)
  const seq = r.u64()
  if (seq < 1) r.fail('seq 0')
  const prev = r.bytes(HASH_BYTES)
  if (seq === 1 && !isZero(prev)) r.fail('seq 1 with a non-zero prev')
  const time = r.u64()
  const payload = r.blob(MAX_PAYLOAD_BYTES, 'payload')
  if (payload.byteLength < NONCE_BYTES + TAG_BYTES) r.fail('payload shorter than nonce and tag')
  const sig = r.bytes(SIG_BYTES)
  r.end()
  return { ns, device, seq, prev, time, payload, sig }
}

/** SHA-256 of an entry's full encoding: what the next entry's prev names. */
export function entryHash (encoded: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(encoded).digest())
}

/** Sign an entry with the author's key (the key must belong to e.device). */
export async function signEntry (key: PrivateKey, teamId: Uint8Array, e: UnsignedEntry): Promise<LogEntry> {
  const sig = await key.sign(entrySigningBytes(teamId, e))
  return { ...e, sig: new Uint8Array(sig) }
}

/** Whether an entry's signature verifies under its device's key (false for unusable ids). */
export async function verifyEntry (teamId: Uint8Array, e: LogEntry): Promise<boolean> {
  return await verifyByDevice(e.device, entrySigningBytes(teamId, e), e.sig)
}
