// net/node.ts: the Strata libp2p node: TCP + Noise + yamux, optional mDNS, and a connection
// gater that lets only enrolled devices (allowPeer) past the Noise handshake, in both directions.
import './shim.js'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { mdns as mdnsDiscovery } from '@libp2p/mdns'
import { identify } from '@libp2p/identify'
import { defaultLogger } from '@libp2p/logger'
import type { ComponentLogger, ConnectionGater, Logger, PeerId, PeerInfo, PrivateKey } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import {
  DEFAULT_LISTEN, MAX_CONNECTIONS, MDNS_INTERVAL_MS, MDNS_SERVICE_TAG, MUXER_MAX_INBOUND_STREAMS,
  MUXER_MAX_OUTBOUND_STREAMS, MUXER_MAX_READ_BUFFER, MUXER_MAX_STREAM_WINDOW
} from './constants.js'
import { InvalidParametersError } from './errors.js'

/** The started libp2p node of a Strata daemon. */
export type StrataNode = Libp2p

/** Decides whether a device (its peer id string) may connect: the enrolled-device check. */
export type AllowPeer = (peerId: string) => boolean

export interface StrataNodeInit {
  /** The device key (Ed25519); the peer id derives from it. */
  privateKey: PrivateKey
  /** Listen multiaddrs; default ['/ip4/0.0.0.0/tcp/0']. */
  listen?: string[]
  /** Announced instead of the listen addresses (identify, getMultiaddrs); default none. */
  announce?: string[]
  /** LAN discovery; an object sets the query interval (ms). Default off. */
  mdns?: boolean | { interval?: number }
  /** Only peers this accepts get past the Noise handshake, either direction. Called often: keep it cheap. */
  allowPeer: AllowPeer
  logger?: ComponentLogger
}

/**
 * The addresses the node really listens on (its transports'), whatever it announces:
 * `getMultiaddrs()` gives the announced ones when `announce` is set. `components` is a public
 * field of libp2p 3's Libp2p class, though not of its interface type.
 */
export function listeningAddrs (node: StrataNode): Multiaddr[] {
  const tm = (node as unknown as { components?: { transportManager?: { getAddrs?: () => Multiaddr[] } } }).components?.transportManager
  if (typeof tm?.getAddrs !== 'function') throw new Error('libp2p changed: no components.transportManager.getAddrs()')
  return tm.getAddrs()
}

/** Inbound connections the gater closed after Noise: how many, and the latest peers (for status). */
export interface RefusedPeers {
  count: number
  recent: Array<{ peer: string, at: number }>
}

/** Recent refused peers kept for status. */
const MAX_RECENT_REFUSED = 16

/** A gater denying every connection, dial and stored address of a peer `allowPeer` refuses. */
export function strataConnectionGater (allowPeer: AllowPeer, log?: Logger, refusals?: RefusedPeers): ConnectionGater {
  const refused = (peer: PeerId | string): boolean => {
    const id = peer.toString()
    let ok = false
    try { ok = allowPeer(id) === true } catch (err) { log?.error('allowPeer threw for %s, refusing - %e', id, err) }
    if (!ok) log?.('refusing peer %s', id)
    return !ok
  }
  // Only inbound refusals are an outsider knocking; outbound ones are our own address book.
  const refusedInbound = (peer: PeerId): boolean => {
    if (!refused(peer)) return false
    if (refusals !== undefined) {
      refusals.count++
      refusals.recent.push({ peer: peer.toString(), at: Date.now() })
      if (refusals.recent.length > MAX_RECENT_REFUSED) refusals.recent.shift()
    }
    log?.error('closed an inbound connection of %s: not an enrolled device of this team', peer.toString())
    return true
  }
  return {
    denyDialPeer: peer => refused(peer),
    denyDialMultiaddr: (ma: Multiaddr) => {
      let id: string | undefined
      for (const c of ma.getComponents()) if (c.name === 'p2p') id = c.value
      return id != null && refused(id)
    },
    // The decisive checks: after Noise authenticated the remote key, before the muxer.
    denyInboundEncryptedConnection: peer => refusedInbound(peer),
    denyOutboundEncryptedConnection: peer => refused(peer),
    // Defense in depth, should allowPeer change while a connection was being upgraded.
    denyInboundUpgradedConnection: peer => refusedInbound(peer),
    denyOutboundUpgradedConnection: peer => refused(peer),
    filterMultiaddrForPeer: peer => !refused(peer)
  }
}

