/**
 * The FUSE adapter: a thin, path-based layer (libfuse2 high-level API through Strata's patched
 * fuse-native) over the inode-based StrataVolume. It resolves paths to inodes (with a cache it
 * invalidates on every namespace change), maps errors to errnos (errno.ts), passes the caller's
 * uid/gid to new entries, and nothing else: every file-system rule lives in the volume.
 */
import { constants as C } from 'node:fs'
import { readFile, realpath, statfs, writeFile } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { constants as OS } from 'node:os'
import { loadFuseNative, type Fuse, type FuseCaller, type FuseOps, type FuseOptions, type FuseStat, type FuseUtime } from './native/fuse-native.js'
import { toErrno } from './errno.js'
import { BufferPool } from '../volume/buffer-pool.js'
import { ROOT_INO, type Attr, type FileType } from '../volume/types.js'
import type { StrataVolume } from '../volume/strata-volume.js'

const E = OS.errno

export interface FuseLogger {
  (fmt: string, ...args: unknown[]): void
  error: (fmt: string, ...args: unknown[]) => void
  trace: (fmt: string, ...args: unknown[]) => void
}

export interface FuseAdapterInit {
  mountpoint: string
  /** Kernel attribute cache for non-directories, seconds (default 0). */
  attrTimeout?: number
  /** Attribute cache for directories only, seconds (default 1). */
  dirAttrTimeout?: number
  entryTimeout?: number
  /** Let other users use the mount (permissions are still enforced: default_permissions). */
  allowOther?: boolean
  debug?: boolean
}

const TYPE_BITS: Record<FileType, number> = {
  file: C.S_IFREG, dir: C.S_IFDIR, symlink: C.S_IFLNK, fifo: C.S_IFIFO, socket: C.S_IFSOCK, chardev: C.S_IFCHR, blockdev: C.S_IFBLK
}

/** The name libfuse2 gives a file that is unlinked while open. */
const HIDDEN = /^\.fuse_hidden[0-9a-f]{16}$/
const XATTR_CREATE = 1
const O_ACCMODE = 3
const XATTR_REPLACE = 2
/** Every op is answered within this many ms (ETIMEDOUT), so an application never hangs. */
const OP_TIMEOUT_MS = 30_000
/**
 * Largest read or write libfuse hands us (maxRead/maxWrite below): 1 MiB, the kernel's
 * max_pages limit, which the patched binding negotiates (native/README.md item 11); libfuse2
 * alone stops at 128 KiB.
 */
export const FUSE_MAX_IO = 1024 * 1024
const MAX_IO = FUSE_MAX_IO

/** Free scratch buffers kept: more than the kernel has reads and writes in flight at once. */
const MAX_SCRATCH = 16

/** Cached path → inode entries before the cache is dropped wholesale. */
const PATH_CACHE_MAX = 200_000

function split (path: string): { parent: string, name: string } {
  const i = path.lastIndexOf('/')
  return { parent: i <= 0 ? '/' : path.slice(0, i), name: path.slice(i + 1) }
}

const bytes = (s: string): Buffer => Buffer.from(s, 'latin1')

export function toStat (a: Attr): FuseStat {
  return {
    mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, nlink: a.nlink, ino: a.ino, rdev: a.rdev,
    blksize: 4096, blocks: a.blocks, atime: a.atime, mtime: a.mtime, ctime: a.ctime, dev: 0
  }
}

export class FuseAdapter {
  readonly mountpoint: string
  private readonly vol: StrataVolume
  private readonly log: FuseLogger
  private readonly init: FuseAdapterInit
  private readonly paths = new Map<string, number>()
  /** Files libfuse "hid" because they were unlinked while open: path → inode. */
  private readonly hidden = new Map<string, number>()
  private fuse: Fuse | undefined
  private offCapabilities: (() => void) | undefined
  /** Reused MAX_IO buffers for read and write (a fresh one per op costs page faults). */
  private readonly scratch = new BufferPool({ size: MAX_IO, maxFree: MAX_SCRATCH })

  constructor (components: { volume: StrataVolume, logger: FuseLogger }, init: FuseAdapterInit) {
    this.vol = components.volume
    this.log = components.logger
    this.init = init
    this.mountpoint = init.mountpoint
  }

  // ---- paths -----------------------------------------------------------------------------

