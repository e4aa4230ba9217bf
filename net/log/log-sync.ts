/**
 * The log-sync protocol '/strata/log/1' (FORMAT.md §6). For every connected member device each
 * side opens one session stream: it sends a hello (team id, device-list records, every log head)
 * and from then on a notify { ns, device, seq } the moment one of its logs grows (own appends and
 * accepted remote entries, so notifications relay across devices). The receiver fetches what it
 * lacks on separate request streams (get → entry… end), in batches, accepts the entries into its
 * LogStore and emits 'accepted'. Hostile input aborts that stream and is logged; the node keeps
 * serving its other peers.
 */
import { TypedEventEmitter } from '@libp2p/interface'
import type { ComponentLogger, Connection, Libp2pEvents, Logger, PeerId, Startable, Stream, StreamHandler, StreamHandlerOptions, TypedEventTarget } from '@libp2p/interface'
import {
  DEFAULT_FETCH_ENTRIES, FETCH_TIMEOUT_MS, HELLO_TIMEOUT_MS, LOG_PROTOCOL, MAX_ENTRY_BYTES, MAX_FETCH_BYTES, MAX_FETCH_ENTRIES,
  MAX_HELLO_HEADS, MAX_HELLO_RECORDS
} from './constants.js'
import { InvalidArgumentError, LogError, NotMemberError, ProtocolError, TeamMismatchError } from './errors.js'
import { frames } from './frames.js'
import type { Frames } from './frames.js'
import type { HeadRef, Message } from './messages.js'
import type { AcceptedEntry, LogStore } from './log-store.js'
import type { DeviceList } from './device-list.js'

/** What LogSync needs of a libp2p node. */
export interface LogSyncNodeComponents {
  registrar: {
    handle: (protocol: string, handler: StreamHandler, options?: StreamHandlerOptions) => Promise<void>
    unhandle: (protocol: string) => Promise<void>
  }
  connectionManager: { getConnections: (peerId?: PeerId) => Connection[] }
  events: TypedEventTarget<Libp2pEvents>
  logger: ComponentLogger
}

export interface LogSyncComponents extends LogSyncNodeComponents {
  logs: LogStore
  devices: DeviceList
}

export interface LogSyncInit {
  /** entries asked for per fetch (1..256, default 128) */
  fetchEntries?: number
  fetchTimeoutMs?: number
  helloTimeoutMs?: number
  maxInboundStreams?: number
  maxOutboundStreams?: number
}

export interface LogSyncEvents {
  /** entries accepted from a peer, payloads decrypted, in log order: for the apply code */
  accepted: CustomEvent<{ ns: string, entries: AcceptedEntry[], from: string }>
  /** a peer broke the protocol (or is not a member): its stream was aborted */
  'protocol-error': CustomEvent<{ peer: string, error: Error }>
}

export interface LogSyncStats {
  peers: number
  hellosSent: number
  hellosReceived: number
  notifiesSent: number
  notifiesReceived: number
  fetches: number
  entriesReceived: number
  entriesAccepted: number
  entriesRejected: number
  entriesServed: number
  protocolErrors: number
}

/** Stream errors that mean the peer broke the protocol (ours, and @libp2p/utils' framing limits). */
const FRAMING_ERRORS = new Set(['InvalidDataLengthError', 'InvalidDataLengthLengthError', 'InvalidMessageLengthError', 'StreamBufferError'])
function isHostile (err: unknown): boolean {
  return err instanceof LogError || (err instanceof Error && FRAMING_ERRORS.has(err.name))
}

interface Session {
  peer: string
  connection: Connection
  out?: { stream: Stream, frames: Frames }
  opening: boolean
  flushing: boolean
  /** notifications waiting to be sent, coalesced per (ns, device) */
  pendingNotify: Map<string, HeadRef>
  /** what the peer has that we lack, per (ns, device): its head */
  wanted: Map<string, HeadRef>
  fetching: boolean
  inbound: Set<Stream>
}

