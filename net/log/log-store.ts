/**
 * LogStore: this device's and its peers' signed, hash-chained change logs per namespace, in
 * LevelDB (FORMAT.md §5). `append` writes this device's entries; `accept` verifies entries from
 * the network (membership, signature, sequence, hash chain, payload) and stores each accepted one
 * with its head update in one atomic batch. Rejected entries are never stored: each gives a typed
 * kind, a log line and a record in `problems()`. Work on one namespace is serialised.
 */
import { TypedEventEmitter } from '@libp2p/interface'
import type { AbortOptions, ComponentLogger, Logger, PrivateKey } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { DEVICE_PATTERN, HASH_BYTES, MAX_FETCH_ENTRIES, MAX_PROBLEMS, NS_PATTERN } from './constants.js'
import { EntryRejectedError, InvalidArgumentError, LogError, NotOpenError, PayloadDecryptError } from './errors.js'
import type { ProblemKind } from './errors.js'
import { ZERO_HASH, decodeEntry, encodeEntry, entryHash, signEntry, verifyEntry } from './entry-codec.js'
import type { LogEntry } from './entry-codec.js'
import { openPayload, sealPayload } from './payload-cipher.js'
import { ProblemList } from './problem-list.js'
import type { Problem } from './problem-list.js'
import { Serial } from './serial.js'
import { Reader, Writer } from './bytes.js'
import type { LogDb } from './types.js'

/** What the store needs of the device list. */
export interface Membership {
  readonly teamId: Uint8Array
  isMember: (id: string) => boolean
  removed: (id: string) => boolean
}

export interface LogStoreComponents {
  /** a LevelDB (sublevel) of its own */
  db: LogDb
  /** this device's Ed25519 key: signs appended entries */
  privateKey: PrivateKey
  devices: Membership
  /**
   * The 32-byte log key of a namespace. The store uses it synchronously right after the call and
   * never keeps it, so the owner may zero it afterwards.
   */
  keyFor: (ns: string) => Promise<Uint8Array>
  logger?: ComponentLogger
}

export interface LogStoreInit {
  /** problems kept for status (default 256) */
  maxProblems?: number
  /** injected randomness for payload nonces (tests) */
  randomBytes?: (n: number) => Uint8Array
}

/** An entry with its decrypted payload, as handed to the apply code. */
export interface AcceptedEntry {
  ns: string
  device: string
  seq: number
  time: number
  hash: Uint8Array
  payload: Uint8Array
}

export interface AppendedEntry { entry: LogEntry, bytes: Uint8Array, hash: Uint8Array }

export interface RejectedEntry { error: EntryRejectedError, ns: string, device: string, seq: number }

/** A device's log has entries we lack from `from` on (a gap was seen). */
export interface NeededRange { ns: string, device: string, from: number }

export interface AcceptResult {
  /** accepted and stored, in order, payloads decrypted */
  accepted: AcceptedEntry[]
  /** identical to entries already stored (ignored) */
  duplicates: number
  rejected: RejectedEntry[]
  /** gaps: entries we must fetch first */
  needed: NeededRange[]
}

export interface Head { seq: number, hash: Uint8Array }

/**
 * What a fetch asked for: entries of this one log from `from` on. An honest peer answers nothing
 * else, so anything else is hostile: an entry of another log is refused as 'unexpected', and an
 * old entry (below `from`) we already hold is refused as a 'replay' instead of being ignored as a
 * duplicate. (A different old entry is still judged as a fork or a rollback.)
 */
export interface ExpectedRange { ns: string, device: string, from: number }

export interface LogStoreEvents {
  /** a log grew: an own append (local) or accepted remote entries; seq is the new head */
  grown: CustomEvent<{ ns: string, device: string, seq: number, local: boolean }>
}

const seqKey = (seq: number): string => seq.toString(16).padStart(14, '0')
const headKey = (ns: string, device: string): string => `h/${ns}/${device}`
const entryKey = (ns: string, device: string, seq: number): string => `e/${ns}/${device}/${seqKey(seq)}`
const appliedKey = (ns: string, device: string): string => `a/${ns}/${device}`

/** classic-level's `sync` write option (abstract-level passes unknown options through). */
function syncOption (sync: boolean | undefined): Record<string, unknown> {
  return { sync: sync === true }
}

function equal (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0
}

export class LogStore extends TypedEventEmitter<LogStoreEvents> {
  /** this device's id */
  readonly self: string
  private readonly db: LogDb
  private readonly key: PrivateKey
  private readonly devices: Membership
  private readonly keyFor: (ns: string) => Promise<Uint8Array>
  private readonly log: Logger
  private readonly randomBytes: ((n: number) => Uint8Array) | undefined
  private readonly serial = new Serial()
  private readonly problemList: ProblemList
  /** ns → device → head */
  private readonly headCache = new Map<string, Map<string, Head>>()
  private readonly appliedCache = new Map<string, number>()
  private opened = false

