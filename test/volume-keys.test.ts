/**
 * The volume and its keys: a disabled team reads nothing (not even from caches), a destroyed
 * team never again; the NEK cache keeps token calls rare; namespaces and NEK rotation.
 */
import t from 'tap'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO } from '../fs/volume/types.js'
import {
  damage,
  fsck, rotateNek, errName, KiB, prng, readRange, readWhole, sha256, writeFile } from './volume-util.js'
import type { SVolume } from './volume-util.js'

const SMALL_BS = 64 * KiB

/** Read through a fresh handle; the error (if any) of whichever step failed. */
async function readFresh (vol: SVolume, ino: number): Promise<Buffer> {
  return await readWhole(vol, ino)
}

t.test('a disabled team reads nothing, not even cached plaintext; enable restores', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const vol = tv.vol
  const data = prng('disable', 3 * SMALL_BS + 5)
  const d = await vol.mkdir(ROOT_INO, 'dir')
  const attr = await writeFile(vol, d.ino, 'secret', data)
  // warm every cache there is: NEK cache, derived keys, block plaintext cache, inode cache
  t.ok((await readFresh(vol, attr.ino)).equals(data))
  t.ok((await readFresh(vol, attr.ino)).equals(data))
  const held = await vol.open(attr.ino)
  t.ok((await vol.read(held, 0, 100)).equals(data.subarray(0, 100)))
  const wfh = await vol.open(attr.ino, { write: true })

  await vol.keys.disableTeam()
  t.equal(await vol.keys.teamState(), 'disabled')
  t.equal(vol.keys.cacheStats().size, 0, 'the NEK cache is emptied at once')

  await t.rejects(vol.read(held, 0, 100), { name: 'TeamDisabledError' }, 'a handle opened before cannot read (no plaintext from a cache)')
  await t.rejects(vol.read(held, 2 * SMALL_BS, 100), { name: 'TeamDisabledError' }, 'nor another block')
  await t.rejects(readFresh(vol, attr.ino), { name: 'TeamDisabledError' }, 'a fresh open and read fails')
  await t.rejects(vol.readdir(d.ino), { name: 'TeamDisabledError' }, 'file names are not listed')
  await t.rejects(vol.lookup(d.ino, 'secret'), { name: 'TeamDisabledError' }, 'nor looked up')
  const wrote = (async () => {
    await vol.write(wfh, 0, Buffer.from('new data while disabled'))
    await vol.fsync(wfh)
  })()
  await t.rejects(wrote, { name: 'TeamDisabledError' }, 'a write cannot be made durable (no new block key)')

  await vol.keys.enableTeam()
  t.equal(await vol.keys.teamState(), 'enabled')
  await vol.release(wfh).catch(() => {})
  const after = await readFresh(vol, attr.ino)
  // the refused write must not have half-landed: either all old bytes or (if the volume kept the
  // buffered write and sealed it after enable) the new bytes in front of the old tail
  const fresh = Buffer.from(data)
  Buffer.from('new data while disabled').copy(fresh, 0)
  t.ok(after.equals(data) || after.equals(fresh), 'content after enable is the old or the fully written new content')
  t.ok((await vol.read(held, 0, 100)).equals(after.subarray(0, 100)), 'the old handle reads again')
  await vol.release(held)
  t.equal((await vol.lookup(d.ino, 'secret')).ino, attr.ino)
  const report = await fsck(vol)
  t.same(damage(report), [])
})

t.test('a disabled team stays disabled across reopen', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const data = prng('disable-reopen', SMALL_BS + 1)
  const attr = await writeFile(tv.vol, ROOT_INO, 'f', data)
  await tv.vol.keys.disableTeam()
  let openErr: unknown
  try {
    await tv.reopen()
  } catch (err) {
    openErr = err
  }
  if (openErr !== undefined) {
    t.equal(errName(openErr), 'TeamDisabledError', 'opening a disabled volume fails with TeamDisabledError')
    return
  }
  await t.rejects(readFresh(tv.vol, attr.ino), { name: 'TeamDisabledError' }, 'reads after reopen still fail')
  await tv.vol.keys.enableTeam()
  t.ok((await readFresh(tv.vol, attr.ino)).equals(data))
})