export class LogSync extends TypedEventEmitter<LogSyncEvents> implements Startable {
  readonly [Symbol.toStringTag] = '@strata/log-sync'
  private readonly c: LogSyncComponents
  private readonly log: Logger
  private readonly fetchEntries: number
  private readonly fetchTimeoutMs: number
  private readonly helloTimeoutMs: number
  private readonly handlerOptions: StreamHandlerOptions
  private readonly sessions = new Map<string, Session>()
  private readonly counters: Omit<LogSyncStats, 'peers'> = {
    hellosSent: 0, hellosReceived: 0, notifiesSent: 0, notifiesReceived: 0, fetches: 0, entriesReceived: 0, entriesAccepted: 0, entriesRejected: 0, entriesServed: 0, protocolErrors: 0
  }

  private shutdown = new AbortController()
  private started = false

  constructor (components: LogSyncComponents, init: LogSyncInit = {}) {
    super()
    const fetchEntries = init.fetchEntries ?? DEFAULT_FETCH_ENTRIES
    if (!Number.isSafeInteger(fetchEntries) || fetchEntries < 1 || fetchEntries > MAX_FETCH_ENTRIES) throw new InvalidArgumentError(`fetchEntries must be 1..${MAX_FETCH_ENTRIES}`)
    this.c = components
    this.log = components.logger.forComponent('net:log:sync')
    this.fetchEntries = fetchEntries
    this.fetchTimeoutMs = init.fetchTimeoutMs ?? FETCH_TIMEOUT_MS
    this.helloTimeoutMs = init.helloTimeoutMs ?? HELLO_TIMEOUT_MS
    this.handlerOptions = { maxInboundStreams: init.maxInboundStreams ?? 64, maxOutboundStreams: init.maxOutboundStreams ?? 64 }
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.shutdown = new AbortController()
    await this.c.registrar.handle(LOG_PROTOCOL, this.onStream, this.handlerOptions)
    this.c.events.addEventListener('connection:open', this.onConnectionOpen)
    this.c.events.addEventListener('connection:close', this.onConnectionClose)
    this.c.logs.addEventListener('grown', this.onGrown)
    this.c.devices.addEventListener('change', this.onDevicesChange)
    for (const conn of this.c.connectionManager.getConnections()) this.openSession(conn)
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.shutdown.abort()
    this.c.events.removeEventListener('connection:open', this.onConnectionOpen)
    this.c.events.removeEventListener('connection:close', this.onConnectionClose)
    this.c.logs.removeEventListener('grown', this.onGrown)
    this.c.devices.removeEventListener('change', this.onDevicesChange)
    for (const s of this.sessions.values()) this.dropSession(s, new ProtocolError('log sync stopped'))
    await this.c.registrar.unhandle(LOG_PROTOCOL)
  }

  stats (): LogSyncStats {
    return { peers: this.sessions.size, ...this.counters }
  }

  /** Peers with an open session. */
  peers (): string[] {
    return [...this.sessions.values()].filter(s => s.out !== undefined).map(s => s.peer)
  }

  // --- sessions --------------------------------------------------------------------------------

  private readonly onConnectionOpen = (evt: CustomEvent<Connection>): void => { this.openSession(evt.detail) }

  private readonly onConnectionClose = (evt: CustomEvent<Connection>): void => {
    const peer = evt.detail.remotePeer.toString()
    const s = this.sessions.get(peer)
    if (s === undefined || s.connection !== evt.detail) return
    this.dropSession(s)
    const other = this.c.connectionManager.getConnections(evt.detail.remotePeer).find(c => c.status === 'open')
    if (other !== undefined) this.openSession(other)
  }

  private readonly onDevicesChange = (): void => {
    for (const s of [...this.sessions.values()]) {
      if (!this.c.devices.isMember(s.peer)) { this.dropSession(s, new NotMemberError(s.peer)); continue }
      // Gossip the new list: a fresh hello carries every record (and our heads), so a device
      // enrolled elsewhere becomes known to peers already connected, and its entries relay.
      const out = s.out
      if (out === undefined) continue
      s.out = undefined
      out.stream.close().catch(err => { out.stream.abort(err instanceof Error ? err : new Error(String(err))) })
      this.openSession(s.connection)
    }
  }

