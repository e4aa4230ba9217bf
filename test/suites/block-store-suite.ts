/**
 * Conformance suite for BlockStore implementations (STYLE.md section 6): every implementation
 * runs the same tests through a factory that can also reopen the same store.
 */
import type { Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import type { BlockStore } from '../../fs/store/index.js'

export interface BlockStoreHarness {
  store: BlockStore
  /** Close and open the same store again. */
  reopen: () => Promise<BlockStore>
  /** Flip one bit of a stored block's bytes on disk / in the database. */
  corrupt: (id: Buffer) => Promise<void>
}

const block = (n: number): { id: Buffer, bytes: Buffer } => {
  const bytes = randomBytes(n)
  return { id: createHash('sha256').update(bytes).digest(), bytes }
}

export function blockStoreSuite (t: Test, name: string, factory: (t: Test) => Promise<BlockStoreHarness>): void {
  t.test(`${name}: put, get, has, del, ids`, async t => {
    const h = await factory(t)
    const a = block(1000); const b = block(300_000); const c = block(1)
    for (const x of [a, b, c]) await h.store.put(x.id, x.bytes)
    t.ok((await h.store.get(a.id))?.equals(a.bytes))
    t.ok((await h.store.get(b.id))?.equals(b.bytes))
    t.ok(await h.store.has(c.id))
    t.equal(await h.store.get(block(10).id), undefined, 'absent block is undefined')
    await h.store.put(a.id, a.bytes) // idempotent
    const ids = new Set<string>()
    for await (const id of h.store.ids()) ids.add(id.toString('hex'))
    t.same([...ids].sort(), [a, b, c].map(x => x.id.toString('hex')).sort())
    await h.store.del(b.id)
    t.notOk(await h.store.has(b.id))
    t.equal(await h.store.get(b.id), undefined)
    t.equal((await h.store.stats()).blocks, 2)
  })

  t.test(`${name}: put refuses bytes that do not hash to the id`, async t => {
    const h = await factory(t)
    const a = block(100)
    await t.rejects(h.store.put(block(5).id, a.bytes), { name: 'BlockCorruptError' })
    t.notOk(await h.store.has(a.id))
  })

  t.test(`${name}: a flipped bit is caught on get, never returned`, async t => {
    const h = await factory(t)
    const a = block(70_000)
    await h.store.put(a.id, a.bytes)
    await h.store.sync()
    await h.corrupt(a.id)
    await t.rejects(h.store.get(a.id), { name: 'BlockCorruptError', code: 'ERR_BLOCK_CORRUPT' })
    const raw = await h.store.get(a.id, { verify: false })
    t.ok(raw !== undefined && !raw.equals(a.bytes), 'unverified read shows the damage (callers verify it themselves)')
  })

  t.test(`${name}: survives reopen; compaction keeps live blocks`, async t => {
    const h = await factory(t)
    const blocks = Array.from({ length: 40 }, () => block(50_000))
    for (const x of blocks) await h.store.put(x.id, x.bytes)
    await h.store.sync()
    let store = await h.reopen()
    for (const x of blocks.slice(0, 30)) await store.del(x.id)
    await store.compact()
    store = await h.reopen()
    for (const x of blocks.slice(30)) t.ok((await store.get(x.id))?.equals(x.bytes), 'live block intact after compaction and reopen')
    for (const x of blocks.slice(0, 30)) t.notOk(await store.has(x.id))
  })
}
