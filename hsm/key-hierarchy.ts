import { randomBytes, randomFillSync, randomInt } from 'node:crypto'
import { GCM_IV_BYTES, KEY_BYTES, TEK_LABEL_PREFIX } from './constants.js'
import { keyCheckValue, kcvEqual } from './custody.js'
import {
  HsmClosedError, KeyCustodyError, KeyInUseError, NamespaceExistsError, NamespaceKeyNotFoundError,
  TeamDestroyedError, TeamDisabledError
} from './errors.js'
import { NekCache } from './nek-cache.js'
import type { LoadedNek } from './nek-cache.js'
import {
  checkNamespace, checkVersion, decodeJson, decodeNekRecord, encodeJson, encodeNekRecord, nekAad, nekKey,
  nekPrefix, NEK_PREFIX, parseNekKey, ROTATION_KEY, TEAM_KEY, tekKey, TEK_PREFIX
} from './nek-record.js'
import type { NekRecord, RotationRecord, TeamRecord, TekRecord } from './nek-record.js'
import { ckrName } from './pkcs11-errors.js'
import type { KeyHandle, SecretKeyInfo, Token } from './token.js'
import { Mutex } from './mutex.js'
import type {
  AbortOptions, CustodyFaultHook, KeyRecordStore, KeyService, Nek, NekCacheStats, RotationProgress, TeamState
} from './types.js'

export interface KeyHierarchyComponents {
  token: Token
  store: KeyRecordStore
}

export interface KeyHierarchyInit {
  /** How long unwrapped NEKs stay in memory (default 60 s). */
  nekCacheMs?: number
  /** Test only: see CustodyFaultHook. */
  custodyFaultHook?: CustodyFaultHook
}

export type RotateOptions = AbortOptions & { onProgress?: (p: RotationProgress) => void }

interface Tek {
  version: number
  handle: KeyHandle
}

/** Return values with which SoftHSM (GENERAL_ERROR) and other tokens report a failed GCM tag check. */
const UNWRAP_FAILED = new Set(['CKR_GENERAL_ERROR', 'CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_DATA_INVALID'])
const HANDLE_GONE = new Set(['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID'])

/**
 * The key hierarchy: TEK objects in the token (versioned, labelled `strata-tek-v<N>`), NEKs
 * wrapped by the TEK inside the token and stored in a KeyRecordStore, plaintext NEKs in a
 * NekCache. Every key operation is custody-checked with a key check value. Record formats:
 * hsm/FORMAT.md.
 *
 * The token is injected and stays the caller's: close() does not close it.
 */
/** A new NEK version is the last one plus 1 to this many (see addNekVersion). */
const NEK_VERSION_SPREAD = 1 << 20

export class KeyHierarchy implements KeyService {
  private readonly token: Token
  private readonly store: KeyRecordStore
  private readonly cache: NekCache
  private readonly hook: CustodyFaultHook | undefined
  /** TEK objects in use, by version; the highest is the current one. */
  private readonly teks = new Map<number, Tek>()
  /** Current NEK version per namespace, filled lazily. */
  private readonly current = new Map<string, number>()
  private destroyed = false
  /** Set when the TEK is missing from the token although no destruction was recorded. */
  private missingFrom: string | undefined
  private disabled = false
  private closed = false
  private starting: Promise<void> | undefined
  private readonly mutex = new Mutex()

  /** Construct and start. */
  static async open (components: KeyHierarchyComponents, init: KeyHierarchyInit = {}): Promise<KeyHierarchy> {
    const kh = new KeyHierarchy(components, init)
    await kh.start()
    return kh
  }

  /** Alias of open(). */
  static async create (components: KeyHierarchyComponents, init: KeyHierarchyInit = {}): Promise<KeyHierarchy> {
    return await KeyHierarchy.open(components, init)
  }

  constructor (components: KeyHierarchyComponents, init: KeyHierarchyInit = {}) {
    this.token = components.token
    this.store = components.store
    this.cache = new NekCache({ nekCacheMs: init.nekCacheMs })
    this.hook = init.custodyFaultHook
  }

  /**
   * Find (custody-check) or create the TEK, finish a crypto-shred or TEK rotation a crash
   * interrupted. Idempotent; every method calls it.
   */
  async start (): Promise<void> {
    this.starting ??= this.exclusive(async () => { await this._start() })
    await this.starting
  }