  private session (connection: Connection): Session {
    const peer = connection.remotePeer.toString()
    let s = this.sessions.get(peer)
    if (s === undefined || s.connection.status !== 'open') {
      if (s !== undefined) this.dropSession(s)
      s = { peer, connection, opening: false, flushing: false, pendingNotify: new Map(), wanted: new Map(), fetching: false, inbound: new Set() }
      this.sessions.set(peer, s)
    }
    return s
  }

  private dropSession (s: Session, err?: Error): void {
    if (this.sessions.get(s.peer) === s) this.sessions.delete(s.peer)
    const reason = err ?? new ProtocolError('session closed')
    s.out?.stream.abort(reason)
    s.out = undefined
    for (const st of s.inbound) st.abort(reason)
    s.inbound.clear()
  }

  /** Open our session stream to a member peer: hello, then notifications. */
  private openSession (connection: Connection): void {
    if (!this.started || connection.status !== 'open') return
    const peer = connection.remotePeer.toString()
    if (!this.c.devices.isMember(peer)) return
    const s = this.session(connection)
    if (s.out !== undefined || s.opening) return
    s.opening = true
    void (async () => {
      let stream: Stream | undefined
      try {
        const signal = AbortSignal.any([this.shutdown.signal, AbortSignal.timeout(this.helloTimeoutMs)])
        stream = await connection.newStream(LOG_PROTOCOL, { signal })
        const f = frames(stream)
        await f.write(this.hello(), { signal })
        this.counters.hellosSent++
        if (this.sessions.get(peer) !== s || !this.started) { stream.abort(new ProtocolError('session replaced')); return }
        s.out = { stream, frames: f }
        stream.addEventListener('close', () => { if (s.out?.stream === stream) s.out = undefined })
        this.flush(s)
      } catch (err) {
        stream?.abort(err instanceof Error ? err : new Error(String(err)))
        if (!this.shutdown.signal.aborted) this.log('could not open a log session to %s: %e', peer, err)
      } finally {
        s.opening = false
      }
    })()
  }

  private hello (): Message {
    const records = this.c.devices.records().slice(0, MAX_HELLO_RECORDS)
    const heads = this.c.logs.allHeads().slice(0, MAX_HELLO_HEADS)
    return { type: 'hello', team: this.c.devices.teamId, records, heads }
  }

  private readonly onGrown = (evt: CustomEvent<{ ns: string, device: string, seq: number }>): void => {
    const { ns, device, seq } = evt.detail
    for (const s of this.sessions.values()) {
      s.pendingNotify.set(`${ns}/${device}`, { ns, device, seq })
      this.flush(s)
    }
  }

  private flush (s: Session): void {
    const out = s.out
    if (out === undefined || s.flushing || s.pendingNotify.size === 0) return
    s.flushing = true
    void (async () => {
      try {
        while (s.pendingNotify.size > 0 && s.out === out) {
          const batch = [...s.pendingNotify.values()]
          s.pendingNotify.clear()
          for (const n of batch) {
            await out.frames.write({ type: 'notify', ...n }, { signal: this.shutdown.signal })
            this.counters.notifiesSent++
          }
        }
      } catch (err) {
        if (!this.shutdown.signal.aborted) this.log('notification to %s failed: %e', s.peer, err)
        out.stream.abort(err instanceof Error ? err : new Error(String(err)))
        if (s.out === out) s.out = undefined
      } finally {
        s.flushing = false
      }
    })()
  }

  private hostile (peer: string, error: Error): void {
    this.counters.protocolErrors++
    try {
      this.dispatchEvent(new CustomEvent('protocol-error', { detail: { peer, error } }))
    } catch (err) {
      this.log.error('protocol-error listener threw: %e', err)
    }
  }

  // --- inbound streams -------------------------------------------------------------------------

