// net/wire.ts: length-prefixed messages over a libp2p MessageStream, with hard size limits.
//
// A frame is an unsigned LEB128 varint length followed by that many bytes. The reader checks the
// declared length against its limit before waiting for (or allocating) the body, and applies
// backpressure: it pauses the stream (yamux then stops granting window) once it buffers more
// than one maximal frame, so a peer cannot make us buffer more than that plus one window.
import { Uint8ArrayList } from 'uint8arraylist'
import type { AbortOptions, MessageStream, Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface'
import { InvalidParametersError, MessageTooLargeError, UnexpectedEndError } from './errors.js'

/** Bytes of a varint able to encode any length up to 2^35. */
const MAX_VARINT_BYTES = 5

/** Encode a non-negative integer below 2^35 as an unsigned LEB128 varint. */
export function encodeVarint (value: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0 || value >= 2 ** 35) throw new InvalidParametersError(`cannot encode length ${value}`)
  const out: number[] = []
  let v = value
  while (v >= 0x80) { out.push((v % 0x80) | 0x80); v = Math.floor(v / 0x80) }
  out.push(v)
  return Uint8Array.from(out)
}

/** A frame: the varint length of the parts' total, then the parts (not copied). */
export function encodeFrame (...parts: Uint8Array[]): Uint8ArrayList {
  let len = 0
  for (const p of parts) len += p.byteLength
  return new Uint8ArrayList(encodeVarint(len), ...parts)
}

/** Send bytes, waiting for the stream to drain when its buffer is full. */
export async function sendBytes (stream: MessageStream, data: Uint8Array | Uint8ArrayList, options?: AbortOptions): Promise<void> {
  if (!stream.send(data)) await stream.onDrain(options)
}

/** Send one frame made of these parts. */
export async function writeFrame (stream: MessageStream, parts: Uint8Array[], options?: AbortOptions): Promise<void> {
  await sendBytes(stream, encodeFrame(...parts), options)
}

export interface FrameReaderInit {
  /** Largest frame body accepted; a larger declared length aborts the read. */
  maxMessageBytes: number
}

/**
 * Reads frames from a stream. Attach it as soon as the stream exists (before any await), so no
 * bytes are dispatched before its listener is in place. Call `detach()` when done.
 */
export class FrameReader {
  private readonly stream: Stream
  private readonly maxMessageBytes: number
  private readonly highWater: number
  private readonly buffer = new Uint8ArrayList()
  private ended = false
  private failure: Error | undefined
  private wake: (() => void) | undefined
  private detached = false

  constructor (stream: Stream, init: FrameReaderInit) {
    if (!Number.isSafeInteger(init.maxMessageBytes) || init.maxMessageBytes < 1) throw new InvalidParametersError('maxMessageBytes must be a positive integer')
    this.stream = stream
    this.maxMessageBytes = init.maxMessageBytes
    // One whole frame fits below the high-water mark, so a paused reader always has a frame.
    this.highWater = init.maxMessageBytes + MAX_VARINT_BYTES
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('close', this.onClose)
    stream.addEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    if (stream.readableEnded) this.ended = true
  }

  /** Bytes buffered and not yet returned. */
  get bufferedBytes (): number { return this.buffer.byteLength }

  /**
   * The next frame's body, or null if the stream ended cleanly between frames. Throws
   * MessageTooLargeError (declared length over the limit), UnexpectedEndError (ended mid-frame),
   * the stream's close error, or the signal's reason.
   */
  async read (options?: AbortOptions): Promise<Uint8ArrayList | null> {
    while (true) {
      if (this.failure != null) throw this.failure
      options?.signal?.throwIfAborted()
      const header = this.parseHeader()
      if (header != null && this.buffer.byteLength >= header.at + header.length) {
        const body = this.buffer.sublist(header.at, header.at + header.length)
        this.buffer.consume(header.at + header.length)
        this.maybeResume()
        return body
      }
      if (this.ended) {
        if (this.buffer.byteLength === 0) return null
        throw new UnexpectedEndError(`stream ended inside a frame (${this.buffer.byteLength} bytes buffered)`)
      }
      this.maybeResume()
      await this.waitForData(options)
    }
  }

  /** Remove the listeners; unread bytes are dropped. */
  detach (): void {
    if (this.detached) return
    this.detached = true
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('close', this.onClose)
    this.stream.removeEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    this.buffer.consume(this.buffer.byteLength)
    this.wake?.()
  }

  /** The frame header at the buffer's start, once complete; throws if the length is over the limit. */
  private parseHeader (): { at: number, length: number } | undefined {
    let value = 0
    const n = Math.min(this.buffer.byteLength, MAX_VARINT_BYTES)
    for (let i = 0; i < n; i++) {
      const b = this.buffer.get(i)
      value += (b & 0x7f) * 2 ** (7 * i)
      if (value > this.maxMessageBytes) throw this.fail(new MessageTooLargeError(`frame of ${value}+ bytes exceeds the limit of ${this.maxMessageBytes}`))
      if (b < 0x80) return { at: i + 1, length: value }
    }
    if (this.buffer.byteLength >= MAX_VARINT_BYTES) throw this.fail(new MessageTooLargeError('frame length prefix is too long'))
    return undefined
  }

  private fail (err: Error): Error {
    this.failure ??= err
    return this.failure
  }

  private maybeResume (): void {
    if (this.stream.readStatus === 'paused' && this.buffer.byteLength < this.highWater) {
      try { this.stream.resume() } catch { /* closing: nothing more will come */ }
    }
  }

  private async waitForData (options?: AbortOptions): Promise<void> {
    const signal = options?.signal
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => { cleanup(); reject(signal?.reason) }
      const cleanup = (): void => { this.wake = undefined; signal?.removeEventListener('abort', onAbort) }
      this.wake = () => { cleanup(); resolve() }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  private readonly onMessage = (evt: StreamMessageEvent): void => {
    this.buffer.append(evt.data)
    if (this.buffer.byteLength >= this.highWater && this.stream.readStatus === 'readable') {
      try { this.stream.pause() } catch { /* closing */ }
    }
    this.wake?.()
  }

  private readonly onClose = (evt: StreamCloseEvent): void => {
    this.ended = true
    if (evt.error != null) this.fail(evt.error)
    this.wake?.()
  }

  private readonly onRemoteCloseWrite = (): void => {
    this.ended = true
    this.wake?.()
  }
}
