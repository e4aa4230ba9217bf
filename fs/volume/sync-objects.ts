/**
 * What the sync layer carries between devices: the state of files (inode objects) and of
 * directory entries (dirent objects), each with a version vector, grouped in change sets. A
 * change set is the plaintext payload of one change-log entry (net/log encrypts and signs it).
 * Decoding treats the bytes as hostile even though they come from a signed log: every field is
 * checked and bounded.
 */
import { createHash } from 'node:crypto'
import { FID_RE } from './records.js'
import type { FileType } from './types.js'
import type { SyncBlock } from './strata-volume.js'

/** Device id → number of changes of that device this state includes. */
export type VersionVector = Record<string, number>

export interface InodeObject {
  k: 'i'
  fid: string
  type: FileType
  /** Permission bits (and setuid/setgid/sticky). */
  mode: number
  uid: number
  gid: number
  /** Nanoseconds since the epoch, decimal. */
  mtime: string
  size: number
  rdev: number
  /** Symlink target, base64. */
  target?: string
  blocks?: SyncBlock[]
  /** [name, base64 value] pairs. */
  xattrs?: Array<[string, string]>
  vv: VersionVector
  /** The device whose change this is. */
  by: string
}

export interface DirentObject {
  k: 'd'
  /** Parent directory's file id. */
  p: string
  /** Name, base64 of its bytes. */
  n: string
  /** The child's file id. */
  c: string
  t: FileType
  /** The name was removed (unlink, rmdir, rename away). */
  dead?: boolean
  /** With dead: the child's version vector the deleting device had seen (a concurrent edit keeps the file). */
  cv?: VersionVector
  vv: VersionVector
  by: string
}

export type SyncObject = InodeObject | DirentObject

export interface ChangeSet {
  ns: string
  objects: SyncObject[]
  /**
   * The wrapped NEK record (base64) of every NEK version the set's block keys name: a device that
   * lacks one (the sender rotated) adopts it through its token (KeyService.importNek).
   */
  keys?: NekCarried[]
}

export interface NekCarried { v: number, rec: string }

const MAX_KEYS = 64
const MAX_KEY_RECORD = 1024

export class ChangeSetError extends Error {
  override readonly name = 'ChangeSetError'
  readonly code = 'ERR_CHANGE_SET'
}

const TYPES: readonly FileType[] = ['file', 'dir', 'symlink', 'fifo', 'socket', 'chardev', 'blockdev']
export const MAX_OBJECTS = 20_000
const MAX_BLOCKS = 1 << 22
const DEVICE_RE = /^[1-9A-HJ-NP-Za-km-z]{16,128}$/

// ---- version vectors -------------------------------------------------------------------

export type VvOrder = 'equal' | 'before' | 'after' | 'concurrent'

/** How a relates to b: before = b includes everything of a and more. */
export function compareVv (a: VersionVector, b: VersionVector): VvOrder {
  let less = false
  let more = false
  for (const d of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const x = a[d] ?? 0
    const y = b[d] ?? 0
    if (x < y) less = true
    if (x > y) more = true
  }
  return less ? (more ? 'concurrent' : 'before') : (more ? 'after' : 'equal')
}

export const vvLeq = (a: VersionVector, b: VersionVector): boolean => {
  const o = compareVv(a, b)
  return o === 'equal' || o === 'before'
}

export function mergeVv (a: VersionVector, b: VersionVector): VersionVector {
  const out: VersionVector = { ...a }
  for (const [d, n] of Object.entries(b)) out[d] = Math.max(out[d] ?? 0, n)
  return out
}

export const bumpVv = (vv: VersionVector, device: string): VersionVector => ({ ...vv, [device]: (vv[device] ?? 0) + 1 })

/** Canonical text of a vector (sorted), for ids derived from it. */
export const vvText = (vv: VersionVector): string => Object.keys(vv).sort().map(d => `${d}:${vv[d] ?? 0}`).join(',')

/** Hash of an object's state, without its version vector and author: equal states, equal hashes. */
export function stateHash (o: SyncObject): string {
  const { vv: _vv, by: _by, ...rest } = o
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex').slice(0, 32)
}

// ---- codec -------------------------------------------------------------------------------

export const encodeChangeSet = (cs: ChangeSet): Buffer => Buffer.from(JSON.stringify(cs))

export function decodeChangeSet (bytes: Uint8Array): ChangeSet {
  let o: unknown
  try {
    o = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'))
  } catch {
    throw new ChangeSetError('change set is not JSON')
  }
  const cs = obj(o, 'change set')
  const ns = cs.ns
  if (typeof ns !== 'string' || !/^[0-9a-f]{16}$/.test(ns)) throw new ChangeSetError('change set names no valid namespace')
  if (!Array.isArray(cs.objects) || cs.objects.length > MAX_OBJECTS) throw new ChangeSetError('change set objects are missing or too many')
  const out: ChangeSet = { ns, objects: cs.objects.map((x, i) => decodeObject(x, i)) }
  if (cs.keys !== undefined) {
    if (!Array.isArray(cs.keys) || cs.keys.length > MAX_KEYS) throw new ChangeSetError('change set keys are malformed or too many')
    out.keys = cs.keys.map((x, i) => {
      const k = obj(x, `key ${i}`)
      if (typeof k.v !== 'number' || !Number.isSafeInteger(k.v) || k.v < 1) throw new ChangeSetError(`key ${i}: version is not a positive integer`)
      return { v: k.v, rec: b64(k.rec, i, 'rec', MAX_KEY_RECORD) }
    })
  }
  return out
}

