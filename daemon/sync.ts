/**
 * Wiring of LAN sync inside the mount daemon, in dependency order: the device identity (sealed
 * by a token key), the team record (`team.json`), the signed device list, the change logs, the
 * libp2p node (TCP + Noise + yamux, mDNS) whose gater admits only team devices, log sync, block
 * exchange, the peer dialer, the replica and the sync service, and enrolment of new devices.
 * Stopped in reverse order.
 *
 * team.json (data dir, mode 0600): { v: 1, id: hex team id, founder: device id, records: base64
 * signed device records } — the founder makes it on first start; a joining device gets it in
 * the team bundle. Records in it are merged at every start (idempotent), the live list is in
 * the database.
 */
import '../net/shim.js'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { readFile, writeFile, rename } from 'node:fs/promises'
import { peerIdFromString } from '@libp2p/peer-id'
import { prefixLogger, enable as enableDebug } from '@libp2p/logger'
import { multiaddr } from '@multiformats/multiaddr'
import type { Strata } from './strata.js'
import { teamBundle, readConfig, writeConfig, type TeamBundle } from './strata.js'
import type { ComponentLogger, Logger } from './logger.js'
import type { IdentifyResult } from '@libp2p/interface'
import { DeviceVault, TokenEnrolment } from '../hsm/index.js'
import { Replica } from '../fs/volume/index.js'
import { loadOrCreateDeviceIdentity } from '../net/identity.js'
import { createStrataNode, listeningAddrs, refusedPeers, type StrataNode } from '../net/node.js'
import { PeerDialer } from '../net/peer-dialer.js'
import { PeerAddressBook, dialableAddrs, isLoopback } from '../net/peer-addresses.js'
import { BlockExchange } from '../net/block-exchange.js'
import { BlockRepair, RepairBlockStore } from '../net/block-repair.js'
import { InviteBook } from '../net/invite.js'
import { handleEnrol, type EnrolHandler } from '../net/enrol-protocol.js'
import { LogStore, DeviceList, logSyncForNode, newTeamId, type LogSync } from '../net/log/index.js'
import { SyncService } from '../net/sync-service.js'

export interface TeamFile { v: 1, id: string, founder: string, records: string[] }

export interface SyncConfig {
  /** Listen multiaddrs (default all interfaces, a random TCP port). */
  listen?: string[]
  /**
   * What other devices are told (identify, invite codes) to reach this one at, instead of the
   * listen addresses: a port forward, a proxy, a tunnel. Default: the listen addresses.
   */
  announce?: string[]
  /** Peers named by multiaddr (with /p2p/<id>). */
  peers?: string[]
  /** mDNS discovery on the LAN (default on). */
  mdns?: boolean
  /** This device's name in the team's list (default the host name). */
  deviceName?: string
}

/** What a joining device receives besides the TEK. */
export interface JoinBundle extends TeamBundle { team: TeamFile }

const TEAM_FILE = 'team.json'
/** How long a fetched block may wait for a change set naming it before the GC may delete it. */
const FETCHED_GRACE_MS = 10 * 60_000

export async function readTeamFile (dataDir: string): Promise<TeamFile | undefined> {
  let raw: string
  try { raw = await readFile(join(dataDir, TEAM_FILE), 'utf8') } catch { return undefined }
  const o = JSON.parse(raw) as TeamFile
  if (o.v !== 1 || typeof o.id !== 'string' || !/^[0-9a-f]{32}$/.test(o.id) || typeof o.founder !== 'string' || !Array.isArray(o.records)) {
    throw new Error(`${join(dataDir, TEAM_FILE)} is not a Strata team file`)
  }
  return o
}

export async function writeTeamFile (dataDir: string, team: TeamFile): Promise<void> {
  const tmp = join(dataDir, `${TEAM_FILE}.tmp`)
  await writeFile(tmp, JSON.stringify(team, null, 2) + '\n', { mode: 0o600 })
  await rename(tmp, join(dataDir, TEAM_FILE))
}

interface SyncParts {
  node: StrataNode
  devices: DeviceList
  logs: LogStore
  logSync: LogSync
  blocks: BlockExchange
  repair: BlockRepair
  dialer: PeerDialer
  replica: Replica
  service: SyncService
  invites: InviteBook
  addressBook: PeerAddressBook
  log: Logger
  self: string
  /** Expiry times of invites not redeemed yet: while any is live, unknown peers may connect (to enrol only). */
  openInvites: number[]
}

