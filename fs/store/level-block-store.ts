/**
 * Blocks as LevelDB values (sublevel `blkdata`, key = hex id). Simple and atomic with the rest of
 * the database, but LevelDB writes each value at least twice (log, then table) and compaction
 * rewrites it: see ARCHITECTURE.md for the measurement that made LogBlockStore the default.
 */
import { BlockCorruptError } from '../errors.js'
import { blockIdMatches } from '../crypto/block-crypto.js'
import { syncDb, type BlockStore, type Sublevel } from './types.js'
import { FREES } from './disk-guard.js'

export class LevelBlockStore implements BlockStore {
  private readonly data: Sublevel

  constructor (components: { data: Sublevel }) {
    this.data = components.data
  }

  async put (id: Uint8Array, bytes: Uint8Array, options: { verified?: boolean } = {}): Promise<void> {
    const hex = Buffer.from(id).toString('hex')
    if (options.verified !== true && !blockIdMatches(bytes, id)) throw new BlockCorruptError(hex, 'bytes do not hash to the id')
    await this.data.put(hex, bytes)
  }

  /** Replace a damaged copy with intact bytes (verified: ids are content hashes). */
  async repair (id: Uint8Array, bytes: Uint8Array): Promise<void> {
    const hex = Buffer.from(id).toString('hex')
    if (!blockIdMatches(bytes, id)) throw new BlockCorruptError(hex, 'replacement bytes do not hash to the id')
    await this.data.put(hex, bytes)
  }

  async get (id: Uint8Array, options: { verify?: boolean } = {}): Promise<Buffer | undefined> {
    const hex = Buffer.from(id).toString('hex')
    const v = await this.data.get(hex)
    if (v === undefined) return undefined
    if (options.verify !== false && !blockIdMatches(v, id)) throw new BlockCorruptError(hex, 'stored bytes do not hash to the id')
    return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  }

  async has (id: Uint8Array): Promise<boolean> {
    return (await this.data.get(Buffer.from(id).toString('hex'))) !== undefined
  }

  async del (id: Uint8Array): Promise<void> {
    await this.data.del(Buffer.from(id).toString('hex'), FREES)
  }

  async * ids (): AsyncIterable<Buffer> {
    for await (const k of this.data.keys()) yield Buffer.from(k, 'hex')
  }

  async sync (): Promise<void> {
    // A synced no-op write makes every earlier LevelDB write durable (its log is sequential).
    await syncDb(this.data.db)
  }

  async compact (): Promise<{ reclaimedBytes: number }> {
    await this.data.db.compactRange(this.data.prefix, this.data.prefix + '\xff')
    return { reclaimedBytes: 0 }
  }

  async stats (): Promise<{ blocks: number, bytes: number, diskBytes: number }> {
    let blocks = 0; let bytes = 0
    for await (const v of this.data.values()) { blocks++; bytes += v.length }
    return { blocks, bytes, diskBytes: bytes }
  }

  async close (): Promise<void> {}
}
