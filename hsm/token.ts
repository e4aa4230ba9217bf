import pkcs11js from 'pkcs11js'
import { DEFAULT_MODULE, DEFAULT_SESSIONS, TOKEN_ATTEMPTS, TOKEN_RECOVERY_INTERVAL_MS, TOKEN_RETRY_MS } from './constants.js'
import { HsmClosedError, InvalidKeyArgumentError, PinLockedError, TokenError, TokenNotFoundError, TokenUnavailableError, WrongPinError } from './errors.js'
import { HandleRegistry } from './handle-registry.js'
import { acquireModule, enterCall, leaveCall, pinDigest, reinitializeModule, releaseModule, sameDigest } from './pkcs11-module.js'
import type { LoadedModule } from './pkcs11-module.js'
import { ckrName, ckrValue, mapTokenError, SESSION_LOST, TOKEN_SUSPECT, TRANSIENT } from './pkcs11-errors.js'
import { SessionPool } from './session-pool.js'
import { call, checkLabel, findSlot, gcm, pinString, readKeyInfo } from './token-calls.js'
import { asBuffer, plain } from './token-session.js'

const {
  CKA_CLASS, CKA_DECRYPT, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE,
  CKA_LABEL, CKA_PRIVATE, CKA_SENSITIVE, CKA_TOKEN, CKA_VALUE_LEN, CKF_RW_SESSION,
  CKF_SERIAL_SESSION, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_LOCKED, CKK_AES,
  CKM_AES_KEY_GEN, CKO_SECRET_KEY, CKU_SO, CKU_USER
} = pkcs11js

type Handle = Buffer

/** Opaque handle of an object in the token (valid while the token stays open). */
export type KeyHandle = Uint8Array

export interface SecretKeyInfo {
  readonly handle: KeyHandle
  readonly label: string
  readonly id: Uint8Array
  /** CKA_CHECK_VALUE as the token reports it (3 bytes for AES; empty if unsupported). */
  readonly checkValue: Uint8Array
}

export interface GcmParams {
  /** 12 bytes. */
  iv: Uint8Array
  aad: Uint8Array
}

export interface KeyUsage { encrypt: boolean, decrypt: boolean }

/** What the key hierarchy needs from a PKCS#11 token. All secrets stay inside it. */
export interface Token {
  readonly label: string
  /** A new AES-256 token object: private, sensitive, extractable only wrapped, encrypt/decrypt. */
  generateSecretKey (options: { label: string, id: Uint8Array }): Promise<SecretKeyInfo>
  /** Secret-key objects whose label starts with labelPrefix. */
  findSecretKeys (labelPrefix: string): Promise<SecretKeyInfo[]>
  /** AES-GCM (96-bit IV, 128-bit tag); returns ciphertext || tag. */
  encrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array>
  /** AES-GCM decrypt of ciphertext || tag; the returned buffer is the caller's to zero. */
  decrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array>
  setKeyUsage (key: KeyHandle, usage: KeyUsage): Promise<void>
  keyUsage (key: KeyHandle): Promise<KeyUsage>
  destroyObject (key: KeyHandle): Promise<void>
  random (length: number): Promise<Uint8Array>
  close (): Promise<void>
}

/**
 * Test-only fault injection. `op` is one of: open, login, generate, find, encrypt, decrypt,
 * getAttributes, setAttributes, destroy, random; `n` counts calls of that op from 1.
 * `failCall` returns a CKR_* name to fail that call with; `stallMs` delays it (holding its session).
 */
export interface TokenFaults {
  failCall?: (op: string, n: number) => string | undefined
  stallMs?: (op: string, n: number) => number
}

/** Where the token reports retries and recoveries (the daemon's logger fits). */
export interface TokenLog {
  (fmt: string, ...args: unknown[]): void
  error: (fmt: string, ...args: unknown[]) => void
}