  async createNamespace (namespace: string): Promise<void> {
    checkNamespace(namespace)
    await this.ready()
    await this.exclusive(async () => {
      this.usable()
      if ((await this.versionsOf(namespace)).length > 0) throw new NamespaceExistsError(namespace)
      await this.createNek(namespace, 1)
      this.current.set(namespace, 1)
    })
  }

  async namespaces (): Promise<string[]> {
    await this.ready()
    const out: string[] = []
    for await (const [key] of this.store.entries(NEK_PREFIX)) {
      const parsed = parseNekKey(key)
      if (parsed !== undefined && out[out.length - 1] !== parsed.namespace) out.push(parsed.namespace)
    }
    return out
  }

  async currentNekVersion (namespace: string): Promise<number> {
    checkNamespace(namespace)
    await this.ready()
    const known = this.current.get(namespace)
    if (known !== undefined) return known
    const versions = await this.versionsOf(namespace)
    const last = versions[versions.length - 1]
    if (last === undefined) throw new NamespaceKeyNotFoundError(`${NEK_PREFIX}${namespace}`)
    this.current.set(namespace, last)
    return last
  }

  async nek (namespace: string, version?: number, options: AbortOptions = {}): Promise<Nek> {
    checkNamespace(namespace)
    if (version !== undefined) checkVersion(version)
    options.signal?.throwIfAborted()
    await this.ready()
    if (this.disabled) await this.refreshDisabled()
    if (this.disabled) throw new TeamDisabledError()
    const v = version ?? await this.currentNekVersion(namespace)
    const nek = await this.cache.get(namespace, v, async () => await this.loadNek(namespace, v))
    options.signal?.throwIfAborted()
    return nek
  }

  async addNekVersion (namespace: string): Promise<number> {
    checkNamespace(namespace)
    await this.ready()
    return await this.exclusive(async () => {
      this.usable()
      const versions = await this.versionsOf(namespace)
      const last = versions[versions.length - 1]
      if (last === undefined) throw new NamespaceKeyNotFoundError(`${NEK_PREFIX}${namespace}`)
      // Not last + 1: two devices of a team that rotate before they hear of each other must not
      // draw one number for two keys (each adopts the other's version; the higher is current).
      const next = checkVersion(last + 1 + randomInt(0, NEK_VERSION_SPREAD))
      await this.createNek(namespace, next)
      this.current.set(namespace, next)
      return next
    })
  }

  async retireNekVersion (namespace: string, version: number): Promise<void> {
    checkNamespace(namespace)
    checkVersion(version)
    await this.ready()
    await this.exclusive(async () => {
      this.usable()
      const versions = await this.versionsOf(namespace)
      if (!versions.includes(version)) throw new NamespaceKeyNotFoundError(nekKey(namespace, version))
      if (version === versions[versions.length - 1]) throw new KeyInUseError(`${nekKey(namespace, version)} (the current version)`)
      await this.store.del(nekKey(namespace, version))
      this.cache.delete(namespace, version)
    })
  }

  async exportNek (namespace: string, version: number): Promise<Uint8Array> {
    checkNamespace(namespace)
    checkVersion(version)
    await this.ready()
    const bytes = await this.store.get(nekKey(namespace, version))
    if (bytes === undefined) throw new NamespaceKeyNotFoundError(nekKey(namespace, version))
    return bytes
  }

  async importNek (namespace: string, version: number, bytes: Uint8Array): Promise<boolean> {
    checkNamespace(namespace)
    checkVersion(version)
    await this.ready()
    const keyRef = nekKey(namespace, version)
    const record = decodeNekRecord(keyRef, bytes)
    return await this.exclusive(async () => {
      this.usable()
      const have = await this.store.get(keyRef)
      if (have !== undefined) {
        if (kcvEqual(decodeNekRecord(keyRef, have).kcv, record.kcv)) return false
        throw new KeyCustodyError(keyRef, 'another device holds a different key under this version (two rotations drew one number)')
      }
      const key = await this.unwrap(keyRef, namespace, version, record)
      try {
        this.hook?.('unwrapped', keyRef, key)
        if (!kcvEqual(keyCheckValue(key), record.kcv)) throw new KeyCustodyError(keyRef, 'a key from another device does not match its check value')
        // Wrapped again under this device's current TEK, and checked again, before it is stored.
        await this.store.put(keyRef, await this.wrapNek(namespace, version, key, record.kcv, keyRef, this.currentTek()))
      } finally {
        key.fill(0)
      }
      const current = this.current.get(namespace)
      if (current !== undefined && version > current) this.current.set(namespace, version)
      return true
    })
  }

