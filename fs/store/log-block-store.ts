/**
 * Blocks in append-only segment files, indexed by LevelDB (the WiscKey design): a block's bytes
 * are written once, sequentially, instead of LevelDB's log-then-table-then-compaction rewrites.
 * ARCHITECTURE.md records the measurement behind this choice.
 *
 * Segment file `seg-<8 digits>.log`: records [magic "SBK1"][len:u32be][id:32][bytes:len].
 * Index (sublevel `blk`): hex id -> [segment:u32be][offset:f64be][len:u32be] (16 bytes).
 * The index entry is written after the bytes, so it never names bytes that were not written; a
 * torn record at a segment's tail is never indexed and is overwritten by nothing (appends go
 * after it). Deleted blocks leave dead bytes; compact() copies the live ones of mostly-dead
 * segments to the head and removes those segments.
 */
import { open, readdir, mkdir, unlink, stat, statfs, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { BlockCorruptError, FsError, IntegrityError } from '../errors.js'
import { blockIdMatches } from '../crypto/block-crypto.js'
import { getFast, syncDb, type BlockStore, type Sublevel } from './types.js'
import { FREES } from './disk-guard.js'

const MAGIC = Buffer.from('SBK1')
const HEADER = 4 + 4 + 32
const DEFAULT_SEGMENT_BYTES = 256 * 1024 * 1024
/**
 * Space block appends leave free on the data dir's file system, so that LevelDB (metadata,
 * deletes) can always write its log: on a full disk, writers get ENOSPC while unlink still works
 * and frees space. (LevelDB that hits ENOSPC itself refuses every write until it is reopened.)
 */
const DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024
/**
 * Start a background datasync after this many appended bytes (RocksDB's bytes_per_sync): the
 * disk writes while the next blocks are encrypted, instead of everything at the final fsync.
 */
const BYTES_PER_SYNC = 32 * 1024 * 1024

interface Location { seg: number, offset: number, len: number }

/**
 * writev() may write less than asked (a disk filling up: the rest then fails with ENOSPC), and
 * Node does not retry: go on until every byte is written or an error is thrown. A record that
 * fails half-way is never indexed; its bytes are dead space, and later appends go after it.
 */
async function writeFully (fh: FileHandle, parts: Uint8Array[], position: number): Promise<void> {
  let pending = parts.filter(p => p.length > 0)
  for (let at = position; pending.length > 0;) {
    const { bytesWritten } = await fh.writev(pending, at)
    if (bytesWritten === 0) throw new FsError('EIO', `segment write at ${at} made no progress`)
    at += bytesWritten
    let skip = bytesWritten
    const rest: Uint8Array[] = []
    for (const p of pending) {
      if (skip >= p.length) { skip -= p.length; continue }
      rest.push(skip > 0 ? p.subarray(skip) : p)
      skip = 0
    }
    pending = rest
  }
}

function encodeLoc (l: Location): Buffer {
  const b = Buffer.allocUnsafe(16)
  b.writeUInt32BE(l.seg, 0); b.writeDoubleBE(l.offset, 4); b.writeUInt32BE(l.len, 12)
  return b
}

function decodeLoc (hex: string, v: Uint8Array): Location {
  if (v.length !== 16) throw new IntegrityError(`block index entry ${hex} is malformed`, 'ERR_BLOCK_INDEX_CORRUPT')
  const b = Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  return { seg: b.readUInt32BE(0), offset: b.readDoubleBE(4), len: b.readUInt32BE(12) }
}

interface Segment {
  n: number
  fh: FileHandle
  size: number
  live: number
  /** Written since its last datasync began. */
  dirty: boolean
  /** The datasync in progress, which later sync() calls wait for. */
  syncing?: Promise<void>
  /** Appends reserved but not finished: such a segment is never a compaction victim. */
  pending: number
}

export class LogBlockStore implements BlockStore {
  private readonly index: Sublevel
  private readonly dir: string
  private readonly segmentBytes: number
  private readonly segments = new Map<number, Segment>()
  private active: Segment | undefined
  private rolling: Promise<Segment> | undefined
  private opened: Promise<void> | undefined
  /** Segments compaction removed; their handles stay readable until close(). */
  private readonly retired: Segment[] = []
  private compacting: Promise<{ reclaimedBytes: number }> | undefined
  /** Closes of retired segments in progress (their space returns when they finish). */
  private closing: Promise<void> = Promise.resolve()
  private readonly reserveBytes: number
  /** Free bytes last measured, minus what was appended since; re-measured every second. */
  private free = { bytes: Infinity, at: 0 }
  private unsynced = 0

  constructor (components: { index: Sublevel }, init: { dir: string, segmentBytes?: number, reserveBytes?: number }) {
    this.index = components.index
    this.dir = init.dir
    this.segmentBytes = init.segmentBytes ?? DEFAULT_SEGMENT_BYTES
    this.reserveBytes = init.reserveBytes ?? DEFAULT_RESERVE_BYTES
  }

  /** Open the segment files and account live bytes from the index. Idempotent. */
  async open (): Promise<void> {
    this.opened ??= this._open()
    await this.opened
  }

  private async _open (): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    const names = (await readdir(this.dir)).filter(n => /^seg-\d{8}\.log$/.test(n)).sort()
    for (const name of names) {
      const n = Number(name.slice(4, 12))
      const fh = await open(join(this.dir, name), 'r+')
      const { size } = await fh.stat()
      this.segments.set(n, { n, fh, size, live: 0, dirty: false, pending: 0 })
    }
    for await (const [hex, v] of this.index.iterator()) {
      const loc = decodeLoc(hex, v)
      const seg = this.segments.get(loc.seg)
      if (seg !== undefined) seg.live += HEADER + loc.len
    }
    const last = names.length > 0 ? this.segments.get(Number(names[names.length - 1]?.slice(4, 12))) : undefined
    this.active = last ?? await this.createSegment(1)
  }

  private async createSegment (n: number): Promise<Segment> {
    const fh = await open(join(this.dir, `seg-${String(n).padStart(8, '0')}.log`), 'wx+')
    const seg: Segment = { n, fh, size: 0, live: 0, dirty: true, pending: 0 }
    this.segments.set(n, seg)
    return seg
  }

  /** Reserve space for a record in the active segment, rolling to a new one when it is full. */
  private async reserve (bytes: number): Promise<{ seg: Segment, offset: number }> {
    for (;;) {
      if (this.rolling !== undefined) { await this.rolling; continue }
      const seg = this.active as Segment
      if (seg.size === 0 || seg.size + bytes <= this.segmentBytes) {
        const offset = seg.size
        seg.size += bytes
        seg.pending++
        return { seg, offset }
      }
      this.rolling = this.createSegment(seg.n + 1)
      try { this.active = await this.rolling } finally { this.rolling = undefined }
    }
  }

  async put (id: Uint8Array, bytes: Uint8Array, options: { verified?: boolean } = {}): Promise<void> {
    await this.open()
    const hex = Buffer.from(id).toString('hex')
    if (id.length !== 32) throw new TypeError('block id must be 32 bytes')
    if (options.verified !== true && !blockIdMatches(bytes, id)) throw new BlockCorruptError(hex, 'bytes do not hash to the id')
    // A block the caller just sealed (a fresh random key: a fresh id) cannot be here already.
    if (options.verified !== true && await getFast(this.index, hex) !== undefined) return
    const loc = await this.append(id, bytes)
    await this.index.put(hex, encodeLoc(loc))
  }

  /**
   * Replace a damaged copy with intact bytes (ids are content hashes: a peer's copy is the same
   * bytes). Like a compaction move: the new copy is durable before the index switches to it, so
   * a crash leaves either the old (damaged) copy or the new one, never an index entry naming
   * bytes that are not on disk.
   */
  async repair (id: Uint8Array, bytes: Uint8Array): Promise<void> {
    await this.open()
    const hex = Buffer.from(id).toString('hex')
    if (!blockIdMatches(bytes, id)) throw new BlockCorruptError(hex, 'replacement bytes do not hash to the id')
    const old = await this.locate(hex)
    const loc = await this.append(id, bytes)
    await this.sync()
    await this.index.put(hex, encodeLoc(loc))
    const seg = old === undefined ? undefined : this.segments.get(old.seg)
    if (seg !== undefined && old !== undefined) seg.live -= HEADER + old.len
  }

  private async checkSpace (n: number, useReserve: boolean): Promise<void> {
    const reserve = useReserve ? 0 : this.reserveBytes
    if (Date.now() - this.free.at > 1000 || this.free.bytes - n < reserve) await this.measureFree()
    if (this.free.bytes - n < reserve) {
      // Short of space while segments compaction removed may still be open for late readers:
      // their space returns only when the handles close, so close them now (get() looks a block
      // up again when its read fails) rather than refuse a write the disk has room for. Closes
      // begun by a concurrent append are awaited too.
      await this.releaseRetired(this.retired.slice())
      await this.measureFree()
    }
    if (this.free.bytes - n < reserve) {
      throw new FsError('ENOSPC', `no space left on device: the block store keeps ${this.reserveBytes >> 20} MiB free for metadata`)
    }
    this.free.bytes -= n
  }

  private async measureFree (): Promise<void> {
    const s = await statfs(this.dir)
    this.free = { bytes: s.bavail * s.bsize, at: Date.now() }
  }

  /** Close retired segments' handles; resolves once every close begun so far has finished. */
  private async releaseRetired (segs: Segment[]): Promise<void> {
    const closes: Array<Promise<void>> = [this.closing]
    for (const seg of segs) {
      const i = this.retired.indexOf(seg)
      if (i >= 0) { this.retired.splice(i, 1); closes.push(seg.fh.close().catch(() => {})) }
    }
    const all = Promise.all(closes).then(() => {})
    this.closing = all
    await all
  }

  /** Write a record at the head; the caller indexes it. */
  private async append (id: Uint8Array, bytes: Uint8Array, options: { useReserve?: boolean } = {}): Promise<Location> {
    // Compaction may use the reserve: each copy lets it free a whole segment.
    await this.checkSpace(HEADER + bytes.length, options.useReserve === true)
    const header = Buffer.allocUnsafe(HEADER)
    MAGIC.copy(header, 0); header.writeUInt32BE(bytes.length, 4); Buffer.from(id).copy(header, 8)
    const { seg, offset } = await this.reserve(HEADER + bytes.length)
    try {
      await writeFully(seg.fh, [header, bytes], offset)
      seg.dirty = true
      seg.live += HEADER + bytes.length
    } finally {
      seg.pending--
    }
    this.unsynced += HEADER + bytes.length
    if (this.unsynced >= BYTES_PER_SYNC) {
      this.unsynced = 0
      this.sync().catch(() => {}) // a failure is reported by the next sync() a caller awaits
    }
    return { seg: seg.n, offset: offset + HEADER, len: bytes.length }
  }

  private async locate (hex: string): Promise<Location | undefined> {
    const v = await getFast(this.index, hex)
    return v === undefined ? undefined : decodeLoc(hex, v)
  }

  /**
   * `buffer`: where to read the bytes (a reusable buffer of at least `n` bytes from the caller's
   * pool: a fresh block-sized buffer is faulted in page by page, see fs/volume/buffer-pool.ts).
   */
  async get (id: Uint8Array, options: { verify?: boolean, buffer?: (n: number) => Buffer } = {}): Promise<Buffer | undefined> {
    await this.open()
    const hex = Buffer.from(id).toString('hex')
    let buf: Buffer | undefined
    // Compaction may move the block between our index lookup and the read: look it up again.
    for (let attempt = 0; buf === undefined; attempt++) {
      const loc = await this.locate(hex)
      if (loc === undefined) return undefined
      const seg = this.segments.get(loc.seg) ?? this.retired.find(r => r.n === loc.seg)
      try {
        if (seg === undefined) throw new BlockCorruptError(hex, `segment ${loc.seg} is missing`)
        const b = options.buffer?.(loc.len).subarray(0, loc.len) ?? Buffer.allocUnsafeSlow(loc.len)
        if (b.length !== loc.len) throw new RangeError('block read buffer too small')
        const { bytesRead } = await seg.fh.read(b, 0, loc.len, loc.offset)
        if (bytesRead !== loc.len) throw new BlockCorruptError(hex, 'segment file is truncated')
        buf = b
      } catch (err) {
        const moved = await this.locate(hex)
        if (attempt > 0 || moved === undefined || (moved.seg === loc.seg && moved.offset === loc.offset)) throw err
      }
    }
    if (options.verify !== false && !blockIdMatches(buf, id)) throw new BlockCorruptError(hex, 'stored bytes do not hash to the id')
    return buf
  }

  async has (id: Uint8Array): Promise<boolean> {
    await this.open()
    return await getFast(this.index, Buffer.from(id).toString('hex')) !== undefined
  }

  async del (id: Uint8Array): Promise<void> {
    await this.open()
    const hex = Buffer.from(id).toString('hex')
    const loc = await this.locate(hex)
    if (loc === undefined) return
    await this.index.del(hex, FREES)
    const seg = this.segments.get(loc.seg)
    if (seg !== undefined) seg.live -= HEADER + loc.len
  }

  async * ids (): AsyncIterable<Buffer> {
    await this.open()
    for await (const k of this.index.keys()) yield Buffer.from(k, 'hex')
  }

  /**
   * Every append completed before this call is on disk when it returns. A segment written since
   * its last datasync began gets a new one; otherwise a datasync still in progress is awaited
   * (it began after those writes), so concurrent callers never return early.
   */
  async sync (): Promise<void> {
    await this.open()
    await Promise.all([...this.segments.values()].map(async s => {
      if (s.dirty) {
        s.dirty = false
        const p = s.fh.datasync()
        s.syncing = p
        try { await p } catch (err) { s.dirty = true; throw err } finally { if (s.syncing === p) s.syncing = undefined }
      } else if (s.syncing !== undefined) {
        await s.syncing
      }
    }))
  }

  /**
   * Copy the live records of segments that are mostly dead to the head, then delete them. Each
   * copy is written and made durable before its index entry switches to it (never delete
   * first), and only if the entry still points at the old place. Segments with appends in
   * flight are never victims; a removed segment's handle stays open for readers until close().
   */
  async compact (options: { liveRatio?: number } = {}): Promise<{ reclaimedBytes: number }> {
    await this.open()
    while (this.compacting !== undefined) await this.compacting.catch(() => {})
    const run = this._compact(options.liveRatio ?? 0.5)
    this.compacting = run
    try { return await run } finally { if (this.compacting === run) this.compacting = undefined }
  }

  private async _compact (ratio: number): Promise<{ reclaimedBytes: number }> {
    // A mostly dead head segment (a big file written, then deleted) is rolled so it can go too.
    const head = this.active
    if (head !== undefined && head.pending === 0 && this.rolling === undefined && head.size > 0 && head.live < head.size * ratio) {
      this.rolling = this.createSegment(head.n + 1)
      try { this.active = await this.rolling } finally { this.rolling = undefined }
    }
    const victims = [...this.segments.values()].filter(s => s !== this.active && s.pending === 0 && s.live < s.size * ratio)
    if (victims.length === 0) return { reclaimedBytes: 0 }
    const byVictim = new Set(victims.map(v => v.n))
    const moves: Array<{ hex: string, from: Location, to: Location }> = []
    for await (const [hex, v] of this.index.iterator()) {
      const from = decodeLoc(hex, v)
      if (!byVictim.has(from.seg)) continue
      const bytes = await this.get(Buffer.from(hex, 'hex'), { verify: true }).catch(() => undefined)
      if (bytes === undefined) return { reclaimedBytes: 0 } // corrupt: leave the segment for fsck to report
      moves.push({ hex, from, to: await this.append(Buffer.from(hex, 'hex'), bytes, { useReserve: true }) })
    }
    await this.sync()
    for (const { hex, from, to } of moves) {
      const now = await this.locate(hex)
      if (now !== undefined && now.seg === from.seg && now.offset === from.offset) {
        await this.index.put(hex, encodeLoc(to))
      } else {
        const seg = this.segments.get(to.seg) // deleted meanwhile: the copy is dead bytes
        if (seg !== undefined) seg.live -= HEADER + to.len
      }
    }
    await syncDb(this.index.db)
    let reclaimed = 0
    for (const seg of victims) {
      reclaimed += seg.size - seg.live
      this.segments.delete(seg.n)
      this.retired.push(seg)
      await unlink(join(this.dir, `seg-${String(seg.n).padStart(8, '0')}.log`))
    }
    // The space returns only when the handle closes. Readers that looked the block up before the
    // switch get a grace period; one that is later still finds the new place (get() retries).
    const t = setTimeout(() => { this.releaseRetired(victims).catch(() => {}) }, 2000)
    t.unref()
    return { reclaimedBytes: reclaimed }
  }

  async stats (): Promise<{ blocks: number, bytes: number, diskBytes: number }> {
    await this.open()
    let blocks = 0; let bytes = 0
    for await (const [hex, v] of this.index.iterator()) { blocks++; bytes += decodeLoc(hex, v).len }
    let diskBytes = 0
    for (const s of this.segments.values()) diskBytes += (await stat(join(this.dir, `seg-${String(s.n).padStart(8, '0')}.log`))).size
    return { blocks, bytes, diskBytes }
  }

  async close (): Promise<void> {
    if (this.opened === undefined) return
    await this.opened.catch(() => {})
    await this.sync().catch(() => {})
    for (const s of [...this.segments.values(), ...this.retired]) await s.fh.close().catch(() => {})
    this.segments.clear()
    this.retired.length = 0
    this.opened = undefined
  }
}
