import { DEFAULT_NEK_CACHE_MS } from './constants.js'
import { HsmError } from './errors.js'
import type { Nek, NekCacheStats } from './types.js'

export interface NekCacheInit {
  /** How long an unwrapped NEK stays in memory (from when it was unwrapped). 0 = until the next timer tick. */
  nekCacheMs?: number
}

/** What a loader returns: the plaintext key (handed over to the cache) and its check value. */
export interface LoadedNek { key: Uint8Array, kcv: Uint8Array }

interface Entry { nek: Nek, timer: NodeJS.Timeout }

const MAX_LOAD_ATTEMPTS = 3

/**
 * Plaintext NEKs, each held for `nekCacheMs` after it was unwrapped, then zeroed. Concurrent
 * misses for one (namespace, version) share one load (one token call). A `clear()` or `delete()`
 * during a load discards that load's result (zeroed) and loads again, so a disable that empties
 * the cache cannot be undone by a load that was already running.
 *
 * Counters: `hits` are lookups answered from memory; `misses` all others (including lookups
 * that joined a running load); `tokenCalls` counts loads.
 */
export class NekCache {
  private readonly ttl: number
  private readonly entries = new Map<string, Entry>()
  private readonly loading = new Map<string, Promise<Nek>>()
  private epoch = 0
  private hits = 0
  private misses = 0
  private tokenCalls = 0

  constructor (init: NekCacheInit = {}) {
    const ttl = init.nekCacheMs ?? DEFAULT_NEK_CACHE_MS
    if (!Number.isFinite(ttl) || ttl < 0) throw new RangeError('nekCacheMs must be >= 0')
    this.ttl = ttl
  }

  async get (namespace: string, version: number, load: () => Promise<LoadedNek>): Promise<Nek> {
    const id = cacheId(namespace, version)
    const entry = this.entries.get(id)
    if (entry !== undefined) {
      this.hits++
      return entry.nek
    }
    this.misses++
    let pending = this.loading.get(id)
    if (pending === undefined) {
      pending = this.load(id, namespace, version, load)
      this.loading.set(id, pending)
      const done = (): void => { if (this.loading.get(id) === pending) this.loading.delete(id) }
      pending.then(done, done)
    }
    return await pending
  }

  /** Zero and drop one NEK version. */
  delete (namespace: string, version: number): void {
    this.epoch++
    const id = cacheId(namespace, version)
    const entry = this.entries.get(id)
    if (entry !== undefined) this.evict(id, entry)
  }

  /** Zero and drop every NEK at once. */
  clear (): void {
    this.epoch++
    for (const [id, entry] of this.entries) this.evict(id, entry)
  }

  stats (): NekCacheStats {
    return { hits: this.hits, misses: this.misses, tokenCalls: this.tokenCalls, size: this.entries.size }
  }

  private async load (id: string, namespace: string, version: number, load: () => Promise<LoadedNek>): Promise<Nek> {
    for (let attempt = 1; attempt <= MAX_LOAD_ATTEMPTS; attempt++) {
      const epoch = this.epoch
      this.tokenCalls++
      const { key, kcv } = await load()
      if (epoch !== this.epoch) {
        key.fill(0)
        continue
      }
      const nek: Nek = Object.freeze({ namespace, version, key, kcv })
      const timer = setTimeout(() => {
        const current = this.entries.get(id)
        if (current !== undefined && current.nek === nek) this.evict(id, current)
      }, this.ttl)
      timer.unref()
      this.entries.set(id, { nek, timer })
      return nek
    }
    throw new HsmError('the NEK cache was cleared during every load attempt', 'ERR_NEK_CACHE_BUSY')
  }

  private evict (id: string, entry: Entry): void {
    clearTimeout(entry.timer)
    entry.nek.key.fill(0)
    this.entries.delete(id)
  }
}

function cacheId (namespace: string, version: number): string {
  return `${namespace}\u0000${version}`
}