  async nekVersions (namespace: string): Promise<number[]> {
    checkNamespace(namespace)
    await this.ready()
    return await this.versionsOf(namespace)
  }

  async rotateTek (options: RotateOptions = {}): Promise<number> {
    options.signal?.throwIfAborted()
    await this.ready()
    return await this.exclusive(async () => {
      this.usable()
      await this.refreshDisabled()
      if (this.disabled) throw new TeamDisabledError()
      const pending = await this.store.get(ROTATION_KEY)
      const target = pending !== undefined
        ? decodeJson<RotationRecord>(ROTATION_KEY, pending).target
        : this.currentTek().version + 1
      if (pending === undefined) await this.store.put(ROTATION_KEY, encodeJson({ v: 1, target }))
      await this.finishRotation(target, options)
      return target
    })
  }

  async teamState (): Promise<TeamState> {
    if (this.closed) throw new HsmClosedError('key service')
    await this.start()
    if (this.destroyed) return 'destroyed'
    await this.refreshDisabled()
    return this.disabled ? 'disabled' : 'enabled'
  }

  async disableTeam (): Promise<void> {
    await this.ready()
    await this.exclusive(async () => {
      this.usable()
      this.disabled = true
      this.cache.clear()
      for (const tek of await this.tekObjects()) await this.token.setKeyUsage(tek.handle, { encrypt: false, decrypt: false })
    })
  }

  async enableTeam (): Promise<void> {
    await this.ready()
    await this.exclusive(async () => {
      this.usable()
      for (const tek of await this.tekObjects()) await this.token.setKeyUsage(tek.handle, { encrypt: true, decrypt: true })
      this.disabled = false
    })
  }

  async destroyTeam (): Promise<void> {
    await this.ready()
    await this.exclusive(async () => {
      if (this.closed) throw new HsmClosedError('key service')
      // Mark first: a crash part-way is finished by the next start().
      await this.store.put(TEAM_KEY, encodeJson({ v: 1, destroyed: true }))
      this.destroyed = true
      this.cache.clear()
      await this.shred()
    })
  }

  async verifyKeys (): Promise<Array<{ key: string, problem: string }>> {
    await this.ready()
    this.usable()
    const problems: Array<{ key: string, problem: string }> = []
    for (const tek of await this.token.findSecretKeys(TEK_LABEL_PREFIX)) {
      const version = tekVersionOf(tek.label)
      if (version === undefined) continue
      try {
        await this.checkTek(version, tek)
      } catch (err) {
        if (!(err instanceof KeyCustodyError)) throw err
        problems.push({ key: tekKey(version), problem: err.message })
      }
    }
    const keys: string[] = []
    for await (const [key] of this.store.entries(NEK_PREFIX)) keys.push(key)
    for (const key of keys) {
      const parsed = parseNekKey(key)
      if (parsed === undefined) {
        problems.push({ key, problem: 'not a NEK record key' })
        continue
      }
      try {
        const { key: plain } = await this.loadNek(parsed.namespace, parsed.version)
        plain.fill(0)
      } catch (err) {
        if (!(err instanceof KeyCustodyError) && !(err instanceof NamespaceKeyNotFoundError)) throw err
        problems.push({ key, problem: err.message })
      }
    }
    return problems
  }

  cacheStats (): NekCacheStats {
    return this.cache.stats()
  }

  clearCache (): void {
    this.cache.clear()
  }

  /** Zero the cache and refuse further calls. Does not close the token (its owner does). */
  async close (): Promise<void> {
    this.closed = true
    this.cache.clear()
    await this.mutex.idle()
  }

  // --- internals -------------------------------------------------------------------------

