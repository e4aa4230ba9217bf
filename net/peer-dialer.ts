// net/peer-dialer.ts: keeps a connection to every known peer. Peers come from configuration,
// `peer add`, the device list (add()) or mDNS (allowed discovered peers). After a failed dial or a
// dropped connection it redials with exponential backoff and jitter (500 ms doubling to 30 s).
import './shim.js'
import { TypedEventEmitter, type ComponentLogger, type Logger, type PeerId, type PeerInfo } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { DIAL_BACKOFF_INITIAL_MS, DIAL_BACKOFF_MAX_MS, DIAL_TIMEOUT_MS } from './constants.js'
import { InvalidParametersError } from './errors.js'
import type { AllowPeer, StrataNode } from './node.js'

/** Multiaddr code of the /p2p/ component. */
const P2P_CODE = 421

export interface PeerDialerComponents {
  node: StrataNode
  logger?: ComponentLogger
}

export interface PeerDialerInit {
  /** Peers refused here are never added (add() throws) and discovered ones are ignored. */
  allowPeer?: AllowPeer
  /** Add allowed peers the node discovers (mDNS). Default true. */
  discovery?: boolean
  backoffInitialMs?: number
  backoffMaxMs?: number
  dialTimeoutMs?: number
}

export interface PeerEventDetail { peer: string }

export interface PeerDialerEvents {
  connect: CustomEvent<PeerEventDetail>
  disconnect: CustomEvent<PeerEventDetail>
}

export interface PeerStatus {
  peer: string
  addrs: string[]
  connected: boolean
  /** Failed dials since the last connection. */
  failures: number
  /** When the next dial is due (epoch ms), if one is scheduled. */
  nextDialAt?: number
}

interface PeerState {
  id: PeerId
  addrs: Multiaddr[]
  connected: boolean
  failures: number
  dialing: boolean
  timer?: ReturnType<typeof setTimeout>
  nextDialAt?: number
}

export class PeerDialer extends TypedEventEmitter<PeerDialerEvents> {
  private readonly node: StrataNode
  private readonly log: Logger
  private readonly allowPeer: AllowPeer
  private readonly discovery: boolean
  private readonly backoffInitialMs: number
  private readonly backoffMaxMs: number
  private readonly dialTimeoutMs: number
  private readonly peers = new Map<string, PeerState>()
  private controller: AbortController | undefined
  private started = false

  constructor (components: PeerDialerComponents, init: PeerDialerInit = {}) {
    super()
    this.node = components.node
    this.log = (components.logger ?? defaultLogger()).forComponent('net:peer-dialer')
    this.allowPeer = init.allowPeer ?? (() => true)
    this.discovery = init.discovery ?? true
    this.backoffInitialMs = positive(init.backoffInitialMs ?? DIAL_BACKOFF_INITIAL_MS, 'backoffInitialMs')
    this.backoffMaxMs = positive(init.backoffMaxMs ?? DIAL_BACKOFF_MAX_MS, 'backoffMaxMs')
    this.dialTimeoutMs = positive(init.dialTimeoutMs ?? DIAL_TIMEOUT_MS, 'dialTimeoutMs')
  }

  /** Know this peer (and these addresses, merged with earlier ones); dial it now if started. */
  add (peer: string, addrs: string[] = []): void {
    let id: PeerId
    try { id = peerIdFromString(peer) } catch (err) { throw new InvalidParametersError(`not a peer id: ${String(peer)}`, { cause: err }) }
    if (!Array.isArray(addrs)) throw new InvalidParametersError('addrs must be a list of multiaddr strings')
    const parsed: Multiaddr[] = addrs.map(a => {
      let ma: Multiaddr
      try { ma = multiaddr(a) } catch (err) { throw new InvalidParametersError(`not a multiaddr: ${String(a)}`, { cause: err }) }
      const p2p = ma.getComponents().filter(c => c.name === 'p2p')
      if (p2p.length > 0 && p2p.some(c => c.value !== id.toString())) throw new InvalidParametersError(`${a} names another peer than ${peer}`)
      return p2p.length > 0 ? ma.decapsulateCode(P2P_CODE) : ma
    })
    if (!this.isAllowed(id.toString())) throw new InvalidParametersError(`peer ${peer} is not allowed`)
    this._add(id, parsed)
  }

  /** Forget a peer: no more dials (an open connection is left to the caller). */
  remove (peer: string): void {
    const state = this.peers.get(peer)
    if (state == null) return
    if (state.timer != null) clearTimeout(state.timer)
    this.peers.delete(peer)
  }

  isConnected (peer: string): boolean {
    return this.peers.get(peer)?.connected === true
  }

