/**
 * The encrypted metadata store: every record value is an envelope
 *   [nsLen:u8][namespace id][sealed record (fs/crypto/record-crypto)]
 * naming the namespace whose metadata key (NMK) seals it. The NMK is random per namespace,
 * wrapped by the namespace's NEK (record `n/<ns>`); record, name and dedup keys derive from it.
 * Every access asks the key service for the namespace's current NEK, so a disabled or destroyed
 * team stops all reads at once even when derived keys are cached here.
 */
import { randomBytes } from 'node:crypto'
import type { KeyService } from '../../hsm/types.js'
import { KeyCustodyError } from '../../hsm/errors.js'
import { keyCheckValue, kcvEqual } from '../../hsm/custody.js'
import { RecordCorruptError } from '../errors.js'
import { wrapKey, unwrapKey } from '../crypto/block-crypto.js'
import { deriveNamespaceKeys, sealRecord, openRecord, type NamespaceKeys } from '../crypto/record-crypto.js'
import { K, type NamespaceRecord } from './records.js'
import { getFast, type Db, type Sublevel } from '../store/types.js'
import { FREES } from '../store/disk-guard.js'

export type BatchOp = { type: 'put', key: string, value: Uint8Array } | { type: 'del', key: string }

export const nmkAad = (ns: string, v: number): Buffer => Buffer.from(`strata/nmk/v1|${ns}|${v}`)

export class MetaStore {
  readonly db: Db
  readonly meta: Sublevel
  readonly keys: KeyService
  private readonly derived = new Map<string, NamespaceKeys>()

  /** Runs before every synced write: block bytes must be durable before metadata naming them. */
  private readonly beforeSync: () => Promise<void>
  private readonly writeFailed: (ops: readonly BatchOp[]) => Promise<void>

  constructor (components: { db: Db, keys: KeyService, beforeSync?: () => Promise<void>, writeFailed?: (ops: readonly BatchOp[]) => Promise<void> }) {
    this.db = components.db
    this.keys = components.keys
    this.beforeSync = components.beforeSync ?? (async () => {})
    this.writeFailed = components.writeFailed ?? (async () => {})
    this.meta = this.db.sublevel<string, Uint8Array>('meta', { keyEncoding: 'utf8', valueEncoding: 'view' })
  }

  /** Derived keys of a namespace; fails with the key service's error if access is revoked. */
  async nsKeys (ns: string): Promise<NamespaceKeys> {
    try {
      await this.keys.nek(ns)
    } catch (err) {
      this.forget()
      throw err
    }
    const cached = this.derived.get(ns)
    if (cached !== undefined) return cached
    let rec = await this.namespaceRecord(ns)
    let nek
    try {
      nek = await this.keys.nek(ns, rec.v)
    } catch (err) {
      // A rotation retired that version after we read the record: read it again, once.
      if ((err as Error).name !== 'NamespaceKeyNotFoundError') throw err
      rec = await this.namespaceRecord(ns)
      try {
        nek = await this.keys.nek(ns, rec.v)
      } catch (again) {
        // The namespace exists (its current NEK was found above), so a record naming a version
        // the key service does not hold is damaged: name the record, not the first one it seals.
        if ((again as Error).name === 'NamespaceKeyNotFoundError') throw new RecordCorruptError(K.namespace(ns), `names NEK version ${rec.v}, which the key service does not hold`, { cause: again })
        throw again
      }
    }
    let nmk = unwrapKey(nek.key, Buffer.from(rec.w, 'base64'), nmkAad(ns, rec.v))
    if (nmk === undefined && withdrawn(nek.key)) {
      // The borrowed NEK was zeroed before we used it (retired by a rotation): look it up again.
      rec = await this.namespaceRecord(ns)
      nek = await this.keys.nek(ns, rec.v)
      nmk = unwrapKey(nek.key, Buffer.from(rec.w, 'base64'), nmkAad(ns, rec.v))
    }
    if (nmk === undefined) throw new KeyCustodyError(K.namespace(ns), 'wrapped metadata key fails authentication')
    if (!kcvEqual(keyCheckValue(nmk), Buffer.from(rec.c, 'base64'))) {
      nmk.fill(0)
      throw new KeyCustodyError(K.namespace(ns), 'metadata key check value mismatch')
    }
    const keys = deriveNamespaceKeys(nmk, ns)
    nmk.fill(0)
    this.derived.set(ns, keys)
    return keys
  }

  /** Zero and drop every derived key (team disabled, volume closing). */
  forget (): void {
    for (const k of this.derived.values()) { k.record.fill(0); k.name.fill(0); k.dedup.fill(0); k.log.fill(0) }
    this.derived.clear()
  }

  async namespaceRecord (ns: string): Promise<NamespaceRecord> {
    const key = K.namespace(ns)
    const v = await this.raw(key)
    if (v === undefined) throw new RecordCorruptError(key, 'namespace record is missing')
    try {
      const o = JSON.parse(Buffer.from(v).toString('utf8')) as NamespaceRecord
      if (typeof o.v !== 'number' || typeof o.w !== 'string' || typeof o.c !== 'string') throw new Error('fields')
      return o
    } catch (err) {
      throw new RecordCorruptError(key, 'namespace record is malformed', { cause: err })
    }
  }

