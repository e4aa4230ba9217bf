/**
 * SyncService: joins the volume's replica (fs/volume/replica.ts) to this device's change logs
 * and the block exchange.
 *
 *   local change  → replica → `logChanges` → LogStore.append (LogSync pushes the notification)
 *   remote entries accepted by LogSync → in runs, in log order per device: decode the change
 *   sets → fetch the blocks they name that are missing, in one session, from every connected
 *   team peer → apply each → mark it applied.
 *   blocks sealed into a file still open here → `announce` → peers may prefetch them.
 *
 * The log store is the queue: entries accepted but not applied (a missing block, a crash, a file
 * open here) are read again from it by the next drain, which runs on every accepted batch, on
 * start, and on a timer while anything is left. An entry whose payload does not decode is from
 * a device that broke the format: it is reported and skipped, never half applied.
 */
import type { ComponentLogger, Logger } from '@libp2p/interface'
import { defaultLogger } from '@libp2p/logger'
import type { LogStore, AcceptedEntry, LogSync } from './log/index.js'
import type { BlockExchange } from './block-exchange.js'
import { decodeChangeSet, encodeChangeSet, type ChangeSet } from '../fs/volume/sync-objects.js'

/** What the service needs of the volume's replica. */
export interface ReplicaPort {
  apply: (cs: ChangeSet) => Promise<{ applied: number, pending: number }>
  missingBlocks: (cs: ChangeSet) => Promise<string[]>
}

export interface SyncServiceComponents {
  replica: ReplicaPort
  logs: LogStore
  logSync: LogSync
  blocks: BlockExchange
  logger?: ComponentLogger
}

export interface SyncServiceInit {
  /** Retry delay while entries wait (missing blocks, no peer online). */
  retryMs?: number
  /** Entries of one device applied per block fetch, at most (default 512). */
  batchEntries?: number
  /** Blocks fetched for one run of entries: no more entries join a run once it names this many (default 256). */
  batchBlocks?: number
}

export interface SyncProblem { at: number, ns: string, device: string, seq: number, detail: string }

export interface SyncStatus {
  entriesApplied: number
  entriesWaiting: number
  blocksFetched: number
  bytesFetched: number
  lastAppliedAt?: number
  problems: SyncProblem[]
}

export class SyncService {
  private readonly c: SyncServiceComponents
  private readonly log: Logger
  private readonly retryMs: number
  private readonly batchEntries: number
  private readonly batchBlocks: number
  private draining: Promise<void> | undefined
  private again = false
  private timer: NodeJS.Timeout | undefined
  private started = false
  private readonly counters = { entriesApplied: 0, entriesWaiting: 0, blocksFetched: 0, bytesFetched: 0, lastAppliedAt: undefined as number | undefined }
  private readonly problemList: SyncProblem[] = []

  constructor (components: SyncServiceComponents, init: SyncServiceInit = {}) {
    this.c = components
    this.log = (components.logger ?? defaultLogger()).forComponent('net:sync')
    this.retryMs = init.retryMs ?? 1000
    this.batchEntries = init.batchEntries ?? 512
    this.batchBlocks = init.batchBlocks ?? 256
  }

  /** The replica's `onChanges`: one log entry per change set. */
  readonly logChanges = async (cs: ChangeSet): Promise<void> => {
    const a = await this.c.logs.append(cs.ns, encodeChangeSet(cs))
    // Our own entries never need applying here.
    await this.c.logs.markApplied(cs.ns, this.c.logs.self, a.entry.seq)
  }

  /** The replica's `onBlocksSealed`: tell connected peers, which may fetch the blocks ahead of the entry. */
  readonly announce = (ids: string[]): void => {
    if (!this.started) return
    const peers = this.c.logSync.peers()
    if (peers.length > 0) this.c.blocks.announce(ids.map(id => Buffer.from(id, 'hex')), peers)
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.c.logSync.addEventListener('accepted', this.onAccepted)
    this.kick()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.c.logSync.removeEventListener('accepted', this.onAccepted)
    clearTimeout(this.timer)
    await this.draining
  }

  status (): SyncStatus {
    return { ...this.counters, problems: [...this.problemList] }
  }

  private readonly onAccepted = (): void => { this.kick() }

  /** Drain now, or once more after the drain that is running. */
  kick (): void {
    if (!this.started) return
    if (this.draining !== undefined) { this.again = true; return }
    this.draining = this.drain()
      .catch(err => {
        this.log.error('applying remote changes failed (retried): %e', err)
        clearTimeout(this.timer)
        if (this.started) {
          this.timer = setTimeout(() => { this.kick() }, this.retryMs)
          this.timer.unref()
        }
      })
      .finally(() => {
        this.draining = undefined
        if (this.again) { this.again = false; this.kick() }
      })
  }