/** The module does not know a handle (any more): after a logout SoftHSM renumbers private objects. */
const HANDLE_INVALID = new Set(['CKR_OBJECT_HANDLE_INVALID', 'CKR_KEY_HANDLE_INVALID'])

/** Operations that may run again after a transient failure (no object is created or destroyed). */
const IDEMPOTENT = new Set(['encrypt', 'decrypt', 'find', 'getAttributes', 'setAttributes', 'random'])

export interface Pkcs11TokenInit {
  /** Path of the PKCS#11 module; defaults to SoftHSM2. */
  module?: string
  /** Label of an initialised token. */
  label: string
  /** User PIN. Kept (as bytes) to log in again when a session is lost; zeroed on close. */
  pin: Uint8Array | string
  /** Sessions in the pool. */
  sessions?: number
  faults?: TokenFaults
  log?: TokenLog
}

export interface InitTokenOptions {
  module?: string
  label: string
  soPin: Uint8Array | string
  userPin: Uint8Array | string
}

export class Pkcs11Token implements Token {
  readonly label: string
  private readonly module: LoadedModule
  private readonly pin: Uint8Array
  private readonly pool: SessionPool<Handle>
  private readonly faults: TokenFaults | undefined
  private readonly calls = new Map<string, number>()
  private readonly handles = new HandleRegistry()
  private readonly log: TokenLog | undefined
  private slot: Handle
  private closing: Promise<void> | undefined
  /** The module generation our sessions and handles belong to. */
  private generation: number
  /** Set while the token is unreachable: the CKR that revealed it and when to try again. */
  private lost: { reason: string, nextTry: number } | undefined
  private recovering: Promise<void> | undefined
  /**
   * A logged-in session used for nothing else: closing an application's last session logs it
   * out, and SoftHSM then drops the handles of private objects (our TEKs). Pool sessions may be
   * closed (broken, replaced) without that effect while this one stays open.
   */
  private anchor: Handle | undefined

  /** Open the token labelled `init.label` and log in. Throws ModuleNotFoundError, TokenNotFoundError, WrongPinError, PinLockedError. */
  static async open (init: Pkcs11TokenInit): Promise<Pkcs11Token> {
    return new Pkcs11Token(init)
  }

