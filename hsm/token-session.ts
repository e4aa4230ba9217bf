import type { LoadedModule } from './pkcs11-module.js'
import type { Pkcs11Token } from './token.js'

/** The pkcs11js API of a loaded module. */
export type Pkcs11Api = LoadedModule['pkcs11']

/** Runs one operation on a pooled, logged-in session of a token, with the token's error mapping and fault injection. */
export type SessionRunner = <T>(op: string, fn: (session: Buffer, p: Pkcs11Api) => Promise<T>) => Promise<T>

/** Raw session access to a Pkcs11Token (its withSession), as a plain function. */
export function sessionRunner (token: Pkcs11Token): SessionRunner {
  return async (op, fn) => await token.withSession(op, fn)
}

/** A Buffer view of the same memory (no copy of secrets). */
export function asBuffer (b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

/** A plain Uint8Array view of a Buffer. */
export function plain (b: Buffer): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength)
}