/**
 * Start the node on the configured addresses; a TCP port 0 becomes the port the system chose,
 * written back to strata.json, so other devices find this one at the same address after a
 * restart. A remembered port that is taken now falls back to a new one (and is remembered).
 */
async function listenStably (dataDir: string, config: SyncConfig, start: (listen: string[]) => Promise<StrataNode>, log: Logger): Promise<StrataNode> {
  const wanted = config.listen ?? ['/ip4/0.0.0.0/tcp/0']
  let node: StrataNode
  try {
    node = await start(wanted)
  } catch (err) {
    if (!/EADDRINUSE|address already in use/i.test(String((err as Error).message))) throw err
    log('a remembered listen port is taken (%s): listening on a new one', (err as Error).message)
    node = await start(wanted.map(a => a.replace(/\/tcp\/\d+/, '/tcp/0')))
  }
  const port = listeningAddrs(node).map(a => a.getComponents().find(c => c.name === 'tcp')?.value).find(p => p !== undefined)
  const listen = wanted.map(a => a.replace(/\/tcp\/\d+/, `/tcp/${port ?? 0}`))
  if (port !== undefined && listen.join() !== (config.listen ?? []).join()) {
    const cfg = await readConfig(dataDir)
    await writeConfig(dataDir, { ...cfg, sync: { ...cfg.sync, listen } })
  }
  return node
}

export class SyncNode {
  readonly node: StrataNode
  readonly devices: DeviceList
  readonly logs: LogStore
  readonly logSync: LogSync
  readonly blocks: BlockExchange
  readonly repair: BlockRepair
  readonly dialer: PeerDialer
  readonly replica: Replica
  readonly service: SyncService
  readonly invites: InviteBook
  readonly self: string
  private readonly addressBook: PeerAddressBook
  private readonly log: Logger
  private readonly openInvites: number[]
  private enrol: EnrolHandler | undefined
  private detachRepair: (() => void) | undefined

  private constructor (p: SyncParts) {
    this.node = p.node
    this.devices = p.devices
    this.logs = p.logs
    this.logSync = p.logSync
    this.blocks = p.blocks
    this.repair = p.repair
    this.dialer = p.dialer
    this.replica = p.replica
    this.service = p.service
    this.invites = p.invites
    this.addressBook = p.addressBook
    this.log = p.log
    this.self = p.self
    this.openInvites = p.openInvites
  }