  list (): PeerStatus[] {
    return [...this.peers.values()].map(s => ({
      peer: s.id.toString(),
      addrs: s.addrs.map(a => a.toString()),
      connected: s.connected,
      failures: s.failures,
      ...(s.nextDialAt != null ? { nextDialAt: s.nextDialAt } : {})
    }))
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.controller = new AbortController()
    this.node.addEventListener('peer:connect', this.onConnect)
    this.node.addEventListener('peer:disconnect', this.onDisconnect)
    if (this.discovery) this.node.addEventListener('peer:discovery', this.onDiscovery)
    for (const state of this.peers.values()) {
      state.connected = this.node.getConnections(state.id).length > 0
      if (state.connected) this.safeDispatchEvent('connect', { detail: { peer: state.id.toString() } })
      else this.dialSoon(state, 0)
    }
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller?.abort()
    this.node.removeEventListener('peer:connect', this.onConnect)
    this.node.removeEventListener('peer:disconnect', this.onDisconnect)
    this.node.removeEventListener('peer:discovery', this.onDiscovery)
    for (const state of this.peers.values()) {
      if (state.timer != null) clearTimeout(state.timer)
      state.timer = undefined
      delete state.nextDialAt
    }
  }

  protected _add (id: PeerId, addrs: Multiaddr[]): void {
    const key = id.toString()
    let state = this.peers.get(key)
    if (state == null) {
      state = { id, addrs: [], connected: false, failures: 0, dialing: false }
      this.peers.set(key, state)
    }
    for (const a of addrs) if (!state.addrs.some(b => b.equals(a))) state.addrs.push(a)
    if (!this.started) return
    state.connected = this.node.getConnections(id).length > 0
    if (!state.connected) this.dialSoon(state, 0)
  }

  private isAllowed (peer: string): boolean {
    try { return this.allowPeer(peer) === true } catch { return false }
  }

  /** Delay of the next dial after `failures` failures: min(max, initial * 2^n), jittered to [50%, 100%]. */
  private backoff (failures: number): number {
    const base = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** Math.min(failures, 30))
    return Math.round(base / 2 + Math.random() * base / 2)
  }

  private dialSoon (state: PeerState, delayMs: number): void {
    if (!this.started || state.connected || state.dialing) return
    if (state.timer != null) {
      if (delayMs > 0) return // a dial is already scheduled
      clearTimeout(state.timer)
    }
    state.nextDialAt = Date.now() + delayMs
    state.timer = setTimeout(() => {
      state.timer = undefined
      delete state.nextDialAt
      void this.dial(state)
    }, delayMs)
    state.timer.unref?.()
  }

  private async dial (state: PeerState): Promise<void> {
    const peer = state.id.toString()
    if (!this.started || state.connected || state.dialing || this.peers.get(peer) !== state) return
    state.dialing = true
    const signal = AbortSignal.any([this.controller?.signal ?? AbortSignal.abort(), AbortSignal.timeout(this.dialTimeoutMs)])
    try {
      // Explicit addresses join those the peer store already has (e.g. from mDNS); libp2p tries all.
      if (state.addrs.length > 0) await this.node.peerStore.merge(state.id, { multiaddrs: state.addrs }, { signal })
      await this.node.dial(state.id, { signal })
      state.dialing = false
      this.markConnected(state)
    } catch (err) {
      state.dialing = false
      if (!this.started || this.peers.get(peer) !== state) return
      state.failures++
      const delay = this.backoff(state.failures - 1)
      this.log('dial %s failed (%d in a row), next in %d ms - %e', peer, state.failures, delay, err)
      if (this.node.getConnections(state.id).length > 0) { this.markConnected(state); return }
      this.dialSoon(state, delay)
    }
  }

  private markConnected (state: PeerState): void {
    if (state.connected) return
    if (this.node.getConnections(state.id).length === 0) return
    state.connected = true
    state.failures = 0
    if (state.timer != null) { clearTimeout(state.timer); state.timer = undefined; delete state.nextDialAt }
    this.log('connected to %s', state.id.toString())
    this.safeDispatchEvent('connect', { detail: { peer: state.id.toString() } })
  }

  private readonly onConnect = (evt: CustomEvent<PeerId>): void => {
    const state = this.peers.get(evt.detail.toString())
    if (state != null) this.markConnected(state)
  }

  private readonly onDisconnect = (evt: CustomEvent<PeerId>): void => {
    const state = this.peers.get(evt.detail.toString())
    if (state == null || !state.connected) return
    if (this.node.getConnections(state.id).length > 0) return
    state.connected = false
    this.log('disconnected from %s', state.id.toString())
    this.safeDispatchEvent('disconnect', { detail: { peer: state.id.toString() } })
    this.dialSoon(state, this.backoff(0))
  }

  private readonly onDiscovery = (evt: CustomEvent<PeerInfo>): void => {
    const peer = evt.detail.id.toString()
    if (!this.isAllowed(peer)) return
    this._add(evt.detail.id, [])
  }
}

function positive (n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new InvalidParametersError(`${name} must be a positive number`)
  return n
}
