/**
 * The volume API: POSIX semantics over inode numbers, called by the FUSE adapter (issue 3),
 * the sync layer (issue 4) and tests. Names are bytes (a string argument is taken as UTF-8).
 */

export type FileType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev'

/** A timestamp in nanoseconds since the epoch (bigint keeps full precision). */
export type NsTime = bigint

export interface Attr {
  ino: number
  type: FileType
  /** Full st_mode: type bits | permission bits. */
  mode: number
  nlink: number
  uid: number
  gid: number
  /** Bytes; files may exceed 4 GiB. */
  size: number
  /** 512-byte units actually stored (sparse files report less than size). */
  blocks: number
  atime: NsTime
  mtime: NsTime
  ctime: NsTime
  rdev: number
  /** Per-file version counter: bumped by every change of content or metadata. */
  version: number
  /** Namespace id whose keys protect this inode. */
  namespace: string
}

export interface DirEntry {
  name: Uint8Array
  ino: number
  type: FileType
}

export interface Caller {
  uid?: number
  gid?: number
  /** A new entry's file id (the sync layer recreates a remote file under its own id). */
  fid?: string
}

export interface CreateOptions extends Caller {
  /** Permission bits (and for mknod the type bits). Default 0o644 files, 0o755 dirs. */
  mode?: number
  /** O_EXCL semantics are the default for create: EEXIST if the name exists. */
  rdev?: number
}

export interface OpenFlags {
  /** Open for writing (O_WRONLY or O_RDWR). */
  write?: boolean
  /** O_TRUNC */
  truncate?: boolean
  /** O_APPEND: every write goes to the current end of file. */
  append?: boolean
}

export interface SetAttr {
  mode?: number
  uid?: number
  gid?: number
  size?: number
  /** Omit a time to leave it unchanged (UTIME_OMIT); 'now' for UTIME_NOW. */
  atime?: NsTime | 'now'
  mtime?: NsTime | 'now'
}

export interface StatFs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  namemax: number
}

export type XattrFlags = 'create' | 'replace' | undefined

export interface FsckProblem {
  /** Path of the affected file when it can be named, else a record or block reference. */
  path: string
  kind: 'block-corrupt' | 'block-missing' | 'record-corrupt' | 'key-custody' | 'refcount' |
    'dangling-entry' | 'nlink' | 'orphan-block' | 'orphan-inode'
  detail: string
}

export interface FsckReport {
  ok: boolean
  problems: FsckProblem[]
  inodes: number
  blocks: number
  /** Problems fixed (only with repair). */
  repaired: number
}

export interface RotationProgress { done: number, total: number }

export const ROOT_INO = 1

export interface Volume {
  lookup (parent: number, name: Uint8Array | string): Promise<Attr>
  getattr (ino: number): Promise<Attr>
  /** Entries other than "." and "..", in a stable order. */
  readdir (ino: number): Promise<DirEntry[]>
  mkdir (parent: number, name: Uint8Array | string, options?: CreateOptions): Promise<Attr>
  rmdir (parent: number, name: Uint8Array | string): Promise<void>
  /** Create and open a regular file (O_CREAT|O_EXCL). Returns its attributes and a file handle. */
  create (parent: number, name: Uint8Array | string, options?: CreateOptions & OpenFlags): Promise<{ attr: Attr, fh: number }>
  /** mknod for fifos, sockets and device nodes (and regular files). */
  mknod (parent: number, name: Uint8Array | string, options: CreateOptions & { mode: number }): Promise<Attr>
  open (ino: number, flags?: OpenFlags): Promise<number>
  read (fh: number, offset: number, length: number): Promise<Buffer>
  /** Returns bytes written (always data.length). With append, offset is ignored. */
  write (fh: number, offset: number, data: Uint8Array): Promise<number>
  /** Seal this handle's dirty data (close(2) of one descriptor). */
  flush (fh: number): Promise<void>
  /** Durable when it returns. */
  fsync (fh: number, datasync?: boolean): Promise<void>
  release (fh: number): Promise<void>
  truncate (ino: number, size: number): Promise<Attr>
  unlink (parent: number, name: Uint8Array | string): Promise<void>
  /** Atomic; replaces an existing file or empty directory at the target. */
  rename (parent: number, name: Uint8Array | string, newParent: number, newName: Uint8Array | string, flags?: { noReplace?: boolean, exchange?: boolean }): Promise<void>
  link (ino: number, newParent: number, newName: Uint8Array | string): Promise<Attr>
  symlink (parent: number, name: Uint8Array | string, target: Uint8Array | string, caller?: Caller): Promise<Attr>
  readlink (ino: number): Promise<Buffer>
  /** chmod, chown, utimens and truncate in one call. */
  setattr (ino: number, attrs: SetAttr): Promise<Attr>
  statfs (): Promise<StatFs>
  setxattr (ino: number, name: string, value: Uint8Array, flags?: XattrFlags): Promise<void>
  getxattr (ino: number, name: string): Promise<Buffer>
  listxattr (ino: number): Promise<string[]>
  removexattr (ino: number, name: string): Promise<void>
  /** Seal every dirty block and make everything durable. */
  sync (): Promise<void>
  close (): Promise<void>
}
