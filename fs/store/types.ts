import type { ClassicLevel } from 'classic-level'
import type { AbstractSublevel } from 'abstract-level'

/** The LevelDB database of a volume: string keys, byte values. */
export type Db = ClassicLevel<string, Uint8Array>
/** A sublevel of it (string keys, byte values). */
export type Sublevel = AbstractSublevel<Db, string | Buffer | Uint8Array, string, Uint8Array>

/** Content-addressed storage of encrypted blocks: a block's id is SHA-256 of its bytes. */
export interface BlockStore {
  /**
   * Store bytes under id. Verifies SHA-256(bytes) == id unless `verified` says the caller has
   * just computed the id from these very bytes. Idempotent.
   */
  put (id: Uint8Array, bytes: Uint8Array, options?: { verified?: boolean }): Promise<void>
  /**
   * The stored bytes, or undefined if absent. Verifies the hash (BlockCorruptError) unless
   * `verify: false`, for callers that verify it themselves off the main thread.
   */
  get (id: Uint8Array, options?: { verify?: boolean, /** where to read the bytes (a pooled buffer of at least n bytes) */ buffer?: (n: number) => Buffer }): Promise<Buffer | undefined>
  /**
   * Replace the stored copy of id (damaged: it fails verification, or is missing) with `bytes`,
   * which must hash to id (BlockCorruptError otherwise). Durable when it returns.
   */
  repair (id: Uint8Array, bytes: Uint8Array): Promise<void>
  has (id: Uint8Array): Promise<boolean>
  del (id: Uint8Array): Promise<void>
  /** Every stored id. */
  ids (): AsyncIterable<Buffer>
  /** Make every completed put durable. */
  sync (): Promise<void>
  /** Reclaim space of deleted blocks. */
  compact (): Promise<{ reclaimedBytes: number }>
  stats (): Promise<{ blocks: number, bytes: number, diskBytes: number }>
  close (): Promise<void>
}

/**
 * A LevelDB get, synchronous once the database is open: measured here, an async get costs
 * ~35 µs of CPU (a thread-pool round trip and a promise), a synchronous one ~2 µs. Metadata,
 * index and key records are small and stay in LevelDB's and the OS's caches, so the event loop
 * rarely waits on the disk here. Before the open completes (abstract-level defers operations
 * until then) it falls back to the async get.
 */
export async function getFast (sub: Sublevel, key: string): Promise<Uint8Array | undefined> {
  return sub.status === 'open' ? sub.getSync(key) : await sub.get(key)
}

const SYNC_MARK = new Uint8Array(0)
/**
 * Make every earlier LevelDB write durable: LevelDB's log is sequential, so one synced write
 * flushes all before it. (An empty batch is a no-op in abstract-level, hence the marker key.)
 */
export async function syncDb (db: Db): Promise<void> {
  await db.put('~sync', SYNC_MARK, { sync: true })
}
