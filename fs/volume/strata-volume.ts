/**
 * StrataVolume: POSIX file-system semantics over the encrypted metadata store and block store.
 *
 * Writes land in per-file dirty block buffers (so small or unaligned writes never re-encrypt a
 * block each time) and are sealed — encrypted on the crypto pool, stored, and committed in one
 * metadata batch — when a block fills, on flush/fsync/release, past a dirty-bytes limit or after
 * a time limit. Reads see dirty data. Metadata changes run under one mutex; crypto runs outside.
 */
import { randomBytes } from 'node:crypto'
import { statfs as statfsAsync } from 'node:fs/promises'
import { constants as C } from 'node:fs'
import type { KeyService, CustodyFaultHook } from '../../hsm/types.js'
import { KeyCustodyError } from '../../hsm/errors.js'
import { keyCheckValue, kcvEqual } from '../../hsm/custody.js'
import { FsError, BlockCorruptError, BlockMissingError, RecordCorruptError, VolumeFormatError } from '../errors.js'
import { blockAad, paddedLength, wrapKey, unwrapKey, BLOCK_OVERHEAD } from '../crypto/block-crypto.js'
import { nameTag, xattrTag } from '../crypto/record-crypto.js'
import type { BlockStore, Db } from '../store/types.js'
import { syncDb } from '../store/types.js'
import { guardFreeSpace } from '../store/disk-guard.js'
import { CryptoPool } from './crypto-pool.js'
import { BlockCache } from './block-cache.js'
import { Mutex } from '../../hsm/mutex.js'
import { MetaStore, withdrawn, type BatchOp } from './meta-store.js'
import { RefBatch, bekAad, getBlockKey } from './block-keys.js'
import { toName, XATTR_NAME_MAX, XATTR_SIZE_MAX } from './names.js'
import {
  K, ROOT_FID, decodeInode, encodeInode, decodeDirent, encodeDirent, decodeManifest, encodeManifest,
  decodeXattr, encodeXattr, type NamespaceRecord, type Header, type Inode, type Dirent, type ManifestEntry
} from './records.js'
import {
  ROOT_INO, type Attr, type DirEntry, type CreateOptions, type OpenFlags, type SetAttr, type StatFs,
  type Volume, type XattrFlags, type FileType, type Caller
} from './types.js'

export const DEFAULT_BLOCK_SIZE = 1024 * 1024
const S_ISGID = 0o2000
/** Blocks read ahead of a sequential reader. */
const READ_AHEAD = 4
/** Write buffers start at this size; a block's data beyond it gets a whole pooled buffer. */
const SMALL_WRITE_BUFFER = 64 * 1024
/** Files of at most this many blocks have their manifest read key by key (manifestEntries). */
const SMALL_FILE_BLOCKS = 16
/** A volume opened with GC candidates queued collects them this long after opening. */
const GC_AFTER_OPEN_MS = 10_000
const FORMAT = 1
/** The xattr holding a file's capabilities (capabilities(7)). */
const CAPABILITY_XATTR = 'security.capability'

export interface VolumeComponents {
  db: Db
  keys: KeyService
  blocks: BlockStore
}

export interface VolumeInit {
  /** Directory whose file system statfs reports (the data dir). */
  dataDir: string
  /** Bytes per block (create only; an existing volume keeps its own). Power of two, 64 KiB–4 MiB. */
  blockSize?: number
  /** Decrypted block cache, bytes. */
  cacheBytes?: number
  /** Dirty bytes held before writers seal the oldest blocks themselves. */
  dirtyLimit?: number
  /** A dirty block older than this is sealed in the background. */
  sealAfterMs?: number
  /** Blocks sealed at once before writers wait (default 2 per crypto thread + 2). */
  maxSeals?: number
  /** Crypto worker threads (0 = seal on the main thread). */
  cryptoThreads?: number
  /** Told about failures of background work (GC, aged seals); the daemon logs them. */
  onBackgroundError?: (what: string, err: Error) => void
  /** Test-only: flips bits between custody steps of block keys. */
  custodyFaultHook?: CustodyFaultHook
  /**
   * Create only: make this volume a new device's replica of a team's volume (enrolment): the
   * same root namespace, block size and wrapped metadata key, so change logs and blocks of the
   * team's other devices apply here. The NEK records must already be in the key store.
   */
  replicaOf?: ReplicaSeed
}

/** What a new device needs to hold a replica of a team's volume (all of it wrapped or public). */
/** One block of a file as the sync layer carries it: index, id, plaintext length, wrapped BEK. */
export interface SyncBlock { i: number, id: string, len: number, v: number, w: string, c: string, tag: string }

export interface ReplicaSeed {
  rootNamespace: string
  blockSize: number
  /** The root namespace's `n/<ns>` record: its metadata key wrapped by the NEK. */
  namespaceRecord: NamespaceRecord
}

/**
 * Replaces the damaged or missing stored copy of block `id` (hex) with an intact one from
 * elsewhere, verified against the id; true once it is stored. `cause` is the read's error.
 */
export type BlockRepairer = (id: string, cause: Error) => Promise<boolean>

/** The stored copy of a block is missing or does not hash to its id (another copy may be intact). */
function copyDamaged (err: unknown): boolean {
  const e = err as { name?: string, copyDamaged?: boolean }
  return e?.name === 'BlockMissingError' || (e?.name === 'BlockCorruptError' && e.copyDamaged === true)
}

interface DirtyBlock { buf: Buffer, len: number, since: number }

interface FileState {
  ino: number
  opens: number
  dirty: Map<number, DirtyBlock>
  sealing: Map<number, Promise<void>>
  /** Manifest entries read or written while the file is loaded (null = hole). */
  manifest: Map<number, ManifestEntry | null>
  lock: Mutex
  /** A background seal failed: reported by the next flush/fsync of the file. */
  error?: Error
  /** The inode version last written by this file's seals (sealFile skips rewriting it). */
  persistedVersion?: number
}

interface Handle { ino: number, write: boolean, append: boolean }

const TYPE_BITS: Record<FileType, number> = {
  file: C.S_IFREG, dir: C.S_IFDIR, symlink: C.S_IFLNK, fifo: C.S_IFIFO, socket: C.S_IFSOCK, chardev: C.S_IFCHR, blockdev: C.S_IFBLK
}

function typeOfMode (mode: number): FileType {
  switch (mode & C.S_IFMT) {
    case C.S_IFDIR: return 'dir'
    case C.S_IFLNK: return 'symlink'
    case C.S_IFIFO: return 'fifo'
    case C.S_IFSOCK: return 'socket'
    case C.S_IFCHR: return 'chardev'
    case C.S_IFBLK: return 'blockdev'
    default: return 'file'
  }
}

const EPOCH_NS = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint()
/** Wall-clock time in nanoseconds (monotonic within the process). */
export const nowNs = (): bigint => EPOCH_NS + process.hrtime.bigint()

export class StrataVolume implements Volume {
  readonly db: Db
  readonly keys: KeyService
  readonly blocks: BlockStore
  readonly meta: MetaStore
  readonly blockSize: number
  readonly rootNamespace: string
  private readonly init: VolumeInit
  private readonly pool: CryptoPool
  private readonly cache: BlockCache
  private readonly lock = new Mutex()
  private readonly inodes = new Map<number, Inode>()
  private readonly files = new Map<number, FileState>()
  private readonly handles = new Map<number, Handle>()
  private nextFh = 1
  private nextIno = 0
  private dirtyBytes = 0
  private sealsInFlight = 0
  private readonly maxSeals: number
  private readonly sealWaiters: Array<() => void> = []
  /** Blocks stored whose metadata is not committed yet (hidden from fsck repair and the GC). */
  private readonly inflight = new Set<string>()
  private gcRunning: Promise<{ blocksDeleted: number }> | undefined
  private readonly dirtyLimit: number
  private readonly sealAfterMs: number
  private readonly background = new Set<Promise<unknown>>()
  private timer: NodeJS.Timeout | undefined
  private gcTimer: NodeJS.Timeout | undefined
  private gcAt = 0
  private closed = false

  private constructor (components: VolumeComponents, init: VolumeInit, header: Header) {
    this.db = components.db
    this.keys = components.keys
    this.blocks = components.blocks
    this.meta = new MetaStore({ ...components, beforeSync: async () => { await this.blocks.sync() }, writeFailed: async ops => { await this.restoreInodes(ops) } })
    this.init = init
    guardFreeSpace(this.db, init.dataDir)
    this.blockSize = header.blockSize
    this.rootNamespace = header.rootNamespace
    this.pool = new CryptoPool({ threads: init.cryptoThreads, bufferBytes: header.blockSize + BLOCK_OVERHEAD })
    this.cache = new BlockCache(init.cacheBytes ?? 32 * 1024 * 1024, { pool: this.pool.buffers })
    this.dirtyLimit = init.dirtyLimit ?? 32 * 1024 * 1024
    this.sealAfterMs = init.sealAfterMs ?? 2000
    this.maxSeals = init.maxSeals ?? 2 * this.pool.threads + 2
    this.timer = setInterval(() => { this.track(this.sealAged()) }, Math.max(50, Math.min(1000, this.sealAfterMs / 2)))
    this.timer.unref()
  }