  static async start (strata: Strata, config: SyncConfig, logger: ComponentLogger): Promise<SyncNode> {
    const log: Logger = logger.forComponent('sync')
    const dataDir = strata.dataDir
    const vault = new DeviceVault({ token: strata.token })
    const { privateKey, peerId: self } = await loadOrCreateDeviceIdentity({ dir: dataDir, vault })
    let team = await readTeamFile(dataDir)
    const founding = team === undefined
    team ??= { v: 1, id: Buffer.from(newTeamId()).toString('hex'), founder: self, records: [] }
    const sub = (name: string) => strata.db.sublevel<string, Uint8Array>(name, { keyEncoding: 'utf8', valueEncoding: 'view' })
    // libp2p and net/ log through @libp2p/logger (debug): errors always, all of it with DEBUG=strata*.
    enableDebug(process.env.DEBUG ?? 'strata:*:error')
    const lg = prefixLogger('strata')
    const devices = new DeviceList({ db: sub('devices'), privateKey, logger: lg }, { teamId: Buffer.from(team.id, 'hex'), founder: team.founder })
    await devices.open()
    if (team.records.length > 0) await devices.merge(team.records.map(r => Buffer.from(r, 'base64')))
    if (founding || (team.founder === self && devices.members().length === 0)) {
      await devices.found({ name: config.deviceName ?? hostname() })
      await writeTeamFile(dataDir, { ...team, records: devices.records().map(r => Buffer.from(r).toString('base64')) })
    }
    const logs = new LogStore({ db: sub('log'), privateKey, devices, keyFor: async ns => (await strata.vol.meta.nsKeys(ns)).log, logger: lg })
    await logs.open()
    const openInvites: number[] = []
    const allowPeer = (id: string): boolean => devices.isMember(id) || (!devices.removed(id) && openInvites.some(until => until > Date.now()))
    const node = await listenStably(strata.dataDir, config, async listen => await createStrataNode({ privateKey, listen, announce: config.announce, mdns: config.mdns ?? true, allowPeer, logger: lg }), log)
    const invites = new InviteBook({ store: sub('invites') }, { teamId: team.id, peerId: self, addresses: () => node.getMultiaddrs().map(a => a.toString()) })
    const logSync = logSyncForNode(node, { logs, devices })
    // The exchange sees the store through RepairBlockStore so that a damaged copy can be fetched again.
    // A block stored before the change set that names it (prefetched while its file was being
    // written, or fetched for an entry a later one overtook) is garbage if none ever does: the GC
    // checks each one FETCHED_GRACE_MS later and deletes it then if nothing references it.
    const repairStore = new RepairBlockStore(strata.blocks, id => {
      strata.vol.collectLater(id, FETCHED_GRACE_MS).catch(err => { log.error('queueing fetched block %s for the GC failed: %e', Buffer.from(id).toString('hex'), err) })
    })
    const blocks = new BlockExchange({ node, store: repairStore, allowPeer: id => devices.isMember(id), logger: lg })
    const dialer = new PeerDialer({ node, logger: lg }, { allowPeer: id => devices.isMember(id), backoffMaxMs: 10_000 })
    const box: { service?: SyncService } = {}
    const replica = new Replica({ volume: strata.vol }, {
      device: self,
      onChanges: async cs => { await box.service?.logChanges(cs) },
      onBlocksSealed: ids => { box.service?.announce(ids) },
      deviceLabel: id => devices.members().find(m => m.id === id)?.name ?? id.slice(-8),
      onError: (what, err) => { log.error('sync %s failed: %e', what, err) }
    })
    const service = box.service = new SyncService({ replica, logs, logSync, blocks, logger: lg })
    const repair = new BlockRepair({ blocks, store: repairStore, peers: () => logSync.peers(), log: logger.forComponent('repair') })
    const addressBook = new PeerAddressBook(sub('peer-addrs'), logger.forComponent('sync:addrs'))
    const sn = new SyncNode({ node, devices, logs, logSync, blocks, repair, dialer, replica, service, invites, addressBook, log, self, openInvites })
    await sn.startAll(strata, config, team, log)
    return sn
  }

  private async startAll (strata: Strata, config: SyncConfig, team: TeamFile, log: Logger): Promise<void> {
    await this.logSync.start()
    await this.blocks.start()
    // Reads that find a damaged or missing block ask connected team peers for it (once per read).
    strata.vol.useBlockRepair(async (id, cause) => await this.repair.repair(id, cause))
    this.detachRepair = () => { strata.vol.useBlockRepair(undefined) }
    await this.service.start()
    await this.replica.start()
    await this.dialer.start()
    for (const addr of config.peers ?? []) this.addPeer(addr)
    // Every team device that was ever connected is dialled where it last said it listens, so a
    // connection comes back after a restart whichever side dialled it first or moved port.
    this.node.addEventListener('peer:identify', this.onIdentify)
    for (const m of this.devices.members()) {
      if (m.id === this.self) continue
      const addrs = await this.addressBook.get(m.id)
      if (addrs.length > 0) this.dialer.add(m.id, addrs)
    }
    this.devices.addEventListener('change', (e) => {
      for (const id of e.detail.removed) {
        this.dialer.remove(id)
        this.node.hangUp(peerIdFromString(id)).catch(() => {})
        this.addressBook.forget(id).catch(err => { log.error('forgetting the addresses of removed device %s failed: %e', id, err) })
      }
    })
    this.enrol = await handleEnrol({
      node: this.node,
      invites: this.invites,
      enrolment: new TokenEnrolment({ token: strata.token, keys: strata.keys }),
      onEnrolled: async (peerId, deviceName) => {
        await this.devices.add({ device: peerId, name: deviceName })
        // One invite is spent: close the door to unknown peers once none is left.
        const live = this.openInvites.filter(until => until > Date.now()).sort((x, y) => x - y)
        live.shift()
        this.openInvites.splice(0, this.openInvites.length, ...live)
        const records = this.devices.records().map(r => Buffer.from(r).toString('base64'))
        await writeTeamFile(strata.dataDir, { ...team, records })
        const bundle: JoinBundle = { ...await teamBundle(strata), team: { ...team, records } }
        log('enrolled device %s (%s)', peerId, deviceName)
        return { bundle: Buffer.from(JSON.stringify(bundle)) }
      }
    })
    log('sync: device %s listening on %s', this.self, this.node.getMultiaddrs().map(a => a.toString()).join(' '))
  }

