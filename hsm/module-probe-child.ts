/**
 * Child process of `probeModule` (module-probe.ts): C_Initialize the PKCS#11 module named by
 * argv[2] and list its slots, then finalise. It prints `done` whatever the module answers; a
 * PKCS#11 error is for the parent's own call to report. Only a module that ends this process
 * leaves the line out.
 */
import pkcs11js from 'pkcs11js'

const path = process.argv[2]
if (path === undefined) {
  process.stderr.write('module-probe-child: usage: module-probe-child MODULE_PATH\n')
  process.exit(2)
}
const pkcs11 = new pkcs11js.PKCS11()
try {
  pkcs11.load(path)
  pkcs11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK })
  for (const slot of pkcs11.C_GetSlotList(true)) pkcs11.C_GetTokenInfo(slot)
  pkcs11.C_Finalize()
} catch {}
process.stdout.write('done\n')
