/**
 * Dedup and garbage collection: identical plaintext blocks of a namespace are stored once,
 * blocks nothing references are collected, and nothing still referenced is.
 */
import t from 'tap'
import { createHash } from 'node:crypto'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO } from '../fs/volume/types.js'
import {
  damage, fsck, KiB, MiB, prng, readWhole, writeFile } from './volume-util.js'
import type { SVolume } from './volume-util.js'

const SMALL_BS = 64 * KiB

async function blockCount (vol: SVolume): Promise<number> {
  const r = await fsck(vol)
  if (!r.ok) throw new Error(`fsck not clean: ${JSON.stringify(r.problems)}`)
  return r.blocks
}

t.test('two identical 1 MiB files share their blocks; gc collects them once both are gone', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const perFile = MiB / SMALL_BS
  const b0 = await blockCount(vol)
  const data = prng('dedup', MiB)
  const a = await writeFile(vol, ROOT_INO, 'a', data)
  const b1 = await blockCount(vol)
  t.equal(b1 - b0, perFile, `the first copy stores ${perFile} blocks`)
  const d = await vol.mkdir(ROOT_INO, 'elsewhere')
  const b = await writeFile(vol, d.ino, 'b', data, 10000)
  const b2 = await blockCount(vol)
  t.equal(b2, b1, 'the second copy (another directory, other write sizes) stores no new block')
  t.ok((await readWhole(vol, b.ino)).equals(data))

  t.equal((await vol.gc()).blocksDeleted, 0, 'gc deletes nothing that is referenced')
  await vol.unlink(ROOT_INO, 'a')
  t.equal((await vol.gc()).blocksDeleted, 0, 'blocks still referenced by the other file stay')
  t.ok((await readWhole(vol, b.ino)).equals(data), 'the other file reads the same')
  t.equal(await blockCount(vol), b1)
  await vol.unlink(d.ino, 'b')
  const g = await vol.gc()
  // a background gc may have run first, so blocksDeleted is at most perFile; the count is exact
  t.ok(g.blocksDeleted <= perFile, `gc deleted ${g.blocksDeleted} blocks`)
  t.equal(await blockCount(vol), b0, 'gc deletes the blocks once nothing references them')
  t.equal((await vol.gc()).blocksDeleted, 0, 'a second gc finds nothing')
  const r = await fsck(vol)
  t.equal(r.ok, true)
  t.same(damage(r), [])
  t.equal(r.blocks, b0, 'back to the initial block count')
  t.not(a.ino, b.ino)
})

t.test('GC candidates still queued at close are collected soon after the next open', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const b0 = await blockCount(tv.vol)
  await writeFile(tv.vol, ROOT_INO, 'a', prng('gc-after-open', 4 * SMALL_BS))
  const b1 = await blockCount(tv.vol)
  t.equal(b1 - b0, 4, 'the file stores 4 blocks')
  await tv.vol.unlink(ROOT_INO, 'a')
  await tv.reopen() // closes before the GC the unlink scheduled could run
  t.equal(await blockCount(tv.vol), b1, 'right after the open the freed blocks are still stored')
  const until = Date.now() + 30_000
  while (await blockCount(tv.vol) !== b0 && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 500))
  t.equal(await blockCount(tv.vol), b0, 'the GC collected them after the open, with no further delete')
})

t.test('the default block size: a 1 MiB file twice is one block stored', async t => {
  const tv = await makeVolume(t)
  const vol = tv.vol
  const b0 = await blockCount(vol)
  const data = prng('dedup-default', MiB)
  await writeFile(vol, ROOT_INO, 'a', data)
  const b1 = await blockCount(vol)
  t.equal(b1 - b0, Math.ceil(MiB / vol.blockSize))
  await writeFile(vol, ROOT_INO, 'b', data)
  t.equal(await blockCount(vol), b1)
  await vol.unlink(ROOT_INO, 'a')
  await vol.unlink(ROOT_INO, 'b')
  t.ok((await vol.gc()).blocksDeleted <= b1 - b0)
  const r = await fsck(vol)
  t.equal(r.ok, true)
  t.equal(r.blocks, b0)
})

t.test('identical blocks inside one file are stored once', async t => {
  const { vol } = await makeVolume(t, { blockSize: SMALL_BS })
  const b0 = await blockCount(vol)
  const one = prng('repeat', SMALL_BS)
  const data = Buffer.concat([one, one, one, one])
  const f = await writeFile(vol, ROOT_INO, 'r', data)
  const r0 = await fsck(vol)
  if (r0.blocks - b0 !== 1) t.comment(`right after the write ${r0.blocks - b0} blocks are stored (${r0.problems.filter(p => p.kind === 'orphan-block').length} orphan)`)
  await vol.gc()
  const r = await fsck(vol)
  t.equal(r.blocks - b0, 1, 'four identical blocks: one stored block (after gc)')
  t.same(r.problems, [], 'reference counts agree, nothing orphaned')
  t.ok((await readWhole(vol, f.ino)).equals(data))
  await vol.unlink(ROOT_INO, 'r')
  await vol.gc()
  const r2 = await fsck(vol)
  t.equal(r2.blocks, b0, 'and all collected after unlink')
  t.same(damage(r2), [])
})