function decodeObject (x: unknown, i: number): SyncObject {
  const o = obj(x, `object ${i}`)
  const vv = decodeVv(o.vv, i)
  const by = str(o.by, i, 'by', DEVICE_RE)
  const type = o.t ?? o.type
  if (typeof type !== 'string' || !TYPES.includes(type as FileType)) throw new ChangeSetError(`object ${i}: unknown file type`)
  if (o.k === 'd') {
    const d: DirentObject = { k: 'd', p: str(o.p, i, 'p', FID_RE), n: b64(o.n, i, 'n', 255), c: str(o.c, i, 'c', FID_RE), t: type as FileType, vv, by }
    if (Buffer.from(d.n, 'base64').length === 0) throw new ChangeSetError(`object ${i}: empty name`)
    const name = Buffer.from(d.n, 'base64')
    if (name.includes(0x2f) || name.includes(0) || name.equals(Buffer.from('.')) || name.equals(Buffer.from('..'))) throw new ChangeSetError(`object ${i}: name is not a valid file name`)
    if (o.dead === true) { d.dead = true; d.cv = o.cv === undefined ? {} : decodeVv(o.cv, i) }
    return d
  }
  if (o.k !== 'i') throw new ChangeSetError(`object ${i}: unknown kind`)
  const inode: InodeObject = {
    k: 'i', fid: str(o.fid, i, 'fid', FID_RE), type: type as FileType, mode: uint(o.mode, i, 'mode', 0o7777), uid: uint(o.uid, i, 'uid', 0xffffffff),
    gid: uint(o.gid, i, 'gid', 0xffffffff), mtime: str(o.mtime, i, 'mtime', /^\d{1,20}$/), size: uint(o.size, i, 'size', Number.MAX_SAFE_INTEGER),
    rdev: uint(o.rdev, i, 'rdev', 0xffffffff), vv, by
  }
  if (o.target !== undefined) inode.target = b64(o.target, i, 'target', 4095)
  if (o.blocks !== undefined) {
    if (!Array.isArray(o.blocks) || o.blocks.length > MAX_BLOCKS) throw new ChangeSetError(`object ${i}: blocks malformed`)
    inode.blocks = o.blocks.map(b => decodeBlock(b, i))
  }
  if (o.xattrs !== undefined) {
    if (!Array.isArray(o.xattrs) || o.xattrs.length > 1000) throw new ChangeSetError(`object ${i}: xattrs malformed`)
    inode.xattrs = o.xattrs.map(p => {
      if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || p[0].length === 0 || p[0].length > 255) throw new ChangeSetError(`object ${i}: xattr malformed`)
      return [p[0], b64(p[1], i, 'xattr value', 65536)]
    })
  }
  return inode
}

function decodeBlock (x: unknown, i: number): SyncBlock {
  const b = obj(x, `object ${i} block`)
  return {
    i: uint(b.i, i, 'block index', 2 ** 40), id: str(b.id, i, 'block id', /^[0-9a-f]{64}$/), len: uint(b.len, i, 'block length', 4 * 1024 * 1024),
    v: uint(b.v, i, 'key version', 2 ** 31), w: b64(b.w, i, 'wrapped key', 256), c: b64(b.c, i, 'key check value', 64), tag: str(b.tag, i, 'dedup tag', /^[0-9a-f]{0,64}$/)
  }
}

function decodeVv (x: unknown, i: number): VersionVector {
  const o = obj(x, `object ${i} version vector`)
  const keys = Object.keys(o)
  if (keys.length > 1000) throw new ChangeSetError(`object ${i}: version vector too large`)
  const vv: VersionVector = {}
  for (const k of keys) {
    if (!DEVICE_RE.test(k)) throw new ChangeSetError(`object ${i}: version vector names no device`)
    vv[k] = uint(o[k], i, 'version counter', Number.MAX_SAFE_INTEGER)
  }
  return vv
}

function obj (x: unknown, what: string): Record<string, unknown> {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) throw new ChangeSetError(`${what} is not an object`)
  return x as Record<string, unknown>
}

function str (x: unknown, i: number, field: string, re: RegExp): string {
  if (typeof x !== 'string' || !re.test(x)) throw new ChangeSetError(`object ${i}: ${field} is malformed`)
  return x
}

function uint (x: unknown, i: number, field: string, max: number): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0 || x > max) throw new ChangeSetError(`object ${i}: ${field} is out of range`)
  return x
}

function b64 (x: unknown, i: number, field: string, maxBytes: number): string {
  if (typeof x !== 'string' || x.length > Math.ceil(maxBytes / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(x)) throw new ChangeSetError(`object ${i}: ${field} is malformed`)
  return x
}
