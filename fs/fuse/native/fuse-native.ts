/**
 * Types and loader for Strata's patched fuse-native 2.2.6 (built by scripts/build-fuse.sh into
 * build/fuse-native/; every change is documented in fs/fuse/native/README.md).
 *
 * Conventions of the patched binding:
 * - Every path and name is a latin1 string, one char per byte (`Buffer.from(path, 'latin1')`
 *   gives the exact bytes). Names returned to the binding (readdir, readlink) may be latin1
 *   strings or Uint8Arrays of raw bytes.
 * - A path is `null` for ops on an open handle whose file was unlinked (mount with `hardRemove`).
 * - Every op gets the calling process as one extra argument after `cb`.
 * - Errors are negative errnos; `read`/`write` answer a byte count in the error position.
 */
import { createRequire } from 'node:module'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The process that made the request (fuse_get_context() in the FUSE thread at call time). */
export interface FuseCaller {
  uid: number
  gid: number
  pid: number
  umask: number
}

/** BigInt ns since the epoch, or UTIME_NOW / UTIME_OMIT. */
export type FuseUtime = bigint | 'now' | 'omit'
/** In a stat: bigint = ns since the epoch (exact), number = ms since the epoch, or a Date (ms). */
export type FuseTime = bigint | number | Date

export interface FuseStat {
  mode: number
  uid?: number
  gid?: number
  size?: number
  dev?: number
  nlink?: number
  /** Reported as st_ino when mounted with `useIno`. Up to 2^64 - 1 as a bigint. */
  ino?: number | bigint
  rdev?: number
  blksize?: number
  blocks?: number
  atime?: FuseTime
  mtime?: FuseTime
  ctime?: FuseTime
}

export interface FuseStatfs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  fsid: number
  flag: number
  namemax: number
}

/** `err` is 0 or a negative errno. */
export type FuseCb = (err: number) => void
export type FuseValueCb<T> = (err: number, value?: T) => void
type P = string | null

export interface FuseOps {
  init?: (cb: FuseCb) => void
  access?: (path: P, mode: number, cb: FuseCb, caller: FuseCaller) => void
  statfs?: (path: P, cb: FuseValueCb<FuseStatfs>, caller: FuseCaller) => void
  getattr?: (path: P, cb: FuseValueCb<FuseStat>, caller: FuseCaller) => void
  /** Called for fstat() and after open; `path` is null once the file was unlinked (hardRemove). */
  fgetattr?: (path: P, fd: number, cb: FuseValueCb<FuseStat>, caller: FuseCaller) => void
  flush?: (path: P, fd: number, cb: FuseCb, caller: FuseCaller) => void
  fsync?: (path: P, datasync: number, fd: number, cb: FuseCb, caller: FuseCaller) => void
  fsyncdir?: (path: P, datasync: number, fd: number, cb: FuseCb, caller: FuseCaller) => void
  /** names: latin1 strings or Uint8Arrays; pass stats (same length) so d_ino/d_type are right. */
  readdir?: (path: P, cb: (err: number, names?: Array<string | Uint8Array>, stats?: FuseStat[]) => void, caller: FuseCaller) => void
  truncate?: (path: P, size: number, cb: FuseCb, caller: FuseCaller) => void
  ftruncate?: (path: P, fd: number, size: number, cb: FuseCb, caller: FuseCaller) => void
  utimens?: (path: P, atime: FuseUtime, mtime: FuseUtime, cb: FuseCb, caller: FuseCaller) => void
  readlink?: (path: P, cb: FuseValueCb<string | Uint8Array>, caller: FuseCaller) => void
  chown?: (path: P, uid: number, gid: number, cb: FuseCb, caller: FuseCaller) => void
  chmod?: (path: P, mode: number, cb: FuseCb, caller: FuseCaller) => void
  mknod?: (path: P, mode: number, dev: number, cb: FuseCb, caller: FuseCaller) => void
  setxattr?: (path: P, name: string, value: Buffer, position: number, flags: number, cb: FuseCb, caller: FuseCaller) => void
  /** Answer (0, value); a value longer than a non-zero buffer size answers ERANGE for you. */
  getxattr?: (path: P, name: string, position: number, cb: FuseValueCb<Buffer>, caller: FuseCaller) => void
  listxattr?: (path: P, cb: FuseValueCb<string[]>, caller: FuseCaller) => void
  removexattr?: (path: P, name: string, cb: FuseCb, caller: FuseCaller) => void
  /** Answer (0, fh); fh is a uint32, 0 means "none". */
  open?: (path: P, flags: number, cb: FuseValueCb<number>, caller: FuseCaller) => void
  opendir?: (path: P, flags: number, cb: FuseValueCb<number>, caller: FuseCaller) => void
  /** Answer cb(bytesRead) or cb(-errno); buf is libfuse memory, valid only until cb. */
  read?: (path: P, fd: number, buf: Buffer, len: number, pos: number, cb: FuseCb, caller: FuseCaller) => void
  /** Answer cb(bytesWritten) or cb(-errno); buf is libfuse memory, valid only until cb. */
  write?: (path: P, fd: number, buf: Buffer, len: number, pos: number, cb: FuseCb, caller: FuseCaller) => void
  release?: (path: P, fd: number, cb: FuseCb, caller: FuseCaller) => void
  releasedir?: (path: P, fd: number, cb: FuseCb, caller: FuseCaller) => void
  create?: (path: P, mode: number, cb: FuseValueCb<number>, caller: FuseCaller) => void
  unlink?: (path: P, cb: FuseCb, caller: FuseCaller) => void
  rename?: (src: P, dest: P, cb: FuseCb, caller: FuseCaller) => void
  /** link(target, newName): `src` is the existing path, `dest` the new name. */
  link?: (src: P, dest: P, cb: FuseCb, caller: FuseCaller) => void
  /** symlink(target, linkPath): `src` is the link's content, `dest` the new path. */
  symlink?: (src: P, dest: P, cb: FuseCb, caller: FuseCaller) => void
  mkdir?: (path: P, mode: number, cb: FuseCb, caller: FuseCaller) => void
  rmdir?: (path: P, cb: FuseCb, caller: FuseCaller) => void
}

