// net/constants.ts: defaults and hard limits of the transport and the block-exchange protocol.

/** Default listen address: every IPv4 interface, a free TCP port. */
export const DEFAULT_LISTEN = ['/ip4/0.0.0.0/tcp/0']
/** mDNS service tag: only Strata nodes answer each other's queries. */
export const MDNS_SERVICE_TAG = '_strata._udp.local'
/** mDNS query interval (ms). */
export const MDNS_INTERVAL_MS = 10_000

/** Streams one peer may open concurrently on one connection, across all protocols (yamux). */
export const MUXER_MAX_INBOUND_STREAMS = 128
export const MUXER_MAX_OUTBOUND_STREAMS = 128
/** Largest yamux receive window per stream: bounds what a paused stream may still receive. */
export const MUXER_MAX_STREAM_WINDOW = 4 * 1024 * 1024
/** Bytes a paused stream may buffer before it is reset (window + slack). */
export const MUXER_MAX_READ_BUFFER = MUXER_MAX_STREAM_WINDOW + 1024 * 1024
/** Connections at most (the team is small; this bounds an attacker's sockets). */
export const MAX_CONNECTIONS = 128

/** Protocol id of the block exchange. */
export const BLOCKS_PROTOCOL = '/strata/blocks/1'
/** Concurrent block-exchange streams per connection, each direction. */
export const BLOCKS_MAX_INBOUND_STREAMS = 4
export const BLOCKS_MAX_OUTBOUND_STREAMS = 4
/** Length of a block id (SHA-256). */
export const BLOCK_ID_BYTES = 32
/** Ids in one request message at most. */
export const MAX_IDS_PER_REQUEST = 64
/** Largest block accepted or served: 4 MiB + 64 KiB (a sealed 4 MiB block plus headroom). */
export const DEFAULT_MAX_BLOCK_BYTES = 4 * 1024 * 1024 + 64 * 1024
/** Blocks requested from one peer and not yet answered, at most. */
export const DEFAULT_MAX_IN_FLIGHT_PER_PEER = 16
/** Time a peer has to deliver the next reply before its stream is dropped (ms). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000

/** Redial backoff of the peer dialer: 500 ms doubling to 30 s, with jitter. */
export const DIAL_BACKOFF_INITIAL_MS = 500
export const DIAL_BACKOFF_MAX_MS = 30_000
/** One dial attempt gives up after this long (ms). */
export const DIAL_TIMEOUT_MS = 10_000
