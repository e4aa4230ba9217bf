/**
 * A tiny in-memory filesystem (JS Maps) over the patched fuse-native binding, used by
 * test/fuse-native.test.ts and fs/fuse/native/test/baseline.ts to show each binding fix through a
 * real mount. Not part of Strata: no permissions, no persistence.
 *
 * `legacy: true` speaks the unpatched fuse-native 2.2.6 API (ms times, no caller) so the same
 * probes can run against node_modules/fuse-native for the before/after table.
 */
import type { FuseCaller, FuseOps, FuseStat, FuseUtime } from '../fuse-native.js'

const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const E = { ENOENT: -2, EBADF: -9, EEXIST: -17, ENOTDIR: -20, EISDIR: -21, EINVAL: -22, ENAMETOOLONG: -36, ENOTEMPTY: -39, ENODATA: -61, EOPNOTSUPP: -95 }
const NAME_MAX = 255

export interface MemNode {
  ino: bigint
  mode: number
  uid: number
  gid: number
  nlink: number
  /** Content is data[0, size); data grows geometrically. */
  data: Buffer
  size: number
  target: Buffer
  atime: bigint
  mtime: bigint
  ctime: bigint
  children: Map<string, MemNode> | undefined
  xattrs: Map<string, Buffer>
}

export interface MemFsOptions {
  /** Unpatched fuse-native 2.2.6 API: ms times, utimens(path, atimeMs, mtimeMs). */
  legacy?: boolean
  /** Answer EOPNOTSUPP for system.posix_acl_* (what the Strata adapter does); else store them as data. */
  aclEopnotsupp?: boolean
  /** First inode number handed out (default 2^32 + 1: exercises 64-bit st_ino). */
  firstIno?: bigint
}

export interface MemFsCall {
  op: string
  path: string | null
  caller: FuseCaller | undefined
}

export interface MemFs {
  ops: FuseOps
  root: MemNode
  /** Every op with its path and caller, in arrival order. */
  calls: MemFsCall[]
  /** utimens arguments as the binding delivered them. */
  utimens: Array<{ path: string | null, atime: FuseUtime | number, mtime: FuseUtime | number }>
  /** Largest write the kernel sent. */
  maxWrite: number
  /** Largest read request seen. */
  maxRead: number
  lookup (path: string): MemNode | undefined
}

const nowNs = (): bigint => BigInt(Date.now()) * 1_000_000n