  /** Create a new volume in an empty database: root namespace, root directory. */
  static async create (components: VolumeComponents, init: VolumeInit): Promise<StrataVolume> {
    const meta = components.db.sublevel<string, Uint8Array>('meta', { keyEncoding: 'utf8', valueEncoding: 'view' })
    if (await meta.get(K.header) !== undefined) throw new VolumeFormatError('a volume already exists in this data directory')
    const seed = init.replicaOf
    const blockSize = seed?.blockSize ?? init.blockSize ?? DEFAULT_BLOCK_SIZE
    if (!validBlockSize(blockSize)) {
      throw new FsError('EINVAL', `block size ${blockSize} must be a power of two from 64 KiB to 4 MiB`)
    }
    const header: Header = { format: FORMAT, blockSize, rootNamespace: seed?.rootNamespace ?? randomBytes(8).toString('hex'), created: new Date().toISOString() }
    if (!/^[0-9a-f]{16}$/.test(header.rootNamespace)) throw new VolumeFormatError('the team\'s root namespace id is malformed')
    const vol = new StrataVolume(components, init, header)
    const nsOp: BatchOp = seed === undefined
      ? await vol.meta.createNamespace(header.rootNamespace)
      : { type: 'put', key: K.namespace(header.rootNamespace), value: Buffer.from(JSON.stringify(seed.namespaceRecord)) }
    const t = nowNs()
    const root: Inode = {
      ino: ROOT_INO, ns: header.rootNamespace, type: 'dir', mode: C.S_IFDIR | 0o755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0,
      nlink: 2, size: 0, atime: t, mtime: t, ctime: t, rdev: 0, version: 1, parent: ROOT_INO, stored: 0, fid: ROOT_FID
    }
    await vol.meta.write([nsOp], { sync: true })
    const headerJson = Buffer.from(JSON.stringify(header))
    await vol.meta.write([
      await vol.inodeOp(root),
      { type: 'put', key: K.nextIno, value: await vol.meta.seal(header.rootNamespace, K.nextIno, Buffer.from(String(ROOT_INO + 1))) },
      // The header is read before any key is known (it names the root namespace); its sealed
      // copy authenticates it once the root namespace's keys are available.
      { type: 'put', key: K.header, value: headerJson },
      { type: 'put', key: K.headerSealed, value: await vol.meta.seal(header.rootNamespace, K.headerSealed, headerJson) }
    ], { sync: true })
    vol.nextIno = ROOT_INO + 1
    vol.setMayHoldCapabilities(false) // empty; a replica's xattrs all arrive through setxattr
    return vol
  }

  /** Open an existing volume; finishes the purge of files that were unlinked while open. */
  static async open (components: VolumeComponents, init: VolumeInit): Promise<StrataVolume> {
    const meta = components.db.sublevel<string, Uint8Array>('meta', { keyEncoding: 'utf8', valueEncoding: 'view' })
    const raw = await meta.get(K.header)
    if (raw === undefined) throw new VolumeFormatError('this data directory holds no Strata volume (run "strata init")')
    let header: Header
    try {
      header = JSON.parse(Buffer.from(raw).toString('utf8')) as Header
    } catch (err) {
      throw new VolumeFormatError('the volume header is unreadable', { cause: err })
    }
    if (header.format !== FORMAT) throw new VolumeFormatError(`volume format ${String(header.format)} is not supported (this build reads format ${FORMAT})`)
    if (typeof header.rootNamespace !== 'string' || !/^[0-9a-f]{16}$/.test(header.rootNamespace)) throw new RecordCorruptError(K.header, 'header names no valid root namespace')
    if (!validBlockSize(header.blockSize)) throw new RecordCorruptError(K.header, 'header holds an invalid block size')
    const vol = new StrataVolume(components, init, header)
    try {
      const sealed = await vol.meta.get(K.headerSealed)
      if (sealed === undefined || !sealed.body.equals(Buffer.from(raw))) throw new RecordCorruptError(K.header, 'header does not match its authenticated copy')
      const next = await vol.meta.get(K.nextIno)
      const n = next === undefined ? NaN : Number(next.body.toString('latin1'))
      if (!Number.isSafeInteger(n) || n <= ROOT_INO) throw new RecordCorruptError(K.nextIno, 'inode counter is missing or malformed')
      vol.nextIno = n
      await vol.purgeOrphans()
      // Candidates a crash left queued (a delete's freed blocks) would otherwise wait for the
      // next delete to run the GC: collect them soon after the volume is up.
      for await (const _ of vol.meta.meta.keys({ gte: 'g/', lt: 'g/\xff', limit: 1 })) vol.scheduleGc(GC_AFTER_OPEN_MS)
      vol.track(vol.checkCapabilities().catch(err => { vol.onBackgroundError('the scan for security.capability attributes', err as Error) }))
    } catch (err) {
      await vol.close().catch(() => {})
      throw err
    }
    return vol
  }

  // ---- helpers -------------------------------------------------------------------------

  /** Background work that failed (its data is kept; the error is for the log). */
  private onBackgroundError (what: string, err: Error): void {
    this.init.onBackgroundError?.(what, err)
  }

  private track (p: Promise<unknown>): void {
    const q = p.catch(() => {}).finally(() => this.background.delete(q))
    this.background.add(q)
  }

  private assertOpen (): void {
    if (this.closed) throw new FsError('EIO', 'the volume is closed')
  }

  /** The file-id index record of an inode (written with the inode's creation). */
  async fidOp (inode: Inode): Promise<BatchOp> {
    const key = K.fid(inode.fid)
    return { type: 'put', key, value: await this.meta.seal(inode.ns, key, Buffer.from(String(inode.ino))) }
  }

  /** The inode holding a file id, or undefined. */
  async inoOfFid (fid: string): Promise<number | undefined> {
    const key = K.fid(fid)
    const rec = await this.meta.get(key)
    if (rec === undefined) return fid === ROOT_FID ? ROOT_INO : undefined
    const ino = Number(rec.body.toString('latin1'))
    if (!Number.isSafeInteger(ino) || ino <= 0) throw new RecordCorruptError(key, 'file id index holds no inode number')
    return ino
  }

  async inodeOp (inode: Inode): Promise<BatchOp> {
    const key = K.inode(inode.ino)
    return { type: 'put', key, value: await this.meta.seal(inode.ns, key, encodeInode(inode)) }
  }

  /** The inode, from memory or the store; every call checks the namespace's key access. */
  async getInode (ino: number): Promise<Inode> {
    this.assertOpen()
    const cached = this.inodes.get(ino)
    if (cached !== undefined) {
      await this.meta.nsKeys(cached.ns)
      return cached
    }
    const key = K.inode(ino)
    const rec = await this.meta.get(key)
    if (rec === undefined) throw new FsError('ENOENT', `no inode ${ino}`)
    const inode = decodeInode(key, ino, rec.ns, rec.body)
    if (this.inodes.size > 50_000) this.evictInodes()
    this.inodes.set(ino, inode)
    return inode
  }

  private evictInodes (): void {
    for (const ino of this.inodes.keys()) {
      if (this.inodes.size <= 25_000) break
      if (!this.files.has(ino)) this.inodes.delete(ino)
    }
  }

  private async dirInode (ino: number): Promise<Inode> {
    const inode = await this.getInode(ino)
    if (inode.type !== 'dir') throw new FsError('ENOTDIR', `inode ${ino} is not a directory`)
    return inode
  }

  private async direntKey (dir: Inode, name: Buffer): Promise<string> {
    const keys = await this.meta.nsKeys(dir.ns)
    return K.dirent(dir.ino, nameTag(keys.name, dir.ino, name))
  }

  private async getDirent (dir: Inode, name: Buffer): Promise<Dirent | undefined> {
    const key = await this.direntKey(dir, name)
    const rec = await this.meta.get(key)
    if (rec === undefined) return undefined
    const d = decodeDirent(key, rec.body)
    if (!d.name.equals(name)) throw new RecordCorruptError(key, 'entry name does not match its key')
    return d
  }

  private async direntOp (dir: Inode, d: Dirent): Promise<BatchOp> {
    const key = await this.direntKey(dir, d.name)
    return { type: 'put', key, value: await this.meta.seal(dir.ns, key, encodeDirent(d)) }
  }

  private async allocIno (): Promise<{ ino: number, op: BatchOp }> {
    const ino = this.nextIno++
    return { ino, op: { type: 'put', key: K.nextIno, value: await this.meta.seal(this.rootNamespace, K.nextIno, Buffer.from(String(this.nextIno))) } }
  }

  attr (inode: Inode): Attr {
    const st = this.files.get(inode.ino)
    let stored = inode.stored
    if (st !== undefined) for (const d of st.dirty.values()) stored += d.buf.length
    return {
      ino: inode.ino, type: inode.type, mode: inode.mode, nlink: inode.nlink, uid: inode.uid, gid: inode.gid,
      size: inode.size, blocks: Math.ceil(stored / 512), atime: inode.atime, mtime: inode.mtime, ctime: inode.ctime,
      rdev: inode.rdev, version: inode.version, namespace: inode.ns
    }
  }

  private touch (inode: Inode, what: { m?: boolean, c?: boolean }): void {
    const t = nowNs()
    if (what.m === true) inode.mtime = t
    if (what.c !== false) inode.ctime = t
    inode.version++
  }

  private async isEmptyDir (ino: number): Promise<boolean> {
    for await (const _ of this.meta.meta.keys({ gte: K.direntPrefix(ino), lt: K.direntPrefix(ino) + '\xff', limit: 1 })) return false
    return true
  }

  // ---- sync support (fs/volume/replica.ts) ---------------------------------------------

  /** True while a file has open handles or unsealed data: the sync layer leaves it alone. */
  isBusy (ino: number): boolean {
    return this.files.has(ino)
  }

  /** The LevelDB key of a directory entry (stable on this device; the sync layer keys its state by it). */
  async entryKey (dirIno: number, name: Uint8Array | string): Promise<string> {
    return await this.direntKey(await this.dirInode(dirIno), toName(name))
  }

  /** A directory entry, or undefined. */
  async entry (dirIno: number, name: Uint8Array | string): Promise<Dirent | undefined> {
    return await this.getDirent(await this.dirInode(dirIno), toName(name))
  }

  /** A file's blocks with their wrapped keys, as another device of the team needs them. */
  async blockList (ino: number): Promise<SyncBlock[]> {
    const inode = await this.getInode(ino)
    const out: SyncBlock[] = []
    // A small file's entries are read one by one: under the lock, so no commit lands between
    // them. A large file's range scan reads a LevelDB snapshot and needs no lock.
    const entries = this.smallManifest(inode) ? await this.lock.run(async () => await this.manifestEntries(inode)) : await this.manifestEntries(inode)
    for (const [key, m] of entries) {
      const k = await getBlockKey(this.meta, inode.ns, m.id)
      if (k === undefined) throw new RecordCorruptError(K.blockKey(inode.ns, m.id), 'a manifest names a block without a key record')
      out.push({ i: parseInt(key.slice(key.lastIndexOf('/') + 1), 16), id: m.id, len: m.len, v: k.v, w: k.w, c: k.c, tag: k.tag })
    }
    return out
  }

