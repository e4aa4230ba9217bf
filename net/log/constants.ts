/** Limits and defaults of the change logs, the device list and the log-sync protocol. */

/** Format version byte of entries, device records and protocol messages. */
export const FORMAT_VERSION = 1
/** Domain separation of entry signatures (followed by the team id). */
export const ENTRY_SIG_DOMAIN = 'strata/log/v1'
/** Domain separation of device-record signatures. */
export const RECORD_SIG_DOMAIN = 'strata/devices/v1'
/** Domain separation of the payload AEAD associated data. */
export const PAYLOAD_AAD_DOMAIN = 'strata/log-payload/v1'

export const TEAM_ID_BYTES = 16
export const HASH_BYTES = 32
export const SIG_BYTES = 64
export const NONCE_BYTES = 12
export const TAG_BYTES = 16
export const LOG_KEY_BYTES = 32

/** Namespace ids: 1..64 bytes of [A-Za-z0-9._-]. */
export const MAX_NS_BYTES = 64
export const NS_PATTERN = /^[A-Za-z0-9._-]{1,64}$/
/** Device ids are peer id strings (base58btc): at most 128 chars of the base58 alphabet. */
export const MAX_DEVICE_BYTES = 128
export const DEVICE_PATTERN = /^[1-9A-HJ-NP-Za-km-z]{1,128}$/
/** Device names: at most 64 UTF-8 bytes. */
export const MAX_NAME_BYTES = 64
/** Entry payload ciphertext (nonce + ciphertext + tag): at most 1 MiB. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024
/** Largest plaintext payload that fits. */
export const MAX_PLAINTEXT_BYTES = MAX_PAYLOAD_BYTES - NONCE_BYTES - TAG_BYTES
/** Largest encoded entry: fixed fields + longest strings + payload. */
export const MAX_ENTRY_BYTES = 1 + 1 + MAX_NS_BYTES + 1 + MAX_DEVICE_BYTES + 8 + HASH_BYTES + 8 + 4 + MAX_PAYLOAD_BYTES + SIG_BYTES
/** Largest encoded device record. */
export const MAX_RECORD_BYTES = 1 + TEAM_ID_BYTES + 1 + 1 + MAX_DEVICE_BYTES + 1 + MAX_NAME_BYTES + 1 + MAX_DEVICE_BYTES + 8 + SIG_BYTES

/** Problems kept for status (oldest dropped first). */
export const MAX_PROBLEMS = 256
/** Device records kept at most (valid and buffered); more are refused. */
export const MAX_RECORDS = 4096
/** Records buffered because their signer is not (yet) known. */
export const MAX_BUFFERED_RECORDS = 256

/** Protocol id of log sync. */
export const LOG_PROTOCOL = '/strata/log/1'
/** Largest protocol frame: a full hello (≈2.08 MB at the limits below) or one entry. */
export const MAX_FRAME_BYTES = 2 * 1024 * 1024 + 64 * 1024
/** Largest hello: records and heads. */
export const MAX_HELLO_RECORDS = 1024
export const MAX_HELLO_HEADS = 8192
/** Entries per fetch request, and bytes a fetch answer may carry in total. */
export const MAX_FETCH_ENTRIES = 256
export const DEFAULT_FETCH_ENTRIES = 128
export const MAX_FETCH_BYTES = 4 * 1024 * 1024
/** Read buffer of a stream (must hold the largest frame plus one fetch answer). */
export const STREAM_BUFFER_BYTES = MAX_FETCH_BYTES + 2 * MAX_FRAME_BYTES
/** How long a fetch may take before it is aborted (ms). */
export const FETCH_TIMEOUT_MS = 30_000
/** How long the hello exchange may take (ms). */
export const HELLO_TIMEOUT_MS = 10_000