  private async _start (): Promise<void> {
    const teamBytes = await this.store.get(TEAM_KEY)
    const team = teamBytes === undefined ? undefined : decodeJson<TeamRecord>(TEAM_KEY, teamBytes)
    if (team?.destroyed === true) {
      this.destroyed = true
      await this.shred()
      return
    }
    const objects = await this.tekObjects()
    if (objects.length === 0) {
      if (team !== undefined) {
        // The team existed but its TEK is gone from the token: crypto-shredded, or the token's
        // store is damaged (say which token). Never make a new one; change nothing.
        this.destroyed = true
        this.missingFrom = this.token.label
        return
      }
      await this.createTek(1)
    } else {
      for (const obj of objects) {
        const version = tekVersionOf(obj.label)
        if (version === undefined || this.teks.has(version)) continue
        await this.checkTek(version, obj, true)
        this.teks.set(version, { version, handle: obj.handle })
      }
    }
    if (team === undefined) await this.store.put(TEAM_KEY, encodeJson({ v: 1, destroyed: false }))
    await this.refreshDisabled()
    const pending = await this.store.get(ROTATION_KEY)
    if (pending !== undefined && !this.disabled) {
      const { target } = decodeJson<RotationRecord>(ROTATION_KEY, pending)
      try {
        await this.finishRotation(target, {})
      } catch (err) {
        // A corrupt record (reported by verifyKeys) or a disabled team leaves the rotation
        // pending: reads keep working, the next rotateTek() or start() retries it.
        if (!(err instanceof KeyCustodyError) && !(err instanceof TeamDisabledError)) throw err
      }
    }
  }

  /** Custody of a TEK object: its CKA_CHECK_VALUE must match the one recorded at creation. */
  private async checkTek (version: number, obj: SecretKeyInfo, adopt = false): Promise<void> {
    const ref = tekKey(version)
    const bytes = await this.store.get(ref)
    if (bytes === undefined) {
      if (!adopt) throw new KeyCustodyError(ref, 'TEK object has no record')
      // A TEK this store has not seen (received by enrolment, or a crash right after creation).
      await this.store.put(ref, encodeJson({ v: 1, version, checkValue: hex(obj.checkValue) }))
      return
    }
    const record = decodeJson<TekRecord>(ref, bytes)
    if (record.version !== version) throw new KeyCustodyError(ref, `record names TEK version ${record.version}`)
    if (typeof record.checkValue !== 'string' || !/^(?:[0-9a-f]{2})*$/.test(record.checkValue)) {
      throw new KeyCustodyError(ref, 'TEK record holds no well-formed check value')
    }
    const expected = Buffer.from(record.checkValue, 'hex')
    // A token without CKA_CHECK_VALUE reports none, and the record then holds none: both empty.
    if ((expected.byteLength > 0 || obj.checkValue.byteLength > 0) && !kcvEqual(expected, obj.checkValue)) {
      throw new KeyCustodyError(ref, `the TEK object in token "${this.token.label}" does not match its recorded check value (the token's object files may be damaged)`)
    }
  }

  private async createTek (version: number): Promise<Tek> {
    const label = `${TEK_LABEL_PREFIX}${version}`
    const info = await this.token.generateSecretKey({ label, id: new TextEncoder().encode(label) })
    if (this.disabled) await this.token.setKeyUsage(info.handle, { encrypt: false, decrypt: false })
    await this.store.put(tekKey(version), encodeJson({ v: 1, version, checkValue: hex(info.checkValue) }))
    const tek = { version, handle: info.handle }
    this.teks.set(version, tek)
    return tek
  }

  /** TEK objects (every version, duplicates included) present in the token. */
  private async tekObjects (): Promise<SecretKeyInfo[]> {
    return (await this.token.findSecretKeys(TEK_LABEL_PREFIX)).filter(o => tekVersionOf(o.label) !== undefined)
  }

  private currentTek (): Tek {
    let best: Tek | undefined
    for (const tek of this.teks.values()) if (best === undefined || tek.version > best.version) best = tek
    if (best === undefined) throw new TeamDestroyedError({ missingFrom: this.missingFrom })
    return best
  }

  /** Generate NEK `version` of `namespace`: generate, KCV, wrap, unwrap again, compare, store. */
  private async createNek (namespace: string, version: number): Promise<void> {
    const keyRef = nekKey(namespace, version)
    const key = new Uint8Array(KEY_BYTES)
    randomFillSync(key)
    try {
      const kcv = keyCheckValue(key)
      this.hook?.('generated', keyRef, key)
      const record = await this.wrapNek(namespace, version, key, kcv, keyRef, this.currentTek())
      await this.store.put(keyRef, record)
    } finally {
      key.fill(0)
    }
  }

