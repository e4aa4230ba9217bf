/**
 * Block-key records `k/<ns>/<block id>`: the block's BEK wrapped by a NEK version, its check
 * value, its reference count and its dedup tag. One batch may touch a record several times
 * (a truncate dropping blocks that share one id): RefBatch keeps the pending state so the
 * batch writes each record once, with every change applied.
 */
import { K, decodeBlockKey, encodeBlockKey, type BlockKeyRecord } from './records.js'
import type { BatchOp, MetaStore } from './meta-store.js'
import { RecordCorruptError } from '../errors.js'

export const bekAad = (ns: string, v: number, id: string): Buffer => Buffer.from(`strata/bek/v1|${ns}|${v}|${id}`)

export async function getBlockKey (meta: MetaStore, ns: string, id: string): Promise<BlockKeyRecord | undefined> {
  const key = K.blockKey(ns, id)
  const rec = await meta.get(key)
  if (rec === undefined) return undefined
  if (rec.ns !== ns) throw new RecordCorruptError(key, 'block key sealed under another namespace')
  return decodeBlockKey(key, rec.body)
}

export class RefBatch {
  private readonly pending = new Map<string, BlockKeyRecord | null>()
  /** Blocks whose last reference went away: the GC deletes them. */
  readonly freed: string[] = []

  constructor (private readonly meta: MetaStore, private readonly ns: string) {}

  private async load (id: string): Promise<BlockKeyRecord | null> {
    if (this.pending.has(id)) return this.pending.get(id) ?? null
    const rec = (await getBlockKey(this.meta, this.ns, id)) ?? null
    this.pending.set(id, rec)
    return rec
  }

  /** Record a brand-new block (refs 1). */
  add (id: string, rec: BlockKeyRecord): void {
    this.pending.set(id, rec)
  }

  /** Add one reference to an existing block; false if it no longer exists. */
  async ref (id: string): Promise<boolean> {
    const rec = await this.load(id)
    if (rec === null) return false
    rec.refs++
    return true
  }

  async unref (id: string): Promise<void> {
    const rec = await this.load(id)
    if (rec === null) return
    rec.refs--
    if (rec.refs <= 0) {
      this.pending.set(id, null)
      this.freed.push(id)
      this.deadTags.push(rec.tag)
    }
  }

  private readonly deadTags: string[] = []

  async ops (): Promise<BatchOp[]> {
    const ops: BatchOp[] = []
    for (const [id, rec] of this.pending) {
      const key = K.blockKey(this.ns, id)
      if (rec === null) {
        ops.push({ type: 'del', key })
      } else {
        ops.push({ type: 'put', key, value: await this.meta.seal(this.ns, key, encodeBlockKey(rec)) })
      }
    }
    for (const tag of this.deadTags) ops.push({ type: 'del', key: K.dedup(this.ns, tag) })
    for (const id of this.freed) if (this.pending.get(id) === null) ops.push({ type: 'put', key: K.gc(this.ns, id), value: new Uint8Array(0) })
    return ops
  }
}