const refusalsOf = new WeakMap<StrataNode, RefusedPeers>()

/** The inbound connections a node's gater refused (a copy), for status. */
export function refusedPeers (node: StrataNode): RefusedPeers {
  const r = refusalsOf.get(node)
  return { count: r?.count ?? 0, recent: [...(r?.recent ?? [])] }
}

/** Create and start a node. Discovered (mDNS) peers are dialed only if allowPeer accepts them. */
export async function createStrataNode (init: StrataNodeInit): Promise<StrataNode> {
  if (init == null || typeof init.allowPeer !== 'function') throw new InvalidParametersError('allowPeer is required')
  if (init.privateKey?.type !== 'Ed25519') throw new InvalidParametersError('the device key must be an Ed25519 private key')
  const listen = init.listen ?? DEFAULT_LISTEN
  if (!Array.isArray(listen) || listen.some(a => typeof a !== 'string')) throw new InvalidParametersError('listen must be a list of multiaddr strings')
  const announce = init.announce ?? []
  if (!Array.isArray(announce)) throw new InvalidParametersError('announce must be a list of multiaddr strings')
  for (const a of announce) {
    let ok = false
    try { ok = typeof a === 'string' && multiaddr(a).getComponents().length > 0 } catch {}
    if (!ok) throw new InvalidParametersError(`announce: not a multiaddr: ${String(a)}`)
  }
  const logger = init.logger ?? defaultLogger()
  const log = logger.forComponent('net:node')
  const mdnsOn = init.mdns != null && init.mdns !== false
  const interval = typeof init.mdns === 'object' ? (init.mdns.interval ?? MDNS_INTERVAL_MS) : MDNS_INTERVAL_MS
  if (!Number.isFinite(interval) || interval < 100) throw new InvalidParametersError('mdns interval must be at least 100 ms')

  const refusals: RefusedPeers = { count: 0, recent: [] }
  const node = await createLibp2p({
    privateKey: init.privateKey,
    logger,
    addresses: { listen, ...(announce.length > 0 ? { announce } : {}) },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({
      maxInboundStreams: MUXER_MAX_INBOUND_STREAMS,
      maxOutboundStreams: MUXER_MAX_OUTBOUND_STREAMS,
      streamOptions: { maxStreamWindowSize: MUXER_MAX_STREAM_WINDOW, maxReadBufferLength: MUXER_MAX_READ_BUFFER }
    })],
    peerDiscovery: mdnsOn ? [mdnsDiscovery({ interval, serviceTag: MDNS_SERVICE_TAG })] : [],
    connectionGater: strataConnectionGater(init.allowPeer, log, refusals),
    connectionManager: { maxConnections: MAX_CONNECTIONS },
    // identify: each side learns where the other listens ('peer:identify'), which the daemon
    // remembers for team devices (net/peer-addresses.ts). Only admitted peers get this far.
    services: { identify: identify() },
    start: false
  })

  if (mdnsOn) {
    const dialing = new Set<string>()
    node.addEventListener('peer:discovery', (evt: CustomEvent<PeerInfo>) => {
      const id = evt.detail.id.toString()
      if (dialing.has(id) || node.getConnections(evt.detail.id).length > 0) return
      let ok = false
      try { ok = init.allowPeer(id) === true } catch { ok = false }
      if (!ok) { log('discovered peer %s is not allowed, not dialing', id); return }
      dialing.add(id)
      log('dialing discovered peer %s', id)
      node.dial(evt.detail.id)
        .catch(err => { log('dial of discovered peer %s failed - %e', id, err) })
        .finally(() => dialing.delete(id))
    })
  }
  refusalsOf.set(node, refusals)
  await node.start()
  return node
}
