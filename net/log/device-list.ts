/**
 * The team's signed device list (FORMAT.md §3–4). Membership is a pure function of the set of
 * valid records, so lists merge idempotently from any order of arrival:
 *   admitted = the founder (by its self-signed add) and, transitively, every device added by an
 *              admitted device;
 *   removed  = every device (but the founder) named by a remove record of an admitted device;
 *   members  = the founder and, transitively, every non-removed device added by a member.
 * Removal wins and is permanent; a removed device's own adds stop counting (re-add those devices
 * with a fresh add by a member). Records whose signer is not admitted (yet) are buffered in
 * memory, bounded, and applied once their signer's add arrives.
 */
import { randomBytes } from 'node:crypto'
import { TypedEventEmitter } from '@libp2p/interface'
import type { ComponentLogger, Logger, PrivateKey } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { DEVICE_PATTERN, MAX_BUFFERED_RECORDS, MAX_NAME_BYTES, MAX_RECORDS, TEAM_ID_BYTES } from './constants.js'
import { DeviceRemovedError, InvalidArgumentError, LogError, NotMemberError, NotOpenError, TeamMismatchError, BadSignatureError } from './errors.js'
import { decodeRecord, encodeRecord, recordId, signRecord, verifyRecord } from './device-record.js'
import type { DeviceRecord } from './device-record.js'
import { Serial } from './serial.js'
import { utf8Bytes, Reader, Writer } from './bytes.js'
import type { LogDb } from './types.js'

export interface DeviceListComponents {
  /** a LevelDB (sublevel) of its own */
  db: LogDb
  /** this device's Ed25519 key (signs add/remove) */
  privateKey: PrivateKey
  logger?: ComponentLogger
}

export interface DeviceListInit {
  /** the team's random 16-byte id (bound into every signature) */
  teamId: Uint8Array
  /** the founder's device id: the only valid self-signed add */
  founder: string
}

export interface DeviceInfo {
  id: string
  name: string
  /** who signed the add record in force */
  addedBy: string
  addedAt: number
  /** local, unsigned: when this device last heard from it (ms), if ever */
  lastSeen?: number
}

export interface MergeResult {
  /** records new to this list (valid now or buffered) */
  added: number
  /** records whose signer is not admitted yet */
  buffered: number
  /** records refused, with their typed errors */
  rejected: LogError[]
}

export interface DeviceListEvents {
  /** membership changed */
  change: CustomEvent<{ members: string[], removed: string[] }>
}

interface Stored { rec: DeviceRecord, bytes: Uint8Array }

const TOUCH_PERSIST_MS = 60_000

/** A random 16-byte team id for a new team. */
export function newTeamId (): Uint8Array {
  return new Uint8Array(randomBytes(TEAM_ID_BYTES))
}

export class DeviceList extends TypedEventEmitter<DeviceListEvents> {
  readonly teamId: Uint8Array
  readonly founder: string
  /** this device's id */
  readonly self: string
  private readonly db: LogDb
  private readonly key: PrivateKey
  private readonly log: Logger
  private readonly serial = new Serial()
  private readonly stored = new Map<string, Stored>()
  private readonly buffered = new Map<string, Stored>()
  private memberSet = new Map<string, Stored>()
  private removedSet = new Set<string>()
  private readonly seen = new Map<string, { at: number, persisted: number }>()
  private opened = false

  constructor (components: DeviceListComponents, init: DeviceListInit) {
    super()
    if (init.teamId.byteLength !== TEAM_ID_BYTES) throw new InvalidArgumentError('team id must be 16 bytes')
    if (!DEVICE_PATTERN.test(init.founder)) throw new InvalidArgumentError('founder must be a peer id string')
    this.teamId = new Uint8Array(init.teamId)
    this.founder = init.founder
    this.db = components.db
    this.key = components.privateKey
    this.self = peerIdFromPrivateKey(components.privateKey).toString()
    this.log = (components.logger ?? defaultLogger()).forComponent('net:log:devices')
  }

  /** Load the persisted records; refuses a database of another team (TeamMismatchError). */
  async open (): Promise<void> {
    if (this.opened) return
    if (this.db.status === 'opening') await this.db.open()
    const teamRec = new Writer().raw(this.teamId).raw(utf8Bytes(this.founder)).finish()
    const have = await this.db.get('team')
    if (have === undefined) {
      await this.db.put('team', teamRec)
    } else if (Buffer.compare(Buffer.from(have), Buffer.from(teamRec)) !== 0) {
      throw new TeamMismatchError('the device-list database belongs to another team')
    }
    for await (const [k, v] of this.db.iterator({ gte: 'r/', lt: 'r0' })) {
      try {
        const rec = decodeRecord(v)
        this.stored.set(k.slice(2), { rec, bytes: new Uint8Array(v) })
      } catch (err) {
        this.log.error('stored device record %s unreadable, ignored: %e', k, err)
      }
    }
    for await (const [k, v] of this.db.iterator({ gte: 's/', lt: 's0' })) {
      try {
        const at = new Reader(v, 'last seen').u64()
        this.seen.set(k.slice(2), { at, persisted: at })
      } catch {}
    }
    this.recompute()
    this.opened = true
  }

