// net/block-exchange.ts: protocol '/strata/blocks/1': serve blocks from the local BlockStore and
// fetch missing ones from peers, verifying every block's SHA-256 before it is stored.
import './shim.js'
import { TypedEventEmitter, type ComponentLogger, type Connection, type Logger, type PeerId, type Stream } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromString } from '@libp2p/peer-id'
import type { BlockStore } from '../fs/store/index.js'
import {
  BLOCKS_MAX_INBOUND_STREAMS, BLOCKS_MAX_OUTBOUND_STREAMS, BLOCKS_PROTOCOL, DEFAULT_MAX_BLOCK_BYTES,
  DEFAULT_MAX_IN_FLIGHT_PER_PEER, DEFAULT_REQUEST_TIMEOUT_MS, MAX_IDS_PER_REQUEST
} from './constants.js'
import { InvalidParametersError, NotStartedError, PeerNotAllowedError } from './errors.js'
import { HAVE_PROTOCOL, MAX_REQUEST_BYTES, STATUS_BLOCK, STATUS_MISSING, checkBlockId, decodeHave, decodeRequest, encodeHave, encodeReply } from './block-messages.js'
import { FetchSession, type FetchResult } from './block-fetch.js'
import { FrameReader, writeFrame } from './wire.js'
import type { AllowPeer, StrataNode } from './node.js'

export type { FetchResult }

export interface BlockExchangeComponents {
  node: StrataNode
  store: BlockStore
  /** Checked again for every request served (defense in depth behind the connection gater). */
  allowPeer: AllowPeer
  logger?: ComponentLogger
}

export interface BlockExchangeInit {
  /** Ids requested from one peer and not yet answered, at most (default 16). */
  maxInFlightPerPeer?: number
  /** Largest block accepted or served (default 4 MiB + 64 KiB). */
  maxBlockBytes?: number
  /** Time a peer has for each reply (default 30 s). */
  requestTimeoutMs?: number
}

export interface FetchOptions {
  /** Peer ids (strings) to fetch from; ids are spread across them. */
  peers: string[]
  signal?: AbortSignal
}

export interface BlockExchangeStats {
  /** Bytes of blocks received intact and stored. */
  bytesReceived: number
  /** Bytes of blocks served. */
  bytesSent: number
  blocksReceived: number
  blocksSent: number
  /** Blocks that did not match their id, per fetch attempt. */
  tampered: number
  /** Inbound streams aborted for malformed or oversized input or a refused peer. */
  badStreams: number
  /** Blocks fetched ahead of their log entry, because their sender announced them. */
  prefetched: number
  /** Announced ids dropped because the prefetch queue was full. */
  prefetchDropped: number
}

/** Announced ids waiting to be prefetched, at most (beyond that the log entry fetches them). */
const MAX_PREFETCH_QUEUE = 4096
/**
 * Ids one prefetch session takes, at most, and the time it may take per id: a slow or hostile
 * announcer cannot hold the single prefetch slot (and the ids a log entry then waits for) for long.
 */
const PREFETCH_SESSION_IDS = 256
const PREFETCH_MS_PER_ID = 500
/** Announcements queued for one peer, at most: a stalled peer gets hints dropped, not a growing queue. */
const MAX_PENDING_ANNOUNCEMENTS = 8

export interface TamperedEventDetail { peer: string, id: Uint8Array }

export interface BlockExchangeEvents {
  tampered: CustomEvent<TamperedEventDetail>
}

export class BlockExchange extends TypedEventEmitter<BlockExchangeEvents> {
  private readonly node: StrataNode
  private readonly store: BlockStore
  private readonly allowPeer: AllowPeer
  private readonly log: Logger
  private readonly maxInFlightPerPeer: number
  private readonly maxBlockBytes: number
  private readonly requestTimeoutMs: number
  private readonly counters: BlockExchangeStats = { bytesReceived: 0, bytesSent: 0, blocksReceived: 0, blocksSent: 0, tampered: 0, badStreams: 0, prefetched: 0, prefetchDropped: 0 }
  /** Ids some fetch session is fetching now (hex → settles when that session ends). */
  private readonly inflight = new Map<string, Promise<void>>()
  /** Announced ids to prefetch, per announcing peer. */
  private readonly prefetchQueue = new Map<string, Map<string, Uint8Array>>()
  private prefetchQueued = 0
  private prefetching = false
  /** Announcements to one peer go out one after another (the chain, and how many wait in it). */
  private readonly announcing = new Map<string, { chain: Promise<void>, waiting: number }>()
  private controller: AbortController | undefined
  private starting: Promise<void> | undefined
  private stopping: Promise<void> | undefined