  constructor (components: LogStoreComponents, init: LogStoreInit = {}) {
    super()
    this.db = components.db
    this.key = components.privateKey
    this.devices = components.devices
    this.keyFor = components.keyFor
    this.self = peerIdFromPrivateKey(components.privateKey).toString()
    this.log = (components.logger ?? defaultLogger()).forComponent('net:log:store')
    this.randomBytes = init.randomBytes
    this.problemList = new ProblemList(init.maxProblems ?? MAX_PROBLEMS)
  }

  /** Load heads and applied cursors. */
  async open (): Promise<void> {
    if (this.opened) return
    for await (const [k, v] of this.db.iterator({ gte: 'h/', lt: 'h0' })) {
      const [, ns, device] = k.split('/')
      const r = new Reader(v, 'head record')
      const seq = r.u64()
      const hash = new Uint8Array(r.bytes(HASH_BYTES))
      if (ns !== undefined && device !== undefined) this.setHead(ns, device, { seq, hash })
    }
    for await (const [k, v] of this.db.iterator({ gte: 'a/', lt: 'a0' })) {
      this.appliedCache.set(k.slice(2), new Reader(v, 'applied cursor').u64())
    }
    this.opened = true
  }

  async close (): Promise<void> {
    await this.serial.idle()
    this.opened = false
  }

  private check (): void {
    if (!this.opened) throw new NotOpenError('log store')
  }

  private setHead (ns: string, device: string, head: Head): void {
    let m = this.headCache.get(ns)
    if (m === undefined) { m = new Map(); this.headCache.set(ns, m) }
    m.set(device, head)
  }

  /** The head (last accepted entry) of a device's log in a namespace. */
  head (ns: string, device: string): Head | undefined {
    const h = this.headCache.get(ns)?.get(device)
    return h === undefined ? undefined : { seq: h.seq, hash: new Uint8Array(h.hash) }
  }

  /** device → head seq, for one namespace. */
  heads (ns: string): Record<string, number> {
    this.check()
    const out: Record<string, number> = {}
    for (const [d, h] of this.headCache.get(ns) ?? []) out[d] = h.seq
    return out
  }

  /** Every (ns, device, seq) head. */
  allHeads (): Array<{ ns: string, device: string, seq: number }> {
    this.check()
    const out: Array<{ ns: string, device: string, seq: number }> = []
    for (const [ns, m] of this.headCache) for (const [device, h] of m) out.push({ ns, device, seq: h.seq })
    return out
  }

  namespaces (): string[] {
    this.check()
    return [...this.headCache.keys()].sort()
  }

  problems (): Problem[] {
    return this.problemList.list()
  }

  problemCount (): number {
    return this.problemList.count()
  }

  /** Append a change of this device to its log of `ns`. Own entries count as applied. */
  async append (ns: string, payload: Uint8Array, options: AbortOptions & { sync?: boolean } = {}): Promise<AppendedEntry> {
    this.check()
    if (!NS_PATTERN.test(ns)) throw new InvalidArgumentError('namespace id must be 1..64 chars of [A-Za-z0-9._-]')
    options.signal?.throwIfAborted()
    return await this.serial.run(ns, async () => await this._append(ns, payload, options))
  }

  private async _append (ns: string, payload: Uint8Array, options: AbortOptions & { sync?: boolean }): Promise<AppendedEntry> {
    options.signal?.throwIfAborted()
    const head = this.headCache.get(ns)?.get(this.self) ?? { seq: 0, hash: ZERO_HASH }
    const seq = head.seq + 1
    const ctx = { ns, device: this.self, seq }
    const sealed = sealPayload(await this.keyFor(ns), ctx, payload, this.randomBytes)
    const entry = await signEntry(this.key, this.devices.teamId, { ns, device: this.self, seq, prev: head.hash, time: Date.now(), payload: sealed })
    const bytes = encodeEntry(entry)
    const hash = entryHash(bytes)
    await this.db.batch([
      { type: 'put', key: entryKey(ns, this.self, seq), value: bytes },
      { type: 'put', key: headKey(ns, this.self), value: new Writer().u64(seq).raw(hash).finish() },
      { type: 'put', key: appliedKey(ns, this.self), value: new Writer().u64(seq).finish() }
    ], syncOption(options.sync))
    this.setHead(ns, this.self, { seq, hash })
    this.appliedCache.set(`${ns}/${this.self}`, seq)
    this.emitGrown(ns, this.self, seq, true)
    return { entry, bytes, hash }
  }

