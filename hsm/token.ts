import pkcs11js from 'pkcs11js'
import { DEFAULT_MODULE, DEFAULT_SESSIONS } from './constants.js'
import { HsmClosedError, InvalidKeyArgumentError, PinLockedError, TokenError, TokenNotFoundError, WrongPinError } from './errors.js'
import { acquireModule, pinDigest, releaseModule, sameDigest } from './pkcs11-module.js'
import type { LoadedModule } from './pkcs11-module.js'
import { ckrName, ckrValue, mapTokenError, SESSION_LOST } from './pkcs11-errors.js'
import { SessionPool } from './session-pool.js'

const {
  CKA_CHECK_VALUE, CKA_CLASS, CKA_DECRYPT, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE,
  CKA_LABEL, CKA_PRIVATE, CKA_SENSITIVE, CKA_TOKEN, CKA_VALUE_LEN, CKF_RW_SESSION,
  CKF_SERIAL_SESSION, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_LOCKED, CKK_AES, CKM_AES_GCM,
  CKM_AES_KEY_GEN, CKO_SECRET_KEY, CKU_SO, CKU_USER, CK_PARAMS_AES_GCM
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
  private slot: Handle
  private closing: Promise<void> | undefined

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
    this.pin = typeof init.pin === 'string' ? new Uint8Array(Buffer.from(init.pin, 'utf8')) : new Uint8Array(init.pin)
    if (this.pin.byteLength === 0) throw new WrongPinError()
    this.module = acquireModule(init.module ?? DEFAULT_MODULE)
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
      return readKeyInfo(p, s, handle)
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
      return handles.map(h => readKeyInfo(p, s, h)).filter(k => k.label.startsWith(labelPrefix))
    })
  }

  async encrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array> {
    return await this.run('encrypt', async (s, p) => {
      p.C_EncryptInit(s, gcm(params), asBuffer(key))
      return plain(await p.C_EncryptAsync(s, asBuffer(data), Buffer.alloc(data.byteLength + 16)))
    })
  }

  async decrypt (key: KeyHandle, data: Uint8Array, params: GcmParams): Promise<Uint8Array> {
    return await this.run('decrypt', async (s, p) => {
      p.C_DecryptInit(s, gcm(params), asBuffer(key))
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
    await this.run('setAttributes', async (s, p) => {
      p.C_SetAttributeValue(s, asBuffer(key), [
        { type: CKA_ENCRYPT, value: usage.encrypt },
        { type: CKA_DECRYPT, value: usage.decrypt }
      ])
    })
  }

  async keyUsage (key: KeyHandle): Promise<KeyUsage> {
    return await this.run('getAttributes', async (s, p) => {
      const [enc, dec] = p.C_GetAttributeValue(s, asBuffer(key), [{ type: CKA_ENCRYPT }, { type: CKA_DECRYPT }])
      return { encrypt: enc?.value[0] === 1, decrypt: dec?.value[0] === 1 }
    })
  }

  async destroyObject (key: KeyHandle): Promise<void> {
    await this.run('destroy', async (s, p) => { p.C_DestroyObject(s, asBuffer(key)) })
  }

  async random (length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(length) || length < 0) throw new InvalidKeyArgumentError('random length')
    return await this.run('random', async (s, p) => plain(p.C_GenerateRandom(s, Buffer.alloc(length))))
  }

  /** Wait for running operations, close the sessions (logging out with the last one), release the module. */
  async close (): Promise<void> {
    this.closing ??= (async () => {
      await this.pool.close()
      const login = this.module.logins.get(this.label)
      if (login !== undefined && --login.users === 0) this.module.logins.delete(this.label)
      this.pin.fill(0)
      releaseModule(this.module)
    })()
    await this.closing
  }

  /** Run one operation on a pooled session; map errors; replace the session if it was lost. */
  private async run<T> (op: string, fn: (s: Handle, p: LoadedModule['pkcs11']) => Promise<T>): Promise<T> {
    if (this.closing !== undefined) throw new HsmClosedError('token')
    const n = (this.calls.get(op) ?? 0) + 1
    this.calls.set(op, n)
    const session = await this.pool.acquire().catch((err: unknown) => { throw mapTokenError('C_OpenSession', err) })
    let broken = false
    try {
      await this.inject(op, n)
      return await fn(session, this.module.pkcs11)
    } catch (err) {
      const mapped = mapTokenError(op, err)
      broken = SESSION_LOST.has(ckrName(mapped) ?? '')
      throw mapped
    } finally {
      this.pool.release(session, broken)
    }
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
    // Keep it: closing the application's last session would log the user out again.
    this.pool.adopt(s)
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

function findSlot (module: LoadedModule, label: string): Handle | undefined {
  const p = module.pkcs11
  for (const slot of call('C_GetSlotList', () => p.C_GetSlotList(true))) {
    const info = call('C_GetTokenInfo', () => p.C_GetTokenInfo(slot))
    if ((info.flags & CKF_TOKEN_INITIALIZED) !== 0 && stripLabel(info.label) === label) return slot
  }
  return undefined
}

/** Token labels come back padded with spaces and/or NULs. */
function stripLabel (label: string): string {
  return label.replace(/[\0 ]+$/, '')
}

function checkLabel (label: string): string {
  if (typeof label !== 'string' || label.length === 0 || Buffer.byteLength(label) > 32 || stripLabel(label) !== label) {
    throw new InvalidKeyArgumentError('a label is 1-32 bytes without trailing spaces')
  }
  return label
}

function readKeyInfo (p: LoadedModule['pkcs11'], s: Handle, handle: Handle): SecretKeyInfo {
  const [label, id] = p.C_GetAttributeValue(s, handle, [{ type: CKA_LABEL }, { type: CKA_ID }])
  let checkValue = new Uint8Array(0)
  try {
    const [cv] = p.C_GetAttributeValue(s, handle, [{ type: CKA_CHECK_VALUE }])
    if (cv !== undefined) checkValue = new Uint8Array(cv.value)
  } catch {}
  return {
    handle,
    label: label?.value.toString('utf8') ?? '',
    id: new Uint8Array(id?.value ?? []),
    checkValue
  }
}

function gcm (params: GcmParams): { mechanism: number, parameter: { type: number, iv: Buffer, aad: Buffer, ivBits: number, tagBits: number } } {
  if (params.iv.byteLength !== 12) throw new InvalidKeyArgumentError('GCM IV must be 12 bytes')
  return {
    mechanism: CKM_AES_GCM,
    parameter: { type: CK_PARAMS_AES_GCM, iv: asBuffer(params.iv), aad: asBuffer(params.aad), ivBits: 96, tagBits: 128 }
  }
}

/** A plain Uint8Array view of a Buffer (so that `.slice()` copies, as callers expect). No copy of secrets. */
function plain (b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength)
}

/** A Buffer view of the same memory (no copy of secrets). */
function asBuffer (b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

function pinString (pin: Uint8Array | string): string {
  return typeof pin === 'string' ? pin : Buffer.from(pin).toString('utf8')
}

/** A sync pkcs11js call with our error mapping. */
function call<T> (operation: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw mapTokenError(operation, err)
  }
}