  constructor (components: BlockExchangeComponents, init: BlockExchangeInit = {}) {
    super()
    if (typeof components?.allowPeer !== 'function') throw new InvalidParametersError('allowPeer is required')
    this.node = components.node
    this.store = components.store
    this.allowPeer = components.allowPeer
    this.log = (components.logger ?? defaultLogger()).forComponent('net:blocks')
    this.maxInFlightPerPeer = intIn(init.maxInFlightPerPeer ?? DEFAULT_MAX_IN_FLIGHT_PER_PEER, 1, 1024, 'maxInFlightPerPeer')
    this.maxBlockBytes = intIn(init.maxBlockBytes ?? DEFAULT_MAX_BLOCK_BYTES, 1, 64 * 1024 * 1024, 'maxBlockBytes')
    this.requestTimeoutMs = intIn(init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, 1, 3_600_000, 'requestTimeoutMs')
  }

  /** Register the protocol handler. Idempotent. */
  async start (): Promise<void> {
    this.starting ??= (async () => {
      this.stopping = undefined
      this.controller = new AbortController()
      await this.node.handle(BLOCKS_PROTOCOL, (stream, connection) => this.serve(stream, connection), {
        maxInboundStreams: BLOCKS_MAX_INBOUND_STREAMS,
        maxOutboundStreams: BLOCKS_MAX_OUTBOUND_STREAMS
      })
      await this.node.handle(HAVE_PROTOCOL, (stream, connection) => this.serveHave(stream, connection), {
        maxInboundStreams: BLOCKS_MAX_INBOUND_STREAMS,
        maxOutboundStreams: BLOCKS_MAX_OUTBOUND_STREAMS
      })
    })()
    await this.starting
  }

  /** Unregister the handler and abort in-flight serving and fetching. Idempotent. */
  async stop (): Promise<void> {
    if (this.starting == null) return
    this.stopping ??= (async () => {
      await this.starting?.catch(() => {})
      this.controller?.abort(new NotStartedError('block exchange stopped'))
      await this.node.unhandle(BLOCKS_PROTOCOL).catch(err => { this.log.error('unhandle failed - %e', err) })
      await this.node.unhandle(HAVE_PROTOCOL).catch(err => { this.log.error('unhandle failed - %e', err) })
      this.prefetchQueue.clear()
      this.prefetchQueued = 0
      this.starting = undefined
    })()
    await this.stopping
  }

  stats (): BlockExchangeStats {
    return { ...this.counters }
  }

  /**
   * Fetch the blocks with these ids from these peers into the store. Ids already present are
   * skipped without touching the network; every block is verified (SHA-256 = id) and stored as it
   * arrives, so an interrupted fetch resumes where it stopped. A block a peer answers as missing,
   * or tampered with, is requested from another peer. Resolves with what happened; rejects on
   * abort or on a local store failure.
   */
  async fetch (ids: Uint8Array[], options: FetchOptions): Promise<FetchResult> {
    if (!Array.isArray(ids)) throw new InvalidParametersError('ids must be an array')
    for (const id of ids) checkBlockId(id)
    if (options == null || !Array.isArray(options.peers)) throw new InvalidParametersError('options.peers must be a list of peer ids')
    const self = this.node.peerId.toString()
    const peers = new Map<string, PeerId>()
    for (const p of options.peers) {
      let id: PeerId
      try { id = peerIdFromString(p) } catch (err) { throw new InvalidParametersError(`not a peer id: ${String(p)}`, { cause: err }) }
      if (id.toString() !== self) peers.set(id.toString(), id)
    }
    if (this.controller == null || this.starting == null) throw new NotStartedError('block exchange not started')
    return await this._fetch(ids, [...peers.values()], options.signal)
  }

  /**
   * Tell these peers that this device just stored these blocks (a hint: they may fetch them
   * before the log entry naming them arrives). Fire and forget; failures are only logged.
   */
  announce (ids: Uint8Array[], peers: string[]): void {
    for (const id of ids) checkBlockId(id)
    if (this.controller == null || this.starting == null || ids.length === 0) return
    const self = this.node.peerId.toString()
    for (const peer of new Set(peers)) {
      if (peer === self) continue
      const q = this.announcing.get(peer) ?? { chain: Promise.resolve(), waiting: 0 }
      if (q.waiting >= MAX_PENDING_ANNOUNCEMENTS) continue // a hint: the log entry names the blocks anyway
      q.waiting++
      q.chain = q.chain.then(async () => { await this.sendHave(peer, ids) })
        .catch(err => { this.log('announcing %d blocks to %s failed - %e', ids.length, peer, err) })
        .finally(() => { if (--q.waiting === 0 && this.announcing.get(peer) === q) this.announcing.delete(peer) })
      this.announcing.set(peer, q)
    }
  }

