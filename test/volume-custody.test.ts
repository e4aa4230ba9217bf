/**
 * Chain of custody for block keys: a bit flipped in a BEK between custody steps (the test-only
 * hook) is caught before anything is stored, the data stays in the write buffer, and once the
 * fault is gone the same flush stores it correctly.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO, fsck } from '../fs/volume/index.js'

for (const step of ['generated', 'unwrapped']) {
  t.test(`a BEK bit flip at step "${step}" is caught and nothing is stored`, async t => {
    let armed = false
    const flips: string[] = []
    const tv = await makeVolume(t, {
      open: {
        custodyFaultHook: (s, keyRef, key) => {
          if (armed && s === step && keyRef.startsWith('k/')) { key[7] = (key[7] as number) ^ 0x04; flips.push(keyRef) }
        }
      }
    })
    const vol = tv.vol
    const data = randomBytes(200_000)
    const before = (await tv.strata.blocks.stats()).blocks
    const { fh } = await vol.create(ROOT_INO, 'f.bin')
    await vol.write(fh, 0, data)
    armed = true
    await t.rejects(vol.fsync(fh), { name: 'KeyCustodyError', code: 'ERR_KEY_CUSTODY' })
    t.ok(flips.length > 0, 'the hook fired')
    t.equal((await tv.strata.blocks.stats()).blocks, before, 'no block was stored')
    t.ok((await vol.read(fh, 0, data.length)).equals(data), 'the data is still readable from the write buffer')
    armed = false
    await vol.fsync(fh)
    await vol.release(fh)
    await tv.reopen()
    const fh2 = await tv.vol.open((await tv.vol.lookup(ROOT_INO, 'f.bin')).ino)
    t.ok((await tv.vol.read(fh2, 0, data.length)).equals(data), 'stored correctly once the fault is gone')
    await tv.vol.release(fh2)
    t.ok((await fsck(tv.vol)).ok)
  })
}