export function memFs (opts: MemFsOptions = {}): MemFs {
  const legacy = opts.legacy === true
  let nextIno = opts.firstIno ?? 0x1_0000_0001n
  let nextFh = 1
  const fhs = new Map<number, MemNode>()
  const calls: MemFsCall[] = []
  const utimens: MemFs['utimens'] = []

  const mk = (mode: number, caller: FuseCaller | undefined): MemNode => {
    const t = nowNs()
    return {
      ino: nextIno++, mode, uid: caller?.uid ?? 0, gid: caller?.gid ?? 0, nlink: 1, data: Buffer.alloc(0), size: 0, target: Buffer.alloc(0),
      atime: t, mtime: t, ctime: t, children: (mode & S_IFMT) === S_IFDIR ? new Map() : undefined, xattrs: new Map()
    }
  }
  const root = mk(S_IFDIR | 0o755, undefined)
  root.ino = 1n
  root.nlink = 2

  const split = (path: string): string[] => path.split('/').filter(s => s.length > 0)
  const lookup = (path: string): MemNode | undefined => {
    let n: MemNode | undefined = root
    for (const name of split(path)) {
      n = n.children?.get(name)
      if (n === undefined) return undefined
    }
    return n
  }
  // Resolve parent dir and last name; errno on failure.
  const parentOf = (path: string): { dir: MemNode, name: string } | number => {
    const parts = split(path)
    const name = parts.pop()
    if (name === undefined) return E.EINVAL
    if (Buffer.byteLength(name, 'latin1') > NAME_MAX) return E.ENAMETOOLONG
    const dir = lookup(parts.join('/'))
    if (dir === undefined) return E.ENOENT
    if (dir.children === undefined) return E.ENOTDIR
    return { dir, name }
  }
  const node = (path: string | null, fd?: number): MemNode | undefined =>
    (fd !== undefined && fd !== 0 ? fhs.get(fd) : undefined) ?? (path === null ? undefined : lookup(path))

  const time = (t: bigint): bigint | number => legacy ? Number(t / 1_000_000n) : t
  const stat = (n: MemNode): FuseStat => ({
    mode: n.mode,
    uid: n.uid,
    gid: n.gid,
    size: (n.mode & S_IFMT) === S_IFLNK ? n.target.length : n.size,
    nlink: n.nlink,
    ino: legacy ? Number(n.ino & 0xffffffffn) : n.ino,
    blksize: 4096,
    blocks: Math.ceil(n.size / 512),
    atime: time(n.atime),
    mtime: time(n.mtime),
    ctime: time(n.ctime)
  })
  const log = (op: string, path: string | null, caller: FuseCaller | undefined): void => { calls.push({ op, path, caller }) }
  const touchCtime = (n: MemNode): void => { n.ctime = nowNs() }
  const resize = (n: MemNode, size: number): void => {
    if (size > n.data.length) {
      const grown = Buffer.alloc(Math.max(size, n.data.length * 2))
      n.data.copy(grown, 0, 0, n.size)
      n.data = grown
    } else if (size < n.size) {
      n.data.fill(0, size, n.size)
    }
    n.size = size
  }
  const isAcl = (name: string): boolean => opts.aclEopnotsupp === true && name.startsWith('system.posix_acl_')
  const toNs = (t: FuseUtime | number, old: bigint): bigint =>
    typeof t === 'bigint' ? t : typeof t === 'number' ? BigInt(Math.round(t)) * 1_000_000n : t === 'now' ? nowNs() : old

  const create = (path: string | null, mode: number, caller: FuseCaller | undefined): MemNode | number => {
    if (path === null) return E.EINVAL
    const p = parentOf(path)
    if (typeof p === 'number') return p
    if (p.dir.children!.has(p.name)) return E.EEXIST
    const n = mk(mode, caller)
    if (n.children !== undefined) { n.nlink = 2; p.dir.nlink++ }
    p.dir.children!.set(p.name, n)
    p.dir.mtime = p.dir.ctime = nowNs()
    return n
  }
  const remove = (path: string | null, dir: boolean): number => {
    if (path === null) return E.EINVAL
    const p = parentOf(path)
    if (typeof p === 'number') return p
    const n = p.dir.children!.get(p.name)
    if (n === undefined) return E.ENOENT
    if (dir && n.children === undefined) return E.ENOTDIR
    if (!dir && n.children !== undefined) return E.EISDIR
    if (dir && n.children!.size > 0) return E.ENOTEMPTY
    p.dir.children!.delete(p.name)
    if (dir) p.dir.nlink--
    n.nlink -= dir ? 2 : 1
    touchCtime(n)
    p.dir.mtime = p.dir.ctime = nowNs()
    return 0
  }

  const ops: FuseOps = {
    init: cb => cb(0),
    statfs: (path, cb, caller) => {
      log('statfs', path, caller)
      cb(0, { bsize: 4096, frsize: 4096, blocks: 1 << 20, bfree: 1 << 19, bavail: 1 << 19, files: 1 << 20, ffree: 1 << 19, favail: 1 << 19, fsid: 42, flag: 0, namemax: NAME_MAX })
    },
    getattr: (path, cb, caller) => {
      log('getattr', path, caller)
      if (path !== null && split(path).some(s => Buffer.byteLength(s, 'latin1') > NAME_MAX)) return cb(E.ENAMETOOLONG)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      cb(0, stat(n))
    },
    fgetattr: (path, fd, cb, caller) => {
      log('fgetattr', path, caller)
      const n = node(path, fd)
      if (n === undefined) return cb(E.ENOENT)
      cb(0, stat(n))
    },
    access: (path, _mode, cb, caller) => { log('access', path, caller); cb(node(path) === undefined ? E.ENOENT : 0) },
    readdir: (path, cb, caller) => {
      log('readdir', path, caller)
      const d = node(path)
      if (d === undefined) return cb(E.ENOENT)
      if (d.children === undefined) return cb(E.ENOTDIR)
      const names: Array<string | Uint8Array> = ['.', '..']
      const stats: FuseStat[] = [stat(d), stat(d)]
      for (const [name, n] of d.children) {
        // Half the names as raw bytes, half as latin1 strings: both must work.
        names.push(!legacy && names.length % 2 === 0 ? Buffer.from(name, 'latin1') : name)
        stats.push(stat(n))
      }
      cb(0, names, stats)
    },
    create: (path, mode, cb, caller) => {
      log('create', path, caller)
      const n = create(path, mode, caller)
      if (typeof n === 'number') return cb(n)
      const fh = nextFh++
      fhs.set(fh, n)
      cb(0, fh)
    },
    mknod: (path, mode, _dev, cb, caller) => {
      log('mknod', path, caller)
      const n = create(path, mode, caller)
      cb(typeof n === 'number' ? n : 0)
    },
    mkdir: (path, mode, cb, caller) => {
      log('mkdir', path, caller)
      const n = create(path, S_IFDIR | mode, caller)
      cb(typeof n === 'number' ? n : 0)
    },
    open: (path, _flags, cb, caller) => {
      log('open', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      const fh = nextFh++
      fhs.set(fh, n)
      cb(0, fh)
    },
    opendir: (path, _flags, cb, caller) => { log('opendir', path, caller); cb(0, 0) },
    releasedir: (path, _fd, cb, caller) => { log('releasedir', path, caller); cb(0) },
    read: (path, fd, buf, len, pos, cb, caller) => {
      log('read', path, caller)
      const n = node(path, fd)
      if (n === undefined) return cb(E.EBADF)
      if (len > memfs.maxRead) memfs.maxRead = len
      cb(n.data.copy(buf, 0, Math.min(pos, n.size), Math.min(pos + len, n.size)))
    },
    write: (path, fd, buf, len, pos, cb, caller) => {
      log('write', path, caller)
      const n = node(path, fd)
      if (n === undefined) return cb(E.EBADF)
      if (len > memfs.maxWrite) memfs.maxWrite = len
      resize(n, Math.max(n.size, pos + len))
      buf.copy(n.data, pos, 0, len)
      n.mtime = n.ctime = nowNs()
      cb(len)
    },
    flush: (path, _fd, cb, caller) => { log('flush', path, caller); cb(0) },
    fsync: (path, _ds, _fd, cb, caller) => { log('fsync', path, caller); cb(0) },
    release: (path, fd, cb, caller) => { log('release', path, caller); fhs.delete(fd); cb(0) },
    truncate: (path, size, cb, caller) => {
      log('truncate', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      resize(n, size)
      n.mtime = n.ctime = nowNs()
      cb(0)
    },
    ftruncate: (path, fd, size, cb, caller) => {
      log('ftruncate', path, caller)
      const n = node(path, fd)
      if (n === undefined) return cb(E.EBADF)
      resize(n, size)
      n.mtime = n.ctime = nowNs()
      cb(0)
    },
    unlink: (path, cb, caller) => { log('unlink', path, caller); cb(remove(path, false)) },
    rmdir: (path, cb, caller) => { log('rmdir', path, caller); cb(remove(path, true)) },
    rename: (src, dest, cb, caller) => {
      log('rename', src, caller)
      if (src === null || dest === null) return cb(E.EINVAL)
      const s = parentOf(src)
      const d = parentOf(dest)
      if (typeof s === 'number') return cb(s)
      if (typeof d === 'number') return cb(d)
      const n = s.dir.children!.get(s.name)
      if (n === undefined) return cb(E.ENOENT)
      const old = d.dir.children!.get(d.name)
      if (old !== undefined && old !== n) {
        if (old.children !== undefined && old.children.size > 0) return cb(E.ENOTEMPTY)
        old.nlink -= old.children !== undefined ? 2 : 1
      }
      s.dir.children!.delete(s.name)
      d.dir.children!.set(d.name, n)
      touchCtime(n)
      cb(0)
    },
    link: (src, dest, cb, caller) => {
      log('link', dest, caller)
      if (src === null || dest === null) return cb(E.EINVAL)
      const n = lookup(src)
      if (n === undefined) return cb(E.ENOENT)
      const d = parentOf(dest)
      if (typeof d === 'number') return cb(d)
      if (d.dir.children!.has(d.name)) return cb(E.EEXIST)
      d.dir.children!.set(d.name, n)
      n.nlink++
      touchCtime(n)
      cb(0)
    },
    symlink: (target, dest, cb, caller) => {
      log('symlink', dest, caller)
      if (target === null) return cb(E.EINVAL)
      const n = create(dest, S_IFLNK | 0o777, caller)
      if (typeof n === 'number') return cb(n)
      n.target = Buffer.from(target, legacy ? 'utf8' : 'latin1')
      cb(0)
    },
    readlink: (path, cb, caller) => {
      log('readlink', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      if (legacy) return cb(0, n.target.toString('utf8'))
      cb(0, n.target) // raw bytes (a latin1 string works too)
    },
    chmod: (path, mode, cb, caller) => {
      log('chmod', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      n.mode = (n.mode & S_IFMT) | (mode & 0o7777)
      touchCtime(n)
      cb(0)
    },
    chown: (path, uid, gid, cb, caller) => {
      log('chown', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      if (uid !== 0xffffffff) n.uid = uid
      if (gid !== 0xffffffff) n.gid = gid
      touchCtime(n)
      cb(0)
    },
    utimens: (path, atime, mtime, cb, caller) => {
      log('utimens', path, caller)
      utimens.push({ path, atime, mtime })
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      n.atime = toNs(atime, n.atime)
      n.mtime = toNs(mtime, n.mtime)
      touchCtime(n)
      cb(0)
    },
    setxattr: (path, name, value, _pos, _flags, cb, caller) => {
      log('setxattr', path, caller)
      if (isAcl(name)) return cb(E.EOPNOTSUPP)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      n.xattrs.set(name, Buffer.from(value))
      touchCtime(n)
      cb(0)
    },
    getxattr: (path, name, _pos, cb, caller) => {
      log('getxattr', path, caller)
      if (isAcl(name)) return cb(E.EOPNOTSUPP)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      const v = n.xattrs.get(name)
      if (v === undefined) return cb(E.ENODATA)
      cb(0, v)
    },
    listxattr: (path, cb, caller) => {
      log('listxattr', path, caller)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      cb(0, [...n.xattrs.keys()])
    },
    removexattr: (path, name, cb, caller) => {
      log('removexattr', path, caller)
      if (isAcl(name)) return cb(E.EOPNOTSUPP)
      const n = node(path)
      if (n === undefined) return cb(E.ENOENT)
      cb(n.xattrs.delete(name) ? 0 : E.ENODATA)
    }
  }
  const memfs: MemFs = { ops, root, calls, utimens, maxWrite: 0, maxRead: 0, lookup }
  return memfs
}