  private async ino (path: string | null): Promise<number> {
    if (path === null) throw Object.assign(new Error('no path'), { name: 'FsError', code: 'ENOENT' })
    if (path === '/') return ROOT_INO
    const hit = this.paths.get(path) ?? this.hidden.get(path)
    if (hit !== undefined) return hit
    const { parent, name } = split(path)
    const attr = await this.vol.lookup(await this.ino(parent), bytes(name))
    if (this.paths.size >= PATH_CACHE_MAX) this.paths.clear()
    this.paths.set(path, attr.ino)
    return attr.ino
  }

  /** Forget a path, and for a directory everything below it (only directories have paths below). */
  private forget (path: string, isDir: boolean): void {
    this.paths.delete(path)
    if (!isDir) return
    const prefix = path + '/'
    for (const p of this.paths.keys()) if (p.startsWith(prefix)) this.paths.delete(p)
  }

  /** Drop every cached path (remote changes from sync arrive this way). */
  invalidate (): void {
    this.paths.clear()
  }

  private async parentOf (path: string | null): Promise<{ parent: number, name: Buffer, path: string }> {
    if (path === null || path === '/') throw Object.assign(new Error('no parent'), { name: 'FsError', code: path === null ? 'ENOENT' : 'EINVAL' })
    const { parent, name } = split(path)
    return { parent: await this.ino(parent), name: bytes(name), path }
  }

  // ---- the bridge ------------------------------------------------------------------------

  /** The errno for a failed op; integrity and unexpected failures get a log line naming the path. */
  private fail (op: string, path: string | null, err: unknown): number {
    const { errno, log } = toErrno(err)
    if (log) this.log.error('%s %s failed (%s): %e', op, path === null ? '(unlinked file)' : path, errnoName(errno), err)
    return errno
  }

  /** Run an op and answer its callback exactly once, with a value or a mapped errno. */
  private answer<T> (op: string, path: string | null, cb: (err: number, value?: T) => void, fn: () => Promise<T>): void {
    fn().then(value => { cb(0, value) }, (err: unknown) => { cb(this.fail(op, path, err)) })
  }

