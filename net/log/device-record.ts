/**
 * Device-list records: binary, versioned, canonical (FORMAT.md §3), signed by a member device.
 * The decoder treats its input as hostile and throws only MalformedError.
 */
import { createHash } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import {
  DEVICE_PATTERN, FORMAT_VERSION, MAX_DEVICE_BYTES, MAX_NAME_BYTES, RECORD_SIG_DOMAIN, SIG_BYTES, TEAM_ID_BYTES
} from './constants.js'
import { InvalidArgumentError } from './errors.js'
import { Reader, Writer, utf8Bytes } from './bytes.js'
import { verifyByDevice } from './device-key.js'

export type DeviceOp = 'add' | 'remove'

export interface DeviceRecord {
  /** the team's 16-byte id */
  team: Uint8Array
  op: DeviceOp
  /** the device added or removed (peer id string) */
  device: string
  /** a name for people, at most 64 UTF-8 bytes; empty for 'remove' */
  name: string
  /** the signer (peer id string) */
  by: string
  /** signer's clock, ms since the epoch */
  at: number
  /** Ed25519 by `by` over recordSigningBytes */
  sig: Uint8Array
}

export type UnsignedDeviceRecord = Omit<DeviceRecord, 'sig'>

const OPS: Record<DeviceOp, number> = { add: 1, remove: 2 }

export function checkRecordFields (r: UnsignedDeviceRecord): void {
  if (r.team.byteLength !== TEAM_ID_BYTES) throw new InvalidArgumentError('team id must be 16 bytes')
  if (r.op !== 'add' && r.op !== 'remove') throw new InvalidArgumentError('op must be add or remove')
  if (!DEVICE_PATTERN.test(r.device)) throw new InvalidArgumentError('device must be a peer id string')
  if (!DEVICE_PATTERN.test(r.by)) throw new InvalidArgumentError('by must be a peer id string')
  if (utf8Bytes(r.name).byteLength > MAX_NAME_BYTES) throw new InvalidArgumentError('name longer than 64 UTF-8 bytes')
  if (r.op === 'remove' && r.name !== '') throw new InvalidArgumentError('a remove record has no name')
  if (!Number.isSafeInteger(r.at) || r.at < 0) throw new InvalidArgumentError('at must be a safe integer >= 0')
}

function writeBody (w: Writer, r: UnsignedDeviceRecord): Writer {
  return w.u8(FORMAT_VERSION).raw(r.team).u8(OPS[r.op]).str(r.device).str(r.name).str(r.by).u64(r.at)
}

export function recordSigningBytes (r: UnsignedDeviceRecord): Uint8Array {
  checkRecordFields(r)
  return writeBody(new Writer().raw(utf8Bytes(RECORD_SIG_DOMAIN)), r).finish()
}

export function encodeRecord (r: DeviceRecord): Uint8Array {
  checkRecordFields(r)
  if (r.sig.byteLength !== SIG_BYTES) throw new InvalidArgumentError('sig must be 64 bytes')
  return writeBody(new Writer(), r).raw(r.sig).finish()
}

export function decodeRecord (bytes: Uint8Array): DeviceRecord {
  const rd = new Reader(bytes, 'device record')
  const version = rd.u8()
  if (version !== FORMAT_VERSION) rd.fail(`unknown version ${version}`)
  const team = rd.bytes(TEAM_ID_BYTES)
  const opByte = rd.u8()
  if (opByte !== 1 && opByte !== 2) rd.fail(`unknown op ${opByte}`)
  const op: DeviceOp = opByte === 1 ? 'add' : 'remove'
  const device = rd.str(MAX_DEVICE_BYTES, 'device', DEVICE_PATTERN)
  const name = rd.str(MAX_NAME_BYTES, 'name')
  if (op === 'remove' && name !== '') rd.fail('a remove record with a name')
  const by = rd.str(MAX_DEVICE_BYTES, 'by', DEVICE_PATTERN)
  const at = rd.u64()
  const sig = rd.bytes(SIG_BYTES)
  rd.end()
  return { team, op, device, name, by, at, sig }
}

/** SHA-256 of a record's encoding, hex: its identity in storage and gossip. */
export function recordId (encoded: Uint8Array): string {
  return createHash('sha256').update(encoded).digest('hex')
}

export async function signRecord (key: PrivateKey, r: UnsignedDeviceRecord): Promise<DeviceRecord> {
  const sig = await key.sign(recordSigningBytes(r))
  return { ...r, sig: new Uint8Array(sig) }
}

export async function verifyRecord (r: DeviceRecord): Promise<boolean> {
  return await verifyByDevice(r.by, recordSigningBytes(r), r.sig)
}