  /**
   * Replace a closed file's content with another device's blocks, in one batch: block keys are
   * unwrapped and checked (custody) before they are stored, references move from the old
   * blocks to the new. Every block must already be in the block store.
   */
  async replaceContent (ino: number, blocks: SyncBlock[], size: number, mtime: bigint): Promise<void> {
    let freed = false
    await this.lock.run(async () => {
      const inode = await this.getInode(ino)
      if (inode.type !== 'file') throw new FsError('EINVAL', `inode ${ino} is not a file`)
      if (this.files.has(ino)) throw new FsError('EBUSY', `inode ${ino} is open`)
      const ns = inode.ns
      const refs = new RefBatch(this.meta, ns)
      const ops: BatchOp[] = []
      for await (const [key, value] of this.meta.range(K.manifestPrefix(ino))) {
        const { body } = await this.meta.open(key, value)
        await refs.unref(decodeManifest(key, body).id)
        ops.push({ type: 'del', key })
      }
      let stored = 0
      for (const b of blocks) {
        if (!/^[0-9a-f]{64}$/.test(b.id) || !Number.isSafeInteger(b.i) || b.i < 0 || b.len <= 0 || b.len > this.blockSize) {
          throw new FsError('EINVAL', `block ${b.i} of a remote file is malformed`)
        }
        if (!await this.blocks.has(Buffer.from(b.id, 'hex'))) throw new BlockMissingError(b.id)
        if (!await refs.ref(b.id)) {
          const nek = await this.keys.nek(ns, b.v)
          const bek = unwrapKey(nek.key, Buffer.from(b.w, 'base64'), bekAad(ns, b.v, b.id))
          const ok = bek !== undefined && kcvEqual(keyCheckValue(bek), Buffer.from(b.c, 'base64'))
          bek?.fill(0)
          if (!ok) throw new KeyCustodyError(K.blockKey(ns, b.id), 'a remote block key fails its check; nothing stored')
          refs.add(b.id, { v: b.v, w: b.w, c: b.c, refs: 1, tag: b.tag })
          if (/^[0-9a-f]{64}$/.test(b.tag) && await this.meta.raw(K.dedup(ns, b.tag)) === undefined) {
            ops.push({ type: 'put', key: K.dedup(ns, b.tag), value: Buffer.from(b.id, 'latin1') })
          }
        }
        const mkey = K.manifest(ino, b.i)
        ops.push({ type: 'put', key: mkey, value: await this.meta.seal(ns, mkey, encodeManifest({ id: b.id, len: b.len })) })
        stored += paddedLength(b.len, this.blockSize)
      }
      ops.push(...await refs.ops())
      inode.size = size
      inode.stored = stored
      inode.mtime = mtime
      this.touch(inode, {})
      ops.push(await this.inodeOp(inode))
      await this.meta.write(ops)
      freed = refs.freed.length > 0
    })
    if (freed) this.scheduleGc()
  }

  // ---- namespace operations ------------------------------------------------------------

  async lookup (parent: number, name: Uint8Array | string): Promise<Attr> {
    const n = toName(name)
    const dir = await this.dirInode(parent)
    const d = await this.getDirent(dir, n)
    if (d === undefined) throw new FsError('ENOENT', `no entry in directory ${parent}`)
    return this.attr(await this.getInode(d.ino))
  }

  async getattr (ino: number): Promise<Attr> {
    return this.attr(await this.getInode(ino))
  }

  /** Walk an absolute path ("/a/b") from the root. */
  async resolve (path: string): Promise<Attr> {
    let attr = await this.getattr(ROOT_INO)
    for (const part of path.split('/').filter(p => p !== '' && p !== '.')) {
      if (part === '..') {
        attr = await this.getattr((await this.getInode(attr.ino)).parent)
        continue
      }
      attr = await this.lookup(attr.ino, part)
    }
    return attr
  }

  async readdir (ino: number): Promise<DirEntry[]> {
    await this.dirInode(ino)
    const out: DirEntry[] = []
    for await (const [key, value] of this.meta.range(K.direntPrefix(ino))) {
      const { body } = await this.meta.open(key, value)
      const d = decodeDirent(key, body)
      out.push({ name: d.name, ino: d.ino, type: d.type })
    }
    return out
  }

  private newInode (ino: number, ns: string, type: FileType, mode: number, caller: Caller, parent: number): Inode {
    const t = nowNs()
    return {
      ino, ns, type, mode: TYPE_BITS[type] | (mode & 0o7777), uid: caller.uid ?? process.getuid?.() ?? 0, gid: caller.gid ?? process.getgid?.() ?? 0,
      nlink: type === 'dir' ? 2 : 1, size: 0, atime: t, mtime: t, ctime: t, rdev: 0, version: 1, parent, stored: 0,
      fid: caller.fid ?? randomBytes(16).toString('hex')
    }
  }

  /** Create a directory entry and its new inode in one batch. */
  private async makeEntry (parent: number, name: Uint8Array | string, type: FileType, mode: number, caller: Caller,
    extra: (inode: Inode) => void = () => {}, namespace?: string): Promise<Inode> {
    const n = toName(name)
    return await this.lock.run(async () => {
      const dir = await this.dirInode(parent)
      if (await this.getDirent(dir, n) !== undefined) throw new FsError('EEXIST', `entry exists in directory ${parent}`)
      const ops: BatchOp[] = []
      let ns = dir.ns
      if (namespace !== undefined) {
        ns = namespace
        ops.push(await this.meta.createNamespace(ns))
      }
      const { ino, op } = await this.allocIno()
      ops.push(op)
      const inode = this.newInode(ino, ns, type, mode, caller, parent)
      if ((dir.mode & S_ISGID) !== 0) {
        // A set-group-ID directory gives new entries its group, and new directories its bit.
        inode.gid = dir.gid
        if (type === 'dir') inode.mode |= S_ISGID
      }
      extra(inode)
      if (type === 'dir') dir.nlink++
      this.touch(dir, { m: true })
      if (namespace !== undefined) await this.meta.write([ops.pop() as BatchOp, ops.shift() as BatchOp], { sync: true })
      ops.push(await this.inodeOp(inode), await this.fidOp(inode), await this.direntOp(dir, { name: n, ino, type }), await this.inodeOp(dir))
      await this.meta.write(ops)
      this.inodes.set(ino, inode)
      this.knowNoXattrs(ino) // a new inode has none (inode numbers are never reused)
      return inode
    })
  }

  async mkdir (parent: number, name: Uint8Array | string, options: CreateOptions = {}): Promise<Attr> {
    return this.attr(await this.makeEntry(parent, name, 'dir', options.mode ?? 0o755, options))
  }

  /** A directory whose subtree is protected by a namespace key of its own. */
  async createNamespace (parent: number, name: string, options: CreateOptions = {}): Promise<Attr> {
    const ns = randomBytes(8).toString('hex')
    return this.attr(await this.makeEntry(parent, name, 'dir', options.mode ?? 0o755, options, () => {}, ns))
  }

  async mknod (parent: number, name: Uint8Array | string, options: CreateOptions & { mode: number }): Promise<Attr> {
    const type = typeOfMode(options.mode)
    if (type === 'dir' || type === 'symlink') throw new FsError('EINVAL', 'mknod cannot make directories or symlinks')
    return this.attr(await this.makeEntry(parent, name, type, options.mode, options, i => { i.rdev = options.rdev ?? 0 }))
  }

  async create (parent: number, name: Uint8Array | string, options: CreateOptions & OpenFlags = {}): Promise<{ attr: Attr, fh: number }> {
    const inode = await this.makeEntry(parent, name, 'file', options.mode ?? 0o644, options)
    const fh = await this.open(inode.ino, { write: true, append: options.append })
    return { attr: this.attr(inode), fh }
  }

  async symlink (parent: number, name: Uint8Array | string, target: Uint8Array | string, caller: Caller = {}): Promise<Attr> {
    const t = typeof target === 'string' ? Buffer.from(target) : Buffer.from(target)
    if (t.length === 0 || t.length > 4095) throw new FsError(t.length === 0 ? 'ENOENT' : 'ENAMETOOLONG', 'symlink target length out of range')
    return this.attr(await this.makeEntry(parent, name, 'symlink', 0o777, caller, i => { i.target = t; i.size = t.length }))
  }

  async readlink (ino: number): Promise<Buffer> {
    const inode = await this.getInode(ino)
    if (inode.type !== 'symlink' || inode.target === undefined) throw new FsError('EINVAL', `inode ${ino} is not a symlink`)
    return Buffer.from(inode.target)
  }

  async rmdir (parent: number, name: Uint8Array | string): Promise<void> {
    const n = toName(name)
    await this.lock.run(async () => {
      const dir = await this.dirInode(parent)
      const d = await this.getDirent(dir, n)
      if (d === undefined) throw new FsError('ENOENT', `no entry in directory ${parent}`)
      const inode = await this.getInode(d.ino)
      if (inode.type !== 'dir') throw new FsError('ENOTDIR', `inode ${d.ino} is not a directory`)
      if (!await this.isEmptyDir(d.ino)) throw new FsError('ENOTEMPTY', `directory ${d.ino} is not empty`)
      dir.nlink--
      this.touch(dir, { m: true })
      const ops: BatchOp[] = [{ type: 'del', key: await this.direntKey(dir, n) }, await this.inodeOp(dir)]
      ops.push(...await this.purgeOps(inode, new RefBatch(this.meta, inode.ns)))
      await this.meta.write(ops, { frees: true })
    })
  }

