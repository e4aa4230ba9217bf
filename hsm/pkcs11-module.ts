import { createHash, timingSafeEqual } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import { ModuleNotFoundError } from './errors.js'
import { ckrName, mapTokenError } from './pkcs11-errors.js'

const { PKCS11, CKF_OS_LOCKING_OK } = pkcs11js

type Pkcs11 = InstanceType<typeof PKCS11>

interface SlotLogin {
  /** Pkcs11Token instances using this token. */
  users: number
  /** SHA-256 of the PIN the first instance logged in with (login state is per application). */
  pinDigest: Buffer
}

/**
 * A loaded, initialised PKCS#11 module. C_Initialize is process-wide per module, so every
 * Pkcs11Token of one process shares one LoadedModule per path, refcounted.
 */
export interface LoadedModule {
  readonly path: string
  readonly pkcs11: Pkcs11
  /** Per token label: login state shared by the instances of this process. */
  readonly logins: Map<string, SlotLogin>
}

interface Entry extends LoadedModule { refs: number }

const loaded = new Map<string, Entry>()

/** Load and C_Initialize a module, or take another reference to an already loaded one. */
export function acquireModule (path: string): LoadedModule {
  const existing = loaded.get(path)
  if (existing !== undefined) {
    existing.refs++
    return existing
  }
  const pkcs11 = new PKCS11()
  try {
    pkcs11.load(path)
  } catch (err) {
    throw new ModuleNotFoundError(path, { cause: err })
  }
  try {
    // The *Async calls run on libuv worker threads: the module must do its own locking.
    pkcs11.C_Initialize({ flags: CKF_OS_LOCKING_OK })
  } catch (err) {
    if (ckrName(err) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      try { pkcs11.close() } catch {}
      throw mapTokenError('C_Initialize', err)
    }
  }
  const entry: Entry = { path, pkcs11, logins: new Map(), refs: 1 }
  loaded.set(path, entry)
  return entry
}

/** Drop a reference; the last one finalises and unloads the module. */
export function releaseModule (module: LoadedModule): void {
  const entry = loaded.get(module.path)
  if (entry === undefined || entry !== module) return
  if (--entry.refs > 0) return
  loaded.delete(module.path)
  try { entry.pkcs11.C_Finalize() } catch {}
  try { entry.pkcs11.close() } catch {}
}

export function pinDigest (pin: Uint8Array): Buffer {
  return createHash('sha256').update(pin).digest()
}

export function sameDigest (a: Buffer, b: Buffer): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}