  private async sendHave (peer: string, ids: Uint8Array[]): Promise<void> {
    const signal = AbortSignal.any([(this.controller as AbortController).signal, AbortSignal.timeout(this.requestTimeoutMs)])
    const stream = await this.node.dialProtocol(peerIdFromString(peer), HAVE_PROTOCOL, { signal })
    try {
      for (let i = 0; i < ids.length; i += MAX_IDS_PER_REQUEST) await writeFrame(stream, [encodeHave(ids.slice(i, i + MAX_IDS_PER_REQUEST))], { signal })
      await stream.close({ signal })
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      throw err
    }
  }

  /** Read one peer's announcements into the prefetch queue. */
  private async serveHave (stream: Stream, connection: Connection): Promise<void> {
    const reader = new FrameReader(stream, { maxMessageBytes: MAX_REQUEST_BYTES })
    const peer = connection.remotePeer.toString()
    const signal = AbortSignal.any([this.controller?.signal ?? AbortSignal.abort(), AbortSignal.timeout(this.requestTimeoutMs)])
    try {
      while (true) {
        if (!this.allowed(peer)) throw new PeerNotAllowedError(`peer ${peer} is not allowed`)
        const msg = await reader.read({ signal })
        if (msg == null) break
        this.queuePrefetch(peer, decodeHave(msg))
      }
      await stream.close({ signal })
    } catch (err: any) {
      if (this.controller?.signal.aborted !== true) {
        this.counters.badStreams++
        this.log.error('aborting have stream from %s - %e', peer, err)
      }
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      reader.detach()
    }
  }

  private queuePrefetch (peer: string, ids: Uint8Array[]): void {
    let q = this.prefetchQueue.get(peer)
    if (q === undefined) this.prefetchQueue.set(peer, q = new Map())
    for (const id of ids) {
      const h = Buffer.from(id).toString('hex')
      if (q.has(h)) continue
      if (this.prefetchQueued >= MAX_PREFETCH_QUEUE) { this.counters.prefetchDropped++; continue }
      q.set(h, id)
      this.prefetchQueued++
    }
    this.kickPrefetch()
  }

  /** One prefetch session at a time, each taking everything one peer announced meanwhile. */
  private kickPrefetch (): void {
    if (this.prefetching || this.controller == null) return
    const next = this.prefetchQueue.entries().next()
    if (next.done === true) return
    const [peer, q] = next.value
    const ids: Uint8Array[] = []
    for (const [h, id] of q) {
      if (ids.length === PREFETCH_SESSION_IDS) break
      ids.push(id)
      q.delete(h)
    }
    // The rest of this peer's ids go to the back: other announcers get their turn first.
    this.prefetchQueue.delete(peer)
    if (q.size > 0) this.prefetchQueue.set(peer, q)
    this.prefetchQueued -= ids.length
    this.prefetching = true
    this._fetch(ids, [peerIdFromString(peer)], AbortSignal.timeout(30_000 + ids.length * PREFETCH_MS_PER_ID))
      .then(r => { this.counters.prefetched += r.fetched })
      .catch(err => { if (this.controller?.signal.aborted !== true) this.log('prefetch from %s failed - %e', peer, err) })
      .finally(() => { this.prefetching = false; this.kickPrefetch() })
  }

  /**
   * Ids another session is fetching already are not requested twice: this one waits for that
   * session, then fetches whichever of them are still missing.
   */
  protected async _fetch (ids: Uint8Array[], peers: PeerId[], signal?: AbortSignal): Promise<FetchResult> {
    const mine: Uint8Array[] = []
    const theirs: Uint8Array[] = []
    const waits = new Set<Promise<void>>()
    for (const id of ids) {
      const other = this.inflight.get(Buffer.from(id).toString('hex'))
      if (other === undefined) mine.push(id)
      else { theirs.push(id); waits.add(other) }
    }
    let release = (): void => {}
    const done = new Promise<void>(resolve => { release = resolve })
    const keys = mine.map(id => Buffer.from(id).toString('hex'))
    for (const k of keys) this.inflight.set(k, done)
    let first: FetchResult
    try {
      first = await this.session(mine, peers, signal)
    } finally {
      for (const k of keys) if (this.inflight.get(k) === done) this.inflight.delete(k)
      release()
    }
    if (theirs.length === 0) return first
    await abortable(Promise.all(waits), signal)
    const second = await this.session(theirs, peers, signal)
    return { fetched: first.fetched + second.fetched, skipped: first.skipped + second.skipped, bytes: first.bytes + second.bytes, failed: [...first.failed, ...second.failed] }
  }

