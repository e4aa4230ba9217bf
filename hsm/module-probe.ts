import { execFile, spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ModuleProbeError, TokenError } from './errors.js'

/**
 * A PKCS#11 module runs inside our process, and its C_Initialize can end that process: SoftHSM2
 * 2.6 calls exit(5) when one of its token object files is damaged (measured: a single flipped
 * bit in a length field of a key object's file; the stack shows exit() under C_Initialize).
 * Nothing of ours runs then, so a daemon would vanish with no error and a mount would wait for
 * it in vain.
 *
 * So before every C_Initialize, a short-lived child process initialises the module first. If the
 * child dies, the module is not initialised in this process and the caller gets a
 * ModuleProbeError naming the module and, for SoftHSM2, its token directory. PKCS#11 errors are
 * not the probe's business: the caller's own call reports them as usual.
 *
 * The child is build/pkcs11-probe (hsm/native/pkcs11-probe.c, built by scripts/setup.sh; ~20 ms
 * a run here), or, where it was not built, a Node child doing the same (~130 ms).
 */
const NATIVE = fileURLToPath(new URL('../../build/pkcs11-probe', import.meta.url))
const NODE_CHILD = fileURLToPath(new URL('./module-probe-child.js', import.meta.url))
/** A real HSM may take a while to initialise; longer than this is a hang. */
const PROBE_TIMEOUT_MS = 60_000

function command (modulePath: string): [string, string[]] {
  return existsSync(NATIVE) ? [NATIVE, [modulePath]] : [process.execPath, [NODE_CHILD, modulePath]]
}

export function probeModuleSync (modulePath: string): void {
  const r = spawnSync(...command(modulePath), { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] })
  check(modulePath, r.stdout, r.status, r.signal, r.error)
}

export async function probeModule (modulePath: string): Promise<void> {
  const r = await new Promise<{ stdout: string, status: number | null, signal: NodeJS.Signals | null, error?: Error }>(resolve => {
    const child = execFile(...command(modulePath), { encoding: 'utf8', timeout: PROBE_TIMEOUT_MS }, (error, stdout) => {
      resolve({ stdout, status: child.exitCode, signal: child.signalCode, error: error !== null && child.exitCode === null && child.signalCode === null ? error : undefined })
    })
  })
  check(modulePath, r.stdout, r.status, r.signal, r.error)
}

function check (modulePath: string, stdout: string | null, status: number | null, signal: NodeJS.Signals | null, error: Error | undefined): void {
  if (status === 0 && stdout?.includes('done') === true) return
  if (error !== undefined && (error as NodeJS.ErrnoException).code !== 'ETIMEDOUT') {
    throw new TokenError('C_Initialize', 'CKR_GENERAL_ERROR', { message: `cannot start a process to check the PKCS#11 module ${modulePath}: ${error.message}`, cause: error })
  }
  const how = error !== undefined || signal === 'SIGTERM'
    ? `did not finish within ${PROBE_TIMEOUT_MS / 1000} s`
    : signal !== null ? `crashed a process (signal ${signal})` : `ended a process with exit code ${String(status)}`
  throw new ModuleProbeError(modulePath, how, softhsmHint(modulePath))
}

/** For SoftHSM2: where its token files are (SOFTHSM2_CONF's directories.tokendir). */
function softhsmHint (modulePath: string): string {
  if (!modulePath.includes('softhsm')) return ''
  const conf = process.env.SOFTHSM2_CONF ?? '/etc/softhsm/softhsm2.conf'
  let dir: string | undefined
  try {
    dir = /^\s*directories\.tokendir\s*=\s*(.+?)\s*$/m.exec(readFileSync(conf, 'utf8'))?.[1]
  } catch {}
  return ` (SoftHSM2 exits the process on a damaged object file; its token directory is ${dir ?? `named in ${conf}`})`
}
