import type { BufferPool } from './buffer-pool.js'

/**
 * LRU of decrypted block plaintexts by block id, bounded in bytes. In-flight loads are shared.
 *
 * Callers copy out of a cached buffer synchronously, in the continuation of the promise that
 * gave it to them: evicted buffers go back to the pool (when given one) only after the current
 * macrotask (BufferPool.giveLater), and clear() zeroes them at once.
 */
export class BlockCache {
  private readonly map = new Map<string, Promise<Buffer>>()
  private readonly resolved = new Map<string, Buffer>()
  private bytes = 0
  private readonly pool: BufferPool | undefined

  constructor (private readonly maxBytes: number, components: { pool?: BufferPool } = {}) {
    this.pool = components.pool
  }

  get (id: string): Promise<Buffer> | undefined {
    const p = this.map.get(id)
    if (p !== undefined) { this.map.delete(id); this.map.set(id, p) }
    return p
  }

  /** Share a load; the entry is dropped if it fails. */
  load (id: string, fn: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.get(id)
    if (hit !== undefined) return hit
    const p = fn()
    this.map.set(id, p)
    p.then(buf => { if (this.map.get(id) === p) this.account(id, buf) }, () => { if (this.map.get(id) === p) this.map.delete(id) })
    return p
  }

  /** Cache `buf` (which the cache then owns: it may recycle it once evicted). */
  set (id: string, buf: Buffer): void {
    if (this.resolved.get(id) === buf) return
    this.delete(id)
    this.map.set(id, Promise.resolve(buf))
    this.account(id, buf)
  }

  delete (id: string): void {
    if (this.map.delete(id)) {
      const buf = this.resolved.get(id)
      if (buf === undefined) return
      this.bytes -= buf.length
      this.resolved.delete(id)
      this.pool?.giveLater(buf)
    }
  }

  private account (id: string, buf: Buffer): void {
    this.resolved.set(id, buf)
    this.bytes += buf.length
    for (const k of this.map.keys()) {
      if (this.bytes <= this.maxBytes) break
      if (k === id) continue
      this.delete(k)
    }
  }

  clear (): void {
    // Readers copy out of cached buffers synchronously, so zeroing them here is safe.
    for (const b of this.resolved.values()) b.fill(0)
    this.map.clear(); this.resolved.clear(); this.bytes = 0
    this.pool?.clear()
  }
}
