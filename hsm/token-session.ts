import { TokenError } from './errors.js'
import type { LoadedModule } from './pkcs11-module.js'
import type { Pkcs11Token } from './token.js'

/** The pkcs11js API of a loaded module. */
export type Pkcs11Api = LoadedModule['pkcs11']

/** Runs one operation on a pooled, logged-in session of a token, with the token's error mapping and fault injection. */
export type SessionRunner = <T>(op: string, fn: (session: Buffer, p: Pkcs11Api) => Promise<T>) => Promise<T>

/**
 * Raw session access to a Pkcs11Token for the operations its `Token` interface does not offer
 * (key pairs, C_WrapKey/C_UnwrapKey, non-extractable keys). It borrows the token's own session
 * pool (`run`: error mapping, lost-session replacement, fault injection), so it needs no PIN
 * and no second login.
 *
 * TODO(lead): `Pkcs11Token.run` is private; a public `withSession(op, fn)` on Pkcs11Token would
 * remove this cast. Until then this is the one place that reaches into it.
 */
export function sessionRunner (token: Pkcs11Token): SessionRunner {
  const run = (token as unknown as { run?: unknown }).run
  if (typeof run !== 'function') throw new TokenError('session access', 'this token offers no session access')
  return run.bind(token) as SessionRunner
}

/** A Buffer view of the same memory (no copy of secrets). */
export function asBuffer (b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

/** A plain Uint8Array view of a Buffer. */
export function plain (b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength)
}
