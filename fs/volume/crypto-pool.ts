/**
 * Runs block sealing and opening on worker threads so that bulk crypto uses every core while the
 * main thread serves requests. Small blocks are done inline: a worker round trip costs more.
 */
import { Worker } from 'node:worker_threads'
import { availableParallelism } from 'node:os'
import { sealBlock, openBlock, dedupTag, type OpenResult } from '../crypto/block-crypto.js'

/** Below this plaintext size a block is sealed/opened on the calling thread. */
const INLINE_LIMIT = 64 * 1024

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
}

interface Pending { resolve: (v: any) => void, reject: (e: Error) => void }

interface Slot { worker: Worker, pending: Map<number, Pending> }

function owned (b: Uint8Array): Uint8Array {
  // A transferable buffer must own its whole ArrayBuffer (Node's small-buffer pool does not).
  return (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) ? b : new Uint8Array(b)
}

export class CryptoPool {
  private readonly slots: Slot[] = []
  private nextId = 1
  private closed = false

  get threads (): number { return this.slots.length }

  constructor (init: { threads?: number } = {}) {
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
    if (this.slots.length === 0 || job.plaintext.length < INLINE_LIMIT) {
      const s = sealBlock(job.bek, job.plaintext, job.padded, job.aad)
      return { ...s, tag: dedupTag(job.dedupKey, job.plaintext) }
    }
    // A memcpy into a buffer we transfer is far cheaper than structured-cloning the view.
    const copy = new Uint8Array(job.plaintext.length)
    copy.set(job.plaintext)
    const r = await this.post<{ stored: Uint8Array, blockId: Uint8Array, tag: Uint8Array }>(
      { op: 'seal', bek: job.bek, plaintext: copy, padded: job.padded, aad: job.aad, dedupKey: job.dedupKey }, [copy.buffer])
    return { stored: toBuffer(r.stored), id: toBuffer(r.blockId), tag: toBuffer(r.tag) }
  }

  /** Verify hash and tag, then decrypt. The stored buffer is transferred (do not reuse it). */
  async open (bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, id: Uint8Array): Promise<OpenResult> {
    if (this.slots.length === 0 || stored.length < INLINE_LIMIT) return openBlock(bek, stored, aad, id)
    const s = owned(stored)
    const r = await this.post<{ plaintext?: Uint8Array, problem?: 'hash' | 'tag' | 'format' }>(
      { op: 'open', bek, stored: s, aad, blockId: id }, [s.buffer as ArrayBuffer])
    if (r.plaintext !== undefined) return { ok: true, plaintext: toBuffer(r.plaintext) }
    return { ok: false, problem: r.problem ?? 'format' }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    const slots = this.slots.splice(0)
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
