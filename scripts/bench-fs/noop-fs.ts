/**
 * The ceiling for `npm run bench:fs`: a fuse-native filesystem that does no work. Its namespace
 * and attributes live in a Map (tar, rm -rf, fio and the small-file loop need real metadata), but
 * file data is never stored: writes are counted and discarded, reads answer zeros up to the size
 * the file reached. It answers the same ops as Strata's adapter (xattrs: ENODATA) with the same
 * mount options by default, so the gap between it and Strata is Strata's own work, and it counts
 * every FUSE op it answers so the benchmark can report round trips per phase.
 *
 * Run by scripts/bench-fs.ts in its own child process (a process serving a mount must never block
 * its JS thread):  node dist/scripts/bench-fs/noop-fs.js MOUNTPOINT '{"attrTimeout":0,...}'
 * IPC: it sends {ready:true} once mounted (or {error}); answers {cmd:'counts'} with
 * {counts:{op:n}} and resets them; {cmd:'unmount'} (or SIGTERM/SIGINT) unmounts and exits.
 */
import { constants as C } from 'node:fs'
import { constants as OS } from 'node:os'
import { FUSE_MAX_IO, raiseReadAhead } from '../../fs/fuse/adapter.js'
import { loadFuseNative, type FuseCaller, type FuseOps, type FuseOptions, type FuseStat } from '../../fs/fuse/native/fuse-native.js'

const E = OS.errno
const ENODATA = 61

interface Node {
  ino: number
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  rdev: number
  atime: bigint
  mtime: bigint
  ctime: bigint
  target?: string
  children?: Set<string>
}

const mountpoint = process.argv[2]
if (mountpoint === undefined) { console.error('usage: noop-fs.js MOUNTPOINT [OPTIONS_JSON]'); process.exit(2) }
const extra = JSON.parse(process.argv[3] ?? '{}') as FuseOptions

const nowNs = (): bigint => process.hrtime.bigint() // monotonic is fine: only compared with itself
const epoch = BigInt(Date.now()) * 1_000_000n - nowNs()
const now = (): bigint => epoch + nowNs()

let nextIno = 2
const nodes = new Map<string, Node>()
const handles = new Map<number, Node>()
let nextFh = 1
const counts: Record<string, number> = {}

function mk (mode: number, c: FuseCaller | undefined, dir: boolean): Node {
  const t = now()
  const n: Node = { ino: nextIno++, mode, uid: c?.uid ?? 0, gid: c?.gid ?? 0, size: dir ? 4096 : 0, nlink: dir ? 2 : 1, rdev: 0, atime: t, mtime: t, ctime: t }
  if (dir) n.children = new Set()
  return n
}
const root = mk(C.S_IFDIR | 0o755, undefined, true)
root.ino = 1
nodes.set('/', root)

function split (path: string): { parent: string, name: string } {
  const i = path.lastIndexOf('/')
  return { parent: i <= 0 ? '/' : path.slice(0, i), name: path.slice(i + 1) }
}
const stat = (n: Node): FuseStat => ({
  mode: n.mode, uid: n.uid, gid: n.gid, size: n.size, nlink: n.nlink, ino: n.ino, rdev: n.rdev,
  blksize: 4096, blocks: Math.ceil(n.size / 512), atime: n.atime, mtime: n.mtime, ctime: n.ctime, dev: 0
})

/** Add `node` at `path`; returns an errno or 0. */
function add (path: string | null, node: Node): number {
  if (path === null) return -E.ENOENT
  if (nodes.has(path)) return -E.EEXIST
  const { parent, name } = split(path)
  const p = nodes.get(parent)
  if (p?.children === undefined) return -E.ENOENT
  p.children.add(name)
  if (node.children !== undefined) p.nlink++
  p.mtime = p.ctime = now()
  nodes.set(path, node)
  return 0
}
function remove (path: string): void {
  const n = nodes.get(path)
  if (n === undefined) return
  const { parent, name } = split(path)
  const p = nodes.get(parent)
  if (p?.children !== undefined) {
    p.children.delete(name)
    if (n.children !== undefined) p.nlink--
    p.mtime = p.ctime = now()
  }
  nodes.delete(path)
  n.nlink--
}

const count = (op: string): void => { counts[op] = (counts[op] ?? 0) + 1 }
type Cb = (err: number) => void
const getNode = (path: string | null): Node | undefined => path === null ? undefined : nodes.get(path)
const withNode = (op: string, path: string | null, cb: Cb, fn: (n: Node) => number | void): void => {
  count(op)
  const n = getNode(path)
  if (n === undefined) { cb(-E.ENOENT); return }
  const r = fn(n)
  cb(typeof r === 'number' ? r : 0)
}

