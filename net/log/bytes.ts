/**
 * Bounded binary reader and writer for the canonical formats in FORMAT.md: big-endian integers,
 * strings with a one-byte length. The reader checks every length against the bytes that remain
 * (and against the field's limit) before it slices, and throws only MalformedError.
 */
import { MalformedError } from './errors.js'

const utf8 = new TextEncoder()
const utf8Fatal = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

export function utf8Bytes (s: string): Uint8Array {
  return utf8.encode(s)
}

export class Writer {
  private readonly parts: Uint8Array[] = []
  private length = 0

  u8 (v: number): this {
    return this.raw(Uint8Array.of(v & 0xff))
  }

  u16 (v: number): this {
    const b = new Uint8Array(2)
    new DataView(b.buffer).setUint16(0, v)
    return this.raw(b)
  }

  u32 (v: number): this {
    const b = new Uint8Array(4)
    new DataView(b.buffer).setUint32(0, v)
    return this.raw(b)
  }

  /** A safe non-negative integer as 8 bytes big-endian. */
  u64 (v: number): this {
    const b = new Uint8Array(8)
    new DataView(b.buffer).setBigUint64(0, BigInt(v))
    return this.raw(b)
  }

  /** A string as u8 byte length + UTF-8 (caller validated the length). */
  str (s: string): this {
    const b = utf8.encode(s)
    return this.u8(b.byteLength).raw(b)
  }

  /** Bytes as u32 length + bytes. */
  blob (b: Uint8Array): this {
    return this.u32(b.byteLength).raw(b)
  }

  raw (b: Uint8Array): this {
    this.parts.push(b)
    this.length += b.byteLength
    return this
  }

  finish (): Uint8Array {
    const out = new Uint8Array(this.length)
    let off = 0
    for (const p of this.parts) { out.set(p, off); off += p.byteLength }
    return out
  }
}

export class Reader {
  private off = 0
  private readonly view: DataView

  constructor (private readonly buf: Uint8Array, private readonly what: string) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }

  get remaining (): number {
    return this.buf.byteLength - this.off
  }

  get offset (): number {
    return this.off
  }

  fail (detail: string): never {
    throw new MalformedError(this.what, `${detail} at offset ${this.off}`)
  }

  private need (n: number): void {
    if (n > this.remaining) this.fail(`needs ${n} bytes, ${this.remaining} left`)
  }

  u8 (): number {
    this.need(1)
    return this.view.getUint8(this.off++)
  }

  u16 (): number {
    this.need(2)
    const v = this.view.getUint16(this.off)
    this.off += 2
    return v
  }

  u32 (): number {
    this.need(4)
    const v = this.view.getUint32(this.off)
    this.off += 4
    return v
  }

  /** 8 bytes big-endian; must be a safe integer. */
  u64 (): number {
    this.need(8)
    const v = this.view.getBigUint64(this.off)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail('integer above 2^53-1')
    this.off += 8
    return Number(v)
  }

  /** A view of the next n bytes (no copy). */
  bytes (n: number): Uint8Array {
    this.need(n)
    const b = this.buf.subarray(this.off, this.off + n)
    this.off += n
    return b
  }

  /** u8 length + UTF-8, at most maxBytes, canonical (strict) UTF-8, optionally matching a pattern. */
  str (maxBytes: number, field: string, pattern?: RegExp): string {
    const len = this.u8()
    if (len > maxBytes) this.fail(`${field} longer than ${maxBytes} bytes`)
    const b = this.bytes(len)
    let s: string
    try {
      s = utf8Fatal.decode(b)
    } catch {
      this.fail(`${field} is not UTF-8`)
    }
    if (pattern !== undefined && !pattern.test(s)) this.fail(`${field} has characters outside its alphabet`)
    return s
  }

  /** u32 length + bytes, at most maxBytes (checked before slicing). */
  blob (maxBytes: number, field: string): Uint8Array {
    const len = this.u32()
    if (len > maxBytes) this.fail(`${field} longer than ${maxBytes} bytes`)
    return this.bytes(len)
  }

  /** Throws unless every byte was consumed. */
  end (): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes`)
  }
}
