/** Faults of the PKCS#11 token: wrong PIN, ... */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { makeDrive, sh, strata } from '../../../test/helpers/mount.js'
import type { Scenario } from '../harness.js'

export const tokenScenarios: Scenario[] = [
  {
    name: 'token-wrong-pin-at-mount',
    injects: 'a wrong PIN in the PIN file at mount: a named error, no mount, the data intact with the right PIN',
    run: async ctx => {
      const d = await makeDrive(ctx)
      await sh(`head -c 3000000 /dev/urandom > "${d.mnt}/keep.bin" && sha256sum "${d.mnt}/keep.bin" | cut -d' ' -f1 > "${d.root}/keep.sha"`)
      await d.unmount()
      const pinFile = join(d.dataDir, 'pin')
      const pin = readFileSync(pinFile)
      writeFileSync(pinFile, 'not-the-pin\n')
      const r = await strata(['mount', d.mnt, '--data', d.dataDir])
      ctx.log(`mount with a wrong PIN: exit ${r.code}: ${r.stderr.trim()}`)
      ctx.check(r.code !== 0, 'mount with a wrong PIN succeeded')
      ctx.check(/PIN/.test(r.stderr), `the error does not name the PIN: ${r.stderr.trim()}`)
      const mounts = readFileSync('/proc/self/mounts', 'utf8')
      ctx.check(!mounts.includes(` ${d.mnt} `), 'the mountpoint is mounted after a failed mount')
      writeFileSync(pinFile, pin)
      await d.mount()
      const h = await sh(`sha256sum "${d.mnt}/keep.bin" | cut -d' ' -f1; cat "${d.root}/keep.sha"`)
      const [got, want] = h.stdout.trim().split('\n')
      ctx.check(got !== undefined && got === want, `the file changed across a wrong-PIN mount (${got ?? ''} != ${want ?? ''})`)
    }
  }
]