  /**
   * Make a namespace: a NEK in the key service, and a random NMK wrapped by it. The wrapped NMK
   * is unwrapped again and checked before it is stored (chain of custody).
   */
  async createNamespace (ns: string): Promise<BatchOp> {
    await this.keys.createNamespace(ns)
    const v = await this.keys.currentNekVersion(ns)
    return await this.wrapNmk(ns, v, randomBytes(32))
  }

  /** A put of `n/<ns>` holding `nmk` wrapped under NEK version v (custody-checked). Zeroes nmk. */
  async wrapNmk (ns: string, v: number, nmk: Buffer): Promise<BatchOp> {
    const nek = await this.keys.nek(ns, v)
    const kcv = keyCheckValue(nmk)
    const wrapped = wrapKey(nek.key, nmk, nmkAad(ns, v))
    const again = unwrapKey(nek.key, wrapped, nmkAad(ns, v))
    nmk.fill(0)
    if (again === undefined || !kcvEqual(keyCheckValue(again), kcv)) throw new KeyCustodyError(K.namespace(ns), 'metadata key changed between wrap and check')
    again.fill(0)
    const rec: NamespaceRecord = { v, w: wrapped.toString('base64'), c: Buffer.from(kcv).toString('base64') }
    return { type: 'put', key: K.namespace(ns), value: Buffer.from(JSON.stringify(rec)) }
  }

  /** The plaintext NMK of a namespace (for re-wrapping during NEK rotation). Caller zeroes it. */
  async unwrapNmk (ns: string): Promise<{ nmk: Buffer, v: number }> {
    const rec = await this.namespaceRecord(ns)
    const nek = await this.keys.nek(ns, rec.v)
    const nmk = unwrapKey(nek.key, Buffer.from(rec.w, 'base64'), nmkAad(ns, rec.v))
    if (nmk === undefined || !kcvEqual(keyCheckValue(nmk), Buffer.from(rec.c, 'base64'))) throw new KeyCustodyError(K.namespace(ns), 'metadata key fails its check')
    return { nmk, v: rec.v }
  }

  async seal (ns: string, key: string, body: Uint8Array): Promise<Buffer> {
    const keys = await this.nsKeys(ns)
    const nsb = Buffer.from(ns)
    return Buffer.concat([Buffer.from([nsb.length]), nsb, sealRecord(keys.record, key, body)])
  }

  /** Namespace named by an envelope. */
  static envelopeNamespace (key: string, value: Uint8Array): string {
    const len = value[0]
    if (len === undefined || len === 0 || value.length < 1 + len) throw new RecordCorruptError(key, 'envelope is malformed')
    const ns = Buffer.from(value.buffer, value.byteOffset + 1, len).toString('latin1')
    if (!/^[0-9a-z-]{1,64}$/.test(ns)) throw new RecordCorruptError(key, 'envelope names no valid namespace')
    return ns
  }

  async open (key: string, value: Uint8Array): Promise<{ ns: string, body: Buffer }> {
    const ns = MetaStore.envelopeNamespace(key, value)
    let keys: NamespaceKeys
    try {
      keys = await this.nsKeys(ns)
    } catch (err) {
      // A damaged envelope can name a namespace that does not exist.
      if ((err as Error).name === 'NamespaceKeyNotFoundError') throw new RecordCorruptError(key, 'envelope names an unknown namespace', { cause: err })
      throw err
    }
    const len = value[0] as number
    const body = openRecord(keys.record, key, value.subarray(1 + len))
    if (body === undefined) throw new RecordCorruptError(key, 'record fails authentication')
    return { ns, body }
  }

  /** The stored value of a key, still sealed (undefined if absent). */
  async raw (key: string): Promise<Uint8Array | undefined> {
    return await getFast(this.meta, key)
  }

  /** Decrypted body of a record, or undefined if absent. */
  async get (key: string): Promise<{ ns: string, body: Buffer } | undefined> {
    const v = await this.raw(key)
    if (v === undefined) return undefined
    return await this.open(key, v)
  }

  /** Every [key, envelope] under a prefix, in key order. */
  async * range (prefix: string): AsyncIterable<[string, Uint8Array]> {
    yield * this.meta.iterator({ gte: prefix, lt: prefix + '\xff' })
  }

  /** `frees`: the batch frees space (deletes, truncates), allowed closer to a full disk (fs/store/disk-guard.ts). */
  async write (ops: BatchOp[], options: { sync?: boolean, frees?: boolean } = {}): Promise<void> {
    if (ops.length === 0) return
    if (options.sync === true) await this.beforeSync()
    try {
      await this.db.batch(ops.map(op => ({ ...op, sublevel: this.meta })), { ...(options.frees === true ? FREES : {}), sync: options.sync === true })
    } catch (err) {
      // Nothing of the batch is stored (disk full, I/O error): let the owner undo what it
      // changed in memory for it, before the error reaches the operation.
      await this.writeFailed(ops).catch(() => {})
      throw err
    }
    this.observer?.(ops)
  }

  /**
   * Told of every committed batch (the sync layer derives what changed from the keys). Runs
   * synchronously after the commit; it must not throw or do I/O itself.
   */
  observer: ((ops: readonly BatchOp[]) => void) | undefined
}

/**
 * A borrowed NEK is the cache's own buffer, zeroed when a rotation retires its version or the
 * team is disabled; an `await` between its lookup and its use lets that happen. All zero means
 * withdrawn (a real 256-bit key never is), not a custody failure: look it up again.
 */
export function withdrawn (key: Uint8Array): boolean {
  for (const x of key) if (x !== 0) return false
  return true
}
