// net/block-fetch.ts: one BlockExchange.fetch() run. Ids wait in a shared queue; one worker per
// peer keeps a stream open and up to maxInFlight ids requested (pipelined requests), taking ids
// it has not tried yet. MISSING or a tampered block sends an id back to the queue for another
// peer; an id every live peer has tried fails. Each block is verified and stored as it arrives.
import { createHash } from 'node:crypto'
import type { Logger, PeerId, Stream } from '@libp2p/interface'
import type { BlockStore } from '../fs/store/index.js'
import { BLOCKS_PROTOCOL, MAX_IDS_PER_REQUEST } from './constants.js'
import { BlockTamperedError, ProtocolError, RequestTimeoutError, UnexpectedEndError } from './errors.js'
import { STATUS_BLOCK, decodeReply, encodeRequest, maxReplyBytes } from './block-messages.js'
import { FrameReader, writeFrame } from './wire.js'
import type { StrataNode } from './node.js'

export interface FetchResult {
  /** Blocks received, verified and stored by this run. */
  fetched: number
  /** Ids already present locally (never requested). */
  skipped: number
  /** Bytes of the blocks fetched. */
  bytes: number
  /** Ids no peer delivered intact. */
  failed: Uint8Array[]
}

/** What a session needs from its BlockExchange. */
export interface FetchContext {
  node: StrataNode
  store: BlockStore
  log: Logger
  maxInFlightPerPeer: number
  maxBlockBytes: number
  requestTimeoutMs: number
  onBlock: (peer: string, bytes: number) => void
  onTampered: (peer: string, id: Uint8Array) => void
}

interface Entry {
  id: Uint8Array
  tried: Set<string>
}

export class FetchSession {
  private readonly ctx: FetchContext
  private readonly signal: AbortSignal
  private readonly queue: Entry[] = []
  private readonly live = new Set<string>()
  private readonly failed: Uint8Array[] = []
  private outstanding = 0
  private fetched = 0
  private bytes = 0
  private waiters: Array<() => void> = []
  private storeError: unknown

  private readonly internal = new AbortController()

  constructor (ctx: FetchContext, signal: AbortSignal) {
    this.ctx = ctx
    this.signal = AbortSignal.any([signal, this.internal.signal])
  }

  async run (ids: Uint8Array[], peers: PeerId[]): Promise<FetchResult> {
    const unique = new Map<string, Uint8Array>()
    for (const id of ids) unique.set(Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('hex'), id)
    let skipped = 0
    const all = [...unique.values()]
    for (let i = 0; i < all.length; i += 64) {
      const chunk = all.slice(i, i + 64)
      const present = await Promise.all(chunk.map(async id => await this.ctx.store.has(id)))
      chunk.forEach((id, j) => { if (present[j] === true) skipped++; else this.queue.push({ id, tried: new Set() }) })
      this.signal.throwIfAborted()
    }
    if (this.queue.length > 0) {
      for (const p of peers) this.live.add(p.toString())
      if (this.live.size === 0) this.failHopeless()
      await Promise.all(peers.map(async p => { await this.worker(p) }))
    }
    if (this.storeError != null) throw this.storeError
    this.signal.throwIfAborted()
    return { fetched: this.fetched, skipped, bytes: this.bytes, failed: this.failed }
  }

  private get done (): boolean {
    return this.queue.length === 0 && this.outstanding === 0
  }