  private readonly onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    const id = evt.detail.peerId.toString()
    if (id === this.self || !this.devices.isMember(id)) return
    // A peer's loopback addresses are its own host's: kept only when it connected from here.
    const addrs = dialableAddrs(evt.detail.listenAddrs, { sameHost: isLoopback(evt.detail.connection.remoteAddr) })
    if (addrs.length === 0) return
    this.dialer.add(id, addrs)
    this.addressBook.remember(id, addrs).catch(err => { this.log.error('remembering the addresses of device %s failed: %e', id, err) })
  }

  /** A one-time invite code; unknown peers may connect (to enrol only) until it expires. */
  async invite (ttlMs = 15 * 60_000): Promise<{ code: string, expiresAt: number }> {
    const code = await this.invites.create({ ttlMs })
    const expiresAt = Date.now() + ttlMs
    this.openInvites.push(expiresAt)
    return { code, expiresAt }
  }

  listDevices (): Array<{ id: string, name: string, self: boolean, connected: boolean, lastSeen?: number, addedBy: string, addedAt: number }> {
    return this.devices.members().map(m => ({
      id: m.id, name: m.name, self: m.id === this.self, connected: m.id !== this.self && this.node.getConnections(peerIdFromString(m.id)).length > 0, lastSeen: m.id === this.self ? Date.now() : m.lastSeen, addedBy: m.addedBy, addedAt: m.addedAt
    }))
  }

  async removeDevice (id: string): Promise<void> {
    if (id === this.self) throw new Error('a device cannot remove itself; remove it from another device')
    if (!this.devices.isMember(id)) throw new Error(`device ${id} is not on the team's list`)
    await this.devices.remove(id)
  }

  /** Connect to a peer named by multiaddr (with /p2p/<peer id>). */
  addPeer (addr: string): string {
    let ma
    try { ma = multiaddr(addr) } catch (err) { throw new Error(`not a multiaddr: ${addr} (${(err as Error).message})`) }
    const id = ma.getComponents().find(c => c.name === 'p2p')?.value
    if (id === undefined) throw new Error(`the address ${addr} names no peer: add /p2p/<peer id>`)
    if (!this.devices.isMember(id)) throw new Error(`${id} is not a device of this team: enrol it first (strata invite here, strata join there)`)
    this.dialer.add(id, [ma.decapsulateCode(421).toString()])
    return id
  }

  status (): Record<string, unknown> {
    return {
      device: this.self,
      addresses: this.node.getMultiaddrs().map(a => a.toString()),
      peers: this.logSync.peers(),
      // Where this device looks for each team device it dials, and how that goes.
      dialing: this.dialer.list(),
      devices: this.devices.members().length,
      log: this.logSync.stats(),
      blocks: this.blocks.stats(),
      repair: this.repair.stats(),
      apply: this.service.status(),
      logProblems: this.logs.problems(),
      refusedPeers: refusedPeers(this.node),
      replicaPending: this.replica.pending
    }
  }

  /** Every part is stopped even if one fails (a full disk refusing the replica's last write); the first error is thrown after. */
  async stop (): Promise<void> {
    let first: unknown
    const step = async (fn: () => Promise<void> | void): Promise<void> => {
      try { await fn() } catch (err) { first ??= err }
    }
    await this.enrol?.stop().catch(() => {})
    this.node.removeEventListener('peer:identify', this.onIdentify)
    await step(async () => { await this.dialer.stop() })
    await step(async () => { await this.replica.stop() })
    await step(async () => { await this.service.stop() })
    await step(() => { this.detachRepair?.() })
    await step(async () => { await this.blocks.stop() })
    await step(async () => { await this.logSync.stop() })
    await step(async () => { await this.node.stop() })
    await step(async () => { await this.logs.close() })
    await step(async () => { await this.devices.close() })
    if (first !== undefined) throw first
  }
}
