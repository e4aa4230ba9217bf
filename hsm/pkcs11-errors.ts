import pkcs11js from 'pkcs11js'
import { PinLockedError, TokenError, WrongPinError, HsmError } from './errors.js'

const constants = pkcs11js as unknown as Record<string, unknown>

const CKR_NAMES = new Map<number, string>()
for (const [name, value] of Object.entries(constants)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !CKR_NAMES.has(value)) CKR_NAMES.set(value, name)
}

/** The CKR_* name of a pkcs11js error, or undefined if it is not a PKCS#11 return value. */
export function ckrName (err: unknown): string | undefined {
  if (!(err instanceof Error)) return undefined
  if (err instanceof TokenError) return err.ckr
  const match = /\b(CKR_[A-Z0-9_]+)\b/.exec(err.message)
  if (match?.[1] !== undefined) return match[1]
  const code = (err as { code?: unknown }).code
  if (err.name === 'Pkcs11Error' && typeof code === 'number') return CKR_NAMES.get(code) ?? `CKR_0x${code.toString(16)}`
  return undefined
}

/** The numeric value of a CKR_* name (for fault injection). */
export function ckrValue (name: string): number | undefined {
  const v = constants[name]
  return typeof v === 'number' ? v : undefined
}

/** Map an error thrown by a pkcs11js call to one of ours. PIN errors get their own classes. */
export function mapTokenError (operation: string, err: unknown): Error {
  if (err instanceof HsmError) return err
  const ckr = ckrName(err)
  if (ckr === undefined) return new TokenError(operation, err instanceof Error ? err.message : String(err), { cause: err })
  switch (ckr) {
    case 'CKR_PIN_INCORRECT':
    case 'CKR_PIN_LEN_RANGE':
      return new WrongPinError({ cause: err })
    case 'CKR_PIN_LOCKED':
      return new PinLockedError({ cause: err })
    default:
      return new TokenError(operation, ckr, { cause: err })
  }
}

/** Return values after which a session is unusable and must be replaced. */
export const SESSION_LOST = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_DEVICE_REMOVED',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_CRYPTOKI_NOT_INITIALIZED'
])

/** Return values worth another try on a fresh session (the device hiccuped, or the session was lost). */
export const TRANSIENT = new Set([
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_MEMORY',
  'CKR_FUNCTION_FAILED',
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_USER_NOT_LOGGED_IN'
])

/**
 * Return values that may mean the token itself is gone (SoftHSM answers CKR_OBJECT_HANDLE_INVALID
 * for every key once its store directory vanished): the token checks the slot list before
 * reporting them as what they say.
 */
export const TOKEN_SUSPECT = new Set([
  ...SESSION_LOST,
  'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID',
  'CKR_GENERAL_ERROR',
  'CKR_DEVICE_ERROR',
  'CKR_TOKEN_NOT_RECOGNIZED'
])