  async unlink (parent: number, name: Uint8Array | string): Promise<void> {
    const n = toName(name)
    let freed = false
    await this.lock.run(async () => {
      const dir = await this.dirInode(parent)
      const d = await this.getDirent(dir, n)
      if (d === undefined) throw new FsError('ENOENT', `no entry in directory ${parent}`)
      const inode = await this.getInode(d.ino)
      if (inode.type === 'dir') throw new FsError('EISDIR', `inode ${d.ino} is a directory`)
      this.touch(dir, { m: true })
      const ops: BatchOp[] = [{ type: 'del', key: await this.direntKey(dir, n) }, await this.inodeOp(dir)]
      const r = await this.dropLink(inode)
      ops.push(...r.ops)
      freed = r.freed
      await this.meta.write(ops, { frees: true })
    })
    if (freed) this.scheduleGc()
  }

  /** One name of an inode goes away: update nlink; purge it, or mark it orphan while open. */
  private async dropLink (inode: Inode): Promise<{ ops: BatchOp[], freed: boolean }> {
    inode.nlink = inode.type === 'dir' ? 0 : inode.nlink - 1
    this.touch(inode, {})
    if (inode.nlink > 0) return { ops: [await this.inodeOp(inode)], freed: false }
    const st = this.files.get(inode.ino)
    if (st !== undefined && st.opens > 0) {
      return { ops: [await this.inodeOp(inode), { type: 'put', key: K.orphan(inode.ino), value: new Uint8Array(0) }], freed: false }
    }
    const refs = new RefBatch(this.meta, inode.ns)
    const ops = await this.purgeOps(inode, refs)
    return { ops, freed: refs.freed.length > 0 }
  }

  /** Delete an inode with its manifest, xattrs and block references. */
  private async purgeOps (inode: Inode, refs: RefBatch): Promise<BatchOp[]> {
    const ops: BatchOp[] = [{ type: 'del', key: K.inode(inode.ino) }, { type: 'del', key: K.orphan(inode.ino) }]
    if (inode.fid !== '') ops.push({ type: 'del', key: K.fid(inode.fid) })
    for (const [key, entry] of await this.manifestEntries(inode)) {
      await refs.unref(entry.id)
      ops.push({ type: 'del', key })
    }
    if (!this.noXattrs.has(inode.ino)) for await (const key of this.meta.meta.keys({ gte: K.xattrPrefix(inode.ino), lt: K.xattrPrefix(inode.ino) + '\xff' })) ops.push({ type: 'del', key })
    this.noXattrs.delete(inode.ino)
    ops.push(...await refs.ops())
    this.inodes.delete(inode.ino)
    const st = this.files.get(inode.ino)
    if (st !== undefined) { for (const d of st.dirty.values()) this.dirtyBytes -= d.buf.length; st.dirty.clear() }
    this.files.delete(inode.ino)
    return ops
  }

  /**
   * Every stored manifest entry of an inode, with its key. A small file's are read key by key
   * (synchronous gets: a LevelDB iterator costs more than a dozen of them), and
   * accepted only if their padded lengths add up to the inode's authenticated `stored` count,
   * which every commit updates in the same batch as the entry; else, and for large or sparse
   * files, a range scan finds them all (a LevelDB snapshot). Callers that need the small-file
   * path consistent hold the metadata lock.
   */
  private smallManifest (inode: Inode): boolean {
    return inode.type === 'file' && Math.ceil(inode.size / this.blockSize) <= SMALL_FILE_BLOCKS
  }

  private async manifestEntries (inode: Inode): Promise<Array<[string, ManifestEntry]>> {
    const out: Array<[string, ManifestEntry]> = []
    if (this.smallManifest(inode)) {
      const n = Math.ceil(inode.size / this.blockSize)
      let sum = 0
      for (let i = 0; i < n; i++) {
        const key = K.manifest(inode.ino, i)
        const rec = await this.meta.get(key)
        if (rec === undefined) continue
        const entry = decodeManifest(key, rec.body)
        out.push([key, entry])
        sum += paddedLength(entry.len, this.blockSize)
      }
      if (sum === inode.stored) return out
      out.length = 0
    }
    for await (const [key, value] of this.meta.range(K.manifestPrefix(inode.ino))) {
      const { body } = await this.meta.open(key, value)
      out.push([key, decodeManifest(key, body)])
    }
    return out
  }

  private async purgeOrphans (): Promise<void> {
    const orphans: number[] = []
    for await (const key of this.meta.meta.keys({ gte: 'o/', lt: 'o/\xff' })) orphans.push(parseInt(key.slice(2), 16))
    if (orphans.length === 0) return
    await this.lock.run(async () => {
      for (const ino of orphans) {
        const inode = Number.isSafeInteger(ino) ? await this.getInode(ino).catch(() => undefined) : undefined
        // The o/ key is not authenticated: only an inode whose own (authenticated) record says
        // it has no names left is purged; anything else just loses the stray marker.
        if (inode === undefined || inode.nlink !== 0 || inode.type === 'dir') { await this.meta.write([{ type: 'del', key: K.orphan(ino) }], { frees: true }); continue }
        await this.meta.write(await this.purgeOps(inode, new RefBatch(this.meta, inode.ns)), { frees: true })
      }
    })
    this.scheduleGc()
  }

  async rename (parent: number, name: Uint8Array | string, newParent: number, newName: Uint8Array | string,
    flags: { noReplace?: boolean, exchange?: boolean } = {}): Promise<void> {
    const n = toName(name)
    const nn = toName(newName)
    if (flags.exchange === true) throw new FsError('EINVAL', 'RENAME_EXCHANGE is not supported')
    let freed = false
    await this.lock.run(async () => {
      const sdir = await this.dirInode(parent)
      const ddir = await this.dirInode(newParent)
      const d = await this.getDirent(sdir, n)
      if (d === undefined) throw new FsError('ENOENT', `no entry in directory ${parent}`)
      const inode = await this.getInode(d.ino)
      const isNsRoot = inode.type === 'dir' && inode.ns !== sdir.ns
      if (isNsRoot ? sdir.ns !== ddir.ns : inode.ns !== ddir.ns) throw new FsError('EXDEV', 'rename across namespaces')
      if (parent === newParent && n.equals(nn)) return
      const t = await this.getDirent(ddir, nn)
      if (t !== undefined && flags.noReplace === true) throw new FsError('EEXIST', 'target exists')
      if (t !== undefined && t.ino === d.ino) return // two names of one inode: POSIX says do nothing
      const ops: BatchOp[] = []
      let target: Inode | undefined
      if (t !== undefined) {
        target = await this.getInode(t.ino)
        if (inode.type === 'dir' && target.type !== 'dir') throw new FsError('ENOTDIR', 'cannot replace a non-directory with a directory')
        if (inode.type !== 'dir' && target.type === 'dir') throw new FsError('EISDIR', 'cannot replace a directory with a non-directory')
        if (target.type === 'dir' && !await this.isEmptyDir(target.ino)) throw new FsError('ENOTEMPTY', `directory ${target.ino} is not empty`)
      }
      if (inode.type === 'dir' && parent !== newParent) {
        for (let p = ddir.ino; ; p = (await this.getInode(p)).parent) {
          if (p === inode.ino) throw new FsError('EINVAL', 'cannot move a directory into itself')
          if (p === ROOT_INO) break
        }
      }
      ops.push({ type: 'del', key: await this.direntKey(sdir, n) })
      if (target !== undefined) {
        if (target.type === 'dir') ddir.nlink--
        const r = await this.dropLink(target)
        ops.push(...r.ops)
        freed = r.freed
      }
      ops.push(await this.direntOp(ddir, { name: nn, ino: inode.ino, type: inode.type }))
      if (inode.type === 'dir' && parent !== newParent) {
        sdir.nlink--
        ddir.nlink++
        inode.parent = newParent
      }
      this.touch(inode, {})
      this.touch(sdir, { m: true })
      if (ddir !== sdir) this.touch(ddir, { m: true })
      ops.push(await this.inodeOp(inode), await this.inodeOp(sdir))
      if (ddir !== sdir) ops.push(await this.inodeOp(ddir))
      await this.meta.write(ops, { frees: target !== undefined })
    })
    if (freed) this.scheduleGc()
  }

  async link (ino: number, newParent: number, newName: Uint8Array | string): Promise<Attr> {
    const nn = toName(newName)
    return await this.lock.run(async () => {
      const inode = await this.getInode(ino)
      if (inode.type === 'dir') throw new FsError('EPERM', 'hard links to directories are not allowed')
      const dir = await this.dirInode(newParent)
      if (inode.ns !== dir.ns) throw new FsError('EXDEV', 'link across namespaces')
      if (await this.getDirent(dir, nn) !== undefined) throw new FsError('EEXIST', 'target exists')
      if (inode.nlink === 0) throw new FsError('ENOENT', `inode ${ino} was unlinked`)
      inode.nlink++
      this.touch(inode, {})
      this.touch(dir, { m: true })
      await this.meta.write([await this.direntOp(dir, { name: nn, ino, type: inode.type }), await this.inodeOp(inode), await this.inodeOp(dir)])
      return this.attr(inode)
    })
  }

  async setattr (ino: number, attrs: SetAttr): Promise<Attr> {
    if (attrs.size !== undefined) await this.truncate(ino, attrs.size)
    const inode = await this.getInode(ino)
    if (attrs.mode === undefined && attrs.uid === undefined && attrs.gid === undefined && attrs.atime === undefined && attrs.mtime === undefined) return this.attr(inode)
    return await this.lock.run(async () => {
      if (attrs.mode !== undefined) inode.mode = (inode.mode & C.S_IFMT) | (attrs.mode & 0o7777)
      if (attrs.uid !== undefined && attrs.uid !== -1) inode.uid = attrs.uid
      if (attrs.gid !== undefined && attrs.gid !== -1) inode.gid = attrs.gid
      const t = nowNs()
      if (attrs.atime !== undefined) inode.atime = attrs.atime === 'now' ? t : attrs.atime
      if (attrs.mtime !== undefined) inode.mtime = attrs.mtime === 'now' ? t : attrs.mtime
      inode.ctime = t
      inode.version++
      await this.meta.write([await this.inodeOp(inode)])
      return this.attr(inode)
    })
  }