const ops: FuseOps = {
  init: cb => { cb(0) },
  access: (path, _mode, cb) => { withNode('access', path, cb, () => 0) },
  statfs: (_path, cb) => {
    count('statfs')
    cb(0, { bsize: 4096, frsize: 4096, blocks: 1 << 28, bfree: 1 << 27, bavail: 1 << 27, files: 1 << 24, ffree: 1 << 23, favail: 1 << 23, fsid: 0x6e6f6f70, flag: 0, namemax: 255 })
  },
  getattr: (path, cb) => {
    count('getattr')
    const n = getNode(path)
    if (n === undefined) cb(-E.ENOENT); else cb(0, stat(n))
  },
  fgetattr: (path, fd, cb) => {
    count('fgetattr')
    const n = handles.get(fd) ?? getNode(path)
    if (n === undefined) cb(-E.ENOENT); else cb(0, stat(n))
  },
  opendir: (path, _flags, cb) => {
    count('opendir')
    if (getNode(path)?.children === undefined) cb(-E.ENOTDIR); else cb(0, 0)
  },
  releasedir: (_path, _fd, cb) => { count('releasedir'); cb(0) },
  fsyncdir: (_path, _d, _fd, cb) => { count('fsyncdir'); cb(0) },
  readdir: (path, cb) => {
    count('readdir')
    const n = getNode(path)
    if (n?.children === undefined) { cb(-E.ENOTDIR); return }
    const base = path === '/' ? '/' : `${path ?? ''}/`
    const names: string[] = ['.', '..']
    const stats: FuseStat[] = [{ mode: n.mode, ino: n.ino }, { mode: C.S_IFDIR, ino: nodes.get(split(path ?? '/').parent)?.ino ?? 1 }]
    for (const name of n.children) {
      const c = nodes.get(base + name)
      if (c === undefined) continue
      names.push(name)
      stats.push({ mode: c.mode & C.S_IFMT, ino: c.ino })
    }
    cb(0, names, stats)
  },
  mkdir: (path, mode, cb, c) => { count('mkdir'); cb(add(path, mk(C.S_IFDIR | (mode & 0o7777), c, true))) },
  rmdir: (path, cb) => {
    count('rmdir')
    const n = getNode(path)
    if (n === undefined || path === null) cb(-E.ENOENT)
    else if (n.children === undefined) cb(-E.ENOTDIR)
    else if (n.children.size > 0) cb(-E.ENOTEMPTY)
    else { remove(path); cb(0) }
  },
  create: (path, mode, cb, c) => {
    count('create')
    const n = mk(C.S_IFREG | (mode & 0o7777), c, false)
    const r = add(path, n)
    if (r !== 0) { cb(r); return }
    const fh = nextFh++
    handles.set(fh, n)
    cb(0, fh)
  },
  mknod: (path, mode, dev, cb, c) => {
    count('mknod')
    const n = mk(mode, c, false)
    n.rdev = dev
    cb(add(path, n))
  },
  open: (path, flags, cb) => {
    count('open')
    const n = getNode(path)
    if (n === undefined) { cb(-E.ENOENT); return }
    if ((flags & C.O_TRUNC) !== 0) n.size = 0
    const fh = nextFh++
    handles.set(fh, n)
    cb(0, fh)
  },
  read: (_path, fd, buf, len, pos, cb) => {
    count('read')
    const n = handles.get(fd)
    if (n === undefined) { cb(-E.EBADF); return }
    const got = Math.max(0, Math.min(len, n.size - pos))
    if (got > 0) buf.fill(0, 0, got)
    cb(got)
  },
  write: (_path, fd, _buf, len, pos, cb) => {
    count('write')
    const n = handles.get(fd)
    if (n === undefined) { cb(-E.EBADF); return }
    if (pos + len > n.size) n.size = pos + len
    cb(len)
  },
  flush: (_path, _fd, cb) => { count('flush'); cb(0) },
  fsync: (_path, _d, _fd, cb) => { count('fsync'); cb(0) },
  release: (_path, fd, cb) => {
    count('release')
    const n = handles.get(fd)
    handles.delete(fd)
    if (n !== undefined && n.nlink <= 0) n.size = 0
    cb(0)
  },
  truncate: (path, size, cb) => { withNode('truncate', path, cb, n => { n.size = size; n.mtime = n.ctime = now() }) },
  ftruncate: (_path, fd, size, cb) => {
    count('ftruncate')
    const n = handles.get(fd)
    if (n === undefined) { cb(-E.EBADF); return }
    n.size = size
    cb(0)
  },
  unlink: (path, cb) => {
    count('unlink')
    const n = getNode(path)
    if (n === undefined || path === null) cb(-E.ENOENT)
    else if (n.children !== undefined) cb(-E.EISDIR)
    else { remove(path); cb(0) }
  },
  rename: (src, dest, cb) => {
    count('rename')
    const n = getNode(src)
    if (n === undefined || src === null || dest === null) { cb(-E.ENOENT); return }
    const old = nodes.get(dest)
    if (old !== undefined) {
      if (old.children !== undefined && old.children.size > 0) { cb(-E.ENOTEMPTY); return }
      remove(dest)
    }
    // Move the entry and, for a directory, every path below it.
    const moved: Array<[string, Node]> = [[dest, n]]
    if (n.children !== undefined) {
      const prefix = src + '/'
      for (const [p, c] of nodes) if (p.startsWith(prefix)) moved.push([dest + p.slice(src.length), c])
      for (const [p] of moved.slice(1)) nodes.delete(src + p.slice(dest.length))
    }
    const nl = n.nlink
    remove(src)
    n.nlink = nl
    const r = add(dest, n)
    for (const [p, c] of moved.slice(1)) nodes.set(p, c)
    cb(r)
  },
  link: (src, dest, cb) => {
    count('link')
    const n = getNode(src)
    if (n === undefined) { cb(-E.ENOENT); return }
    const r = add(dest, n)
    if (r === 0) { n.nlink++; n.ctime = now() }
    cb(r)
  },
  symlink: (target, dest, cb, c) => {
    count('symlink')
    const n = mk(C.S_IFLNK | 0o777, c, false)
    n.target = target ?? ''
    n.size = n.target.length
    cb(add(dest, n))
  },
  readlink: (path, cb) => {
    count('readlink')
    const n = getNode(path)
    if (n?.target === undefined) cb(-E.EINVAL); else cb(0, n.target)
  },
  chmod: (path, mode, cb) => { withNode('chmod', path, cb, n => { n.mode = (n.mode & C.S_IFMT) | (mode & 0o7777); n.ctime = now() }) },
  chown: (path, uid, gid, cb) => {
    withNode('chown', path, cb, n => {
      if (uid !== -1 && uid !== 0xffffffff) n.uid = uid
      if (gid !== -1 && gid !== 0xffffffff) n.gid = gid
      n.ctime = now()
    })
  },
  utimens: (path, atime, mtime, cb) => {
    withNode('utimens', path, cb, n => {
      const t = now()
      if (atime !== 'omit') n.atime = atime === 'now' ? t : atime
      if (mtime !== 'omit') n.mtime = mtime === 'now' ? t : mtime
      n.ctime = t
    })
  },
  // Like Strata: xattrs are supported (so the kernel keeps asking), none are set here.
  setxattr: (path, _name, _value, _pos, _flags, cb) => { withNode('setxattr', path, cb, () => -E.ENOTSUP) },
  getxattr: (path, _name, _pos, cb) => { withNode('getxattr', path, cb, () => -ENODATA) },
  listxattr: (path, cb) => {
    count('listxattr')
    if (getNode(path) === undefined) cb(-E.ENOENT); else cb(0, [])
  },
  removexattr: (path, _name, cb) => { withNode('removexattr', path, cb, () => -ENODATA) }
}

