/**
 * Runs block sealing and opening on worker threads so that bulk crypto uses every core while the
 * main thread serves requests. Small blocks are done inline: a worker round trip costs more.
 *
 * Block-sized buffers cross to a worker and back by transfer, never by copy, and are reused
 * through a BufferPool: a seal sends a pooled copy of the plaintext and a pooled output buffer,
 * an open sends the stored bytes and a pooled output buffer, and the worker sends both back.
 */
import { Worker } from 'node:worker_threads'
import { availableParallelism } from 'node:os'
import { sealBlockInto, openBlockInto, BLOCK_OVERHEAD, type OpenResult } from '../crypto/block-crypto.js'
import { BufferPool } from './buffer-pool.js'

/** Below this plaintext size a block is sealed/opened on the calling thread. */
const INLINE_LIMIT = 64 * 1024
/** Pooled buffers when the pool is not told the block size. */
const DEFAULT_BUFFER_BYTES = 1024 * 1024 + BLOCK_OVERHEAD

export interface SealJob {
  bek: Uint8Array
  plaintext: Uint8Array
  padded: number
  aad: Uint8Array
  dedupKey: Uint8Array
}

export interface SealOutput {
  stored: Buffer
  id: Buffer
  tag: Buffer
  /** Hand `stored` back for reuse once nothing reads it any more (optional). */
  release: () => void
}

interface Pending { resolve: (v: any) => void, reject: (e: Error) => void }

interface Slot { worker: Worker, pending: Map<number, Pending> }

function owned (b: Uint8Array): Uint8Array {
  // A transferable buffer must own its whole ArrayBuffer (Node's small-buffer pool does not).
  return (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) ? b : new Uint8Array(b)
}

/** A small value in a buffer of its own: cloning a view clones its whole ArrayBuffer. */
function small (b: Uint8Array): Uint8Array {
  return new Uint8Array(b)
}

export class CryptoPool {
  private readonly slots: Slot[] = []
  private nextId = 1
  private closed = false
  /** Block-sized buffers shared with the volume (write buffers, block cache). */
  readonly buffers: BufferPool

  get threads (): number { return this.slots.length }

  /** `bufferBytes`: the largest stored block (block size + BLOCK_OVERHEAD). */
  constructor (init: { threads?: number, bufferBytes?: number } = {}) {
    this.buffers = new BufferPool({ size: init.bufferBytes ?? DEFAULT_BUFFER_BYTES })
    const n = Math.max(0, init.threads ?? availableParallelism())
    for (let i = 0; i < n; i++) this.slots.push(this.spawn())
  }

  /**
   * A worker; if it dies (an error, an exit), only its own jobs fail and a new one takes its
   * place, so one crash never strands the others' jobs or later work.
   */
  private spawn (): Slot {
    // No execArgv: a test runner's loaders and flags would slow every worker's start.
    const worker = new Worker(new URL('./crypto-worker.js', import.meta.url), { execArgv: [] })
    worker.unref()
    const slot: Slot = { worker, pending: new Map() }
    worker.on('message', (msg: { id: number, error?: string } & Record<string, unknown>) => {
      const p = slot.pending.get(msg.id)
      if (p === undefined) return
      slot.pending.delete(msg.id)
      if (msg.error !== undefined) p.reject(new Error(`crypto worker: ${msg.error}`))
      else p.resolve(msg)
    })
    const fail = (err: Error): void => {
      for (const p of slot.pending.values()) p.reject(err)
      slot.pending.clear()
      const i = this.slots.indexOf(slot)
      if (i >= 0 && !this.closed) this.slots[i] = this.spawn()
    }
    worker.on('error', err => { fail(err) })
    worker.on('exit', code => { if (!this.closed) fail(new Error(`crypto worker exited with code ${code}`)) })
    return slot
  }

  private post<T> (msg: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<T> {
    if (this.closed) return Promise.reject(new Error('crypto pool is closed'))
    let best = this.slots[0] as Slot
    for (const s of this.slots) if (s.pending.size < best.pending.size) best = s
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      best.pending.set(id, { resolve, reject })
      best.worker.postMessage({ ...msg, id }, transfer)
    })
  }

  /**
   * Encrypt a block and compute its id and dedup tag. The plaintext is copied to the worker,
   * never transferred: the caller's buffer (a write buffer) survives any failure.
   */
  async seal (job: SealJob): Promise<SealOutput> {
    const outBytes = BLOCK_OVERHEAD + job.padded
    const pool = this.buffers
    if (this.slots.length === 0 || job.plaintext.length < INLINE_LIMIT || outBytes > pool.size) {
      const out = pool.buffer(outBytes)
      const s = sealBlockInto(job.bek, job.plaintext, job.padded, job.aad, out, { dedupKey: job.dedupKey })
      return { stored: s.stored, id: s.id, tag: s.tag as Buffer, release: () => { pool.give(out.buffer) } }
    }
    // A memcpy into a warm pooled buffer we transfer is far cheaper than structured-cloning the
    // view or faulting in a fresh one.
    const plain = new Uint8Array(pool.take(), 0, job.plaintext.length)
    plain.set(job.plaintext)
    const out = new Uint8Array(pool.take(), 0, outBytes)
    const r = await this.post<{ plain?: Uint8Array, out?: Uint8Array, blockId: Uint8Array, tag: Uint8Array }>(
      { op: 'seal', bek: small(job.bek), plain, padded: job.padded, aad: small(job.aad), dedupKey: small(job.dedupKey), out },
      [plain.buffer as ArrayBuffer, out.buffer as ArrayBuffer])
    if (r.plain !== undefined) pool.give(r.plain.buffer)
    const stored = toBuffer(r.out as Uint8Array)
    return { stored, id: toBuffer(r.blockId), tag: toBuffer(r.tag), release: () => { pool.give(stored.buffer) } }
  }

  /**
   * Verify hash and tag, then decrypt. The stored buffer is transferred (do not reuse it). The
   * plaintext may view a pooled buffer: give it back with `buffers.giveLater` when evicted.
   */
  async open (bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, id: Uint8Array): Promise<OpenResult> {
    const len = stored.length - BLOCK_OVERHEAD
    const pool = this.buffers
    if (this.slots.length === 0 || stored.length < INLINE_LIMIT || len > pool.size) {
      if (len < 0) return { ok: false, problem: 'format' }
      return openBlockInto(bek, stored, aad, id, pool.buffer(len))
    }
    const s = owned(stored)
    const out = new Uint8Array(pool.take(), 0, len)
    const r = await this.post<{ stored?: Uint8Array, out?: Uint8Array, ok: boolean, problem?: 'hash' | 'tag' | 'format' }>(
      { op: 'open', bek: small(bek), stored: s, aad: small(aad), blockId: small(id), out }, [s.buffer as ArrayBuffer, out.buffer as ArrayBuffer])
    if (r.stored !== undefined) pool.give(r.stored.buffer as ArrayBuffer)
    if (r.ok && r.out !== undefined) return { ok: true, plaintext: toBuffer(r.out) }
    if (r.out !== undefined) pool.give(r.out.buffer as ArrayBuffer)
    return { ok: false, problem: r.problem ?? 'format' }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    const slots = this.slots.splice(0)
    this.buffers.clear()
    await Promise.all(slots.map(async s => await s.worker.terminate()))
    for (const s of slots) {
      for (const p of s.pending.values()) p.reject(new Error('crypto pool closed'))
      s.pending.clear()
    }
  }
}

function toBuffer (u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength)
}