  async statfs (): Promise<StatFs> {
    const s = await statfsAsync(this.init.dataDir)
    const used = this.nextIno - 1
    return {
      bsize: this.blockSize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: used + Math.max(0, s.ffree), ffree: Math.max(0, s.ffree), namemax: 255
    }
  }

  // ---- extended attributes -------------------------------------------------------------

  private async xattrKey (inode: Inode, name: string): Promise<string> {
    if (name.length === 0 || Buffer.byteLength(name) > XATTR_NAME_MAX) throw new FsError('ERANGE', 'xattr name length out of range')
    const keys = await this.meta.nsKeys(inode.ns)
    return K.xattr(inode.ino, xattrTag(keys.name, inode.ino, name))
  }

  async setxattr (ino: number, name: string, value: Uint8Array, flags?: XattrFlags): Promise<void> {
    if (value.length > XATTR_SIZE_MAX) throw new FsError('ERANGE', 'xattr value too large')
    if (name === CAPABILITY_XATTR) {
      // Before it can exist: from now on the kernel's queries for it reach the volume.
      this.capsGeneration++
      this.setMayHoldCapabilities(true)
    }
    await this.lock.run(async () => {
      const inode = await this.getInode(ino)
      const key = await this.xattrKey(inode, name)
      const exists = await this.meta.raw(key) !== undefined
      if (flags === 'create' && exists) throw new FsError('EEXIST', 'xattr exists')
      if (flags === 'replace' && !exists) throw new FsError('ENODATA', 'no such xattr')
      this.touch(inode, {})
      this.noXattrs.delete(ino)
      await this.meta.write([
        { type: 'put', key, value: await this.meta.seal(inode.ns, key, encodeXattr({ name, value: Buffer.from(value) })) },
        await this.inodeOp(inode)
      ])
    })
  }

  /**
   * Whether a file of the volume may hold `security.capability`. The kernel asks for it before
   * every write(2) (FUSE does not get SB_NOSEC) to drop file capabilities of a changed file;
   * while none exists the FUSE binding answers ENODATA itself and spares that round trip. True
   * (ask the volume) from open until checkCapabilities() finds none; a setxattr of it makes it
   * true again before it is stored, and it stays true until the next open. Listeners hear every
   * change (onCapabilities).
   */
  get mayHoldCapabilities (): boolean { return this.capsMaybe }
  private capsMaybe = true
  private capsGeneration = 0
  private readonly capsListeners = new Set<(may: boolean) => void>()

  /** Call `fn` on every change of mayHoldCapabilities; returns the unsubscribe function. */
  onCapabilities (fn: (may: boolean) => void): () => void {
    this.capsListeners.add(fn)
    return () => { this.capsListeners.delete(fn) }
  }

  private setMayHoldCapabilities (may: boolean): void {
    if (this.capsMaybe === may) return
    this.capsMaybe = may
    for (const fn of this.capsListeners) fn(may)
  }

  /**
   * Scan the xattr records for a `security.capability` (by name tag, under each namespace's
   * key: nothing is decrypted); none found and none set meanwhile: mayHoldCapabilities = false.
   * Returns whether one was found.
   */
  async checkCapabilities (): Promise<boolean> {
    const generation = this.capsGeneration
    const nameKeys: Buffer[] = []
    for await (const key of this.meta.meta.keys({ gte: 'n/', lt: 'n/\xff' })) nameKeys.push((await this.meta.nsKeys(key.slice(2))).name)
    let ino = -1
    let tags = new Set<string>()
    for await (const key of this.meta.meta.keys({ gte: 'x/', lt: 'x/\xff' })) {
      this.assertOpen()
      const parts = key.split('/')
      const n = parseInt(parts[1] ?? '', 16)
      if (n !== ino) { ino = n; tags = new Set(nameKeys.map(k => xattrTag(k, n, CAPABILITY_XATTR))) }
      if (tags.has(parts[2] ?? '')) return true
    }
    if (generation === this.capsGeneration) this.setMayHoldCapabilities(false)
    return false
  }

  /**
   * Inodes known to have no extended attributes: the kernel asks for `security.capability`
   * before every write, and this answers without a database lookup.
   */
  private readonly noXattrs = new Set<number>()

  private async hasXattrs (ino: number): Promise<boolean> {
    if (this.noXattrs.has(ino)) return false
    for await (const _ of this.meta.meta.keys({ gte: K.xattrPrefix(ino), lt: K.xattrPrefix(ino) + '\xff', limit: 1 })) return true
    this.knowNoXattrs(ino)
    return false
  }

  private knowNoXattrs (ino: number): void {
    if (this.noXattrs.size > 100_000) this.noXattrs.clear()
    this.noXattrs.add(ino)
  }

  async getxattr (ino: number, name: string): Promise<Buffer> {
    const inode = await this.getInode(ino)
    if (!await this.hasXattrs(ino)) throw new FsError('ENODATA', 'no such xattr')
    const key = await this.xattrKey(inode, name)
    const rec = await this.meta.get(key)
    if (rec === undefined) throw new FsError('ENODATA', 'no such xattr')
    const x = decodeXattr(key, rec.body)
    if (x.name !== name) throw new RecordCorruptError(key, 'xattr name does not match its key')
    return x.value
  }

  async listxattr (ino: number): Promise<string[]> {
    await this.getInode(ino)
    const out: string[] = []
    if (!await this.hasXattrs(ino)) return out
    for await (const [key, value] of this.meta.range(K.xattrPrefix(ino))) {
      const { body } = await this.meta.open(key, value)
      out.push(decodeXattr(key, body).name)
    }
    return out
  }

  async removexattr (ino: number, name: string): Promise<void> {
    await this.lock.run(async () => {
      const inode = await this.getInode(ino)
      const key = await this.xattrKey(inode, name)
      if (await this.meta.raw(key) === undefined) throw new FsError('ENODATA', 'no such xattr')
      this.touch(inode, {})
      await this.meta.write([{ type: 'del', key }, await this.inodeOp(inode)], { frees: true })
    })
  }

  // ---- file contents -------------------------------------------------------------------

  private fileState (ino: number): FileState {
    let st = this.files.get(ino)
    if (st === undefined) {
      st = { ino, opens: 0, dirty: new Map(), sealing: new Map(), manifest: new Map(), lock: new Mutex() }
      this.files.set(ino, st)
    }
    return st
  }

  async open (ino: number, flags: OpenFlags = {}): Promise<number> {
    const inode = await this.getInode(ino)
    if (inode.type === 'dir' && flags.write === true) throw new FsError('EISDIR', `inode ${ino} is a directory`)
    const st = this.fileState(ino)
    st.opens++
    const fh = this.nextFh++
    this.handles.set(fh, { ino, write: flags.write === true || flags.truncate === true || flags.append === true, append: flags.append === true })
    if (flags.truncate === true && inode.type === 'file' && inode.size > 0) {
      try {
        await this.truncate(ino, 0)
      } catch (err) {
        await this.release(fh)
        throw err
      }
    }
    return fh
  }

  /** The parent directory of a directory. */
  async parentIno (ino: number): Promise<number> {
    return (await this.dirInode(ino)).parent
  }

  /** The inode an open file handle refers to (also after its last name was unlinked). */
  handleIno (fh: number): number {
    return this.handle(fh).ino
  }

  private handle (fh: number): Handle {
    const h = this.handles.get(fh)
    if (h === undefined) throw new FsError('EBADF', `no open file handle ${fh}`)
    return h
  }

  private async manifestEntry (inode: Inode, st: FileState | undefined, idx: number): Promise<ManifestEntry | undefined> {
    const cached = st?.manifest.get(idx)
    if (cached !== undefined) return cached ?? undefined
    const entry = await this.manifestRecord(inode.ino, idx)
    // A commit or truncate may have set a newer entry while we read: never overwrite it.
    if (st !== undefined && !st.manifest.has(idx)) st.manifest.set(idx, entry ?? null)
    return entry
  }

  /** The stored manifest entry (no cache): what reference counting must go by. */
  private async manifestRecord (ino: number, idx: number): Promise<ManifestEntry | undefined> {
    const key = K.manifest(ino, idx)
    const rec = await this.meta.get(key)
    return rec === undefined ? undefined : decodeManifest(key, rec.body)
  }

  /** Decrypted, verified plaintext of a block (padded; the manifest's len says how much is data). */
  async blockPlaintext (ns: string, id: string): Promise<Buffer> {
    return await this.cache.load(id, async () => await this.loadBlock(ns, id))
  }

  /**
   * Fetch, verify (hash, BEK custody, AEAD tag) and decrypt a block, bypassing the cache. A
   * stored copy that is damaged or missing is repaired once through `useBlockRepair` (a peer's
   * copy), then read again; without a repairer, or if it fails, the integrity error stands.
   */
  async loadBlock (ns: string, id: string): Promise<Buffer> {
    let rotated = false
    let repaired = false
    for (;;) {
      try {
        return await this._loadBlock(ns, id)
      } catch (err) {
        // A rotation retired the NEK version the record named after we read it (or zeroed the
        // key we had borrowed, between its lookup and our use): read the record again.
        if (!rotated && ((err as Error).name === 'NamespaceKeyNotFoundError' || err instanceof NekWithdrawnError)) { rotated = true; continue }
        if (repaired || this.blockRepair === undefined || !copyDamaged(err)) throw err
        repaired = true
        if (!await this.blockRepair(id, err as Error).catch(() => false)) throw err
      }
    }
  }

  private blockRepair: BlockRepairer | undefined

  /** Set (or clear) where damaged block copies are fetched again from: the sync layer's peers. */
  useBlockRepair (repair: BlockRepairer | undefined): void {
    this.blockRepair = repair
  }