  /** Wrap `key` (whose KCV is `kcv`) under `tek`, unwrap it again and compare, return the record bytes. */
  private async wrapNek (namespace: string, version: number, key: Uint8Array, kcv: Uint8Array, keyRef: string, tek: Tek): Promise<Uint8Array> {
    const iv = new Uint8Array(randomBytes(GCM_IV_BYTES))
    const aad = nekAad(namespace, version, tek.version)
    const wrapped = await this.tekCall(async () => await this.token.encrypt(tek.handle, key, { iv, aad }))
    this.hook?.('wrapped', keyRef, wrapped)
    const record: NekRecord = { tekVersion: tek.version, iv, kcv, wrapped }
    const again = await this.unwrap(keyRef, namespace, version, record)
    try {
      this.hook?.('unwrapped', keyRef, again)
      if (!kcvEqual(keyCheckValue(again), kcv)) throw new KeyCustodyError(keyRef, 'the wrapped key does not unwrap to the key that was wrapped')
    } finally {
      again.fill(0)
    }
    return encodeNekRecord(record)
  }

  /** Read, unwrap and check a stored NEK. The plaintext is handed to the caller (the cache). */
  private async loadNek (namespace: string, version: number): Promise<LoadedNek> {
    if (this.closed) throw new HsmClosedError('key service')
    const keyRef = nekKey(namespace, version)
    for (let attempt = 1; ; attempt++) {
      const bytes = await this.store.get(keyRef)
      if (bytes === undefined) {
        if (this.destroyed) throw new TeamDestroyedError({ missingFrom: this.missingFrom })
        throw new NamespaceKeyNotFoundError(keyRef)
      }
      const record = decodeNekRecord(keyRef, bytes)
      let key: Uint8Array
      try {
        key = await this.unwrap(keyRef, namespace, version, record)
      } catch (err) {
        // A rotation may have re-wrapped the record and destroyed its old TEK meanwhile: read it again.
        if (attempt < 2 && (err as { retryable?: boolean }).retryable === true) continue
        throw err
      }
      this.hook?.('unwrapped', keyRef, key)
      if (!kcvEqual(keyCheckValue(key), record.kcv)) {
        key.fill(0)
        throw new KeyCustodyError(keyRef, 'check value of the unwrapped key does not match the record')
      }
      return { key, kcv: record.kcv }
    }
  }

  /** Unwrap a NEK record in the token. Tag failures are custody errors naming the record. */
  private async unwrap (keyRef: string, namespace: string, version: number, record: NekRecord): Promise<Uint8Array> {
    if (this.destroyed) throw new TeamDestroyedError({ missingFrom: this.missingFrom })
    const tek = this.teks.get(record.tekVersion)
    if (tek === undefined) {
      throw Object.assign(new KeyCustodyError(keyRef, `its wrapping TEK v${record.tekVersion} is not in the token`), { retryable: true })
    }
    const aad = nekAad(namespace, version, record.tekVersion)
    let key: Uint8Array
    try {
      key = await this.tekCall(async () => await this.token.decrypt(tek.handle, record.wrapped, { iv: record.iv, aad }))
    } catch (err) {
      const ckr = ckrName(err)
      if (ckr !== undefined && UNWRAP_FAILED.has(ckr)) {
        throw new KeyCustodyError(keyRef, 'the token could not authenticate the wrapped key (tampered IV, AAD or ciphertext, or wrong TEK)', { cause: err })
      }
      if (ckr !== undefined && HANDLE_GONE.has(ckr)) throw Object.assign(new KeyCustodyError(keyRef, `TEK v${record.tekVersion} is gone`, { cause: err }), { retryable: true })
      throw err
    }
    if (key.byteLength !== KEY_BYTES) {
      key.fill(0)
      throw new KeyCustodyError(keyRef, `unwrapped key is ${key.byteLength} bytes`)
    }
    return key
  }

