/** The hsm KeyRecordStore over a LevelDB sublevel (`keys`), so wrapped NEKs live with the volume. */
import type { KeyRecordStore } from '../../hsm/types.js'
import { getFast, type Sublevel } from './types.js'

export class LevelKeyRecordStore implements KeyRecordStore {
  /**
   * `beforeSync` runs before each (synced) write: a synced LevelDB write makes every earlier
   * write durable, so block bytes named by earlier metadata must be durable first.
   */
  constructor (private readonly sub: Sublevel, private readonly beforeSync: () => Promise<void> = async () => {}) {}

  async get (key: string): Promise<Uint8Array | undefined> {
    return await getFast(this.sub, key)
  }

  async put (key: string, value: Uint8Array): Promise<void> {
    // Key records are rare and precious: every write is durable before it returns.
    await this.beforeSync()
    await this.sub.db.batch([{ type: 'put', key, value, sublevel: this.sub }], { sync: true })
  }

  async del (key: string): Promise<void> {
    await this.beforeSync()
    await this.sub.db.batch([{ type: 'del', key, sublevel: this.sub }], { sync: true })
  }

  async * entries (prefix: string): AsyncIterable<[string, Uint8Array]> {
    yield * this.sub.iterator({ gte: prefix, lt: prefix + '\xff' })
  }
}