export interface FuseOptions {
  /** Per-op timeout in ms (default 15000) answering ETIMEDOUT; false disables it. */
  timeout?: number | false | Record<string, number | false>
  mkdir?: boolean
  force?: boolean
  debug?: boolean
  /** Report st_ino from getattr (stable inode numbers). */
  useIno?: boolean
  /** Unlink open files for real (no .fuse_hidden*); later ops on the fh get path null. */
  hardRemove?: boolean
  /** Up to 128 KiB FUSE writes (libfuse2 caps max_write at 128 KiB). */
  bigWrites?: boolean
  maxWrite?: number
  maxRead?: number
  /** Kernel caching, seconds (libfuse default 1; 0 is passed through). */
  entryTimeout?: number
  negativeTimeout?: number
  attrTimeout?: number
  /** Attribute timeout for directories only (seconds); others keep attrTimeout. */
  dirAttrTimeout?: number
  /** Start with getxattr(security.capability) answered ENODATA by the binding (setNoCapabilities). */
  noCapabilities?: boolean
  acAttrTimeout?: number
  allowOther?: boolean
  allowRoot?: boolean
  defaultPermissions?: boolean
  autoUnmount?: boolean
  kernelCache?: boolean
  autoCache?: boolean
  fsname?: string
  subtype?: string
  blksize?: number
  umask?: number
  uid?: number
  gid?: number
}

export interface Fuse {
  readonly mnt: string
  mount (cb: (err: Error | null) => void): void
  unmount (cb: (err: Error | null) => void): void
  /** true: the binding answers getxattr(security.capability) with ENODATA itself; false: JS does. */
  setNoCapabilities (none: boolean): void
}

export interface FuseConstructor {
  new (mnt: string, ops: FuseOps, opts?: FuseOptions): Fuse
  unmount (mnt: string, cb: (err: Error | null) => void): void
  readonly UTIME_NOW: 'now'
  readonly UTIME_OMIT: 'omit'
  readonly [errno: string]: unknown
}

/** <repo>/build/fuse-native/index.js, from dist/fs/fuse/native/ or fs/fuse/native/. */
export function patchedFuseNativePath (root?: string): string {
  const repo = root ?? resolve(dirname(fileURLToPath(import.meta.url)), dirname(fileURLToPath(import.meta.url)).includes('/dist/') ? '../../../..' : '../../..')
  return resolve(repo, 'build/fuse-native/index.js')
}

/** Loads the patched binding; throws (MODULE_NOT_FOUND) if scripts/build-fuse.sh has not run. */
export function loadFuseNative (root?: string): FuseConstructor {
  return createRequire(import.meta.url)(patchedFuseNativePath(root)) as FuseConstructor
}