  /** A token call using a TEK: CKR_KEY_FUNCTION_NOT_PERMITTED means the team is disabled. */
  private async tekCall<T> (fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (ckrName(err) === 'CKR_KEY_FUNCTION_NOT_PERMITTED') {
        this.disabled = true
        this.cache.clear()
        throw new TeamDisabledError({ cause: err })
      }
      throw err
    }
  }

  /** Re-wrap every NEK under TEK `target` (creating it if needed), then destroy older TEKs. */
  private async finishRotation (target: number, options: RotateOptions): Promise<void> {
    const tek = this.teks.get(target) ?? await this.createTek(target)
    const todo: string[] = []
    let total = 0
    for await (const [key, bytes] of this.store.entries(NEK_PREFIX)) {
      total++
      if (decodeNekRecord(key, bytes).tekVersion !== target) todo.push(key)
    }
    let done = total - todo.length
    options.onProgress?.({ done, total })
    for (const keyRef of todo) {
      options.signal?.throwIfAborted()
      await this.rewrap(keyRef, tek)
      done++
      options.onProgress?.({ done, total })
    }
    for (const obj of await this.tekObjects()) {
      const version = tekVersionOf(obj.label)
      if (version === undefined || version >= target) continue
      await this.token.destroyObject(obj.handle)
      this.teks.delete(version)
    }
    for await (const [key] of this.store.entries(TEK_PREFIX)) {
      const version = Number(key.slice(TEK_PREFIX.length))
      if (version < target) await this.store.del(key)
    }
    await this.store.del(ROTATION_KEY)
  }

  private async rewrap (keyRef: string, tek: Tek): Promise<void> {
    const parsed = parseNekKey(keyRef)
    if (parsed === undefined) throw new KeyCustodyError(keyRef, 'not a NEK record key')
    const bytes = await this.store.get(keyRef)
    if (bytes === undefined) return
    const record = decodeNekRecord(keyRef, bytes)
    if (record.tekVersion === tek.version) return
    const key = await this.unwrap(keyRef, parsed.namespace, parsed.version, record)
    try {
      this.hook?.('unwrapped', keyRef, key)
      if (!kcvEqual(keyCheckValue(key), record.kcv)) throw new KeyCustodyError(keyRef, 'check value of the unwrapped key does not match the record')
      const rewrapped = await this.wrapNek(parsed.namespace, parsed.version, key, record.kcv, keyRef, tek)
      await this.store.put(keyRef, rewrapped)
    } finally {
      key.fill(0)
    }
  }

  /** Destroy every TEK object and every key record (the team record stays, marked destroyed). */
  private async shred (): Promise<void> {
    for (const obj of await this.tekObjects()) await this.token.destroyObject(obj.handle)
    this.teks.clear()
    this.current.clear()
    for (const prefix of [NEK_PREFIX, TEK_PREFIX]) {
      const keys: string[] = []
      for await (const [key] of this.store.entries(prefix)) keys.push(key)
      for (const key of keys) await this.store.del(key)
    }
    await this.store.del(ROTATION_KEY)
  }

  /** Disabled if any TEK object refuses decryption (the state lives in the token). */
  private async refreshDisabled (): Promise<void> {
    if (this.destroyed) return
    let disabled = false
    for (const tek of this.teks.values()) {
      const usage = await this.token.keyUsage(tek.handle)
      if (!usage.decrypt || !usage.encrypt) disabled = true
    }
    this.disabled = disabled
  }

  private async versionsOf (namespace: string): Promise<number[]> {
    const out: number[] = []
    for await (const [key] of this.store.entries(nekPrefix(namespace))) {
      const parsed = parseNekKey(key)
      if (parsed !== undefined && parsed.namespace === namespace) out.push(parsed.version)
    }
    return out
  }

  private async ready (): Promise<void> {
    if (this.closed) throw new HsmClosedError('key service')
    await this.start()
    this.usable()
  }

  private usable (): void {
    if (this.closed) throw new HsmClosedError('key service')
    if (this.destroyed) throw new TeamDestroyedError({ missingFrom: this.missingFrom })
  }

  /** Writers (create, add, retire, rotate, disable, enable, destroy) run one at a time. */
  private async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.mutex.run(fn)
  }
}

function tekVersionOf (label: string): number | undefined {
  const m = /^strata-tek-v(\d{1,10})$/.exec(label)
  if (m?.[1] === undefined) return undefined
  const v = Number(m[1])
  return v >= 1 ? v : undefined
}

function hex (b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')
}