  async close (): Promise<void> {
    await this.serial.idle()
    this.opened = false
  }

  private check (): void {
    if (!this.opened) throw new NotOpenError('device list')
  }

  /** Start the team: the founder's self-signed add. Only the founder may call it. */
  async found (options: { name: string }): Promise<DeviceRecord> {
    this.check()
    if (this.self !== this.founder) throw new NotMemberError(this.self)
    return await this._sign('add', this.self, options.name)
  }

  /** Add a device (signed by this device, which must be a member). */
  async add (options: { device: string, name: string }): Promise<DeviceRecord> {
    this.check()
    if (!DEVICE_PATTERN.test(options.device)) throw new InvalidArgumentError('device must be a peer id string')
    if (utf8Bytes(options.name).byteLength > MAX_NAME_BYTES) throw new InvalidArgumentError('name longer than 64 UTF-8 bytes')
    if (this.removedSet.has(options.device)) throw new DeviceRemovedError(options.device)
    if (!this.memberSet.has(this.self)) throw new NotMemberError(this.self)
    return await this._sign('add', options.device, options.name)
  }

  /** Remove a device, permanently (signed by this device, which must be a member). */
  async remove (device: string): Promise<DeviceRecord> {
    this.check()
    if (!DEVICE_PATTERN.test(device)) throw new InvalidArgumentError('device must be a peer id string')
    if (device === this.founder) throw new InvalidArgumentError('the founder cannot be removed')
    if (!this.memberSet.has(this.self)) throw new NotMemberError(this.self)
    return await this._sign('remove', device, '')
  }

  private async _sign (op: 'add' | 'remove', device: string, name: string): Promise<DeviceRecord> {
    const rec = await signRecord(this.key, { team: this.teamId, op, device, name, by: this.self, at: Date.now() })
    const res = await this.merge([encodeRecord(rec)])
    const err = res.rejected[0]
    if (err !== undefined) throw err
    return rec
  }

  /** Every stored (grounded) record, encoded, in a stable order: what peers gossip. */
  records (): Uint8Array[] {
    this.check()
    return [...this.stored.keys()].sort().map(k => (this.stored.get(k) as Stored).bytes)
  }

  /** Merge records from a peer or from local signing. Idempotent; any order. */
  async merge (encoded: Uint8Array[], options: { from?: string } = {}): Promise<MergeResult> {
    this.check()
    return await this.serial.run('merge', async () => await this._merge(encoded, options.from))
  }

  private async _merge (encoded: Uint8Array[], from: string | undefined): Promise<MergeResult> {
    const result: MergeResult = { added: 0, buffered: 0, rejected: [] }
    let fresh = 0
    for (const bytes of encoded) {
      try {
        const rec = decodeRecord(bytes)
        if (Buffer.compare(Buffer.from(rec.team), Buffer.from(this.teamId)) !== 0) throw new TeamMismatchError('device record of another team')
        if (rec.op === 'remove' && rec.device === this.founder) throw new InvalidArgumentError('a record removing the founder')
        const id = recordId(bytes)
        if (this.stored.has(id) || this.buffered.has(id)) continue
        if (this.stored.size + this.buffered.size >= MAX_RECORDS) throw new InvalidArgumentError('device list full')
        if (!await verifyRecord(rec)) throw new BadSignatureError(`device record by ${rec.by}`)
        this.buffered.set(id, { rec, bytes: new Uint8Array(bytes) })
        fresh++
      } catch (err) {
        const e = err instanceof LogError ? err : new InvalidArgumentError(String(err))
        this.log('device record from %s refused: %s', from ?? 'local', e.message)
        result.rejected.push(e)
      }
    }
    if (fresh === 0) return result
    const before = this.snapshot()
    // Ground buffered records whose signer is admitted; repeat until nothing moves.
    const admitted = this.admitted(new Map([...this.stored, ...this.buffered]))
    const grounded: Array<[string, Stored]> = []
    for (const [id, s] of this.buffered) {
      if (admitted.has(s.rec.by)) grounded.push([id, s])
    }
    if (grounded.length > 0) {
      await this.db.batch(grounded.map(([id, s]) => ({ type: 'put' as const, key: `r/${id}`, value: s.bytes })))
      for (const [id, s] of grounded) {
        this.buffered.delete(id)
        this.stored.set(id, s)
      }
    }
    result.added = fresh
    result.buffered = this.buffered.size
    while (this.buffered.size > MAX_BUFFERED_RECORDS) {
      const oldest = this.buffered.keys().next().value as string
      this.buffered.delete(oldest)
    }
    this.recompute()
    const after = this.snapshot()
    if (before !== after) {
      this.log('device list changed: %d members, %d removed', this.memberSet.size, this.removedSet.size)
      this.safeDispatch('change', new CustomEvent('change', { detail: { members: [...this.memberSet.keys()], removed: [...this.removedSet] } }))
    }
    return result
  }