  private async _loadBlock (ns: string, id: string): Promise<Buffer> {
    {
      const bk = await getBlockKey(this.meta, ns, id)
      if (bk === undefined) throw new RecordCorruptError(K.blockKey(ns, id), 'block key record is missing')
      const nek = await this.keys.nek(ns, bk.v)
      const bek = unwrapKey(nek.key, Buffer.from(bk.w, 'base64'), bekAad(ns, bk.v, id))
      if (bek === undefined && withdrawn(nek.key)) throw new NekWithdrawnError()
      if (bek === undefined) throw new KeyCustodyError(K.blockKey(ns, id), 'wrapped block key fails authentication')
      if (!kcvEqual(keyCheckValue(bek), Buffer.from(bk.c, 'base64'))) { bek.fill(0); throw new KeyCustodyError(K.blockKey(ns, id), 'block key check value mismatch') }
      const idBuf = Buffer.from(id, 'hex')
      let r
      try {
        // Read into a pooled buffer (stores that cannot, ignore it). The worker verifies the hash.
        const stored = await this.blocks.get(idBuf, { verify: false, buffer: (n: number) => this.pool.buffers.buffer(n) })
        if (stored === undefined) throw new BlockMissingError(id)
        r = await this.pool.open(bek, stored, blockAad(ns), idBuf)
      } finally {
        bek.fill(0)
      }
      if (!r.ok) throw new BlockCorruptError(id, r.problem === 'hash' ? 'stored bytes do not hash to the block id' : r.problem === 'tag' ? 'authentication tag does not verify' : 'stored format is invalid', { copyDamaged: r.problem !== 'tag' })
      return r.plaintext
    }
  }

