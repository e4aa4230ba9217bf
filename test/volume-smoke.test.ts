import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO } from '../fs/volume/index.js'
import { fsck } from '../fs/volume/fsck.js'

t.test('write, read back, reopen, fsck', async t => {
  const tv = await makeVolume(t)
  const data = randomBytes(3 * 1024 * 1024 + 12345)
  const { fh } = await tv.vol.create(ROOT_INO, 'big.bin')
  for (let off = 0; off < data.length; off += 128 * 1024) await tv.vol.write(fh, off, data.subarray(off, off + 128 * 1024))
  t.same(createHash('sha256').update(await tv.vol.read(fh, 0, data.length)).digest('hex'), createHash('sha256').update(data).digest('hex'), 'read while dirty')
  await tv.vol.fsync(fh)
  await tv.vol.release(fh)
  const vol = await tv.reopen()
  const attr = await vol.lookup(ROOT_INO, 'big.bin')
  t.equal(attr.size, data.length)
  const fh2 = await vol.open(attr.ino)
  t.ok((await vol.read(fh2, 0, data.length)).equals(data), 'read after reopen')
  await vol.release(fh2)
  const report = await fsck(vol)
  t.same(report.problems, [])
  t.ok(report.ok)
})