  private safeDispatch (type: 'change', ev: CustomEvent<{ members: string[], removed: string[] }>): void {
    try {
      this.dispatchEvent(ev)
    } catch (err) {
      this.log.error('change listener threw: %e', err)
    }
  }

  private snapshot (): string {
    return [...this.memberSet.keys()].sort().join(',') + '|' + [...this.removedSet].sort().join(',')
  }

  /** The founder (by its self-add) and everyone transitively added by an admitted device. */
  private admitted (records: Map<string, Stored>): Set<string> {
    const set = new Set<string>()
    const adds = [...records.values()].filter(s => s.rec.op === 'add')
    if (adds.some(s => s.rec.device === this.founder && s.rec.by === this.founder)) set.add(this.founder)
    let grew = set.size > 0
    while (grew) {
      grew = false
      for (const s of adds) {
        if (!set.has(s.rec.device) && set.has(s.rec.by)) { set.add(s.rec.device); grew = true }
      }
    }
    return set
  }

  private recompute (): void {
    const admitted = this.admitted(this.stored)
    const removed = new Set<string>()
    for (const s of this.stored.values()) {
      if (s.rec.op === 'remove' && admitted.has(s.rec.by) && s.rec.device !== this.founder) removed.add(s.rec.device)
    }
    const members = new Map<string, Stored>()
    const adds = [...this.stored.values()].filter(s => s.rec.op === 'add')
    const founderAdd = adds.find(s => s.rec.device === this.founder && s.rec.by === this.founder)
    if (founderAdd !== undefined) members.set(this.founder, founderAdd)
    let grew = members.size > 0
    while (grew) {
      grew = false
      for (const s of adds) {
        if (!removed.has(s.rec.device) && !members.has(s.rec.device) && members.has(s.rec.by)) { members.set(s.rec.device, s); grew = true }
      }
    }
    // The add in force (for name and addedBy): the latest valid add of each member.
    for (const s of adds) {
      const cur = members.get(s.rec.device)
      if (cur !== undefined && members.has(s.rec.by) && (s.rec.at > cur.rec.at || (s.rec.at === cur.rec.at && recordId(s.bytes) > recordId(cur.bytes)))) members.set(s.rec.device, s)
    }
    this.memberSet = members
    this.removedSet = removed
  }

  members (): DeviceInfo[] {
    this.check()
    return [...this.memberSet.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([id, s]) => {
      const info: DeviceInfo = { id, name: s.rec.name, addedBy: s.rec.by, addedAt: s.rec.at }
      const seen = this.seen.get(id)
      if (seen !== undefined) info.lastSeen = seen.at
      return info
    })
  }

  isMember (id: string): boolean {
    return this.memberSet.has(id)
  }

  removed (id: string): boolean {
    return this.removedSet.has(id)
  }

  /** When this device last heard from `id` (local, unsigned), if ever. */
  lastSeen (id: string): number | undefined {
    return this.seen.get(id)?.at
  }

  /** Record contact with a device now (persisted at most once a minute per device). */
  async touch (id: string, at: number = Date.now()): Promise<void> {
    this.check()
    if (!DEVICE_PATTERN.test(id)) throw new InvalidArgumentError('device must be a peer id string')
    const cur = this.seen.get(id)
    if (cur !== undefined && at <= cur.at) return
    const persisted = cur?.persisted ?? 0
    this.seen.set(id, { at, persisted })
    if (at - persisted >= TOUCH_PERSIST_MS || cur === undefined) {
      await this.db.put(`s/${id}`, new Writer().u64(at).finish())
      const now = this.seen.get(id)
      if (now !== undefined) now.persisted = at
    }
  }

  /** Records buffered because their signer is not admitted yet (for status). */
  bufferedCount (): number {
    return this.buffered.size
  }
}