  /** Initialise the first uninitialised slot as a token labelled `label` with an SO and a user PIN. */
  static async initToken (options: InitTokenOptions): Promise<void> {
    const label = checkLabel(options.label)
    const module = acquireModule(options.module ?? DEFAULT_MODULE)
    const p = module.pkcs11
    try {
      if (findSlot(module, label) !== undefined) throw new InvalidKeyArgumentError(`a token labelled "${label}" already exists`)
      const slots = call('C_GetSlotList', () => p.C_GetSlotList(true))
      const free = slots.find(s => (call('C_GetTokenInfo', () => p.C_GetTokenInfo(s)).flags & CKF_TOKEN_INITIALIZED) === 0)
      if (free === undefined) throw new TokenError('C_InitToken', 'no uninitialised slot')
      call('C_InitToken', () => p.C_InitToken(free, pinString(options.soPin), label.padEnd(32, ' ')))
      // Slot ids change after C_InitToken (SoftHSM adds a fresh empty slot): list again.
      const slot = findSlot(module, label)
      if (slot === undefined) throw new TokenNotFoundError(label)
      const session = call('C_OpenSession', () => p.C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION))
      try {
        call('C_Login', () => { p.C_Login(session, CKU_SO, pinString(options.soPin)) })
        call('C_InitPIN', () => { p.C_InitPIN(session, pinString(options.userPin)) })
        call('C_Logout', () => { p.C_Logout(session) })
      } finally {
        try { p.C_CloseSession(session) } catch {}
      }
    } finally {
      releaseModule(module)
    }
  }

  constructor (init: Pkcs11TokenInit) {
    this.label = checkLabel(init.label)
    this.faults = init.faults
    this.log = init.log
    this.pin = typeof init.pin === 'string' ? new Uint8Array(Buffer.from(init.pin, 'utf8')) : new Uint8Array(init.pin)
    if (this.pin.byteLength === 0) throw new WrongPinError()
    this.module = acquireModule(init.module ?? DEFAULT_MODULE)
    this.generation = this.module.generation
    try {
      const slot = findSlot(this.module, this.label)
      if (slot === undefined) throw new TokenNotFoundError(this.label)
      this.slot = slot
      this.pool = new SessionPool<Handle>({
        size: init.sessions ?? DEFAULT_SESSIONS,
        open: () => this.openSession(),
        close: (s) => { this.module.pkcs11.C_CloseSession(s) }
      })
      this.login()
    } catch (err) {
      this.pin.fill(0)
      releaseModule(this.module)
      throw err
    }
  }

  async generateSecretKey (options: { label: string, id: Uint8Array }): Promise<SecretKeyInfo> {
    const label = checkLabel(options.label)
    return await this.run('generate', async (s, p) => {
      const handle = await p.C_GenerateKeyAsync(s, { mechanism: CKM_AES_KEY_GEN }, [
        { type: CKA_CLASS, value: CKO_SECRET_KEY },
        { type: CKA_KEY_TYPE, value: CKK_AES },
        { type: CKA_VALUE_LEN, value: 32 },
        { type: CKA_TOKEN, value: true },
        { type: CKA_PRIVATE, value: true },
        { type: CKA_SENSITIVE, value: true },
        // Extractable only so that enrolment can C_WrapKey it token-to-token; sensitive forbids plaintext export.
        { type: CKA_EXTRACTABLE, value: true },
        { type: CKA_ENCRYPT, value: true },
        { type: CKA_DECRYPT, value: true },
        { type: CKA_LABEL, value: label },
        { type: CKA_ID, value: Buffer.from(options.id) }
      ])
      return this.keyInfo(p, s, handle)
    })
  }

  async findSecretKeys (labelPrefix: string): Promise<SecretKeyInfo[]> {
    return await this.run('find', async (s, p) => {
      p.C_FindObjectsInit(s, [{ type: CKA_CLASS, value: CKO_SECRET_KEY }])
      const handles: Handle[] = []
      try {
        for (;;) {
          const batch = p.C_FindObjects(s, 100)
          if (batch.length === 0) break
          handles.push(...batch)
        }
      } finally {
        p.C_FindObjectsFinal(s)
      }
      const keys = handles.map(h => this.keyInfo(p, s, h)).filter(k => k.label.startsWith(labelPrefix))
      // SoftHSM answers "no objects" while its store directory is gone: never let that read as "no keys".
      if (keys.length === 0 && !this.reachable()) throw new TokenError('find', 'CKR_TOKEN_NOT_PRESENT')
      return keys
    })
  }

  async encrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array> {
    return await this.runOnKey('encrypt', key, async (s, p) => {
      p.C_EncryptInit(s, gcm(params), this.raw(s, p, key))
      return plain(await p.C_EncryptAsync(s, asBuffer(data), Buffer.alloc(data.byteLength + 16)))
    })
  }

  async decrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array> {
    return await this.runOnKey('decrypt', key, async (s, p) => {
      p.C_DecryptInit(s, gcm(params), this.raw(s, p, key))
      const out = Buffer.alloc(data.byteLength)
      try {
        return plain(await p.C_DecryptAsync(s, asBuffer(data), out))
      } catch (err) {
        out.fill(0)
        throw err
      }
    })
  }

  async setKeyUsage (key: KeyHandle, usage: KeyUsage): Promise<void> {
    await this.runOnKey('setAttributes', key, async (s, p) => {
      p.C_SetAttributeValue(s, this.raw(s, p, key), [
        { type: CKA_ENCRYPT, value: usage.encrypt },
        { type: CKA_DECRYPT, value: usage.decrypt }
      ])
    })
  }

  async keyUsage (key: KeyHandle): Promise<KeyUsage> {
    return await this.runOnKey('getAttributes', key, async (s, p) => {
      const [enc, dec] = p.C_GetAttributeValue(s, this.raw(s, p, key), [{ type: CKA_ENCRYPT }, { type: CKA_DECRYPT }])
      return { encrypt: enc?.value[0] === 1, decrypt: dec?.value[0] === 1 }
    })
  }

  async destroyObject (key: KeyHandle): Promise<void> {
    await this.run('destroy', async (s, p) => { p.C_DestroyObject(s, this.raw(s, p, key)) })
  }

  async random (length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(length) || length < 0) throw new InvalidKeyArgumentError('random length')
    return await this.run('random', async (s, p) => plain(p.C_GenerateRandom(s, Buffer.alloc(length))))
  }

  /**
   * Raw session access for what the Token interface does not offer (key pairs, C_WrapKey and
   * C_UnwrapKey, non-extractable keys): one operation on a pooled, logged-in session, with this
   * token's error mapping, retry and fault injection. Object handles made inside are valid in
   * this module generation only: find the object again (findSecretKeys) to keep one.
   */
  async withSession<T> (op: string, fn: (s: Handle, p: LoadedModule['pkcs11']) => Promise<T>): Promise<T> {
    return await this.run(op, fn)
  }

  /** withSession on a key this token lent out: `raw` is its handle in the module as it is now (re-found after a re-initialisation). */
  async withKey<T> (op: string, key: KeyHandle, fn: (s: Handle, p: LoadedModule['pkcs11'], raw: Buffer) => Promise<T>): Promise<T> {
    return await this.runOnKey(op, key, async (s, p) => await fn(s, p, this.raw(s, p, key)))
  }

  /** Wait for running operations, close the sessions (logging out with the last one), release the module. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      await this.pool.close()
      if (this.anchor !== undefined && this.generation === this.module.generation) {
        try { this.module.pkcs11.C_CloseSession(this.anchor) } catch {}
      }
      this.anchor = undefined
      const login = this.module.logins.get(this.label)
      if (login !== undefined && --login.users === 0) this.module.logins.delete(this.label)
      this.pin.fill(0)
      releaseModule(this.module)
    })()
    await this.closing
  }

  /**
   * Run one operation on a pooled session with our error mapping. A transient failure of an
   * idempotent operation (CKR_DEVICE_ERROR, a lost session) is retried on a fresh session, up to
   * TOKEN_ATTEMPTS in all; a token found unreachable fails fast (TokenUnavailableError) until a
   * later call brings it back.
   */
  private async run<T> (op: string, fn: (s: Handle, p: LoadedModule['pkcs11']) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.attempt(op, fn)
      } catch (err) {
        const ckr = ckrName(err) ?? ''
        if (!IDEMPOTENT.has(op) || !TRANSIENT.has(ckr) || err instanceof TokenUnavailableError || attempt >= TOKEN_ATTEMPTS) {
          if (TRANSIENT.has(ckr) && attempt > 1) this.log?.error('token "%s": %s failed with %s %d times, giving up', this.label, op, ckr, attempt)
          throw err
        }
        this.log?.('token "%s": %s failed with %s, retrying on a fresh session (%d of %d)', this.label, op, ckr, attempt + 1, TOKEN_ATTEMPTS)
        await new Promise(resolve => setTimeout(resolve, TOKEN_RETRY_MS * attempt))
      }
    }
  }

  private async attempt<T> (op: string, fn: (s: Handle, p: LoadedModule['pkcs11']) => Promise<T>): Promise<T> {
    if (this.closing !== undefined) throw new HsmClosedError('token')
    await this.ensureReachable()
    const n = (this.calls.get(op) ?? 0) + 1
    this.calls.set(op, n)
    const session = await this.pool.acquire().catch((err: unknown) => { throw this.diagnose('C_OpenSession', err) })
    let broken = false
    try {
      await this.inject(op, n)
      await enterCall(this.module)
      try {
        // Opened before a re-initialisation: the handle is dead (or names someone else's session).
        if (!this.pool.isCurrent(session)) throw new TokenError(op, 'CKR_SESSION_HANDLE_INVALID')
        return await fn(session, this.module.pkcs11)
      } finally {
        leaveCall(this.module)
      }
    } catch (err) {
      const mapped = this.diagnose(op, err)
      const ckr = ckrName(mapped) ?? ''
      broken = SESSION_LOST.has(ckr) || TRANSIENT.has(ckr)
      throw mapped
    } finally {
      this.pool.release(session, broken)
    }
  }

  /** Map an error; one that may mean the token is gone is checked against the slot list. */
  private diagnose (op: string, err: unknown): Error {
    const mapped = mapTokenError(op, err)
    const ckr = ckrName(mapped)
    if (mapped instanceof TokenUnavailableError || ckr === undefined || !TOKEN_SUSPECT.has(ckr) || this.reachable()) return mapped
    this.lost ??= { reason: ckr, nextTry: 0 }
    this.log?.error('token "%s" is unreachable (%s during %s): calls fail until it is back', this.label, ckr, op)
    return new TokenUnavailableError(this.label, ckr, { cause: mapped })
  }

  /** The module still lists our token (and where: a re-inserted token may have a new slot id). */
  private reachable (): boolean {
    try {
      const slot = findSlot(this.module, this.label)
      if (slot === undefined) return false
      this.slot = slot
      return true
    } catch {
      return false
    }
  }

  /** Before each call: adopt a module re-initialisation, or try to bring a lost token back. */
  private async ensureReachable (): Promise<void> {
    if (this.lost === undefined && this.generation === this.module.generation) return
    this.recovering ??= this.recover().finally(() => { this.recovering = undefined })
    await this.recovering
  }

  private async recover (): Promise<void> {
    const lost = this.lost
    if (lost !== undefined) {
      if (Date.now() < lost.nextTry) throw new TokenUnavailableError(this.label, lost.reason)
      lost.nextTry = Date.now() + TOKEN_RECOVERY_INTERVAL_MS
      try {
        await reinitializeModule(this.module, this.generation)
      } catch (err) {
        this.adoptGeneration()
        throw new TokenUnavailableError(this.label, ckrName(err) ?? lost.reason, { cause: err })
      }
    }
    this.adoptGeneration()
    if (!this.reachable()) throw new TokenUnavailableError(this.label, lost?.reason ?? 'CKR_TOKEN_NOT_PRESENT')
    this.anchor ??= this.openSession()
    if (lost !== undefined) {
      this.lost = undefined
      this.log?.('token "%s" is reachable again (module re-initialised); resuming', this.label)
    }
  }

  /** Sessions of an older generation are dead; new ones are opened (and logged in) on demand. */
  private adoptGeneration (): void {
    if (this.generation === this.module.generation) return
    this.pool.reset()
    this.anchor = undefined
    this.generation = this.module.generation
  }

  /**
   * run() for an operation on a key we lent out. If the module no longer knows the key's handle
   * (SoftHSM renumbers private objects after a logout), find the key again by label and id, once.
   */
  private async runOnKey<T> (op: string, key: KeyHandle, fn: (s: Handle, p: LoadedModule['pkcs11']) => Promise<T>): Promise<T> {
    try {
      return await this.run(op, fn)
    } catch (err) {
      if (!HANDLE_INVALID.has(ckrName(err) ?? '') || !this.handles.forget(key)) throw err
      this.log?.('token "%s": %s: key handle no longer valid, looking the key up again', this.label, op)
      return await this.run(op, fn)
    }
  }

  /** The module's handle for a key handle we lent out (re-found by label and id after a re-initialisation). */
  private raw (s: Handle, p: LoadedModule['pkcs11'], key: KeyHandle): Buffer {
    const raw = this.handles.resolve(key, this.generation, (label, id) => {
      p.C_FindObjectsInit(s, [{ type: CKA_CLASS, value: CKO_SECRET_KEY }, { type: CKA_LABEL, value: label }, { type: CKA_ID, value: id }])
      try {
        return p.C_FindObjects(s, 1)[0]
      } finally {
        p.C_FindObjectsFinal(s)
      }
    })
    if (raw === undefined) throw new TokenError('find', 'CKR_OBJECT_HANDLE_INVALID')
    return raw
  }

  private keyInfo (p: LoadedModule['pkcs11'], s: Handle, handle: Handle): SecretKeyInfo {
    const info = readKeyInfo(p, s, handle)
    this.handles.register(handle, this.generation, info.label, info.id)
    return info
  }

  private async inject (op: string, n: number): Promise<void> {
    if (this.faults === undefined) return
    const ms = this.faults.stallMs?.(op, n) ?? 0
    if (ms > 0) await new Promise(resolve => setTimeout(resolve, ms))
    const ckr = this.faults.failCall?.(op, n)
    if (ckr !== undefined) throw Object.assign(new Error(ckr), { name: 'Pkcs11Error', code: ckrValue(ckr) ?? 0 })
  }

  private openSession (): Handle {
    const p = this.module.pkcs11
    const n = (this.calls.get('open') ?? 0) + 1
    this.calls.set('open', n)
    const fault = this.faults?.failCall?.('open', n)
    if (fault !== undefined) throw mapTokenError('C_OpenSession', Object.assign(new Error(fault), { name: 'Pkcs11Error' }))
    let session: Handle
    try {
      session = p.C_OpenSession(this.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    } catch (err) {
      // The token may have been removed and re-inserted under a new slot id.
      const slot = findSlot(this.module, this.label)
      if (slot === undefined) throw new TokenNotFoundError(this.label, { cause: err })
      this.slot = slot
      session = call('C_OpenSession', () => p.C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION))
    }
    try {
      this.userLogin(session)
    } catch (err) {
      try { p.C_CloseSession(session) } catch {}
      throw err
    }
    return session
  }

  /** First login of this instance: refuse a locked PIN up front (a try would burn a retry). */
  private login (): void {
    const p = this.module.pkcs11
    const info = call('C_GetTokenInfo', () => p.C_GetTokenInfo(this.slot))
    if ((info.flags & CKF_USER_PIN_LOCKED) !== 0) throw new PinLockedError()
    const digest = pinDigest(this.pin)
    const shared = this.module.logins.get(this.label)
    if (shared !== undefined) {
      // Login state is per application: the token would accept any PIN now. Check it ourselves.
      if (!sameDigest(shared.pinDigest, digest)) throw new WrongPinError()
    }
    // Open (and log in) one session now, so that a wrong PIN fails here, not on first use.
    const n = (this.calls.get('login') ?? 0) + 1
    this.calls.set('login', n)
    const fault = this.faults?.failCall?.('login', n)
    if (fault !== undefined) throw mapTokenError('C_Login', Object.assign(new Error(fault), { name: 'Pkcs11Error' }))
    const s = call('C_OpenSession', () => p.C_OpenSession(this.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION))
    try {
      this.userLogin(s)
    } catch (err) {
      try { p.C_CloseSession(s) } catch {}
      throw err
    }
    this.anchor = s
    if (shared !== undefined) shared.users++
    else this.module.logins.set(this.label, { users: 1, pinDigest: digest })
  }

  private userLogin (session: Handle): void {
    const pin = Buffer.from(this.pin)
    try {
      this.module.pkcs11.C_Login(session, CKU_USER, pin.toString('utf8'))
    } catch (err) {
      if (ckrName(err) !== 'CKR_USER_ALREADY_LOGGED_IN') throw mapTokenError('C_Login', err)
    } finally {
      pin.fill(0)
    }
  }
}
