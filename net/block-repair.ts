// net/block-repair.ts: replace a damaged local copy of a block with a peer's copy.
//
// A block's id is the SHA-256 of its stored bytes, so any peer's intact copy of that id is
// byte-identical to what this device stored: the block exchange fetches it (verifying the hash)
// and the store's `repair` overwrites the damaged copy. The exchange skips ids the store already
// holds and stores what it fetches with `put`, so it is given `RepairBlockStore`: the local
// store, except that an id under repair is reported absent and its arriving bytes go to `repair`.
import type { BlockStore } from '../fs/store/index.js'
import type { BlockExchange, FetchResult } from './block-exchange.js'

/** The local store as the block exchange sees it: ids under repair are absent, and `put` repairs them. */
export class RepairBlockStore implements BlockStore {
  /** Hex ids being fetched again. */
  readonly repairing = new Set<string>()

  /** `onStored`: told of every block stored through this (fetched, prefetched or repaired). */
  constructor (private readonly inner: BlockStore, private readonly onStored?: (id: Uint8Array) => void) {}

  async put (id: Uint8Array, bytes: Uint8Array, options?: { verified?: boolean }): Promise<void> {
    // repair() verifies the hash itself whatever the caller says: it replaces existing bytes.
    if (this.repairing.has(hex(id))) await this.inner.repair(id, bytes)
    else await this.inner.put(id, bytes, options)
    this.onStored?.(id)
  }

  async has (id: Uint8Array): Promise<boolean> {
    return !this.repairing.has(hex(id)) && await this.inner.has(id)
  }

  async repair (id: Uint8Array, bytes: Uint8Array): Promise<void> { await this.inner.repair(id, bytes) }
  async get (id: Uint8Array, options?: Parameters<BlockStore['get']>[1]): Promise<Buffer | undefined> { return await this.inner.get(id, options) }
  async del (id: Uint8Array): Promise<void> { await this.inner.del(id) }
  ids (): AsyncIterable<Buffer> { return this.inner.ids() }
  async sync (): Promise<void> { await this.inner.sync() }
  async compact (): Promise<{ reclaimedBytes: number }> { return await this.inner.compact() }
  async stats (): Promise<{ blocks: number, bytes: number, diskBytes: number }> { return await this.inner.stats() }
  async close (): Promise<void> { await this.inner.close() }
}

/** Where repairs are reported (the daemon's log: every repair and every failure is a line). */
export interface RepairLog {
  (fmt: string, ...args: unknown[]): void
  error: (fmt: string, ...args: unknown[]) => void
}

export interface BlockRepairComponents {
  /** The exchange, built over `store` (a RepairBlockStore). */
  blocks: BlockExchange
  store: RepairBlockStore
  /** Team peers connected now (peer id strings). */
  peers: () => string[]
  log: RepairLog
}

export interface BlockRepairInit {
  /** Bound on one repair (a reader waits for it). Default 20 s. */
  timeoutMs?: number
}

const DEFAULT_TIMEOUT_MS = 20_000

export class BlockRepair {
  private readonly c: BlockRepairComponents
  private readonly timeoutMs: number
  /** One fetch per id at a time: concurrent readers of a damaged block share it. */
  private readonly inflight = new Map<string, Promise<boolean>>()
  private readonly counters = { repaired: 0, failed: 0 }

  constructor (components: BlockRepairComponents, init: BlockRepairInit = {}) {
    this.c = components
    this.timeoutMs = init.timeoutMs ?? DEFAULT_TIMEOUT_MS
  }

  stats (): { repaired: number, failed: number } {
    return { ...this.counters }
  }

  /** Fetch block `id` (hex) again from connected peers and replace the local copy; true once stored. */
  async repair (id: string, cause?: Error): Promise<boolean> {
    let p = this.inflight.get(id)
    if (p === undefined) {
      p = this._repair(id, cause).finally(() => { this.inflight.delete(id) })
      this.inflight.set(id, p)
    }
    return await p
  }

  private async _repair (id: string, cause?: Error): Promise<boolean> {
    const peers = this.c.peers()
    const why = cause?.message ?? 'damaged'
    if (peers.length === 0) {
      this.counters.failed++
      this.c.log.error('block %s is damaged (%s) and no peer is connected to repair it from', id, why)
      return false
    }
    this.c.store.repairing.add(id)
    let r: FetchResult | undefined
    try {
      r = await this.c.blocks.fetch([Buffer.from(id, 'hex')], { peers, signal: AbortSignal.timeout(this.timeoutMs) })
    } catch (err) {
      this.c.log.error('repair of block %s failed - %e', id, err)
    } finally {
      this.c.store.repairing.delete(id)
    }
    if (r?.fetched === 1) {
      this.counters.repaired++
      this.c.log('repaired block %s (%s) with an intact copy from a peer (%d asked), verified by its hash', id, why, peers.length)
      return true
    }
    this.counters.failed++
    if (r !== undefined) this.c.log.error('block %s is damaged (%s) and none of %d connected peers had an intact copy', id, why, peers.length)
    return false
  }
}

function hex (id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('hex')
}