  private notify (): void {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  private async changed (): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => { reject(this.signal.reason) }
      this.signal.addEventListener('abort', onAbort, { once: true })
      this.waiters.push(() => { this.signal.removeEventListener('abort', onAbort); resolve() })
    })
  }

  /** Up to `max` queued ids this peer has not tried. */
  private take (peer: string, max: number): Entry[] {
    const out: Entry[] = []
    for (let i = 0; i < this.queue.length && out.length < max;) {
      const e = this.queue[i] as Entry
      if (e.tried.has(peer)) { i++; continue }
      this.queue.splice(i, 1)
      out.push(e)
    }
    this.outstanding += out.length
    return out
  }

  /** An outstanding id goes back to the queue (or fails if no live peer may still have it). */
  private requeue (e: Entry): void {
    this.outstanding--
    this.queue.push(e)
    this.failHopeless()
    this.notify()
  }

  private complete (): void {
    this.outstanding--
    if (this.done) this.notify()
  }

  private failHopeless (): void {
    for (let i = 0; i < this.queue.length;) {
      const e = this.queue[i] as Entry
      let hope = false
      for (const p of this.live) if (!e.tried.has(p)) { hope = true; break }
      if (hope) { i++; continue }
      this.queue.splice(i, 1)
      this.failed.push(e.id)
    }
  }

  private async worker (peerId: PeerId): Promise<void> {
    const peer = peerId.toString()
    const sent: Entry[] = []
    let stream: Stream | undefined
    let reader: FrameReader | undefined
    try {
      // Wait until this peer has something to do, so an idle peer is not dialed.
      while (!this.done && !this.queue.some(e => !e.tried.has(peer))) await this.changed()
      if (this.done) return
      stream = await this.ctx.node.dialProtocol(peerId, BLOCKS_PROTOCOL, { signal: this.withTimeout() })
      reader = new FrameReader(stream, { maxMessageBytes: maxReplyBytes(this.ctx.maxBlockBytes) })
      const low = Math.max(1, Math.floor(this.ctx.maxInFlightPerPeer / 2))
      while (true) {
        if (sent.length <= low) await this.topUp(peer, stream, sent)
        if (sent.length === 0) {
          if (this.done) break
          await this.changed()
          continue
        }
        const msg = await reader.read({ signal: this.withTimeout() })
        if (msg == null) throw new UnexpectedEndError(`peer ${peer} closed the stream with ${sent.length} replies due`)
        const reply = decodeReply(msg, this.ctx.maxBlockBytes)
        const entry = sent[0] as Entry
        if (!Buffer.from(reply.id).equals(entry.id)) throw new ProtocolError(`peer ${peer} answered out of order`)
        sent.shift()
        if (reply.status !== STATUS_BLOCK) {
          entry.tried.add(peer)
          this.requeue(entry)
          continue
        }
        const digest = createHash('sha256').update(reply.bytes).digest()
        if (!digest.equals(entry.id)) {
          entry.tried.add(peer)
          this.requeue(entry)
          this.ctx.onTampered(peer, entry.id)
          throw new BlockTamperedError(`peer ${peer} served a block that does not match its id`, peer, entry.id)
        }
        // The bytes are a view of the frame; the store copies or writes them before returning.
        try {
          await this.ctx.store.put(entry.id, reply.bytes, { verified: true })
        } catch (err) {
          // A local failure (disk full, store closed): this id fails and fetch() rethrows.
          this.storeError ??= err
          this.outstanding--
          this.failed.push(entry.id)
          this.internal.abort(err)
          throw err
        }
        this.fetched++
        this.bytes += reply.bytes.byteLength
        this.ctx.onBlock(peer, reply.bytes.byteLength)
        this.complete()
      }
      await stream.close({ signal: this.withTimeout() })
    } catch (caught: unknown) {
      const err = asTimeout(caught, peer)
      if (!this.signal.aborted) this.ctx.log('fetch from %s stopped - %e', peer, err)
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      reader?.detach()
      this.live.delete(peer)
      for (const e of sent.splice(0)) this.requeue(e)
      this.failHopeless()
      this.notify()
    }
  }

  private async topUp (peer: string, stream: Stream, sent: Entry[]): Promise<void> {
    while (sent.length < this.ctx.maxInFlightPerPeer) {
      const batch = this.take(peer, Math.min(MAX_IDS_PER_REQUEST, this.ctx.maxInFlightPerPeer - sent.length))
      if (batch.length === 0) return
      sent.push(...batch)
      await writeFrame(stream, [encodeRequest(batch.map(e => e.id))], { signal: this.withTimeout() })
    }
  }

  private withTimeout (): AbortSignal {
    const timeout = AbortSignal.timeout(this.ctx.requestTimeoutMs)
    const signal = AbortSignal.any([this.signal, timeout])
    return signal
  }
}

/** The error a timed-out wait rejects with, made typed. */
export function asTimeout (err: unknown, peer: string): unknown {
  if (err instanceof DOMException && err.name === 'TimeoutError') return new RequestTimeoutError(`peer ${peer} did not answer in time`)
  return err
}