t.test('writing into one of two deduplicated files leaves the other intact', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const data = prng('cow', 4 * SMALL_BS)
  const a = await writeFile(vol, ROOT_INO, 'a', data)
  const b = await writeFile(vol, ROOT_INO, 'b', data)
  const fh = await vol.open(b.ino, { write: true })
  await vol.write(fh, SMALL_BS + 5, Buffer.from('changed'))
  await vol.release(fh)
  await vol.truncate(b.ino, 2 * SMALL_BS + 1)
  t.ok((await readWhole(vol, a.ino)).equals(data), 'the untouched copy still reads the original')
  const want = Buffer.from(data.subarray(0, 2 * SMALL_BS + 1))
  want.write('changed', SMALL_BS + 5)
  t.ok((await readWhole(vol, b.ino)).equals(want), 'the changed copy reads its change')
  const g = await vol.gc()
  t.equal(g.blocksDeleted, 0, 'every old block is still referenced by a')
  await tv.reopen()
  t.ok((await readWhole(tv.vol, a.ino)).equals(data), 'after reopen')
  t.ok((await readWhole(tv.vol, b.ino)).equals(want), 'after reopen')
  t.same(damage(await fsck(tv.vol)), [])
})

t.test('gc leaves the blocks of an unlinked file that is still open', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const data = prng('open-unlinked', 3 * SMALL_BS)
  const b0 = await blockCount(vol)
  const f = await writeFile(vol, ROOT_INO, 'f', data)
  const fh = await vol.open(f.ino)
  await vol.unlink(ROOT_INO, 'f')
  await vol.gc()
  t.ok((await vol.read(fh, 0, data.length)).equals(data), 'the open handle still reads every block after gc')
  await vol.release(fh)
  await vol.gc()
  const r = await fsck(vol)
  t.same(damage(r), [])
  t.equal(r.blocks, b0, 'collected after the last release')
})

t.test('overwritten blocks become garbage; reopen keeps counts right', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const b0 = await blockCount(vol)
  const f = await writeFile(vol, ROOT_INO, 'f', prng('v1', 2 * SMALL_BS))
  const fh = await vol.open(f.ino, { write: true, truncate: true })
  const v2 = prng('v2', 2 * SMALL_BS)
  await vol.write(fh, 0, v2)
  await vol.release(fh)
  t.ok((await vol.gc()).blocksDeleted <= 2)
  t.equal(await blockCount(vol), b0 + 2, 'the two blocks of the old content are collected')
  await tv.reopen()
  t.equal((await tv.vol.gc()).blocksDeleted, 0)
  t.ok((await readWhole(tv.vol, f.ino)).equals(v2))
  t.equal(await blockCount(tv.vol), b0 + 2)
})

t.test('garbage awaiting collection: fsck ok, and gc leaves no orphan block', async t => {
  const { vol } = await makeVolume(t, { blockSize: SMALL_BS })
  await writeFile(vol, ROOT_INO, 'f', prng('pending', 2 * SMALL_BS))
  await vol.unlink(ROOT_INO, 'f')
  // right after the unlink, before gc: orphan blocks are garbage, not damage
  const r = await fsck(vol)
  t.same(damage(r), [], 'no damage')
  t.equal(r.ok, true, 'fsck is ok with garbage pending')
  await vol.gc()
  const r2 = await fsck(vol)
  t.same(r2.problems, [], 'after gc not even an orphan block is left')
})

t.test('a block stored ahead of its change set (fetched from a peer) is collected after its grace time only if nothing names it', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const b0 = await blockCount(vol)
  // A block a peer announced and this device prefetched, whose file then changed: nothing will name it.
  const stray = Buffer.from(prng('stray', 4096))
  const strayId = createHash('sha256').update(stray).digest()
  await vol.blocks.put(strayId, stray, { verified: true })
  // A fetched block that the change set then names: written here as a file with the same block.
  const file = await writeFile(vol, ROOT_INO, 'named', prng('named', SMALL_BS))
  const [named] = await vol.blockList(file.ino)
  if (named === undefined) throw new Error('no block')
  await vol.collectLater(strayId, 400)
  await vol.collectLater(Buffer.from(named.id, 'hex'), 400)
  t.equal((await vol.gc()).blocksDeleted, 0, 'within the grace time nothing is deleted')
  t.ok(await vol.blocks.has(strayId), 'the stray block is still there')
  t.ok((await fsck(vol)).ok, 'fsck counts a queued block as no problem')
  await new Promise(resolve => setTimeout(resolve, 500))
  await vol.gc() // the GC the volume scheduled for then may have run already
  t.notOk(await vol.blocks.has(strayId), 'after it, the unnamed block is deleted')
  t.ok((await readWhole(vol, file.ino)).equals(prng('named', SMALL_BS)), 'the named one stays')
  t.equal(await blockCount(vol), b0 + 1)
})
