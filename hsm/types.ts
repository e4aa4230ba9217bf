/**
 * The contract between hsm/ and its clients (fs/, net/, daemon/). Clients import these with
 * `import type` so that loading fs/ never loads pkcs11js.
 */

/** Persistence for wrapped key records. The daemon backs it with a LevelDB sublevel. */
export interface KeyRecordStore {
  get (key: string): Promise<Uint8Array | undefined>
  put (key: string, value: Uint8Array): Promise<void>
  del (key: string): Promise<void>
  /** Every [key, value] whose key starts with prefix, in key order. */
  entries (prefix: string): AsyncIterable<[string, Uint8Array]>
}

/** A plaintext namespace key, as lent out by the NEK cache. Never store or log `key`. */
export interface Nek {
  readonly namespace: string
  readonly version: number
  /** 32 bytes. Owned by the cache: it is zeroed on eviction, so use it immediately, never keep it. */
  readonly key: Uint8Array
  /** Key check value of `key` (see keyCheckValue), 8 bytes. */
  readonly kcv: Uint8Array
}

export interface NekCacheStats {
  hits: number
  misses: number
  /** Token calls made to unwrap NEKs (at most one per NEK version per cache period). */
  tokenCalls: number
  /** NEKs currently held in plaintext. */
  size: number
}

export interface RotationProgress {
  done: number
  total: number
}

export interface AbortOptions { signal?: AbortSignal }

export type TeamState = 'enabled' | 'disabled' | 'destroyed'

/** What fs/ and net/ need from the key hierarchy. Implemented by hsm/KeyHierarchy. */
export interface KeyService {
  /** Create NEK version 1 of a new namespace (wrapped by the current TEK, custody-checked, stored). Idempotent refusal: throws if it exists. */
  createNamespace (namespace: string): Promise<void>
  /** Namespace ids that have a NEK. */
  namespaces (): Promise<string[]>
  /** Current NEK version of a namespace. */
  currentNekVersion (namespace: string): Promise<number>
  /** Plaintext NEK (version defaults to the current one), from the cache or unwrapped by the token. */
  nek (namespace: string, version?: number, options?: AbortOptions): Promise<Nek>
  /** Make a new NEK version current (wrapped, custody-checked, stored) and return it. Old versions stay readable until retired. */
  addNekVersion (namespace: string): Promise<number>
  /** Destroy a NEK version once nothing references it (its record is deleted, its cache entry zeroed). */
  retireNekVersion (namespace: string, version: number): Promise<void>
  /** The stored record of a NEK version (wrapped under a TEK; no plaintext), for another device of the team. */
  exportNek (namespace: string, version: number): Promise<Uint8Array>
  /**
   * Adopt a NEK version another device of the team made (its rotation): unwrapped in this token
   * (its TEK version must be here), checked against its KCV, wrapped under this device's current
   * TEK, checked and stored; it becomes current if it is the highest. False if this version is
   * here already; KeyCustodyError if it is here with another key, or fails a check.
   */
  importNek (namespace: string, version: number, bytes: Uint8Array): Promise<boolean>
  /** NEK versions that exist for a namespace, ascending. */
  nekVersions (namespace: string): Promise<number[]>
  /** Rotate the TEK: new TEK object, every NEK re-wrapped under it (resumable), old TEK destroyed. */
  rotateTek (options?: AbortOptions & { onProgress?: (p: RotationProgress) => void }): Promise<number>
  teamState (): Promise<TeamState>
  disableTeam (): Promise<void>
  enableTeam (): Promise<void>
  /** Crypto-shred: destroy every TEK version in the token and every wrapped NEK record. */
  destroyTeam (): Promise<void>
  /** Verify every wrapped NEK: unwraps it in the token and checks its KCV. Returns one problem per bad record. */
  verifyKeys (): Promise<Array<{ key: string, problem: string }>>
  cacheStats (): NekCacheStats
  /** Zero and drop every cached NEK. */
  clearCache (): void
  close (): Promise<void>
}

/**
 * Test-only fault hook: called with every key buffer between custody steps ("generated",
 * "wrapped", "unwrapped"); a test may flip a bit in place to prove the check catches it.
 * Never set in production; the daemon has no way to set it.
 */
export type CustodyFaultHook = (step: string, keyRef: string, key: Uint8Array) => void
