/** Length-prefixed (varint) log-sync frames over a libp2p stream, bounded before allocation. */
import { lpStream } from '@libp2p/utils'
import type { AbortOptions, Stream } from '@libp2p/interface'
import { MAX_FRAME_BYTES, STREAM_BUFFER_BYTES } from './constants.js'
import { decodeMessage, encodeMessage } from './messages.js'
import type { Message } from './messages.js'

export interface Frames {
  /** The next message; MalformedError for a bad frame, stream errors (EOF, reset, abort) as thrown. */
  read: (options?: AbortOptions) => Promise<Message>
  write: (m: Message, options?: AbortOptions) => Promise<void>
}

export function frames (stream: Stream): Frames {
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES, maxBufferSize: STREAM_BUFFER_BYTES })
  return {
    read: async (options) => decodeMessage((await lp.read(options)).subarray()),
    write: async (m, options) => { await lp.write(encodeMessage(m), options) }
  }
}