// Strata's adapter options (fs/fuse/adapter.ts fuseOptions), overridable from the command line.
const options: FuseOptions = {
  useIno: true,
  hardRemove: false,
  bigWrites: true,
  maxWrite: FUSE_MAX_IO,
  maxRead: FUSE_MAX_IO,
  attrTimeout: 0,
  entryTimeout: 1,
  negativeTimeout: 0,
  defaultPermissions: true,
  allowOther: true,
  fsname: 'noop',
  subtype: 'noop',
  timeout: 30_000,
  ...extra
}
// Ops the caller asked to leave out (e.g. xattrs, to see what answering them costs).
const omit = (process.env.NOOP_OMIT_OPS ?? '').split(',').filter(Boolean)
for (const op of omit) delete (ops as Record<string, unknown>)[op]

const Fuse = loadFuseNative()
const fuse = new Fuse(mountpoint, ops, options)
const send = (m: unknown): void => { if (process.send !== undefined) process.send(m) }
let stopping = false
function stop (code: number): void {
  if (stopping) return
  stopping = true
  fuse.unmount(() => { process.exit(code) })
  setTimeout(() => { process.exit(code) }, 5000).unref()
}
process.on('SIGTERM', () => { stop(0) })
process.on('SIGINT', () => { stop(0) })
process.on('disconnect', () => { stop(0) })
process.on('message', (m: { cmd?: string }) => {
  if (m.cmd === 'counts') {
    send({ counts: { ...counts } })
    for (const k of Object.keys(counts)) delete counts[k]
  } else if (m.cmd === 'unmount') stop(0)
})
fuse.mount(err => {
  if (err !== null) { send({ error: err.message }); process.exit(1) }
  // the read-ahead Strata's adapter sets after its mount
  void raiseReadAhead(mountpoint, Math.max(options.maxRead ?? 0, 128 * 1024)).then(ra => {
    if (ra !== undefined) console.error(`noop-fs: read-ahead stays at the kernel's default: ${ra}`)
    send({ ready: true, pid: process.pid, options })
  })
})
