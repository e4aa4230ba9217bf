/**
 * NEK rotation is resumable: a process killed (SIGKILL) in the middle of re-wrapping leaves a
 * volume whose next open finishes the rotation — every block re-wrapped under the new version,
 * the old version destroyed, every file intact, fsck clean.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO, fsck } from '../fs/volume/index.js'
import { K, decodeBlockKey } from '../fs/volume/records.js'

const child = fileURLToPath(new URL('./fixtures/rotate-child.js', import.meta.url))

t.test('a NEK rotation killed part-way is finished by the next open', async t => {
  const tv = await makeVolume(t)
  const dir = await tv.vol.createNamespace(ROOT_INO, 'team')
  const ns = dir.namespace
  const files: Array<{ name: string, data: Buffer }> = []
  for (let i = 0; i < 900; i++) {
    const data = createHash('sha256').update(`f${i}`).digest()
    const { fh } = await tv.vol.create(dir.ino, `f${i}`)
    await tv.vol.write(fh, 0, data)
    await tv.vol.release(fh)
    files.push({ name: `f${i}`, data })
  }
  const v1 = await tv.vol.keys.currentNekVersion(ns)
  await tv.close()

  // Kill the rotating child after its first batch (256 records) is committed, before the last.
  const progress = await new Promise<number>((resolve, reject) => {
    const p = spawn(process.execPath, [child], { env: { ...process.env, STRATA_ROT_DATA_DIR: tv.dataDir, STRATA_ROT_NS: ns, SOFTHSM2_CONF: tv.token.conf }, stdio: ['ignore', 'pipe', 'inherit'] })
    let last = 0
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      for (const m of d.matchAll(/PROGRESS (\d+) (\d+)/g)) {
        last = Number(m[1])
        if (last > 256 && last < Number(m[2])) p.kill('SIGKILL')
      }
      if (d.includes('DONE')) reject(new Error('the rotation finished before it could be killed'))
    })
    p.on('exit', () => { resolve(last) })
  })
  t.ok(progress > 256, `killed part-way (after ${progress} records)`)

  const vol = await tv.reopen() // openStrata resumes interrupted rotations
  const v2 = await vol.keys.currentNekVersion(ns)
  t.ok(v2 > v1, 'a new NEK version is current')
  t.same(await vol.keys.nekVersions(ns), [v2], 'the old version is destroyed')
  let old = 0
  for await (const [key, value] of vol.meta.range(K.blockKeyPrefix(ns))) {
    if (decodeBlockKey(key, (await vol.meta.open(key, value)).body).v !== v2) old++
  }
  t.equal(old, 0, 'every block key is wrapped under the new version')
  t.equal(await vol.meta.meta.get(K.rotation(ns)), undefined, 'no rotation is pending')
  for (const f of files) {
    const a = await vol.lookup(dir.ino, f.name)
    const fh = await vol.open(a.ino)
    const got = await vol.read(fh, 0, a.size)
    await vol.release(fh)
    if (!got.equals(f.data)) { t.fail(`${f.name} differs`); break }
  }
  t.pass('all 900 files read back')
  t.ok((await fsck(vol)).ok, 'fsck clean')
})