  /**
   * read/write: answer once, by OP_TIMEOUT_MS at the latest (ETIMEDOUT), with `deliver` run just
   * before a successful answer and `done` once the volume has finished (also after a timeout).
   */
  private answerIo (op: string, path: string | null, cb: (n: number) => void, fn: () => Promise<number>, deliver: (n: number) => void, done: () => void): void {
    let answered = false
    const timer = setTimeout(() => {
      answered = true
      this.log.error('%s %s: no answer from the volume in %d ms, answering ETIMEDOUT', op, path ?? '(unlinked file)', OP_TIMEOUT_MS)
      cb(-E.ETIMEDOUT)
    }, OP_TIMEOUT_MS)
    fn().then(n => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      deliver(n)
      cb(n)
    }, (err: unknown) => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      cb(this.fail(op, path, err))
    }).finally(done)
  }

  ops (): FuseOps {
    const vol = this.vol
    const caller = (c: FuseCaller): { uid: number, gid: number } => ({ uid: c.uid, gid: c.gid })
    return {
      init: cb => { cb(0) },
      access: (path, _mode, cb) => { this.answer('access', path, cb, async () => { await vol.getattr(await this.ino(path)) }) },
      statfs: (path, cb) => {
        this.answer('statfs', path, cb, async () => {
          const s = await vol.statfs()
          return { bsize: s.bsize, frsize: s.frsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0x5374726174, flag: 0, namemax: s.namemax }
        })
      },
      getattr: (path, cb) => { this.answer('getattr', path, cb, async () => toStat(await vol.getattr(await this.ino(path)))) },
      fgetattr: (path, fd, cb) => { this.answer('fgetattr', path, cb, async () => toStat(await vol.getattr(vol.handleIno(fd)))) },
      readdir: (path, cb) => { this.answerDir(path, cb) },
      opendir: (path, _flags, cb) => { this.answer('opendir', path, cb, async () => { await vol.readdir(await this.ino(path)); return 0 }) },
      releasedir: (_path, _fd, cb) => { cb(0) },
      fsyncdir: (path, _datasync, _fd, cb) => { this.answer('fsyncdir', path, cb, async () => { await vol.syncMetadata() }) },
      mkdir: (path, mode, cb, c) => {
        this.answer('mkdir', path, cb, async () => {
          const { parent, name } = await this.parentOf(path)
          const a = await vol.mkdir(parent, name, { mode, ...caller(c) })
          if (path !== null) this.paths.set(path, a.ino)
        })
      },
      rmdir: (path, cb) => {
        this.answer('rmdir', path, cb, async () => {
          const { parent, name } = await this.parentOf(path)
          await vol.rmdir(parent, name)
          if (path !== null) this.forget(path, true)
        })
      },
      create: (path, mode, cb, c) => {
        this.answer('create', path, cb, async () => {
          const { parent, name } = await this.parentOf(path)
          const { attr, fh } = await vol.create(parent, name, { mode, ...caller(c) })
          if (path !== null) this.paths.set(path, attr.ino)
          return fh
        })
      },
      mknod: (path, mode, dev, cb, c) => {
        this.answer('mknod', path, cb, async () => {
          const { parent, name } = await this.parentOf(path)
          const a = await vol.mknod(parent, name, { mode, rdev: dev, ...caller(c) })
          if (path !== null) this.paths.set(path, a.ino)
        })
      },
      open: (path, flags, cb) => {
        this.answer('open', path, cb, async () => {
          const acc = flags & O_ACCMODE
          return await vol.open(await this.ino(path), {
            write: acc === C.O_WRONLY || acc === C.O_RDWR,
            truncate: (flags & C.O_TRUNC) !== 0,
            append: (flags & C.O_APPEND) !== 0
          })
        })
      },
      // buf is libfuse memory, detached once the op is answered, and an op is answered at its
      // deadline even if the volume is still working (a stalled token): the volume works on a
      // scratch buffer of ours, and buf is touched only synchronously, before answering.
      read: (path, fd, buf, len, pos, cb) => {
        const scratch = this.scratch.buffer(len)
        this.answerIo('read', path, cb, async () => await vol.readInto(fd, pos, scratch),
          n => { scratch.copy(buf, 0, 0, n) }, () => { this.scratch.give(scratch) })
      },
      write: (path, fd, buf, len, pos, cb) => {
        const scratch = this.scratch.buffer(len)
        buf.copy(scratch, 0, 0, len)
        this.answerIo('write', path, cb, async () => await vol.write(fd, pos, scratch),
          () => {}, () => { this.scratch.give(scratch) })
      },
      flush: (path, fd, cb) => { this.answer('flush', path, cb, async () => { await vol.flush(fd) }) },
      fsync: (path, datasync, fd, cb) => { this.answer('fsync', path, cb, async () => { await vol.fsync(fd, datasync !== 0) }) },
      release: (path, fd, cb) => { this.answer('release', path, cb, async () => { await vol.release(fd) }) },
      truncate: (path, size, cb) => { this.answer('truncate', path, cb, async () => { await vol.truncate(await this.ino(path), size) }) },
      ftruncate: (path, fd, size, cb) => { this.answer('ftruncate', path, cb, async () => { await vol.truncate(vol.handleIno(fd), size) }) },
      unlink: (path, cb) => {
        this.answer('unlink', path, cb, async () => {
          // libfuse removing a file it hid: the volume unlinked it already (see rename).
          if (path !== null && this.hidden.delete(path)) return
          const { parent, name } = await this.parentOf(path)
          await vol.unlink(parent, name)
          if (path !== null) this.forget(path, false)
        })
      },
      rename: (src, dest, cb) => {
        this.answer('rename', src, cb, async () => {
          if (dest !== null && HIDDEN.test(split(dest).name)) {
            // libfuse2 renames a file unlinked while open to ".fuse_hidden…" and unlinks that at
            // release. We unlink it in the volume now instead: it lives on, nameless, through
            // its handles (fstat works, nlink is 0), is never listed, and is purged at release.
            const ino = await this.ino(src)
            const s = await this.parentOf(src)
            await vol.unlink(s.parent, s.name)
            this.forget(s.path, false)
            this.hidden.set(dest, ino)
            return
          }
          const s = await this.parentOf(src)
          const d = await this.parentOf(dest)
          const isDir = (await vol.getattr(await this.ino(s.path))).type === 'dir'
          await vol.rename(s.parent, s.name, d.parent, d.name)
          this.forget(s.path, isDir)
          this.forget(d.path, isDir) // a directory can only replace a directory
        })
      },
      link: (src, dest, cb) => {
        this.answer('link', dest, cb, async () => {
          const ino = await this.ino(src)
          const d = await this.parentOf(dest)
          await vol.link(ino, d.parent, d.name)
          this.paths.set(d.path, ino)
        })
      },
      symlink: (src, dest, cb, c) => {
        this.answer('symlink', dest, cb, async () => {
          if (src === null) throw Object.assign(new Error('no target'), { name: 'FsError', code: 'EINVAL' })
          const d = await this.parentOf(dest)
          const a = await vol.symlink(d.parent, d.name, bytes(src), caller(c))
          this.paths.set(d.path, a.ino)
        })
      },
      readlink: (path, cb) => { this.answer('readlink', path, cb, async () => await vol.readlink(await this.ino(path))) },
      chmod: (path, mode, cb) => { this.answer('chmod', path, cb, async () => { await vol.setattr(await this.ino(path), { mode }) }) },
      chown: (path, uid, gid, cb) => {
        this.answer('chown', path, cb, async () => {
          // (uid_t)-1 / (gid_t)-1 mean "leave unchanged".
          await vol.setattr(await this.ino(path), { uid: uid === 0xffffffff || uid === -1 ? undefined : uid, gid: gid === 0xffffffff || gid === -1 ? undefined : gid })
        })
      },
      utimens: (path, atime, mtime, cb) => {
        this.answer('utimens', path, cb, async () => {
          const t = (x: FuseUtime): bigint | 'now' | undefined => x === 'omit' ? undefined : x
          await vol.setattr(await this.ino(path), { atime: t(atime), mtime: t(mtime) })
        })
      },
      setxattr: (path, name, value, _position, flags, cb) => {
        this.answer('setxattr', path, cb, async () => {
          refuseAcl(name)
          const f = (flags & XATTR_CREATE) !== 0 ? 'create' : (flags & XATTR_REPLACE) !== 0 ? 'replace' : undefined
          await vol.setxattr(await this.ino(path), name, Buffer.from(value), f)
        })
      },
      getxattr: (path, name, _position, cb) => {
        this.answer('getxattr', path, cb, async () => {
          refuseAcl(name)
          return await vol.getxattr(await this.ino(path), name)
        })
      },
      listxattr: (path, cb) => { this.answer('listxattr', path, cb, async () => await vol.listxattr(await this.ino(path))) },
      removexattr: (path, name, cb) => {
        this.answer('removexattr', path, cb, async () => {
          refuseAcl(name)
          await vol.removexattr(await this.ino(path), name)
        })
      }
    }
  }

  private answerDir (path: string | null, cb: (err: number, names?: Array<string | Uint8Array>, stats?: FuseStat[]) => void): void {
    (async () => {
      const ino = await this.ino(path)
      const attr = await this.vol.getattr(ino)
      const entries = await this.vol.readdir(ino)
      const names: Uint8Array[] = [Buffer.from('.'), Buffer.from('..')]
      // d_ino 0 entries are skipped by glibc: ".." of the root names the root itself.
      const parentIno = ino === ROOT_INO ? ROOT_INO : await this.vol.parentIno(ino)
      const stats: FuseStat[] = [{ mode: attr.mode, ino }, { mode: C.S_IFDIR, ino: parentIno }]
      for (const e of entries) {
        names.push(e.name)
        stats.push({ mode: TYPE_BITS[e.type], ino: e.ino })
      }
      return { names, stats }
    })().then(({ names, stats }) => { cb(0, names, stats) }, (err: unknown) => { cb(this.fail('readdir', path, err)) })
  }

  fuseOptions (): FuseOptions {
    return {
      useIno: true,
      // hard_remove would lose fstat() on unlinked open files (libfuse2 answers ENOENT itself):
      // the hide-rename is turned into a real unlink instead (see rename).
      hardRemove: false,
      bigWrites: true,
      maxWrite: MAX_IO,
      maxRead: MAX_IO,
      // libfuse2 gives each name of a hard-linked file its own kernel inode and cannot tell the
      // kernel to refresh the others: only uncached attributes show a link count change at once.
      attrTimeout: this.init.attrTimeout ?? 0,
      // Directories cannot be hard-linked, and the kernel invalidates a directory's attributes
      // itself when an entry in it changes through the mount: cached, they spare a GETATTR per
      // directory per path walk (default_permissions checks search permission on each). A
      // change from another device shows within this time (native/README.md).
      dirAttrTimeout: this.init.dirAttrTimeout ?? 1,
      entryTimeout: this.init.entryTimeout ?? 1,
      negativeTimeout: 0,
      defaultPermissions: true,
      allowOther: this.init.allowOther ?? true,
      fsname: 'strata',
      subtype: 'strata',
      debug: this.init.debug === true,
      // FUSE ops must answer before fuse-native's timeout; a stalled token answers ETIMEDOUT.
      // read and write keep their own deadline (answerIo) and work on scratch buffers: with
      // fuse-native's, a write still running at its deadline saw libfuse's buffer detached
      // (an empty view) from its next await on, and stopped part way.
      timeout: { default: OP_TIMEOUT_MS, read: false, write: false }
    }
  }

  async mount (): Promise<void> {
    const Fuse = loadFuseNative()
    // The binding answers the kernel's security.capability query before each write itself
    // while the volume holds none (volume.mayHoldCapabilities), from mount on if known then.
    const fuse = new Fuse(this.mountpoint, this.ops(), { ...this.fuseOptions(), noCapabilities: !this.vol.mayHoldCapabilities })
    const off = this.vol.onCapabilities(may => { fuse.setNoCapabilities(!may) })
    try {
      await new Promise<void>((resolve, reject) => {
        fuse.mount(err => { if (err !== null) reject(err); else resolve() })
      })
    } catch (err) {
      off()
      throw err
    }
    fuse.setNoCapabilities(!this.vol.mayHoldCapabilities)
    this.fuse = fuse
    this.offCapabilities = off
    const ra = await raiseReadAhead(this.mountpoint, MAX_IO)
    if (ra !== undefined) this.log(`read-ahead stays at the kernel's default: ${ra}`)
  }

  async unmount (): Promise<void> {
    const fuse = this.fuse
    if (fuse === undefined) return
    await new Promise<void>((resolve, reject) => {
      fuse.unmount(err => { if (err !== null) reject(err); else resolve() })
    })
    this.fuse = undefined
    this.offCapabilities?.()
    this.offCapabilities = undefined
    this.scratch.clear()
  }
}

