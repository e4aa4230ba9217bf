/**
 * Reusable block-sized ArrayBuffers. A fresh 1 MiB buffer is mapped and faulted in page by page
 * on first touch: measured here, allocating and filling one costs 1.3–2.8 ms, as much as
 * encrypting and hashing it, versus 0.05–0.08 ms to fill a reused one. Write buffers, the
 * buffers crossing to the crypto workers (transferred there and back, never copied) and the
 * block cache's plaintexts therefore come from and return to this pool.
 */

/** Free buffers kept at most (the rest are left to the garbage collector). */
const DEFAULT_MAX_FREE = 16

export class BufferPool {
  /** Byte length of every pooled ArrayBuffer. */
  readonly size: number
  private readonly maxFree: number
  private readonly free: ArrayBuffer[] = []
  private readonly later: ArrayBuffer[] = []
  private scheduled = false

  constructor (init: { size: number, maxFree?: number }) {
    if (!Number.isSafeInteger(init.size) || init.size <= 0) throw new RangeError('buffer pool size must be a positive integer')
    this.size = init.size
    this.maxFree = init.maxFree ?? DEFAULT_MAX_FREE
  }

  /** A whole pooled ArrayBuffer of `size` bytes, contents unspecified. */
  take (): ArrayBuffer {
    return this.free.pop() ?? new ArrayBuffer(this.size)
  }

  /**
   * An unzeroed Buffer of `n` bytes: from the pool when it is more than half a pooled buffer (a
   * view of one), else freshly allocated.
   */
  buffer (n: number): Buffer {
    if (n > this.size / 2 && n <= this.size) return Buffer.from(this.take(), 0, n)
    return Buffer.allocUnsafeSlow(n)
  }

  /** True when `b` views a buffer this pool can take back. */
  pooled (b: Uint8Array): boolean {
    return b.buffer instanceof ArrayBuffer && b.buffer.byteLength === this.size
  }

  /** Take back a buffer nothing references any more. Buffers of another size are ignored. */
  give (b: ArrayBufferLike | Uint8Array): void {
    const ab = ArrayBuffer.isView(b) ? b.buffer : b
    if (!(ab instanceof ArrayBuffer) || ab.byteLength !== this.size) return
    if (this.free.length < this.maxFree && !this.free.includes(ab)) this.free.push(ab)
  }

  /**
   * Take back a buffer once the current macrotask is over: for buffers readers got through a
   * promise, which they copy from synchronously in the continuation (a microtask).
   */
  giveLater (b: Uint8Array): void {
    const ab = b.buffer
    if (!(ab instanceof ArrayBuffer) || ab.byteLength !== this.size) return
    this.later.push(ab)
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      for (const x of this.later.splice(0)) this.give(x)
    })
  }

  /** Zero and drop every free buffer (they may hold plaintext of evicted blocks). */
  clear (): void {
    for (const ab of this.free.splice(0)) new Uint8Array(ab).fill(0)
    for (const ab of this.later.splice(0)) new Uint8Array(ab).fill(0)
  }
}
