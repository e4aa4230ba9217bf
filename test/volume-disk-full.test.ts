/**
 * A full disk (issue 5, "Disk"), below FUSE: the block store and the volume on a small tmpfs.
 * - LogBlockStore: a write the disk can only take part of (a short write, then ENOSPC) fails
 *   with ENOSPC and is never indexed; every block stored before reads back verified, also after
 *   a reopen; once space is freed, puts work again.
 * - StrataVolume: a full disk fails fsync with ENOSPC (data kept); deleting a file makes room for
 *   the next write at once (the GC runs instead of refusing it), and an fsync that then seals
 *   everything succeeds even though an earlier background seal failed.
 * - A disk another program filled to the last byte: metadata writes are refused with ENOSPC
 *   before LevelDB sees them (fs/store/disk-guard.ts), cached inodes are not left half-changed,
 *   and a refused truncate of an open file keeps its size and its unsealed bytes.
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync, unlinkSync, statfsSync, statSync, truncateSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { LogBlockStore, type Db } from '../fs/store/index.js'
import { makeToken } from './helpers/softhsm.js'
import { initStrata, openStrata } from '../daemon/strata.js'
import { ROOT_INO, fsck } from '../fs/volume/index.js'
import { toErrno } from '../fs/fuse/errno.js'
import { constants } from 'node:os'

interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

/** A fresh tmpfs of `mib` MiB, unmounted and removed at teardown. */
function smallFs (t: Teardownable, mib: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-full-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m`, 'tmpfs', dir])
  t.teardown(() => {
    try { execFileSync('umount', [dir]) } catch { execFileSync('umount', ['-l', dir]) }
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

const free = (dir: string): number => { const s = statfsSync(dir); return s.bavail * s.bsize }

async function openStore (dir: string): Promise<{ db: Db, store: LogBlockStore }> {
  const db: Db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  const store = new LogBlockStore({ index: db.sublevel<string, Uint8Array>('blk', { keyEncoding: 'utf8', valueEncoding: 'view' }) }, { dir: join(dir, 'blocks'), reserveBytes: 0 })
  await store.open()
  return { db, store }
}

t.test('LogBlockStore: a short write on a full disk is ENOSPC, never a torn block; space freed, puts work again', async t => {
  const fs = smallFs(t, 4)
  const { db, store } = await openStore(fs)
  // Leave a free space that is not a multiple of the block size, so the last put is cut short.
  writeFileSync(join(fs, 'filler'), Buffer.alloc(Math.max(0, free(fs) - 700 * 1024 - 8192)))
  const kept: Array<{ id: Buffer, bytes: Buffer }> = []
  let error: (Error & { code?: string }) | undefined
  for (let i = 0; i < 16 && error === undefined; i++) {
    const bytes = randomBytes(256 * 1024)
    const id = createHash('sha256').update(bytes).digest()
    try {
      await store.put(id, bytes)
      kept.push({ id, bytes })
    } catch (err) {
      error = err as Error & { code?: string }
      t.notOk(await store.has(id), 'the block that did not fit is not indexed')
    }
  }
  t.equal(error?.code, 'ENOSPC', `the put that does not fit fails with ENOSPC (${String(error?.message)})`)
  t.ok(kept.length >= 1, `${kept.length} blocks fitted`)
  for (const k of kept) t.same(await store.get(k.id), k.bytes, 'a block stored before the disk filled reads back verified')

  unlinkSync(join(fs, 'filler'))
  const more = randomBytes(256 * 1024)
  const moreId = createHash('sha256').update(more).digest()
  await store.put(moreId, more)
  t.same(await store.get(moreId), more, 'a put after space was freed works (the torn record is dead space, not in the way)')

  await store.close(); await db.close()
  const again = await openStore(fs)
  for (const k of [...kept, { id: moreId, bytes: more }]) t.same(await again.store.get(k.id), k.bytes, 'reads back verified after a reopen')
  await again.store.close(); await again.db.close()
})

t.test('StrataVolume on a full disk: fsync says ENOSPC, data kept; a delete makes room at once; fsync then succeeds', async t => {
  const fs = smallFs(t, 96)
  const token = await makeToken(t)
  const pinFile = join(fs, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  const s = await initStrata({ dataDir: join(fs, 'data'), token: { module: token.module, label: token.label, pinFile } })
  t.teardown(async () => { await s.close().catch(() => {}) })
  const vol = s.vol
  const MiB = 1024 * 1024
  const chunk = (i: number): Buffer => Buffer.alloc(MiB, i & 0xff)

  const keep = randomBytes(3 * MiB)
  const k = await vol.create(ROOT_INO, 'keep')
  await vol.write(k.fh, 0, keep)
  await vol.fsync(k.fh)
  await vol.release(k.fh)

  // Fill: ENOSPC from fsync, never a hang or EIO.
  const f = await vol.create(ROOT_INO, 'fill')
  let acked = 0
  let error: (Error & { code?: string }) | undefined
  for (let i = 0; i < 200 && error === undefined; i++) {
    try {
      await vol.write(f.fh, i * MiB, chunk(i))
      if (i % 4 === 3) { await vol.fsync(f.fh); acked = i + 1 }
    } catch (err) { error = err as Error & { code?: string } }
  }
  t.equal(error?.code, 'ENOSPC', `a full disk is ENOSPC (${String(error?.name)}: ${String(error?.message)})`)
  await vol.release(f.fh).catch(() => {})
  const attr = await vol.lookup(ROOT_INO, 'fill')
  const rf = await vol.open(attr.ino)
  for (let i = 0; i < acked; i++) t.ok((await vol.read(rf, i * MiB, MiB)).equals(chunk(i)), `acknowledged MiB ${i} intact`)
  await vol.release(rf)

  // Delete, then write at once: the seal must not be refused while the GC has not run yet.
  await vol.unlink(ROOT_INO, 'fill')
  const w = await vol.create(ROOT_INO, 'after')
  for (let i = 0; i < 8; i++) await vol.write(w.fh, i * MiB, chunk(i))
  await vol.fsync(w.fh)
  await vol.release(w.fh)
  const ra = await vol.open((await vol.lookup(ROOT_INO, 'after')).ino)
  for (let i = 0; i < 8; i++) t.ok((await vol.read(ra, i * MiB, MiB)).equals(chunk(i)), `MiB ${i} written after the delete reads back`)
  await vol.release(ra)
  const rk = await vol.open((await vol.lookup(ROOT_INO, 'keep')).ino)
  t.ok((await vol.read(rk, 0, keep.length)).equals(keep), 'the first file is intact')
  await vol.release(rk)
  const report = await fsck(vol, {})
  t.ok(report.ok, `fsck clean: ${JSON.stringify(report.problems.slice(0, 3))}`)
})

t.test('StrataVolume on a disk another program filled to the last byte: metadata refused with ENOSPC before LevelDB sees it, nothing half-changed; freed, all works and survives a reopen', async t => {
  const fs = smallFs(t, 48)
  const token = await makeToken(t)
  const pinFile = join(fs, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  const dataDir = join(fs, 'data')
  let s = await initStrata({ dataDir, token: { module: token.module, label: token.label, pinFile } })
  t.teardown(async () => { await s.close().catch(() => {}) })
  await s.vol.mkdir(ROOT_INO, 'before')
  // An open file: 3 MiB stored, then 1 MiB more written and not yet sealed.
  const stored = randomBytes(3 * 1048576)
  const unsealed = randomBytes(1048576)
  const { attr: { ino }, fh } = await s.vol.create(ROOT_INO, 'open.bin')
  await s.vol.write(fh, 0, stored)
  await s.vol.fsync(fh)
  await s.vol.write(fh, stored.length, unsealed)
  await s.vol.mkdir(ROOT_INO, 'victim')
  const filler = join(fs, 'other-program')
  try { execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { stdio: 'ignore' }) } catch {} // ends with ENOSPC
  await new Promise(resolve => setTimeout(resolve, 200)) // with plenty free, the guard measured up to 100 ms ago
  const err = await s.vol.mkdir(ROOT_INO, 'refused').then(() => undefined, (e: Error) => e)
  t.equal(toErrno(err).errno, -constants.errno.ENOSPC, `mkdir on a full disk: ENOSPC (${String(err?.message)})`)
  t.equal((await s.vol.getattr(ROOT_INO)).nlink, 4, 'the refused mkdir left the parent\'s link count alone')
  const cut = await s.vol.truncate(ino, 1048576 + 5).then(() => undefined, (e: Error) => e)
  t.equal(toErrno(cut).errno, -constants.errno.ENOSPC, `truncate on a full disk: ENOSPC (${String(cut?.message)})`)
  t.equal((await s.vol.getattr(ino)).size, 4 * 1048576, 'the refused truncate left the size alone')
  // Room for LevelDB's log but below the metadata floor: new entries are refused, a delete is not
  // (a user on a full disk must be able to make room).
  truncateSync(filler, statSync(filler).size - 4 * 1048576)
  const refused = await s.vol.mkdir(ROOT_INO, 'refused').then(() => undefined, (e: Error) => e)
  t.equal(toErrno(refused).errno, -constants.errno.ENOSPC, `with 4 MiB free, mkdir: ENOSPC (${String(refused?.message)})`)
  await s.vol.rmdir(ROOT_INO, 'victim')
  t.pass('with 4 MiB free, rmdir succeeds')
  unlinkSync(filler)
  t.ok((await s.vol.read(fh, 0, 4 * 1048576)).equals(Buffer.concat([stored, unsealed])), 'and every byte, the unsealed ones too')
  await s.vol.fsync(fh)
  await s.vol.release(fh)
  await s.vol.mkdir(ROOT_INO, 'after')
  const report = await fsck(s.vol, {})
  t.ok(report.ok, `fsck clean: ${JSON.stringify(report.problems.slice(0, 3))}`)
  await s.close()
  s = await openStrata({ dataDir })
  const names = (await s.vol.readdir(ROOT_INO)).map(e => Buffer.from(e.name).toString()).filter(n => n !== '.' && n !== '..').sort()
  t.same(names, ['after', 'before', 'open.bin'], 'after a reopen: exactly the entries that were acknowledged')
  const fh2 = await s.vol.open((await s.vol.lookup(ROOT_INO, 'open.bin')).ino)
  t.ok((await s.vol.read(fh2, 0, 4 * 1048576 + 1)).equals(Buffer.concat([stored, unsealed])), 'the open file as written')
  await s.vol.release(fh2)
})