  private readonly onStream = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const f = frames(stream)
    try {
      const first = await this.firstFrame(f)
      if (first.type === 'hello') await this.onHello(stream, f, connection, first)
      else if (first.type === 'get') await this.serve(stream, f, peer, first)
      else throw new ProtocolError(`a stream may not start with ${first.type}`)
    } catch (err) {
      if (isHostile(err)) {
        this.hostile(peer, err as Error)
        this.log.error('log-sync stream from %s aborted: %s', peer, (err as Error).message)
      } else if (!this.shutdown.signal.aborted) {
        this.log('log-sync stream from %s ended: %e', peer, err)
      }
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  /** The frame a stream opens with; a peer that sends none in time broke the protocol (FORMAT.md §6). */
  private async firstFrame (f: Frames): Promise<Message> {
    const timeout = AbortSignal.timeout(this.helloTimeoutMs)
    try {
      return await f.read({ signal: AbortSignal.any([this.shutdown.signal, timeout]) })
    } catch (err) {
      if (timeout.aborted && !this.shutdown.signal.aborted) throw new ProtocolError(`no first message within ${this.helloTimeoutMs} ms`, { cause: err })
      throw err
    }
  }

  private async onHello (stream: Stream, f: Frames, connection: Connection, hello: Extract<Message, { type: 'hello' }>): Promise<void> {
    const peer = connection.remotePeer.toString()
    if (Buffer.compare(Buffer.from(hello.team), Buffer.from(this.c.devices.teamId)) !== 0) throw new TeamMismatchError(`peer ${peer} is in another team`)
    this.counters.hellosReceived++
    await this.c.devices.merge(hello.records, { from: peer })
    if (!this.c.devices.isMember(peer)) throw new NotMemberError(peer)
    await this.c.devices.touch(peer)
    const s = this.session(connection)
    s.inbound.add(stream)
    try {
      for (const h of hello.heads) this.consider(s, h)
      this.openSession(connection)
      this.runFetches(s)
      while (true) {
        const m = await f.read({ signal: this.shutdown.signal })
        if (m.type !== 'notify') throw new ProtocolError(`unexpected ${m.type} on a session stream`)
        this.counters.notifiesReceived++
        if (!this.c.devices.isMember(peer)) throw new NotMemberError(peer)
        await this.c.devices.touch(peer)
        this.consider(s, m)
        this.runFetches(s)
      }
    } finally {
      s.inbound.delete(stream)
    }
  }

  private async serve (stream: Stream, f: Frames, peer: string, get: Extract<Message, { type: 'get' }>): Promise<void> {
    if (!this.c.devices.isMember(peer)) throw new NotMemberError(peer)
    const signal = AbortSignal.any([this.shutdown.signal, AbortSignal.timeout(this.fetchTimeoutMs)])
    const entries = await this.c.logs.range(get.ns, get.device, get.from, get.limit, { maxBytes: MAX_FETCH_BYTES })
    for (const bytes of entries) {
      await f.write({ type: 'entry', bytes }, { signal })
      this.counters.entriesServed++
    }
    await f.write({ type: 'end' }, { signal })
    await stream.close({ signal })
  }

  // --- fetching --------------------------------------------------------------------------------

  /** Note what a peer has; fetch later if it is ahead of us on a member's log. */
  private consider (s: Session, h: HeadRef): void {
    if (!this.c.devices.isMember(h.device)) return
    const have = this.c.logs.head(h.ns, h.device)?.seq ?? 0
    if (h.seq <= have) return
    const key = `${h.ns}/${h.device}`
    const cur = s.wanted.get(key)
    if (cur === undefined || cur.seq < h.seq) s.wanted.set(key, h)
  }

  private runFetches (s: Session): void {
    if (s.fetching) return
    s.fetching = true
    void (async () => {
      try {
        while (this.started && this.sessions.get(s.peer) === s) {
          const next = s.wanted.entries().next()
          if (next.done === true) break
          const [key, want] = next.value
          const have = this.c.logs.head(want.ns, want.device)?.seq ?? 0
          if (have >= want.seq) { s.wanted.delete(key); continue }
          const progressed = await this.fetchOnce(s, want.ns, want.device, have + 1)
          if (!progressed) s.wanted.delete(key)
        }
      } finally {
        s.fetching = false
      }
    })()
  }

  /** One get → entries exchange; whether our log of (ns, device) grew. */
  private async fetchOnce (s: Session, ns: string, device: string, from: number): Promise<boolean> {
    let stream: Stream | undefined
    const entries: Uint8Array[] = []
    try {
      this.counters.fetches++
      const signal = AbortSignal.any([this.shutdown.signal, AbortSignal.timeout(this.fetchTimeoutMs)])
      stream = await s.connection.newStream(LOG_PROTOCOL, { signal })
      const f = frames(stream)
      await f.write({ type: 'get', ns, device, from, limit: this.fetchEntries }, { signal })
      let bytes = 0
      while (true) {
        const m = await f.read({ signal })
        if (m.type === 'end') break
        if (m.type !== 'entry') throw new ProtocolError(`unexpected ${m.type} in a fetch answer`)
        bytes += m.bytes.byteLength
        if (entries.length >= this.fetchEntries || bytes > MAX_FETCH_BYTES + MAX_ENTRY_BYTES) throw new ProtocolError('fetch answer over its limits')
        entries.push(m.bytes)
      }
      await stream.close({ signal })
    } catch (err) {
      if (isHostile(err)) {
        this.hostile(s.peer, err as Error)
        this.log.error('fetch of %s/%s from %s aborted: %s', ns, device, s.peer, (err as Error).message)
      } else if (!this.shutdown.signal.aborted) {
        this.log('fetch of %s/%s from %s failed: %e', ns, device, s.peer, err)
      }
      stream?.abort(err instanceof Error ? err : new Error(String(err)))
      return false
    }
    this.counters.entriesReceived += entries.length
    if (entries.length === 0) return false
    let result
    try {
      result = await this.c.logs.accept(entries, { from: s.peer, expect: { ns, device, from } })
    } catch (err) {
      this.log.error('could not accept entries of %s/%s from %s: %e', ns, device, s.peer, err)
      return false
    }
    this.counters.entriesAccepted += result.accepted.length
    this.counters.entriesRejected += result.rejected.length
    const byNs = new Map<string, AcceptedEntry[]>()
    for (const e of result.accepted) {
      const list = byNs.get(e.ns) ?? []
      list.push(e)
      byNs.set(e.ns, list)
    }
    for (const [n, list] of byNs) {
      try {
        this.dispatchEvent(new CustomEvent('accepted', { detail: { ns: n, entries: list, from: s.peer } }))
      } catch (err) {
        this.log.error('accepted listener threw: %e', err)
      }
    }
    return result.accepted.length > 0 && result.rejected.length === 0
  }
}

/** A libp2p node as LogSync sees it (a started `Libp2p` satisfies it): for attaching after start. */
export interface LogSyncNode extends TypedEventTarget<Libp2pEvents> {
  handle: (protocol: string, handler: StreamHandler, options?: StreamHandlerOptions) => Promise<void>
  unhandle: (protocol: string) => Promise<void>
  getConnections: (peerId?: PeerId) => Connection[]
  logger: ComponentLogger
}

/** LogSync over an existing node (e.g. net/node.ts's createStrataNode); call start()/stop(). */
export function logSyncForNode (node: LogSyncNode, deps: { logs: LogStore, devices: DeviceList }, init: LogSyncInit = {}): LogSync {
  return new LogSync({ registrar: node, connectionManager: node, events: node, logger: node.logger, logs: deps.logs, devices: deps.devices }, init)
}

/** The libp2p service factory: `services: { logSync: logSync({ logs, devices }) }`. */
export function logSync (deps: { logs: LogStore, devices: DeviceList }, init: LogSyncInit = {}): (components: LogSyncNodeComponents) => LogSync {
  return (components) => new LogSync({
    registrar: components.registrar,
    connectionManager: components.connectionManager,
    events: components.events,
    logger: components.logger,
    logs: deps.logs,
    devices: deps.devices
  }, init)
}
