/**
 * Objects of remote change sets that could not apply yet (a parent not known here, a file open
 * here, an inode object waiting for the entry that names it). Their log entry is marked applied
 * once `apply` returns, so they must outlive the process: each one is a sealed `V/q/<hash>`
 * record, written in one batch at the end of every apply (nothing in the common case, where a
 * change set applies whole) before the caller marks the entry. A restart loads them back.
 */
import { createHash } from 'node:crypto'
import type { MetaStore, BatchOp } from './meta-store.js'
import type { SyncObject } from './sync-objects.js'

const PREFIX = 'V/q/'

export interface Waiting {
  ns: string
  o: SyncObject
  /** An inode object held for the entry that will place it (not retried by itself). */
  incoming?: boolean
}

interface Stored { o: SyncObject, incoming?: boolean }

export class PendingObjects {
  private readonly meta: MetaStore
  /** Keys of the records stored now. */
  private stored = new Set<string>()

  constructor (meta: MetaStore) {
    this.meta = meta
  }

  /** What waited when the last process ended, in apply order (inodes, entries, removals). */
  async load (): Promise<Waiting[]> {
    const out: Waiting[] = []
    for await (const [key, value] of this.meta.range(PREFIX)) {
      const rec = await this.meta.open(key, value)
      const s = JSON.parse(rec.body.toString('utf8')) as Stored
      out.push({ ns: rec.ns, o: s.o, incoming: s.incoming })
      this.stored.add(key)
    }
    const rank = (w: Waiting): number => w.o.k === 'i' ? 0 : (w.o.dead === true ? 2 : 1)
    return out.sort((x, y) => rank(x) - rank(y))
  }

  /** Make the stored set exactly `now`: one batch of puts for new objects and deletes for gone ones. */
  async save (now: readonly Waiting[]): Promise<void> {
    const want = new Map<string, Waiting>()
    for (const w of now) want.set(keyOf(w), w)
    const ops: BatchOp[] = []
    for (const key of this.stored) if (!want.has(key)) ops.push({ type: 'del', key })
    for (const [key, w] of want) {
      if (this.stored.has(key)) continue
      const body: Stored = w.incoming === true ? { o: w.o, incoming: true } : { o: w.o }
      ops.push({ type: 'put', key, value: await this.meta.seal(w.ns, key, Buffer.from(JSON.stringify(body))) })
    }
    if (ops.length === 0) return
    await this.meta.write(ops)
    this.stored = new Set(want.keys())
  }
}

function keyOf (w: Waiting): string {
  const h = createHash('sha256').update(`${w.ns}\0${w.incoming === true ? 'n' : 'q'}\0${JSON.stringify(w.o)}`).digest('hex')
  return PREFIX + h.slice(0, 40)
}
