/** Tunables of hsm/ and their defaults. */

/** SoftHSM2 on Debian/Ubuntu. A real HSM's module path is configured by the daemon. */
export const DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so'

/** How long a plaintext NEK stays in the cache after it was unwrapped. */
export const DEFAULT_NEK_CACHE_MS = 60_000

/** PKCS#11 sessions per token: each runs one operation at a time. */
export const DEFAULT_SESSIONS = 2

/** Label of TEK version N is `${TEK_LABEL_PREFIX}${N}`. */
export const TEK_LABEL_PREFIX = 'strata-tek-v'

/** Bytes of a NEK and of a TEK (AES-256). */
export const KEY_BYTES = 32

/** Bytes of a key check value (see custody.ts). */
export const KCV_BYTES = 8

/** AES-GCM nonce and tag sizes used for wrapping NEKs in the token. */
export const GCM_IV_BYTES = 12
export const GCM_TAG_BYTES = 16

/** Attempts of an idempotent token call that failed transiently (CKR_DEVICE_ERROR, a lost session). */
export const TOKEN_ATTEMPTS = 3

/** Pause before retry N of a token call: N times this. */
export const TOKEN_RETRY_MS = 50

/** While the token is unreachable, how often a call may try to bring it back (re-initialising the module). */
export const TOKEN_RECOVERY_INTERVAL_MS = 1000