  /** Apply every accepted entry not yet applied, namespace by namespace, in order per device. */
  async drain (): Promise<void> {
    let waiting = 0
    for (const ns of this.c.logs.namespaces()) {
      const byDevice = new Map<string, AcceptedEntry[]>()
      for (const e of await this.c.logs.pending(ns)) {
        if (e.device === this.c.logs.self) continue
        const list = byDevice.get(e.device) ?? []
        list.push(e)
        byDevice.set(e.device, list)
      }
      for (const entries of byDevice.values()) {
        for (let at = 0; at < entries.length;) {
          if (!this.started) return
          const run = entries.slice(at, at + this.batchEntries)
          const { done, blocked } = await this.applyRun(run)
          at += done
          if (blocked) { waiting += entries.length - at; break }
        }
      }
    }
    this.counters.entriesWaiting = waiting
    clearTimeout(this.timer)
    if (waiting > 0 && this.started) {
      this.timer = setTimeout(() => { this.kick() }, this.retryMs)
      this.timer.unref()
    }
  }

  /**
   * Apply a run of one device's entries in order; returns how many were applied, and whether the
   * next one must wait (missing blocks, an error) rather than only not fitting in this run's fetch.
   * The blocks of the whole run are fetched in one block-exchange session first: a thousand small
   * files are a few pipelined requests on one stream, not a stream and a round trip per file.
   */
  private async applyRun (entries: AcceptedEntry[]): Promise<{ done: number, blocked: boolean }> {
    const sets: Array<ChangeSet | undefined> = []
    const wanted = new Set<string>()
    for (const e of entries) {
      const cs = this.decode(e)
      sets.push(cs)
      if (cs !== undefined) for (const id of await this.c.replica.missingBlocks(cs)) wanted.add(id)
      if (wanted.size >= this.batchBlocks) break
    }
    if (wanted.size > 0) {
      const peers = this.c.logSync.peers()
      if (peers.length === 0) return { done: 0, blocked: true }
      const r = await this.c.blocks.fetch([...wanted].map(id => Buffer.from(id, 'hex')), { peers, signal: AbortSignal.timeout(Math.max(120_000, wanted.size * 1000)) })
      this.counters.blocksFetched += r.fetched
      this.counters.bytesFetched += r.bytes
      if (r.failed.length > 0) this.log('%d blocks for entries of %s from seq %d: no peer delivered them', r.failed.length, entries[0]?.device, entries[0]?.seq)
    }
    for (let i = 0; i < sets.length; i++) {
      const e = entries[i] as AcceptedEntry
      const cs = sets[i]
      if (cs !== undefined) {
        // Blocks no peer delivered, or gone since the run was decoded (an earlier entry of it
        // dropped their last reference and GC ran): this entry and those after it wait.
        if ((await this.c.replica.missingBlocks(cs)).length > 0) {
          this.log('entry %s/%s/%d waits for blocks', e.ns, e.device, e.seq)
          return { done: i, blocked: true }
        }
        try {
          await this.c.replica.apply(cs)
        } catch (err) {
          // This device's later entries wait behind it (order matters); other devices' go on.
          // Retried on the timer: a key or block that arrives later lets it apply.
          this.problemOnce(e, `entry cannot be applied yet: ${(err as Error).message}`)
          return { done: i, blocked: true }
        }
        this.counters.entriesApplied++
        this.counters.lastAppliedAt = Date.now()
      }
      await this.c.logs.markApplied(e.ns, e.device, e.seq)
    }
    return { done: sets.length, blocked: false }
  }

  /** The entry's change set, or undefined (reported) if it is not one: such an entry is skipped. */
  private decode (e: AcceptedEntry): ChangeSet | undefined {
    try {
      const cs = decodeChangeSet(e.payload)
      if (cs.ns !== e.ns) throw new Error(`change set names namespace ${cs.ns} inside a log of ${e.ns}`)
      return cs
    } catch (err) {
      this.problem(e, `entry payload is not a valid change set: ${(err as Error).message}`)
      return undefined
    }
  }

  /** Report a problem that a retry may hit again: once per entry and message. */
  private problemOnce (e: AcceptedEntry, detail: string): void {
    if (this.problemList.some(p => p.ns === e.ns && p.device === e.device && p.seq === e.seq && p.detail === detail)) return
    this.problem(e, detail)
  }

  private problem (e: AcceptedEntry, detail: string): void {
    this.log.error('entry %s/%s/%d: %s', e.ns, e.device, e.seq, detail)
    this.problemList.push({ at: Date.now(), ns: e.ns, device: e.device, seq: e.seq, detail })
    if (this.problemList.length > 100) this.problemList.shift()
  }
}
