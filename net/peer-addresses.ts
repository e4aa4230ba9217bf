// net/peer-addresses.ts: where each team device said it listens (libp2p identify), remembered
// across restarts so that either side of a past connection can re-establish it: a device that
// only ever dialled in, or that moved to a new port, is still found by the other.
import type { AbstractLevel } from 'abstract-level'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
/** The part of a logger the address book uses (daemon and libp2p loggers both have it). */
interface Logger { error: (fmt: string, ...args: unknown[]) => void }

/** At most this many addresses are kept per device (identify sends every interface's). */
export const MAX_ADDRS_PER_PEER = 16

type Db = AbstractLevel<any, string, Uint8Array>

/** 127.0.0.0/8 or ::1. */
function loopback (ip: string | undefined): boolean {
  return ip !== undefined && (ip.startsWith('127.') || ip === '::1')
}

/** Whether a connection's remote address is a loopback one (the peer runs on this host). */
export function isLoopback (addr: Multiaddr): boolean {
  return loopback(addr.getComponents()[0]?.value)
}

/**
 * The dialable addresses among those a peer announced: TCP over IPv4/IPv6 without relays, at
 * most MAX_ADDRS_PER_PEER, in the peer's order, without /p2p/ (the dialer knows the id).
 * Loopback addresses only with `sameHost` (they reach a peer only from its own host).
 */
export function dialableAddrs (addrs: Multiaddr[], options: { sameHost?: boolean } = {}): string[] {
  const out: string[] = []
  for (const a of addrs) {
    const parts = a.getComponents()
    const ip = parts[0]?.name
    if (ip !== 'ip4' && ip !== 'ip6') continue
    if (options.sameHost !== true && loopback(parts[0]?.value)) continue
    if (parts[1]?.name !== 'tcp' || parts.slice(2).some(c => c.name !== 'p2p')) continue
    const s = multiaddr(parts.slice(0, 2).map(c => `/${c.name}/${c.value ?? ''}`).join('')).toString()
    if (!out.includes(s)) out.push(s)
    if (out.length === MAX_ADDRS_PER_PEER) break
  }
  return out
}

export class PeerAddressBook {
  constructor (private readonly db: Db, private readonly log: Logger) {}

  /** Remember what `peer` announces now (replacing what it announced before); true if it changed. */
  async remember (peer: string, addrs: string[]): Promise<boolean> {
    if (addrs.length === 0) return false
    const before = await this.get(peer)
    if (before.join() === addrs.join()) return false
    await this.db.put(peer, Buffer.from(JSON.stringify(addrs)))
    return true
  }

  /** The remembered addresses of `peer`; none if there are none or the record is damaged (logged). */
  async get (peer: string): Promise<string[]> {
    const raw = await this.db.get(peer)
    if (raw === undefined) return []
    try {
      const v: unknown = JSON.parse(Buffer.from(raw).toString('utf8'))
      if (!Array.isArray(v) || v.length > MAX_ADDRS_PER_PEER || v.some(a => typeof a !== 'string')) throw new Error('not a list of addresses')
      return dialableAddrs(v.map(a => multiaddr(a)), { sameHost: true })
    } catch (err) {
      this.log.error('the remembered addresses of device %s are damaged, ignoring them (they are learnt again on the next connection): %s', peer, (err as Error).message)
      return []
    }
  }

  async forget (peer: string): Promise<void> {
    await this.db.del(peer)
  }
}