  private emitGrown (ns: string, device: string, seq: number, local: boolean): void {
    try {
      this.dispatchEvent(new CustomEvent('grown', { detail: { ns, device, seq, local } }))
    } catch (err) {
      this.log.error('grown listener threw: %e', err)
    }
  }

  /**
   * Verify and store entries from the network (in order). Never throws for a bad entry (see the
   * result); throws only for operational failures (keyFor, LevelDB), after storing the entries
   * of earlier namespaces.
   */
  async accept (encoded: Uint8Array[], options: { from?: string, expect?: ExpectedRange } = {}): Promise<AcceptResult> {
    this.check()
    const result: AcceptResult = { accepted: [], duplicates: 0, rejected: [], needed: [] }
    const groups = new Map<string, Array<{ bytes: Uint8Array, entry: LogEntry }>>()
    for (const bytes of encoded) {
      let entry: LogEntry
      try {
        entry = decodeEntry(bytes)
      } catch (err) {
        this.reject(result, 'malformed', { ns: '', device: '', seq: 0 }, err instanceof LogError ? err.message : String(err), options.from)
        continue
      }
      const x = options.expect
      if (x !== undefined && (entry.ns !== x.ns || entry.device !== x.device)) {
        this.reject(result, 'unexpected', entry, `not of the log asked for (${x.ns}/${x.device})`, options.from)
        continue
      }
      let g = groups.get(entry.ns)
      if (g === undefined) { g = []; groups.set(entry.ns, g) }
      g.push({ bytes, entry })
    }
    for (const [ns, group] of groups) {
      await this.serial.run(ns, async () => { await this._accept(ns, group, result, options.from, options.expect?.from) })
    }
    return result
  }

  private reject (result: AcceptResult, kind: ProblemKind, e: { ns: string, device: string, seq: number }, detail: string, from?: string): void {
    const error = new EntryRejectedError(kind, `${e.ns}/${e.device}#${e.seq}: ${detail}`)
    result.rejected.push({ error, ns: e.ns, device: e.device, seq: e.seq })
    const p: Problem = { kind, device: e.device, ns: e.ns, seq: e.seq, time: Date.now(), detail }
    if (from !== undefined) p.from = from
    this.problemList.add(p)
    this.log.error('rejected log entry %s/%s#%d from %s (%s): %s', e.ns, e.device, e.seq, from ?? 'local', kind, detail)
  }

  private async _accept (ns: string, group: Array<{ bytes: Uint8Array, entry: LogEntry }>, result: AcceptResult, from?: string, askedFrom?: number): Promise<void> {
    const heads = new Map<string, Head>()
    const written = new Map<string, Uint8Array>()
    const ops: Array<{ type: 'put', key: string, value: Uint8Array }> = []
    const accepted: AcceptedEntry[] = []
    const needed = new Set<string>()
    // Each device's entries in sequence order, so a batch that arrived shuffled still chains.
    group.sort((a, b) => a.entry.seq - b.entry.seq)
    for (const { bytes, entry } of group) {
      const { device, seq } = entry
      if (this.devices.removed(device)) { this.reject(result, 'removed', entry, 'author was removed from the team', from); continue }
      if (!this.devices.isMember(device)) { this.reject(result, 'not-member', entry, 'author is not a member of the team', from); continue }
      if (!await verifyEntry(this.devices.teamId, entry)) { this.reject(result, 'signature', entry, 'signature does not verify', from); continue }
      const head = heads.get(device) ?? this.headCache.get(ns)?.get(device) ?? { seq: 0, hash: ZERO_HASH }
      if (seq <= head.seq) {
        const key = entryKey(ns, device, seq)
        const stored = written.get(key) ?? await this.db.get(key)
        if (stored !== undefined && equal(stored, bytes)) {
          if (askedFrom !== undefined && seq < askedFrom) this.reject(result, 'replay', entry, `an entry already accepted, sent again in answer to a request from seq ${askedFrom}`, from)
          else result.duplicates++
          continue
        }
        if (stored === undefined) this.reject(result, 'rollback', entry, `seq ${seq} is at or below the head ${head.seq} but not stored`, from)
        else if (seq === head.seq) this.reject(result, 'fork', entry, `a different entry with seq ${seq} was already accepted`, from)
        else this.reject(result, 'rollback', entry, `older than the accepted head ${head.seq} and different from the entry accepted for seq ${seq}`, from)
        continue
      }
      if (seq > head.seq + 1) {
        needed.add(device)
        this.log.trace('gap in %s/%s: have %d, got %d', ns, device, head.seq, seq)
        continue
      }
      if (!equal(entry.prev, head.hash)) { this.reject(result, 'chain', entry, 'prev does not name the hash of the accepted head', from); continue }
      let payload: Uint8Array
      try {
        payload = openPayload(await this.keyFor(ns), { ns, device, seq }, entry.payload)
      } catch (err) {
        if (!(err instanceof PayloadDecryptError)) throw err
        this.reject(result, 'payload', entry, 'payload does not decrypt under the namespace log key', from)
        continue
      }
      const hash = entryHash(bytes)
      const value = new Uint8Array(bytes)
      ops.push({ type: 'put', key: entryKey(ns, device, seq), value })
      ops.push({ type: 'put', key: headKey(ns, device), value: new Writer().u64(seq).raw(hash).finish() })
      written.set(entryKey(ns, device, seq), value)
      heads.set(device, { seq, hash })
      accepted.push({ ns, device, seq, time: entry.time, hash, payload })
    }
    for (const device of needed) {
      const have = (heads.get(device) ?? this.headCache.get(ns)?.get(device))?.seq ?? 0
      if (group.some(g => g.entry.device === device && g.entry.seq > have + 1)) result.needed.push({ ns, device, from: have + 1 })
    }
    if (ops.length === 0) return
    await this.db.batch(ops)
    for (const [device, h] of heads) this.setHead(ns, device, h)
    result.accepted.push(...accepted)
    for (const [device, h] of heads) this.emitGrown(ns, device, h.seq, false)
  }

