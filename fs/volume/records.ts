/**
 * Record bodies of the metadata store and their LevelDB keys (see fs/crypto/FORMAT.md).
 * Bodies are JSON inside the encrypted envelope; nothing here touches keys or I/O.
 */
import type { FileType } from './types.js'
import { RecordCorruptError } from '../errors.js'

export const hexIno = (ino: number): string => ino.toString(16).padStart(14, '0')
export const hexIdx = (idx: number): string => idx.toString(16).padStart(12, '0')

export const K = {
  header: 'h',
  headerSealed: 'h/sealed',
  nextIno: 'c/next-ino',
  namespace: (ns: string) => `n/${ns}`,
  inode: (ino: number) => `i/${hexIno(ino)}`,
  dirent: (parent: number, tag: string) => `d/${hexIno(parent)}/${tag}`,
  direntPrefix: (parent: number) => `d/${hexIno(parent)}/`,
  manifest: (ino: number, idx: number) => `m/${hexIno(ino)}/${hexIdx(idx)}`,
  manifestPrefix: (ino: number) => `m/${hexIno(ino)}/`,
  blockKey: (ns: string, id: string) => `k/${ns}/${id}`,
  blockKeyPrefix: (ns: string) => `k/${ns}/`,
  dedup: (ns: string, tag: string) => `u/${ns}/${tag}`,
  xattr: (ino: number, tag: string) => `x/${hexIno(ino)}/${tag}`,
  xattrPrefix: (ino: number) => `x/${hexIno(ino)}/`,
  orphan: (ino: number) => `o/${hexIno(ino)}`,
  gc: (ns: string, id: string) => `g/${ns}/${id}`,
  rotation: (ns: string) => `r/${ns}`,
  /** File id → inode number (sealed). */
  fid: (fid: string) => `F/${fid}`,
  /** Sync state of an object (sealed): version vector and what was last exported/applied. */
  syncState: (obj: string) => `V/${obj}`
} as const

export interface Header { format: 1, blockSize: number, rootNamespace: string, created: string }

export interface NamespaceRecord { v: number, w: string, c: string }

/** An inode as held in memory; `size` may run ahead of the stored record while a file is open. */
export interface Inode {
  ino: number
  ns: string
  type: FileType
  mode: number
  uid: number
  gid: number
  nlink: number
  size: number
  atime: bigint
  mtime: bigint
  ctime: bigint
  rdev: number
  version: number
  /** Parent directory (directories only: a directory has one name). */
  parent: number
  /** Symlink target. */
  target?: Buffer
  /** Bytes of plaintext blocks stored (for st_blocks). */
  stored: number
  /**
   * File id: 32 hex chars, random at creation and the same on every device of the team (the
   * sync layer names files by it); ROOT_FID for the root. '' for inodes made before file ids.
   */
  fid: string
}

export const ROOT_FID = '0'.repeat(32)
export const FID_RE = /^[0-9a-f]{32}$/

export interface Dirent { name: Buffer, ino: number, type: FileType }
export interface ManifestEntry { id: string, len: number }
export interface BlockKeyRecord { v: number, w: string, c: string, refs: number, tag: string }
export interface XattrRecord { name: string, value: Buffer }

export function encodeInode (i: Inode): Buffer {
  return Buffer.from(JSON.stringify({
    t: i.type, m: i.mode, u: i.uid, g: i.gid, n: i.nlink, s: i.size, a: i.atime.toString(),
    mt: i.mtime.toString(), ct: i.ctime.toString(), r: i.rdev, v: i.version, p: i.parent,
    l: i.target?.toString('base64'), st: i.stored, f: i.fid === '' ? undefined : i.fid
  }))
}

export function decodeInode (key: string, ino: number, ns: string, body: Buffer): Inode {
  const o = parse(key, body)
  try {
    const inode: Inode = {
      ino, ns, type: str(o.t) as FileType, mode: num(o.m), uid: num(o.u), gid: num(o.g), nlink: num(o.n), size: num(o.s),
      atime: BigInt(str(o.a)), mtime: BigInt(str(o.mt)), ctime: BigInt(str(o.ct)), rdev: num(o.r),
      version: num(o.v), parent: num(o.p), stored: num(o.st),
      fid: o.f === undefined ? (ino === 1 ? ROOT_FID : '') : fidOf(o.f)
    }
    if (typeof o.l === 'string') inode.target = Buffer.from(o.l, 'base64')
    return inode
  } catch (err) {
    throw new RecordCorruptError(key, 'inode fields are malformed', { cause: err })
  }
}

export const encodeDirent = (d: Dirent): Buffer => Buffer.from(JSON.stringify({ n: d.name.toString('base64'), i: d.ino, t: d.type }))
export function decodeDirent (key: string, body: Buffer): Dirent {
  const o = parse(key, body)
  return guard(key, () => ({ name: Buffer.from(str(o.n), 'base64'), ino: num(o.i), type: str(o.t) as FileType }))
}

export const encodeManifest = (m: ManifestEntry): Buffer => Buffer.from(JSON.stringify(m))
export function decodeManifest (key: string, body: Buffer): ManifestEntry {
  const o = parse(key, body)
  if (typeof o.id !== 'string' || !/^[0-9a-f]{64}$/.test(o.id)) throw new RecordCorruptError(key, 'manifest block id is malformed')
  const id = o.id
  return guard(key, () => ({ id, len: num(o.len) }))
}

export const encodeBlockKey = (b: BlockKeyRecord): Buffer => Buffer.from(JSON.stringify(b))
export function decodeBlockKey (key: string, body: Buffer): BlockKeyRecord {
  const o = parse(key, body)
  return guard(key, () => ({ v: num(o.v), w: str(o.w), c: str(o.c), refs: num(o.refs), tag: str(o.tag) }))
}

export const encodeXattr = (x: XattrRecord): Buffer => Buffer.from(JSON.stringify({ n: x.name, v: x.value.toString('base64') }))
export function decodeXattr (key: string, body: Buffer): XattrRecord {
  const o = parse(key, body)
  return guard(key, () => ({ name: str(o.n), value: Buffer.from(str(o.v), 'base64') }))
}

function guard<T> (key: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw new RecordCorruptError(key, 'fields are malformed', { cause: err })
  }
}

function parse (key: string, body: Buffer): Record<string, unknown> {
  try {
    const o: unknown = JSON.parse(body.toString('utf8'))
    if (o === null || typeof o !== 'object') throw new Error('not an object')
    return o as Record<string, unknown>
  } catch (err) {
    throw new RecordCorruptError(key, 'body is not a record', { cause: err })
  }
}

function num (v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError('expected a number')
  return v
}

function fidOf (v: unknown): string {
  if (typeof v !== 'string' || !FID_RE.test(v)) throw new TypeError('expected a file id')
  return v
}

function str (v: unknown): string {
  if (typeof v !== 'string') throw new TypeError('expected a string')
  return v
}
