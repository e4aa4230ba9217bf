import { GCM_IV_BYTES, GCM_TAG_BYTES, KCV_BYTES, KEY_BYTES } from './constants.js'
import { InvalidKeyArgumentError, KeyCustodyError } from './errors.js'

/** Layout of a wrapped NEK record (see hsm/FORMAT.md). */
export const NEK_RECORD_FORMAT = 1
const WRAPPED_BYTES = KEY_BYTES + GCM_TAG_BYTES
const RECORD_BYTES = 1 + 4 + GCM_IV_BYTES + KCV_BYTES + WRAPPED_BYTES

export interface NekRecord {
  tekVersion: number
  iv: Uint8Array
  kcv: Uint8Array
  /** ciphertext || GCM tag */
  wrapped: Uint8Array
}

export const NEK_PREFIX = 'nek/'
export const TEK_PREFIX = 'tek/'
export const TEAM_KEY = 'team'
export const ROTATION_KEY = 'rotation/tek'

const MAX_VERSION = 9_999_999_999

export function checkVersion (version: number, what = 'version'): number {
  if (!Number.isSafeInteger(version) || version < 1 || version > MAX_VERSION) throw new InvalidKeyArgumentError(`${what} must be an integer in 1..${MAX_VERSION}`)
  return version
}

/** Namespace ids: 1-200 characters, no "/", "|" or control characters. */
export function checkNamespace (namespace: string): string {
  // eslint-disable-next-line no-control-regex
  if (typeof namespace !== 'string' || !/^[^/|\u0000-\u001f\u007f]{1,200}$/.test(namespace)) {
    throw new InvalidKeyArgumentError('a namespace id is 1-200 characters without "/", "|" or control characters')
  }
  return namespace
}

export function pad (version: number): string {
  return String(version).padStart(10, '0')
}

export function nekKey (namespace: string, version: number): string {
  return `${NEK_PREFIX}${namespace}/${pad(version)}`
}

export function nekPrefix (namespace: string): string {
  return `${NEK_PREFIX}${namespace}/`
}

/** Parse `nek/<namespace>/<version>`; undefined if it is not one. */
export function parseNekKey (key: string): { namespace: string, version: number } | undefined {
  if (!key.startsWith(NEK_PREFIX)) return undefined
  const slash = key.lastIndexOf('/')
  const namespace = key.slice(NEK_PREFIX.length, slash)
  const digits = key.slice(slash + 1)
  if (namespace.length === 0 || !/^\d{10}$/.test(digits)) return undefined
  return { namespace, version: Number(digits) }
}

export function tekKey (version: number): string {
  return `${TEK_PREFIX}${pad(version)}`
}

/** Associated data binding a wrapped NEK to its namespace, version and wrapping TEK. */
export function nekAad (namespace: string, version: number, tekVersion: number): Uint8Array {
  return new TextEncoder().encode(`strata/nek/v1|${namespace}|${version}|tek${tekVersion}`)
}

export function encodeNekRecord (r: NekRecord): Uint8Array {
  if (r.iv.byteLength !== GCM_IV_BYTES || r.kcv.byteLength !== KCV_BYTES || r.wrapped.byteLength !== WRAPPED_BYTES) {
    throw new InvalidKeyArgumentError('NEK record field sizes')
  }
  const out = new Uint8Array(RECORD_BYTES)
  const view = new DataView(out.buffer)
  out[0] = NEK_RECORD_FORMAT
  view.setUint32(1, r.tekVersion)
  out.set(r.iv, 5)
  out.set(r.kcv, 5 + GCM_IV_BYTES)
  out.set(r.wrapped, 5 + GCM_IV_BYTES + KCV_BYTES)
  return out
}

/** Decode a stored record; a malformed one is a custody failure of `keyRef`. */
export function decodeNekRecord (keyRef: string, bytes: Uint8Array): NekRecord {
  if (bytes.byteLength !== RECORD_BYTES) throw new KeyCustodyError(keyRef, `record is ${bytes.byteLength} bytes, expected ${RECORD_BYTES}`)
  if (bytes[0] !== NEK_RECORD_FORMAT) throw new KeyCustodyError(keyRef, `unknown record format ${String(bytes[0])}`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const tekVersion = view.getUint32(1)
  if (tekVersion === 0) throw new KeyCustodyError(keyRef, 'record names TEK version 0')
  return {
    tekVersion,
    iv: bytes.slice(5, 5 + GCM_IV_BYTES),
    kcv: bytes.slice(5 + GCM_IV_BYTES, 5 + GCM_IV_BYTES + KCV_BYTES),
    wrapped: bytes.slice(5 + GCM_IV_BYTES + KCV_BYTES)
  }
}

/** Small JSON records: team, tek/<v>, rotation/tek. */
export interface TeamRecord { v: 1, destroyed: boolean }
export interface TekRecord { v: 1, version: number, checkValue: string }
export interface RotationRecord { v: 1, target: number }

export function encodeJson (value: TeamRecord | TekRecord | RotationRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}

export function decodeJson<T extends { v: number }> (keyRef: string, bytes: Uint8Array): T {
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch (err) {
    throw new KeyCustodyError(keyRef, 'record is not valid JSON', { cause: err })
  }
  if (typeof value !== 'object' || value === null || (value as { v?: unknown }).v !== 1) throw new KeyCustodyError(keyRef, 'unknown record format')
  return value as T
}