/**
 * The kernel reads ahead at most 128 KiB in a FUSE file (the bdi's default, which it lowers
 * further to what the INIT reply allows), so a sequential reader's requests stay at 128 KiB
 * however large max_read is. Once the mount answers, its bdi (/sys/class/bdi/MAJOR:MINOR) is
 * raised to `bytes`; writing there needs root.
 *
 * The statfs() is a FUSE request that returns only after the kernel processed the INIT reply
 * (which would otherwise undo the raise). Call it only with the mount's requests being served
 * meanwhile: it is asynchronous (libuv's pool); on the thread that answers, a synchronous one
 * would deadlock. Not a stat(): that would leave the root's attributes cached, and for that
 * long a stat of the mountpoint would still succeed after the daemon died. The device number
 * comes from /proc/self/mountinfo. Returns why it could not, or undefined.
 */
export async function raiseReadAhead (mountpoint: string, bytes: number): Promise<string | undefined> {
  try {
    await statfs(mountpoint)
    // mountinfo names the mount by its real path; the parent's resolves without a FUSE request
    const real = join(await realpath(dirname(resolve(mountpoint))), basename(mountpoint))
    const dev = mountDevice(await readFile('/proc/self/mountinfo', 'utf8'), real)
    if (dev === undefined) return `${real} is not in /proc/self/mountinfo`
    await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, String(Math.floor(bytes / 1024)))
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

/** MAJOR:MINOR of the last mount at `mountpoint` in a mountinfo text (proc(5)). */
export function mountDevice (mountinfo: string, mountpoint: string): string | undefined {
  // mount points are written with space, tab, newline and backslash as octal escapes
  const escaped = mountpoint.replace(/[ \t\n\\]/g, c => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'))
  let dev: string | undefined
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ')
    if (f[4] === escaped && /^\d+:\d+$/.test(f[2] ?? '')) dev = f[2]
  }
  return dev
}

/**
 * POSIX ACLs are not supported: stored as plain data they would be ignored by permission checks
 * and `sed -i` (which copies the ACL, not the mode) would lose a file's mode. EOPNOTSUPP makes
 * libacl fall back to chmod.
 */
function refuseAcl (name: string): void {
  if (name === 'system.posix_acl_access' || name === 'system.posix_acl_default') {
    throw Object.assign(new Error('POSIX ACLs are not supported'), { name: 'FsError', code: 'ENOTSUP' })
  }
}

function errnoName (errno: number): string {
  for (const [k, v] of Object.entries(E)) if (v === -errno) return k
  return String(errno)
}