  async read (fh: number, offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(length) || length < 0) throw new FsError('EINVAL', 'negative offset or length')
    const inode = await this.getInode(this.handle(fh).ino)
    const out = Buffer.allocUnsafe(Math.max(0, Math.min(length, inode.size - Math.max(0, offset))))
    const n = await this.readInto(fh, offset, out)
    return out.subarray(0, n)
  }

  /**
   * Read up to `out.length` bytes at `offset` into `out` (holes as zeros); the byte count read,
   * short only at the end of the file. The FUSE adapter reads straight into libfuse's buffer.
   */
  async readInto (fh: number, offset: number, out: Uint8Array): Promise<number> {
    const h = this.handle(fh)
    const inode = await this.getInode(h.ino)
    if (inode.type === 'dir') throw new FsError('EISDIR', `inode ${h.ino} is a directory`)
    if (offset < 0) throw new FsError('EINVAL', 'negative offset or length')
    const st = this.files.get(h.ino)
    const end = Math.min(inode.size, offset + out.length)
    if (end <= offset) return 0
    const bs = this.blockSize
    const first = Math.floor(offset / bs)
    const last = Math.floor((end - 1) / bs)
    const parts: Array<Promise<void>> = []
    for (let b = first; b <= last; b++) {
      const bStart = b * bs
      const from = Math.max(offset, bStart) - bStart
      const to = Math.min(end, bStart + bs) - bStart
      parts.push(this.readBlockInto(inode, st, b, from, to, out, bStart + from - offset))
    }
    await Promise.all(parts)
    // Read ahead when a read ends in the second half of a block (or at its end) and the file
    // continues: enough blocks to keep every crypto worker busy.
    const tail = end % bs // 0: the read ended exactly at a block boundary (an aligned reader)
    if (end < inode.size && (tail === 0 || tail > bs / 2) && st !== undefined) {
      for (let b = last + 1; b <= last + READ_AHEAD; b++) {
        if (b * bs >= inode.size) break
        this.track(this.prefetch(inode, st, b))
      }
    }
    return end - offset
  }

  private async prefetch (inode: Inode, st: FileState, b: number): Promise<void> {
    if (st.dirty.has(b) || st.sealing.has(b)) return
    const entry = await this.manifestEntry(inode, st, b)
    if (entry !== undefined) await this.blockPlaintext(inode.ns, entry.id)
  }

  private async readBlockInto (inode: Inode, st: FileState | undefined, b: number, from: number, to: number, out: Uint8Array, at: number): Promise<void> {
    for (;;) {
      const d = st?.dirty.get(b)
      if (d !== undefined) {
        copyPadded(d.buf, d.len, from, to, out, at)
        return
      }
      const sealing = st?.sealing.get(b)
      if (sealing === undefined) break
      await sealing.catch(() => {})
    }
    const entry = await this.manifestEntry(inode, st, b)
    // A hole, or past the block's data: zeros.
    if (entry === undefined || from >= entry.len) { out.fill(0, at, at + to - from); return }
    copyPadded(await this.blockPlaintext(inode.ns, entry.id), entry.len, from, to, out, at)
  }

  async write (fh: number, offset: number, data: Uint8Array): Promise<number> {
    const h = this.handle(fh)
    if (!h.write) throw new FsError('EBADF', `file handle ${fh} is not open for writing`)
    const inode = await this.getInode(h.ino)
    if (inode.type !== 'file') throw new FsError('EISDIR', `inode ${h.ino} is not a regular file`)
    if (offset < 0 || !Number.isSafeInteger(offset + data.length)) throw new FsError('EFBIG', 'offset out of range')
    const st = this.fileState(h.ino)
    const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    await st.lock.run(async () => {
      const off = h.append ? inode.size : offset
      const bs = this.blockSize
      let pos = 0
      while (pos < src.length) {
        const b = Math.floor((off + pos) / bs)
        const inBlock = (off + pos) - b * bs
        const n = Math.min(src.length - pos, bs - inBlock)
        // The size grows before the block can start sealing: a seal commits only blocks below EOF.
        const before = inode.size
        if (off + pos + n > inode.size) inode.size = off + pos + n
        try {
          await this.writeBlock(inode, st, b, inBlock, src.subarray(pos, pos + n))
        } catch (err) {
          inode.size = Math.max(before, off + pos) // only what was written counts
          throw err
        }
        pos += n
      }
      const t = nowNs()
      inode.mtime = t; inode.ctime = t; inode.version++
    })
    if (this.dirtyBytes > this.dirtyLimit) {
      const err = await this.sealOldest()
      // Sealing fails (disk full, team disabled) and the buffers are full: the writer gets the
      // error rather than memory growing without bound. What was written stays buffered.
      if (err !== undefined && this.dirtyBytes > this.dirtyLimit) throw err
    }
    if (this.sealsInFlight >= this.maxSeals) await this.sealBackpressure()
    return data.length
  }

  private async writeBlock (inode: Inode, st: FileState, b: number, start: number, src: Buffer): Promise<void> {
    const bs = this.blockSize
    const end = start + src.length
    for (let s = st.sealing.get(b); s !== undefined; s = st.sealing.get(b)) await s.catch(() => {})
    let d = st.dirty.get(b)
    if (d === undefined) {
      const entry = await this.manifestEntry(inode, st, b)
      const keep = entry === undefined ? 0 : Math.min(entry.len, Math.max(0, inode.size - b * bs))
      const covers = start === 0 && end >= keep
      // Unzeroed: only [0, len) is ever read, and gaps below a write are zeroed explicitly.
      d = { buf: this.pool.buffers.buffer(capacity(Math.max(end, covers ? 0 : keep), bs)), len: 0, since: Date.now() }
      if (entry !== undefined && keep > 0 && !covers) {
        const plain = await this.blockPlaintext(inode.ns, entry.id)
        plain.copy(d.buf, 0, 0, keep)
        d.len = keep
      }
      st.dirty.set(b, d)
      this.dirtyBytes += d.buf.length
    }
    if (end > d.buf.length) {
      const grown = this.pool.buffers.buffer(capacity(end, bs))
      d.buf.copy(grown, 0, 0, d.len)
      this.dirtyBytes += grown.length - d.buf.length
      d.buf = grown
    }
    if (start > d.len) d.buf.fill(0, d.len, start)
    src.copy(d.buf, start)
    if (end > d.len) d.len = end
    // A write that reaches the end of the block completes it for a sequential writer: seal it
    // now. A block filled by reading its old content (a write into the middle of a file) waits
    // for the write that ends it, the age timer, close or fsync: sealing it after every small
    // write rewrote the whole block each time and let peers fetch versions nothing kept.
    if (end === bs) this.sealInBackground(inode, st, b)
  }

  private sealInBackground (inode: Inode, st: FileState, b: number): void {
    const p = this.sealBlock(inode, st, b)
    if (p !== undefined) this.track(p.catch(err => { this.onBackgroundError(`seal of inode ${inode.ino} block ${b}`, err as Error); throw err }))
  }

  /** Writers wait here while too many blocks are being sealed (bounds memory held by seals). */
  private async sealBackpressure (): Promise<void> {
    while (this.sealsInFlight >= this.maxSeals) {
      await new Promise<void>(resolve => { this.sealWaiters.push(resolve) })
    }
  }

  /** Start sealing one dirty block; the returned promise settles when it is committed. */
  private sealBlock (inode: Inode, st: FileState, b: number): Promise<void> | undefined {
    const d = st.dirty.get(b)
    if (d === undefined) return st.sealing.get(b)
    st.dirty.delete(b)
    this.dirtyBytes -= d.buf.length
    this.sealsInFlight++
    const p = this.commitBlock(inode, st, b, d).catch((err: Error) => {
      // Keep the data: put the block back unless a newer write replaced it, and report later.
      if (!st.dirty.has(b) && this.files.get(st.ino) === st) {
        st.dirty.set(b, d)
        this.dirtyBytes += d.buf.length
      }
      st.error = err
      throw err
    }).finally(() => {
      if (st.sealing.get(b) === p) st.sealing.delete(b)
      this.sealsInFlight--
      this.sealWaiters.shift()?.()
    })
    st.sealing.set(b, p)
    return p
  }

  private async commitBlock (inode: Inode, st: FileState, b: number, d: DirtyBlock, noDedup = false, attempt = 1): Promise<void> {
    const bek = randomBytes(32)
    let stored: string | undefined
    try {
      return await this._commitBlock(inode, st, b, d, noDedup, bek, id => { stored = id; this.inflight.add(id) })
    } catch (err) {
      // The NEK we borrowed was zeroed before we used it (a rotation retired its version): seal
      // again under the current one. Nothing was stored under the zeroed key.
      if (err instanceof NekWithdrawnError && attempt < 4) return await this.commitBlock(inode, st, b, d, noDedup, attempt + 1)
      throw err
    } finally {
      bek.fill(0)
      if (stored !== undefined) this.inflight.delete(stored)
    }
  }

  private async _commitBlock (inode: Inode, st: FileState, b: number, d: DirtyBlock, noDedup: boolean, bek: Buffer, storing: (id: string) => void): Promise<void> {
    const ns = inode.ns
    const keys = await this.meta.nsKeys(ns)
    const kcv = keyCheckValue(bek)
    const padded = paddedLength(d.len, this.blockSize)
    const plain = d.buf.subarray(0, d.len)
    const sealed = await this.pool.seal({ bek, plaintext: plain, padded, aad: blockAad(ns), dedupKey: keys.dedup })
    const tag = sealed.tag.toString('hex')
    let id = sealed.id.toString('hex')
    const dup = noDedup ? undefined : await this.meta.raw(K.dedup(ns, tag))
    let wrapped: Buffer | undefined
    // The NEK is borrowed from the cache, which zeroes it on expiry: use it only synchronously.
    const nek = await this.keys.nek(ns)
    const nekVersion = nek.version
    if (withdrawn(nek.key)) { sealed.release(); throw new NekWithdrawnError() }
    if (!kcvEqual(keyCheckValue(nek.key), nek.kcv)) throw new KeyCustodyError(`nek/${ns}/${nekVersion}`, 'namespace key fails its check value; nothing stored')
    if (dup === undefined) {
      this.init.custodyFaultHook?.('generated', K.blockKey(ns, id), bek)
      wrapped = wrapKey(nek.key, bek, bekAad(ns, nekVersion, id))
      const again = unwrapKey(nek.key, wrapped, bekAad(ns, nekVersion, id))
      if (again !== undefined) this.init.custodyFaultHook?.('unwrapped', K.blockKey(ns, id), again)
      if (again === undefined || !kcvEqual(keyCheckValue(again), kcv)) {
        bek.fill(0)
        throw new KeyCustodyError(K.blockKey(ns, id), 'block key changed between wrap and check; nothing stored')
      }
      again.fill(0)
      // From here until its commit or abandonment the block is "in flight": fsck and the GC
      // must not take it for garbage.
      storing(id)
      await this.putBlock(sealed.id, sealed.stored)
    }
    sealed.release()
    bek.fill(0)
    let freed = false
    let retry = false
    let abandoned = false
    await this.lock.run(async () => {
      // A NEK rotation made another version current meanwhile: wrap again under it.
      if (wrapped !== undefined && await this.keys.currentNekVersion(ns) !== nekVersion) { retry = true; return }
      const refs = new RefBatch(this.meta, ns)
      const ops: BatchOp[] = []
      // Check again under the lock: an identical block sealed concurrently may have won.
      const dupNow = dup ?? await this.meta.raw(K.dedup(ns, tag))
      const dupId = dupNow === undefined ? undefined : Buffer.from(dupNow).toString('latin1')
      if (dupId !== undefined && dupId !== id && await refs.ref(dupId)) {
        // Ours, if stored, is garbage now: nothing will reference it.
        if (wrapped !== undefined) ops.push({ type: 'put', key: K.gc(ns, id), value: new Uint8Array(0) })
        id = dupId
      } else {
        if (wrapped === undefined) {
          // The duplicate lost its last reference between the check and now: seal ours after all.
          retry = true
          return
        }
        refs.add(id, { v: nekVersion, w: wrapped.toString('base64'), c: Buffer.from(kcv).toString('base64'), refs: 1, tag })
        ops.push({ type: 'put', key: K.dedup(ns, tag), value: Buffer.from(id, 'latin1') })
      }
      if (this.files.get(inode.ino) !== st || b * this.blockSize >= inode.size) {
        // Purged, or truncated below this block, while it was sealing: nothing to commit.
        abandoned = true
        return
      }
      const old = await this.manifestRecord(inode.ino, b)
      if (old !== undefined) {
        await refs.unref(old.id)
        inode.stored -= paddedLength(old.len, this.blockSize)
      }
      const entry: ManifestEntry = { id, len: d.len }
      const mkey = K.manifest(inode.ino, b)
      inode.stored += padded
      ops.push({ type: 'put', key: mkey, value: await this.meta.seal(ns, mkey, encodeManifest(entry)) })
      ops.push(...await refs.ops())
      const version = inode.version
      if (this.inodes.get(inode.ino) === inode && inode.nlink > 0) ops.push(await this.inodeOp(inode))
      await this.meta.write(ops)
      st.persistedVersion = version
      st.manifest.set(b, entry)
      freed = refs.freed.length > 0
    })
    if (abandoned || retry) {
      // A block we stored but will not reference is garbage: queue it for the GC.
      if (wrapped !== undefined) await this.meta.write([{ type: 'put', key: K.gc(ns, id), value: new Uint8Array(0) }])
      if (abandoned) { this.scheduleGc(); return }
      return await this.commitBlock(inode, st, b, d, dup !== undefined)
    }
    this.cache.set(id, d.buf)
    if (freed) this.scheduleGc()
  }

  /** Seal every dirty block of a file and wait for all its seals. */
  private async sealFile (ino: number): Promise<void> {
    const st = this.files.get(ino)
    if (st === undefined) return
    const inode = this.inodes.get(ino) ?? await this.getInode(ino)
    await st.lock.run(async () => {
      for (const b of [...st.dirty.keys()]) this.sealBlock(inode, st, b)
    })
    const results = await Promise.allSettled([...st.sealing.values()])
    const failed = results.find(r => r.status === 'rejected')
    // A background seal that failed (disk full) kept its block, and this call sealed it again:
    // with every block committed now nothing was lost, and the old error would only make an
    // fsync that is in fact durable fail.
    if (failed === undefined && st.dirty.size === 0) st.error = undefined
    const err = st.error ?? (failed?.status === 'rejected' ? failed.reason as Error : undefined)
    if (err !== undefined) {
      st.error = undefined
      throw err
    }
    // The inode as it is now, unless a seal's commit already stored exactly this version.
    if (st.dirty.size === 0 && this.inodes.get(ino) === inode && inode.nlink > 0 && st.persistedVersion !== inode.version) {
      await this.lock.run(async () => {
        const version = inode.version
        await this.meta.write([await this.inodeOp(inode)])
        st.persistedVersion = version
      })
    }
  }

  private async sealOldest (): Promise<Error | undefined> {
    const all: Array<{ st: FileState, b: number, since: number }> = []
    for (const st of this.files.values()) for (const [b, d] of st.dirty) all.push({ st, b, since: d.since })
    all.sort((x, y) => x.since - y.since)
    const waits: Array<Promise<void>> = []
    let freed = 0
    for (const { st, b } of all) {
      if (this.dirtyBytes - freed <= this.dirtyLimit / 2) break
      const inode = this.inodes.get(st.ino)
      const d = st.dirty.get(b)
      if (inode === undefined || d === undefined) continue
      freed += d.buf.length
      // Under the file's lock, so a truncate never runs between our choice and the seal's start.
      const p = await st.lock.run(async () => this.sealBlock(inode, st, b))
      if (p !== undefined) waits.push(p)
    }
    const failed = (await Promise.allSettled(waits)).find(r => r.status === 'rejected')
    return failed?.status === 'rejected' ? failed.reason as Error : undefined
  }

  private async sealAged (): Promise<void> {
    const cutoff = Date.now() - this.sealAfterMs
    for (const st of [...this.files.values()]) {
      const inode = this.inodes.get(st.ino)
      if (inode === undefined || ![...st.dirty.values()].some(d => d.since <= cutoff)) continue
      await st.lock.run(async () => {
        for (const [b, d] of st.dirty) if (d.since <= cutoff) this.sealInBackground(inode, st, b)
      })
    }
  }

  async flush (fh: number): Promise<void> {
    const h = this.handle(fh)
    if (h.write) await this.sealFile(h.ino)
  }

  async fsync (fh: number, _datasync = false): Promise<void> {
    const h = this.handle(fh)
    await this.sealFile(h.ino)
    await this.blocks.sync()
    await syncDb(this.db)
  }

  async release (fh: number): Promise<void> {
    const h = this.handle(fh)
    this.handles.delete(fh)
    const st = this.files.get(h.ino)
    try {
      if (h.write) await this.sealFile(h.ino)
    } finally {
      if (st !== undefined) {
        st.opens--
        if (st.opens <= 0 && st.dirty.size === 0 && st.sealing.size === 0 && this.files.get(h.ino) === st) {
          this.files.delete(h.ino)
          const inode = this.inodes.get(h.ino)
          if (inode !== undefined && inode.nlink === 0) {
            await this.lock.run(async () => { await this.meta.write(await this.purgeOps(inode, new RefBatch(this.meta, inode.ns)), { frees: true }) })
            this.scheduleGc()
          }
        }
      }
    }
  }

  async truncate (ino: number, size: number): Promise<Attr> {
    if (!Number.isSafeInteger(size) || size < 0) throw new FsError('EINVAL', 'size out of range')
    const inode = await this.getInode(ino)
    if (inode.type === 'dir') throw new FsError('EISDIR', `inode ${ino} is a directory`)
    if (inode.type !== 'file') throw new FsError('EINVAL', `inode ${ino} is not a regular file`)
    const st = this.fileState(ino)
    let freed = false
    try {
      await st.lock.run(async () => {
        // Seals start only under this lock (or from writes, which hold it too): once these
        // settle, none can commit behind the truncate.
        while (st.sealing.size > 0) await Promise.allSettled([...st.sealing.values()])
        const bs = this.blockSize
        const keepBlocks = Math.ceil(size / bs)
        const ops: BatchOp[] = []
        const refs = new RefBatch(this.meta, inode.ns)
        // The metadata batch goes first and the cached inode, manifest and dirty blocks change
        // only once it is stored: a failed batch (a full disk) leaves the file as it was. The new
        // inode is made under the metadata lock, from the inode as other operations left it.
        if (size < inode.size) {
          const manifest: Array<[number, ManifestEntry | null]> = []
          await this.lock.run(async () => {
            const next: Inode = { ...inode, size }
            for await (const [key, value] of this.meta.range(K.manifestPrefix(ino))) {
              const idx = parseInt(key.slice(key.lastIndexOf('/') + 1), 16)
              const { body } = await this.meta.open(key, value)
              const e = decodeManifest(key, body)
              if (idx >= keepBlocks) {
                await refs.unref(e.id)
                next.stored -= paddedLength(e.len, bs)
                ops.push({ type: 'del', key })
                manifest.push([idx, null])
              } else if (idx === keepBlocks - 1 && e.len > size - idx * bs) {
                const shorter = { id: e.id, len: size - idx * bs }
                next.stored -= paddedLength(e.len, bs) - paddedLength(shorter.len, bs)
                ops.push({ type: 'put', key, value: await this.meta.seal(inode.ns, key, encodeManifest(shorter)) })
                manifest.push([idx, shorter])
              }
            }
            this.touch(next, { m: true })
            ops.push(...await refs.ops(), await this.inodeOp(next))
            await this.meta.write(ops, { frees: true })
            Object.assign(inode, next)
            for (const [idx, e] of manifest) st.manifest.set(idx, e)
          })
          for (const [b, d] of st.dirty) {
            if (b >= keepBlocks) { st.dirty.delete(b); this.dirtyBytes -= d.buf.length } else if (b === keepBlocks - 1 && d.len > size - b * bs) { d.len = size - b * bs; d.buf.fill(0, d.len) }
          }
          freed = refs.freed.length > 0
        } else if (size > inode.size) {
          await this.lock.run(async () => {
            const next: Inode = { ...inode, size }
            this.touch(next, { m: true })
            await this.meta.write([await this.inodeOp(next)])
            Object.assign(inode, next)
          })
        }
      })
    } finally {
      if (st.opens === 0 && st.dirty.size === 0 && st.sealing.size === 0 && this.files.get(ino) === st) this.files.delete(ino)
    }
    if (freed) this.scheduleGc()
    return this.attr(inode)
  }

  /** Make every metadata change made so far durable (fsync of a directory). */
  async syncMetadata (): Promise<void> {
    await this.blocks.sync()
    await syncDb(this.db)
  }

  /** Seal every file (all of them, even if one fails), then make everything durable. */
  async sync (): Promise<void> {
    const results = await Promise.allSettled([...this.files.keys()].map(async ino => { await this.sealFile(ino) }))
    await this.blocks.sync()
    await syncDb(this.db)
    const failed = results.find(r => r.status === 'rejected')
    if (failed?.status === 'rejected') throw failed.reason
  }

  // ---- garbage collection ----------------------------------------------------------------

  /**
   * A metadata batch failed (disk full): nothing of it is stored, but the operation had already
   * changed cached inodes (link counts, times) and a later batch would store that. Reload the
   * ones it named from their records, in place. An open file's inode is ahead of its record by
   * design (size and times of unsealed writes): only its link count is taken back.
   */
  private async restoreInodes (ops: readonly BatchOp[]): Promise<void> {
    for (const op of ops) {
      const m = /^i\/([0-9a-f]+)$/.exec(op.key)
      const cached = m === null ? undefined : this.inodes.get(parseInt(m[1] as string, 16))
      if (cached === undefined) continue
      const rec = await this.meta.get(op.key)
      if (rec === undefined) { this.inodes.delete(cached.ino); continue }
      const stored = decodeInode(op.key, cached.ino, rec.ns, rec.body)
      if (this.files.has(cached.ino)) cached.nlink = stored.nlink
      else Object.assign(cached, stored)
    }
  }

  /**
   * Store a sealed block. A full disk may only be waiting for the GC (deleted files' blocks are
   * reclaimed a second after the delete): on ENOSPC, reclaim now and try once more, so a writer
   * that deleted something to make room is not refused.
   */
  private async putBlock (id: Uint8Array, bytes: Uint8Array): Promise<void> {
    try {
      await this.blocks.put(id, bytes, { verified: true })
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ENOSPC' || this.closed) throw err
      await this.gc()
      await this.blocks.put(id, bytes, { verified: true })
    }
  }

  /** Run the GC in `ms` (or sooner, if it is due sooner already). */
  private scheduleGc (ms = 1000): void {
    if (this.closed) return
    const at = Date.now() + ms
    if (this.gcTimer !== undefined) {
      if (this.gcAt <= at) return
      clearTimeout(this.gcTimer)
    }
    this.gcAt = at
    this.gcTimer = setTimeout(() => {
      this.gcTimer = undefined
      this.track(this.gc().catch(err => { this.onBackgroundError('gc', err as Error); throw err }))
    }, ms)
    this.gcTimer.unref()
  }

  /** Delete blocks whose last reference went away, then reclaim their space. */
  async gc (): Promise<{ blocksDeleted: number }> {
    while (this.gcRunning !== undefined) await this.gcRunning.catch(() => {})
    const run = this._gc()
    this.gcRunning = run
    try { return await run } finally { if (this.gcRunning === run) this.gcRunning = undefined }
  }

  /** Blocks fsck or a seal found unreferenced are queued, not deleted directly: only this checks and deletes. */
  isInflight (id: string): boolean {
    return this.inflight.has(id)
  }

  /**
   * Queue a block stored for a change set yet to come (fetched or prefetched from a peer, or
   * repaired) for the GC, to be checked no sooner than `afterMs` from now: if nothing references
   * it by then (the file was rewritten or deleted before its change set arrived), it is deleted.
   */
  async collectLater (id: Uint8Array, afterMs: number): Promise<void> {
    const notBefore = Buffer.alloc(8)
    notBefore.writeBigUInt64BE(BigInt(Date.now() + afterMs))
    await this.meta.write([{ type: 'put', key: K.gc('-', Buffer.from(id).toString('hex')), value: notBefore }])
    this.scheduleGc(afterMs)
  }

  private async _gc (): Promise<{ blocksDeleted: number }> {
    let blocksDeleted = 0
    let later = Infinity
    const done: BatchOp[] = []
    for await (const [key, value] of this.meta.meta.iterator({ gte: 'g/', lt: 'g/\xff' })) {
      const [, ns, id] = key.split('/')
      if (ns === undefined || id === undefined || !/^[0-9a-f]{64}$/.test(id)) { done.push({ type: 'del', key }); continue }
      if (this.inflight.has(id)) continue
      // A candidate queued by collectLater waits for its time.
      const notBefore = value.byteLength === 8 ? Number(Buffer.from(value.buffer, value.byteOffset, 8).readBigUInt64BE()) : 0
      if (notBefore > Date.now()) { later = Math.min(later, notBefore); continue }
      const spaces = ns === '-' ? await this.keys.namespaces() : [ns]
      // Checked and deleted under the metadata lock: a remote file that names the block
      // (replaceContent) either commits first and is seen, or finds the block gone and waits.
      await this.lock.run(async () => {
        let referenced = false
        for (const n of spaces) if (await this.meta.raw(K.blockKey(n, id)) !== undefined) referenced = true
        if (!referenced) {
          await this.blocks.del(Buffer.from(id, 'hex'))
          this.cache.delete(id)
          blocksDeleted++
        }
      })
      done.push({ type: 'del', key })
    }
    await this.meta.write(done, { frees: true })
    if (blocksDeleted > 0) await this.blocks.compact()
    if (later !== Infinity) this.scheduleGc(Math.max(1000, later - Date.now()))
    return { blocksDeleted }
  }

  /** Drop decrypted plaintext and derived keys held in memory (the team was disabled). */
  forgetSecrets (): void {
    this.cache.clear()
    this.meta.forget()
  }

  async close (): Promise<void> {
    if (this.closed) return
    try {
      await this.sync()
    } finally {
      this.closed = true
      if (this.timer !== undefined) clearInterval(this.timer)
      if (this.gcTimer !== undefined) clearTimeout(this.gcTimer)
      await Promise.allSettled([...this.background])
      this.forgetSecrets()
      await this.pool.close()
    }
  }

  /** Internal, for fsck and rotation: the volume's metadata mutex. */
  async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.lock.run(fn)
  }

}