  /** Encoded entries of a device's log from `fromSeq`, at most `limit` (≤ 256) and `maxBytes`. */
  async range (ns: string, device: string, fromSeq: number, limit: number, options: { maxBytes?: number } = {}): Promise<Uint8Array[]> {
    this.check()
    if (!NS_PATTERN.test(ns) || !DEVICE_PATTERN.test(device)) throw new InvalidArgumentError('bad namespace or device id')
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 1) throw new InvalidArgumentError('fromSeq must be >= 1')
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_FETCH_ENTRIES) throw new InvalidArgumentError(`limit must be 1..${MAX_FETCH_ENTRIES}`)
    const out: Uint8Array[] = []
    let bytes = 0
    const maxBytes = options.maxBytes ?? Infinity
    const it = this.db.iterator({ gte: entryKey(ns, device, fromSeq), lt: `e/${ns}/${device}0`, limit })
    try {
      for await (const [, v] of it) {
        if (out.length > 0 && bytes + v.byteLength > maxBytes) break
        out.push(v)
        bytes += v.byteLength
      }
    } finally {
      await it.close()
    }
    return out
  }

  /** The applied cursor of a device's log (0 if nothing applied). */
  applied (ns: string, device: string): number {
    return this.appliedCache.get(`${ns}/${device}`) ?? 0
  }

  /** The apply code has applied a device's entries up to `seq` (monotone; never beyond the head). */
  async markApplied (ns: string, device: string, seq: number, options: { sync?: boolean } = {}): Promise<void> {
    this.check()
    if (!NS_PATTERN.test(ns) || !DEVICE_PATTERN.test(device)) throw new InvalidArgumentError('bad namespace or device id')
    const head = this.headCache.get(ns)?.get(device)?.seq ?? 0
    if (!Number.isSafeInteger(seq) || seq < 0 || seq > head) throw new InvalidArgumentError(`seq ${seq} is beyond the head ${head}`)
    await this.serial.run(ns, async () => {
      if (seq <= this.applied(ns, device)) return
      await this.db.put(appliedKey(ns, device), new Writer().u64(seq).finish(), syncOption(options.sync))
      this.appliedCache.set(`${ns}/${device}`, seq)
    })
  }

  /** Entries accepted but not yet applied (e.g. after a crash), decrypted, in log order per device. */
  async pending (ns: string, options: { limit?: number } = {}): Promise<AcceptedEntry[]> {
    this.check()
    const limit = options.limit ?? Infinity
    const out: AcceptedEntry[] = []
    for (const [device, head] of this.headCache.get(ns) ?? []) {
      let from = this.applied(ns, device) + 1
      while (from <= head.seq && out.length < limit) {
        const batch = await this.range(ns, device, from, MAX_FETCH_ENTRIES)
        if (batch.length === 0) break
        for (const bytes of batch) {
          const e = decodeEntry(bytes)
          const payload = openPayload(await this.keyFor(ns), { ns, device, seq: e.seq }, e.payload)
          out.push({ ns, device, seq: e.seq, time: e.time, hash: entryHash(bytes), payload })
          if (out.length >= limit) break
        }
        from += batch.length
      }
    }
    return out
  }
}
