import type { KeyHandle } from './token.js'

interface Ref {
  /** Module generation `raw` belongs to. */
  generation: number
  raw: Buffer
  label: string
  id: Buffer
}

/**
 * Object handles lent to callers (TEKs, the device key), so a caller's handle survives a module
 * re-initialisation: PKCS#11 handles die with C_Finalize and the module numbers objects afresh,
 * so an old handle may then name a *different* key. The registry remembers each lent handle's
 * label and id and, in a newer generation, re-finds the object by them. Handles it never lent
 * (made by raw session callers) pass through unchanged: valid within their own generation only.
 */
export class HandleRegistry {
  private readonly refs = new WeakMap<object, Ref>()

  register (handle: Buffer, generation: number, label: string, id: Uint8Array): void {
    this.refs.set(handle, { generation, raw: handle, label, id: Buffer.from(id) })
  }

  /** Make the next resolve() find `handle`'s object again; false if we never lent it. */
  forget (handle: KeyHandle): boolean {
    const ref = this.refs.get(handle)
    if (ref === undefined) return false
    ref.generation = -1
    return true
  }

  /** The handle to give the module in `generation`; `find` looks an object up by label and id (undefined: gone). */
  resolve (handle: KeyHandle, generation: number, find: (label: string, id: Buffer) => Buffer | undefined): Buffer | undefined {
    const ref = this.refs.get(handle)
    if (ref === undefined) return Buffer.isBuffer(handle) ? handle : Buffer.from(handle.buffer, handle.byteOffset, handle.byteLength)
    if (ref.generation === generation) return ref.raw
    const raw = find(ref.label, ref.id)
    if (raw === undefined) return undefined
    ref.raw = raw
    ref.generation = generation
    return raw
  }
}
