import { createHash, timingSafeEqual } from 'node:crypto'
import pkcs11js from 'pkcs11js'
import { ModuleNotFoundError } from './errors.js'
import { probeModule, probeModuleSync } from './module-probe.js'
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
  /** Bumped by every re-initialisation: sessions and object handles of older generations are dead. */
  readonly generation: number
}

interface Entry extends LoadedModule {
  refs: number
  generation: number
  /** Token calls running now (the *Async ones run on worker threads). */
  inflight: number
  idle: Array<() => void>
  reinit: Promise<void> | undefined
}

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
    probeModuleSync(path)
  } catch (err) {
    try { pkcs11.close() } catch {}
    throw err
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
  const entry: Entry = { path, pkcs11, logins: new Map(), refs: 1, generation: 0, inflight: 0, idle: [], reinit: undefined }
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

/** Mark the start of a token call; waits while the module is being re-initialised. */
export async function enterCall (module: LoadedModule): Promise<void> {
  const entry = module as Entry
  while (entry.reinit !== undefined) await entry.reinit.catch(() => {})
  entry.inflight++
}

export function leaveCall (module: LoadedModule): void {
  const entry = module as Entry
  if (--entry.inflight === 0) for (const wake of entry.idle.splice(0)) wake()
}

/**
 * C_Finalize + C_Initialize once no call is running. SoftHSM 2.6 never forgets a token store
 * whose directory vanished (C_GetSlotList answers CKR_GENERAL_ERROR even after the directory
 * is back; measured): re-initialising is the only way back without a restart. Every session
 * and object handle of this process dies, so the generation goes up even if C_Initialize fails.
 * Does nothing if another caller re-initialised since `seen` (that caller's generation).
 */
export async function reinitializeModule (module: LoadedModule, seen: number): Promise<void> {
  const entry = module as Entry
  if (entry.reinit !== undefined) { await entry.reinit; return }
  if (entry.generation !== seen) return
  entry.reinit = (async () => {
    if (entry.inflight > 0) await new Promise<void>(resolve => { entry.idle.push(resolve) })
    entry.generation++
    try { entry.pkcs11.C_Finalize() } catch {}
    await probeModule(entry.path)
    try {
      entry.pkcs11.C_Initialize({ flags: CKF_OS_LOCKING_OK })
    } catch (err) {
      if (ckrName(err) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') throw mapTokenError('C_Initialize', err)
    }
  })()
  try {
    await entry.reinit
  } finally {
    entry.reinit = undefined
  }
}

export function pinDigest (pin: Uint8Array): Buffer {
  return createHash('sha256').update(pin).digest()
}

export function sameDigest (a: Buffer, b: Buffer): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b)
}