/**
 * A borrowed NEK whose bytes were zeroed between its lookup and its use: the cache hands out
 * its own buffer and zeroes it when a rotation retires the version (or the team is disabled),
 * and an `await` lets that run before the borrower's next line. Not a custody failure: look
 * the key up again.
 */
class NekWithdrawnError extends Error {
  constructor () {
    super('the namespace key was withdrawn while in use')
    this.name = 'NekWithdrawnError'
  }
}

function validBlockSize (n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && Number.isInteger(Math.log2(n)) && n >= 64 * 1024 && n <= 4 * 1024 * 1024
}

/** Capacity of a dirty buffer that must hold `n` bytes: a power of two from 64 KiB to the block size. */
/** Copy [from, to) of a block whose data is its first `len` bytes into out at `at`; zeros past len. */
function copyPadded (src: Uint8Array, len: number, from: number, to: number, out: Uint8Array, at: number): void {
  const stop = Math.min(to, len)
  if (from < stop) Buffer.from(src.buffer, src.byteOffset, src.length).copy(out, at, from, stop)
  if (to > Math.max(from, stop)) out.fill(0, at + Math.max(from, stop) - from, at + to - from)
}

/**
 * A write buffer's size: 64 KiB while the block's data fits (small files stay small), else a
 * whole block. Growing in steps (128, 256, 512 KiB) copied each block three times more and took
 * fresh, page-faulting memory instead of a pooled buffer: a sequential writer through FUSE
 * (128 KiB writes) spent more time copying than encrypting.
 */
function capacity (n: number, bs: number): number {
  const small = Math.min(SMALL_WRITE_BUFFER, bs)
  return n <= small ? small : bs
}