t.test('a destroyed team never reads again, also after reopen', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const data = prng('destroy', 2 * SMALL_BS)
  const attr = await writeFile(tv.vol, ROOT_INO, 'f', data)
  const held = await tv.vol.open(attr.ino)
  t.ok((await tv.vol.read(held, 0, 10)).equals(data.subarray(0, 10)))
  await tv.vol.keys.destroyTeam()
  t.equal(await tv.vol.keys.teamState(), 'destroyed')
  await t.rejects(tv.vol.read(held, 0, 10), { name: 'TeamDestroyedError' }, 'an open handle reads nothing')
  await t.rejects(readFresh(tv.vol, attr.ino), { name: 'TeamDestroyedError' })
  await t.rejects(tv.vol.keys.enableTeam(), { name: 'TeamDestroyedError' }, 'a destroyed team cannot be enabled')
  await t.rejects(readFresh(tv.vol, attr.ino), { name: 'TeamDestroyedError' }, 'still destroyed after the enable attempt')
  await tv.vol.release(held).catch(() => {})
  let openErr: unknown
  try {
    await tv.reopen()
  } catch (err) {
    openErr = err
  }
  if (openErr !== undefined) {
    t.equal(errName(openErr), 'TeamDestroyedError', 'reopen of a shredded volume fails with TeamDestroyedError')
  } else {
    t.equal(await tv.vol.keys.teamState(), 'destroyed', 'after reopen the team is still destroyed')
    await t.rejects(readFresh(tv.vol, attr.ino), { name: 'TeamDestroyedError' }, 'reads after reopen fail')
    await t.rejects(tv.vol.readdir(ROOT_INO), { name: 'TeamDestroyedError' }, 'names after reopen are gone too')
  }
})

t.test('NEK cache: many reads, few token calls', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS, nekCacheMs: 10 * 60 * 1000 })
  const v = tv.vol
  const files: Array<{ ino: number, data: Buffer }> = []
  for (let i = 0; i < 5; i++) {
    const data = prng(`cache-${i}`, 2 * SMALL_BS + i)
    files.push({ ino: (await writeFile(v, ROOT_INO, `f${i}`, data)).ino, data })
  }
  v.keys.clearCache()
  const s0 = v.keys.cacheStats()
  t.equal(s0.size, 0, 'clearCache empties the cache')
  let reads = 0
  for (let round = 0; round < 40; round++) {
    for (const f of files) {
      const got = await readRange(v, f.ino, (round * 4099) % f.data.length, 5000)
      const want = f.data.subarray((round * 4099) % f.data.length, (round * 4099) % f.data.length + 5000)
      if (!got.equals(want)) t.fail(`read ${round} of ${f.ino} differs`)
      reads++
    }
  }
  const s1 = v.keys.cacheStats()
  t.comment(`after ${reads} reads: ${JSON.stringify(s1)} (before ${JSON.stringify(s0)})`)
  t.ok(s1.tokenCalls - s0.tokenCalls <= 2, `token calls for ${reads} reads: ${s1.tokenCalls - s0.tokenCalls} (at most one per NEK)`)
  t.ok(s1.misses - s0.misses <= 2, `cache misses: ${s1.misses - s0.misses}`)
  t.ok(s1.hits - s0.hits >= 1, 'the volume goes through the NEK cache')
  t.ok(s1.size >= 1, 'the NEK stays cached')
})

t.test('namespaces: createNamespace, files inside, NEK rotation with progress while reading and writing', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const v = tv.vol
  const root = await v.getattr(ROOT_INO)
  const nsDir = await v.createNamespace(ROOT_INO, 'shared')
  t.equal(nsDir.type, 'dir')
  t.not(nsDir.namespace, root.namespace, 'a new namespace id')
  t.equal((await v.lookup(ROOT_INO, 'shared')).ino, nsDir.ino)
  const ns = nsDir.namespace
  t.ok((await v.keys.namespaces()).includes(ns), 'the namespace has a NEK')
  const sub = await v.mkdir(nsDir.ino, 'sub')
  t.equal(sub.namespace, ns, 'a subdirectory inherits the namespace')

  const models = new Map<number, Buffer>()
  for (let i = 0; i < 12; i++) {
    const data = prng(`ns-${i}`, (i % 4) * SMALL_BS + 1000 * i + 1)
    const a = await writeFile(v, i % 2 === 0 ? nsDir.ino : sub.ino, `f${i}`, data, 50000)
    t.equal(a.namespace, ns)
    models.set(a.ino, data)
  }
  const outsideData = prng('outside', 2 * SMALL_BS)
  const outside = await writeFile(v, ROOT_INO, 'outside', outsideData)
  t.equal(outside.namespace, root.namespace)

  const v0 = await v.keys.currentNekVersion(ns)
  const rootV0 = await v.keys.currentNekVersion(root.namespace)
  const progress: Array<{ done: number, total: number }> = []
  const rotation = rotateNek(v, ns, { onProgress: p => { progress.push({ done: p.done, total: p.total }) } })

  // reads and writes interleaved with the rotation
  let mismatches = 0
  const work = (async () => {
    for (let round = 0; round < 6; round++) {
      for (const [ino, data] of models) {
        const got = await readWhole(v, ino)
        if (!got.equals(data)) mismatches++
      }
      const data = prng(`during-${round}`, SMALL_BS + 77 * round)
      const a = await writeFile(v, nsDir.ino, `during-${round}`, data, 30000)
      models.set(a.ino, data)
      // overwrite the middle of an existing file
      const [ino, old] = [...models.entries()][round]!
      const patch = prng(`patch-${round}`, 3000)
      const fh = await v.open(ino, { write: true })
      await v.write(fh, 10, patch)
      await v.release(fh)
      const next = Buffer.alloc(Math.max(old.length, 10 + patch.length))
      old.copy(next)
      patch.copy(next, 10)
      models.set(ino, next)
    }
  })()
  await Promise.all([rotation, work])
  t.equal(mismatches, 0, 'reads during the rotation return the right bytes')

  const v1 = await v.keys.currentNekVersion(ns)
  t.ok(v1 > v0, 'the namespace has a new current NEK version')
  t.equal(await v.keys.currentNekVersion(root.namespace), rootV0, 'another namespace is not rotated')
  t.ok(progress.length > 0, 'progress is reported')
  const last = progress[progress.length - 1]
  t.ok(last !== undefined && last.done === last.total, `the last progress report is complete (${JSON.stringify(last)})`)
  t.ok(last !== undefined && last.total >= 12, `total counts the namespace's blocks (${last?.total})`)
  let monotonic = true
  for (let i = 1; i < progress.length; i++) if (progress[i]!.done < progress[i - 1]!.done) monotonic = false
  t.ok(monotonic, 'done never goes back')
  t.same(await v.keys.nekVersions(ns), [v1], 'the old NEK version is retired once nothing references it')

  for (const [ino, data] of models) {
    t.equal(sha256(await readWhole(v, ino)), sha256(data), `content of ${ino} after rotation`)
  }
  t.ok((await readWhole(v, outside.ino)).equals(outsideData))
  await v.gc() // overwritten blocks are garbage until collected
  const r1 = await fsck(v)
  t.same(damage(r1), [], 'fsck is clean after rotation')
  t.equal(r1.ok, true)
  t.same(await v.keys.verifyKeys(), [], 'every wrapped NEK verifies')

  await tv.reopen()
  for (const [ino, data] of models) {
    t.equal(sha256(await readWhole(tv.vol, ino)), sha256(data), `content of ${ino} after reopen`)
  }
  const r2 = await fsck(tv.vol)
  t.same(damage(r2), [], 'fsck is clean after reopen')

  // a second rotation, with nothing else going on
  await rotateNek(tv.vol, ns)
  t.ok(await tv.vol.keys.currentNekVersion(ns) > v1, 'a second rotation makes a newer version current')
  for (const [ino, data] of models) {
    if (!(await readWhole(tv.vol, ino)).equals(data)) t.fail(`content of ${ino} after the second rotation`)
  }
  await tv.vol.gc()
  t.same(damage(await fsck(tv.vol)), [])
})