  private async session (ids: Uint8Array[], peers: PeerId[], signal?: AbortSignal): Promise<FetchResult> {
    if (ids.length === 0) return { fetched: 0, skipped: 0, bytes: 0, failed: [] }
    const stopSignal = (this.controller as AbortController).signal
    const session = new FetchSession({
      node: this.node,
      store: this.store,
      log: this.log,
      maxInFlightPerPeer: this.maxInFlightPerPeer,
      maxBlockBytes: this.maxBlockBytes,
      requestTimeoutMs: this.requestTimeoutMs,
      onBlock: (_peer, bytes) => { this.counters.blocksReceived++; this.counters.bytesReceived += bytes },
      onTampered: (peer, id) => {
        this.counters.tampered++
        this.log.error('peer %s served a tampered copy of block %s', peer, Buffer.from(id).toString('hex'))
        this.safeDispatchEvent('tampered', { detail: { peer, id } })
      }
    }, signal != null ? AbortSignal.any([signal, stopSignal]) : stopSignal)
    return await session.run(ids, peers)
  }

  /** Serve one inbound stream: requests in, one reply per id out, in order. */
  private async serve (stream: Stream, connection: Connection): Promise<void> {
    const reader = new FrameReader(stream, { maxMessageBytes: MAX_REQUEST_BYTES })
    const peer = connection.remotePeer.toString()
    const signal = this.controller?.signal ?? AbortSignal.abort()
    try {
      while (true) {
        if (!this.allowed(peer)) throw new PeerNotAllowedError(`peer ${peer} is not allowed`)
        const msg = await reader.read({ signal })
        if (msg == null) break
        for (const id of decodeRequest(msg)) {
          if (!this.allowed(peer)) throw new PeerNotAllowedError(`peer ${peer} is not allowed`)
          const bytes = await this.readBlock(id)
          if (bytes == null) {
            await writeFrame(stream, encodeReply({ status: STATUS_MISSING, id }), { signal })
          } else {
            await writeFrame(stream, encodeReply({ status: STATUS_BLOCK, id, bytes }), { signal })
            this.counters.blocksSent++
            this.counters.bytesSent += bytes.byteLength
          }
        }
      }
      await stream.close({ signal: AbortSignal.any([signal, AbortSignal.timeout(this.requestTimeoutMs)]) })
    } catch (err: any) {
      if (!signal.aborted) {
        this.counters.badStreams++
        this.log.error('aborting blocks stream from %s - %e', peer, err)
      }
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      reader.detach()
    }
  }

  /** The block if present, intact and within the size limit; otherwise undefined (answered MISSING). */
  private async readBlock (id: Uint8Array): Promise<Uint8Array | undefined> {
    try {
      const bytes = await this.store.get(id)
      if (bytes == null || bytes.byteLength === 0 || bytes.byteLength > this.maxBlockBytes) return undefined
      return bytes
    } catch (err) {
      this.log.error('cannot serve block %s - %e', Buffer.from(id).toString('hex'), err)
      return undefined
    }
  }

  private allowed (peer: string): boolean {
    try { return this.allowPeer(peer) === true } catch { return false }
  }
}

/** libp2p-style factory: `blockExchange(init)(components)`. */
export function blockExchange (init: BlockExchangeInit = {}): (components: BlockExchangeComponents) => BlockExchange {
  return components => new BlockExchange(components, init)
}

/** Wait for p, or reject with the signal's reason once it aborts. */
async function abortable (p: Promise<unknown>, signal?: AbortSignal): Promise<void> {
  if (signal == null) { await p; return }
  signal.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    const onAbort = (): void => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(() => { signal.removeEventListener('abort', onAbort); resolve() }, () => { signal.removeEventListener('abort', onAbort); resolve() })
  })
}

function intIn (n: number, min: number, max: number, name: string): number {
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidParametersError(`${name} must be an integer in ${min}..${max}`)
  return n
}