t.test('namespaces: rename across namespaces and unknown namespace', async t => {
  const tv = await makeVolume(t, { blockSize: SMALL_BS })
  const v = tv.vol
  const a = await v.createNamespace(ROOT_INO, 'a')
  const b = await v.createNamespace(ROOT_INO, 'b')
  t.not(a.namespace, b.namespace)
  const data = prng('xns', SMALL_BS + 3)
  const f = await writeFile(v, a.ino, 'f', data)
  // rename across a namespace boundary either moves the file (re-keyed, readable) or is refused with EXDEV
  let err: unknown
  try {
    await v.rename(a.ino, 'f', b.ino, 'f')
  } catch (e) {
    err = e
  }
  if (err !== undefined) {
    t.match(err, { code: 'EXDEV' }, 'a cross-namespace rename is refused with EXDEV')
    t.ok((await readWhole(v, (await v.lookup(a.ino, 'f')).ino)).equals(data))
  } else {
    const moved = await v.lookup(b.ino, 'f')
    t.equal(moved.namespace, b.namespace, 'a moved file belongs to its new namespace')
    t.ok((await readWhole(v, moved.ino)).equals(data), 'and reads the same')
    t.not(f.ino, 0)
  }
  await t.rejects(rotateNek(v, 'no-such-namespace'), 'rotating an unknown namespace fails')
  t.same(damage(await fsck(v)), [])
})

t.test('a NEK zeroed between its lookup and its use (a rotation retiring it meanwhile) is looked up again: no EIO', async t => {
  const tv = await makeVolume(t, { blockSize: 64 * KiB })
  const vol = tv.vol
  const data = prng('withdrawn', 100 * KiB)
  const f = await writeFile(vol, ROOT_INO, 'f', data)
  vol.forgetSecrets() // a cold read: the block key must be unwrapped again
  await vol.getattr(f.ino) // the metadata keys are derived again here, before the fault below
  // The key service hands out the cache's own NEK buffer; zero it (as a retirement does) right
  // after the next lookup of a given version (the block read's), before the volume uses it.
  const keys = vol.keys as { nek: (...a: any[]) => Promise<{ key: Uint8Array }>, clearCache: () => void }
  const nek = keys.nek.bind(keys)
  let withdrawn = 0
  keys.nek = async (...a: any[]) => {
    const n = await nek(...a)
    if (a[1] !== undefined && withdrawn === 0) { withdrawn++; keys.clearCache() }
    return n
  }
  t.teardown(() => { keys.nek = nek })
  t.ok((await readWhole(vol, f.ino)).equals(data), 'the cold read returns the data')
  t.equal(withdrawn, 1, 'the read met a zeroed key')
})
