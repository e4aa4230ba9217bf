/**
 * Faults of the PKCS#11 token: a wrong PIN; the SoftHSM token directory removed under a running
 * daemon and restored; the token's object files corrupted; a PKCS#11 layer below our code
 * (scripts/faults/pkcs11-fault) that fails the Nth call with CKR_DEVICE_ERROR or stalls calls;
 * the team disabled mid-workload and enabled again. Each keeps a workload running, then checks
 * that nothing acknowledged was lost, no reader got wrong bytes, and fsck is clean.
 */
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import { BIN, makeDrive, run, sh, strata, type Drive } from '../../../test/helpers/mount.js'
import { until } from '../../../test/helpers/team.js'
import { request, socketPath } from '../../../daemon/control.js'
import type { FsckReport } from '../../../fs/volume/index.js'
import type { FaultContext, Scenario } from '../harness.js'
import { startReader, startWriter, unexpected, verifyAcked, writeAcked, writeSet, type Acked } from '../workload.js'

const exec = promisify(execFile)
const REPO = fileURLToPath(new URL('../../../../', import.meta.url))
const SHIM_BUILD = join(REPO, 'scripts/faults/pkcs11-fault/build.sh')

let shim: Promise<string> | undefined

/** Build the fault-injecting PKCS#11 module once per run; its path. */
async function faultModule (): Promise<string> {
  shim ??= exec('bash', [SHIM_BUILD]).then(r => r.stdout.trim().split('\n').pop() as string)
  return await shim
}

let template: Promise<string> | undefined

/**
 * A data dir made by `strata init` once per run (removed when the runner exits). Each drive
 * gets a fresh copy with its own token directory: iterations stay independent, without paying
 * for an init each.
 */
async function templateDataDir (): Promise<string> {
  template ??= (async () => {
    const root = mkdtempSync(join(tmpdir(), 'strata-fault-token-template-'))
    process.once('exit', () => { rmSync(root, { recursive: true, force: true }) })
    const r = await strata(['init', '--data', join(root, 'data')])
    if (r.code !== 0) throw new Error(`strata init failed: ${r.stderr.trim()}`)
    return join(root, 'data')
  })()
  return await template
}

async function copyTemplate (dataDir: string): Promise<void> {
  const from = await templateDataDir()
  cpSync(from, dataDir, { recursive: true })
  // SoftHSM's configuration names its token directory absolutely: point the copy at its own.
  const conf = join(dataDir, 'softhsm2.conf')
  writeFileSync(conf, readFileSync(conf, 'utf8').split(from).join(dataDir), { mode: 0o600 })
}

interface TokenDriveOptions {
  /** How long unwrapped NEKs stay cached: short, so the workload reaches the token often. */
  nekCacheMs: number
  /** Mount through the fault module (its control file is `fault.ctl` in drive.root). */
  faultModule?: boolean
}

interface TokenDrive extends Drive {
  /** Replace the fault module's directives (see fault-pkcs11.c). */
  faults: (directives: string) => void
  /** Lines the fault module logged (one per injected fault) since the last `clearInjected`. */
  injected: () => string[]
  clearInjected: () => void
}

/** A drive with sync off (token faults need no peers) and the given key tunables. */
async function tokenDrive (ctx: FaultContext, options: TokenDriveOptions): Promise<TokenDrive> {
  const module = options.faultModule === true ? await faultModule() : undefined
  let root = ''
  if (module !== undefined) {
    // The daemon inherits `strata mount`'s environment: name the control and log files there.
    const saved = { ctl: process.env.STRATA_FAULT_PKCS11_CONTROL, log: process.env.STRATA_FAULT_PKCS11_LOG }
    ctx.teardown(() => { restoreEnv('STRATA_FAULT_PKCS11_CONTROL', saved.ctl); restoreEnv('STRATA_FAULT_PKCS11_LOG', saved.log) })
    root = ctx.tmp('strata-fault-pkcs11-')
    process.env.STRATA_FAULT_PKCS11_CONTROL = join(root, 'fault.ctl')
    process.env.STRATA_FAULT_PKCS11_LOG = join(root, 'fault.log')
  }
  const d = await makeDrive(ctx, {
    create: copyTemplate,
    config: cfg => ({
      ...cfg,
      token: module !== undefined ? { ...cfg.token, module } : cfg.token,
      keys: { nekCacheMs: options.nekCacheMs },
      sync: { enabled: false }
    })
  })
  return {
    ...d,
    faults: directives => { writeFileSync(join(root, 'fault.ctl.tmp'), directives + '\n'); renameSync(join(root, 'fault.ctl.tmp'), join(root, 'fault.ctl')) },
    injected: () => existsSync(join(root, 'fault.log')) ? readFileSync(join(root, 'fault.log'), 'utf8').trim().split('\n').filter(Boolean) : [],
    // The module opens its log for each line it appends: removing the file starts a new count.
    clearInjected: () => { rmSync(join(root, 'fault.log'), { force: true }) }
  }
}

function restoreEnv (name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
}

/** `strata status` answers (with the status or a one-line error) within a bound: the daemon is not stuck. */
async function statusAnswers (ctx: FaultContext, d: Drive, what: string): Promise<string> {
  const r = await run(process.execPath, [BIN, 'status', '--json', '--data', d.dataDir], { timeout: 60_000 })
  ctx.check(r.code !== -1, `strata status did not answer within 60 s ${what}`)
  return r.code === 0 ? r.stdout : r.stderr.trim()
}

/** A new file (in `dir` of the mount) written and read back once the fault is gone (bounded wait). */
async function writesAgain (ctx: FaultContext, d: Drive, what: string, dir = ''): Promise<Acked> {
  let last = ''
  let probe: Acked | undefined
  const ok = await until(async () => {
    try {
      probe = await writeAcked(d.mnt, join(dir, `probe-${randomBytes(4).toString('hex')}.bin`), randomBytes(ctx.rng.int(1000, 300_000)))
      return (await verifyAcked(d.mnt, [probe])).length === 0
    } catch (err) {
      last = String((err as Error).message)
      return false
    }
  }, 60_000)
  ctx.check(ok && probe !== undefined, `writes do not work again ${what}: ${last}`)
  return probe as Acked
}

/**
 * After a fault: acknowledged data intact, the same daemon serving, fsck clean. The fsck is the
 * one `strata fsck` asks a mounted drive's daemon for (every block verified), requested over its
 * control socket: the same check without starting a CLI process in each of 50 iterations.
 */
async function checkAfter (ctx: FaultContext, d: Drive, pid: number | undefined, files: Acked[]): Promise<void> {
  const problems = await verifyAcked(d.mnt, files)
  ctx.check(problems.length === 0, `acknowledged data lost or changed: ${problems.slice(0, 5).join('; ')}`)
  ctx.check(pid !== undefined && d.pid() === pid, `the daemon was restarted or died (pid ${pid ?? '?'} -> ${d.pid() ?? 'none'})`)
  const fsck = await request(socketPath(d.dataDir), 'fsck', { repair: false, quick: false }, undefined, 120_000) as FsckReport
  ctx.check(fsck.ok, `fsck after the fault: ${fsck.problems.slice(0, 5).map(p => `${p.kind} ${p.path} ${p.detail}`).join(' | ')}`)
  ctx.log(`${files.length} acknowledged files intact, daemon pid ${pid ?? '?'} still serving, fsck clean (${fsck.inodes} inodes, ${fsck.blocks} blocks)`)
}

/** The daemon's log from byte `from` on (a drive shared by iterations: only this one's lines). */
function daemonLog (d: Drive, from = 0): string {
  try { return readFileSync(join(d.dataDir, 'strata.log')).subarray(from).toString('utf8') } catch { return '' }
}

function logSize (d: Drive): number {
  try { return statSync(join(d.dataDir, 'strata.log')).size } catch { return 0 }
}

/**
 * Start a writer (files named `${prefix}<n>.bin`) and a reader (over `before`), run `during`,
 * stop both; fail on wrong bytes or unexpected errors.
 */
async function withWorkload (ctx: FaultContext, d: Drive, before: Acked[], allowed: string[], during: (w: ReturnType<typeof startWriter>, r: ReturnType<typeof startReader>) => Promise<void>, prefix = 'w-'): Promise<Acked[]> {
  const w = startWriter(d.mnt, { rng: ctx.rng, maxSize: 600_000, prefix })
  const r = startReader(d.mnt, before)
  let failure: unknown
  try {
    await during(w, r)
  } catch (err) {
    failure = err
    ctx.log(`daemon log tail:\n${daemonLog(d).trim().split('\n').filter(l => !/^\s*(unique|   unique|getattr|fgetattr|flush|release|write|read|open|create|lookup)/.test(l)).slice(-25).join('\n')}`)
  }
  const wr = await w.stop()
  const rr = await r.stop()
  if (failure !== undefined) throw failure
  ctx.log(`workload: ${wr.acked.length}/${wr.attempts} writes acknowledged, ${rr.reads} reads verified, errors: ${summarise([...wr.errors, ...rr.errors])}`)
  ctx.check(rr.wrong.length === 0, `a reader got wrong bytes: ${rr.wrong.slice(0, 3).join('; ')}`)
  const bad = unexpected([...wr.errors, ...rr.errors], allowed)
  ctx.check(bad.length === 0, `applications got errors other than ${allowed.join('/')}: ${bad.join(', ')}`)
  return wr.acked
}

function summarise (errors: ReadonlyArray<{ op: string, code: string }>): string {
  const counts = new Map<string, number>()
  for (const e of errors) counts.set(`${e.op} ${e.code}`, (counts.get(`${e.op} ${e.code}`) ?? 0) + 1)
  return counts.size === 0 ? 'none' : [...counts].map(([k, n]) => `${n}x ${k}`).join(', ')
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Token object files (`token/<uuid>/*.object`): token.object and one per key. */
function objectFiles (tokenDir: string): string[] {
  const out: string[] = []
  for (const slot of readdirSync(tokenDir)) {
    const dir = join(tokenDir, slot)
    if (!statSync(dir).isDirectory()) continue
    for (const f of readdirSync(dir)) if (f.endsWith('.object')) out.push(join(dir, f))
  }
  return out.sort()
}

/** Flip one bit or truncate: what was done, for the log. */
function corrupt (ctx: FaultContext, file: string): string {
  const bytes = readFileSync(file)
  if (ctx.rng.next() < 0.5) {
    const at = ctx.rng.int(0, bytes.byteLength - 1)
    const bit = ctx.rng.int(0, 7)
    bytes[at] = (bytes[at] as number) ^ (1 << bit)
    writeFileSync(file, bytes)
    return `bit ${bit} of byte ${at} flipped in ${file.split('/').pop() ?? ''}`
  }
  const len = ctx.rng.int(0, bytes.byteLength - 1)
  truncateSync(file, len)
  return `${file.split('/').pop() ?? ''} truncated to ${len} of ${bytes.byteLength} bytes`
}

/** One drive behind the fault module for every iteration, with files known from before. */
interface FaultModuleDrive { d: TokenDrive, before: Acked[], pid: number }

const tokenDeviceErrorNthCall: Scenario<FaultModuleDrive> = {
  name: 'token-device-error-nth-call',
  injects: 'a PKCS#11 layer below Strata fails the Nth call (random N, or every Kth) with CKR_DEVICE_ERROR during a workload: a retry or a clean EIO, nothing lost',
  randomised: true,
  prepare: async ctx => {
    const d = await tokenDrive(ctx, { nekCacheMs: 100, faultModule: true })
    const before = await writeSet(d.mnt, 2, { rng: ctx.rng, maxSize: 300_000 })
    return { d, before, pid: d.pid() ?? ctx.fail('no daemon pid') }
  },
  run: async (ctx, { d, before, pid }) => {
    // This iteration's files live in their own directory, removed once checked, so the shared
    // drive does not grow; the injection count and the log are this iteration's only.
    const dir = `it-${ctx.iteration}`
    mkdirSync(join(d.mnt, dir))
    d.clearInjected()
    const logFrom = logSize(d)
    const directive = ctx.rng.next() < 0.6 ? `fail ${ctx.rng.int(1, 12)} CKR_DEVICE_ERROR` : `fail-every ${ctx.rng.int(1, 4)} CKR_DEVICE_ERROR`
    ctx.log(`fault module: ${directive}`)
    const acked = await withWorkload(ctx, d, before, ['EIO'], async (w, r) => {
      ctx.check(await until(async () => w.ok >= 1 && r.ok >= 1, 60_000), 'the workload made no progress before the fault')
      d.faults(directive)
      ctx.check(await until(async () => d.injected().length > 0, 60_000), 'the fault module injected nothing (no token call reached it)')
      await sleep(800)
      d.faults('off')
      await writesAgain(ctx, d, 'after the device errors stopped', dir)
    }, `${dir}/w-`)
    const injected = d.injected()
    ctx.log(`injected ${injected.length}: ${injected.slice(0, 4).join('; ')}`)
    ctx.check(/CKR_DEVICE_ERROR/.test(daemonLog(d, logFrom)), 'the daemon log does not name CKR_DEVICE_ERROR for this injection')
    await checkAfter(ctx, d, pid, [...before, ...acked])
    rmSync(join(d.mnt, dir), { recursive: true })
  }
}

export const tokenScenarios: Scenario[] = [
  {
    name: 'token-wrong-pin-at-mount',
    injects: 'a wrong PIN in the PIN file at mount: a named error, no mount, the data intact with the right PIN',
    run: async ctx => {
      const d = await makeDrive(ctx, { create: copyTemplate })
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
  },
  {
    name: 'token-dir-removed-and-restored',
    injects: 'the SoftHSM token directory moved away under a running workload, then restored: EIO/EACCES meanwhile, recovery without a restart, nothing lost',
    run: async ctx => {
      const d = await tokenDrive(ctx, { nekCacheMs: 1000 })
      const before = await writeSet(d.mnt, 3, { rng: ctx.rng, maxSize: 1_200_000 })
      const pid = d.pid()
      const tokenDir = join(d.dataDir, 'token')
      const away = join(d.dataDir, 'token.away')
      ctx.teardown(() => { if (existsSync(away) && !existsSync(tokenDir)) renameSync(away, tokenDir) })
      const acked = await withWorkload(ctx, d, before, ['EIO', 'EACCES'], async (w, r) => {
        ctx.check(await until(async () => w.ok >= 2 && r.ok >= 2, 60_000), 'the workload made no progress before the fault')
        renameSync(tokenDir, away)
        ctx.log('token directory moved away')
        // Once the NEK cache period (1 s) is over, reads and writes must fail cleanly.
        const failed = await until(async () => w.errors.length > 0 && r.errors.length > 0, 60_000)
        ctx.check(failed, `no read and write failed while the token was gone (${w.errors.length} write, ${r.errors.length} read errors)`)
        const st = await statusAnswers(ctx, d, 'while the token is gone')
        ctx.log(`status while the token is gone: ${st.split('\n')[0]?.slice(0, 160) ?? ''}`)
        await sleep(ctx.quick ? 1000 : ctx.rng.int(1000, 3000))
        renameSync(away, tokenDir)
        ctx.log('token directory restored')
        await writesAgain(ctx, d, 'after the token directory was restored')
        const [w0, r0] = [w.ok, r.ok]
        ctx.check(await until(async () => w.ok > w0 && r.ok > r0, 60_000), 'the workload did not resume after the token came back')
      })
      const log = daemonLog(d)
      ctx.check(/token "[^"]+" is unreachable/.test(log), 'the daemon log does not name the unreachable token')
      ctx.check(/reachable again/.test(log), 'the daemon log does not report the token coming back')
      await checkAfter(ctx, d, pid, [...before, ...acked])
    }
  },
  {
    name: 'token-objects-corrupted',
    injects: "a bit flip or truncation in the token's object files (unmounted): a named error or correct data, never wrong bytes; the restored files bring the data back",
    run: async ctx => {
      const d = await tokenDrive(ctx, { nekCacheMs: 60_000 })
      const before = await writeSet(d.mnt, 2, { rng: ctx.rng, maxSize: 1_200_000 })
      await d.unmount()
      const tokenDir = join(d.dataDir, 'token')
      const saved = join(d.root, 'token.saved')
      cpSync(tokenDir, saved, { recursive: true })
      const cases = ctx.quick ? 2 : 4
      for (let i = 0; i < cases; i++) {
        const files = objectFiles(tokenDir)
        const what = corrupt(ctx, ctx.rng.pick(files))
        const r = await strata(['mount', d.mnt, '--data', d.dataDir])
        const line = r.stderr.trim().split('\n')[0] ?? ''
        ctx.log(`${what}: mount exit ${r.code}${r.code === 0 ? '' : `: ${line}`}`)
        if (r.code !== 0) {
          // 4 PIN, 5 token, 6 team key, 8 stored data failed verification (exit-codes.ts); 1 is a crash.
          ctx.check([4, 5, 6, 8].includes(r.code), `mount failed without a named token error (exit ${r.code}): ${r.stderr.trim()}`)
          ctx.check(/token|PIN|team key/i.test(line), `the error does not name the token: ${line}`)
          ctx.check(!readFileSync('/proc/self/mounts', 'utf8').includes(` ${d.mnt} `), 'the mountpoint is mounted after a failed mount')
        } else {
          // The flip hit bytes SoftHSM does not need: every read is right or fails cleanly.
          const r2 = startReader(d.mnt, before, { pauseMs: 0 })
          await until(async () => r2.ok + r2.errors.length >= before.length * 2, 60_000)
          const rr = await r2.stop()
          ctx.check(rr.wrong.length === 0, `wrong bytes from a corrupted token: ${rr.wrong.join('; ')}`)
          ctx.check(unexpected(rr.errors, ['EIO', 'EACCES']).length === 0, `unexpected read errors: ${unexpected(rr.errors, ['EIO', 'EACCES']).join(', ')}`)
          await d.unmount()
        }
        rmSync(tokenDir, { recursive: true, force: true })
        cpSync(saved, tokenDir, { recursive: true })
      }
      await d.mount()
      await checkAfter(ctx, d, d.pid(), before)
    }
  },
  tokenDeviceErrorNthCall,
  {
    name: 'token-stalls',
    injects: 'a PKCS#11 layer below Strata stalls token calls for 3 s each: slow but correct operations, no hang, status still answers',
    run: async ctx => {
      const d = await tokenDrive(ctx, { nekCacheMs: 500, faultModule: true })
      const before = await writeSet(d.mnt, 2, { rng: ctx.rng, maxSize: 800_000 })
      const pid = d.pid()
      const stalls = ctx.quick ? 2 : 5
      const acked = await withWorkload(ctx, d, before, [], async (w, r) => {
        ctx.check(await until(async () => w.ok >= 1 && r.ok >= 1, 60_000), 'the workload made no progress before the fault')
        d.faults(`stall 3000 ${stalls}`)
        ctx.check(await until(async () => d.injected().length > 0, 60_000), 'the fault module stalled nothing')
        const t0 = Date.now()
        const st = await statusAnswers(ctx, d, 'while token calls stall')
        ctx.check(st.startsWith('{'), `strata status failed while token calls stall: ${st}`)
        ctx.log(`status answered in ${Date.now() - t0} ms while calls stall`)
        ctx.check(await until(async () => d.injected().length >= stalls, 120_000), `only ${d.injected().length} of ${stalls} stalls happened`)
        const [w0, r0] = [w.ok, r.ok]
        ctx.check(await until(async () => w.ok > w0 && r.ok > r0, 60_000), 'the workload did not continue after the stalls')
      })
      await checkAfter(ctx, d, pid, [...before, ...acked])
    }
  },
  {
    name: 'team-disabled-mid-workload',
    injects: '`strata team disable` during a workload: EACCES for reads and writes; `strata team enable`: work continues, nothing lost',
    run: async ctx => {
      const d = await tokenDrive(ctx, { nekCacheMs: 60_000 })
      const before = await writeSet(d.mnt, 3, { rng: ctx.rng, maxSize: 1_200_000 })
      const pid = d.pid()
      const acked = await withWorkload(ctx, d, before, ['EACCES'], async (w, r) => {
        ctx.check(await until(async () => w.ok >= 2 && r.ok >= 2, 60_000), 'the workload made no progress before the fault')
        const dis = await strata(['team', 'disable', '--data', d.dataDir])
        ctx.check(dis.code === 0, `strata team disable failed: ${dis.stderr.trim()}`)
        const [we, re] = [w.errors.length, r.errors.length]
        ctx.check(await until(async () => w.errors.length > we && r.errors.length > re, 30_000), 'reads and writes did not fail after the team was disabled')
        const st = await statusAnswers(ctx, d, 'while the team is disabled')
        ctx.check(/"team":\s*"disabled"/.test(st), `status does not report the team disabled: ${st.slice(0, 200)}`)
        await sleep(ctx.quick ? 500 : 1500)
        const en = await strata(['team', 'enable', '--data', d.dataDir])
        ctx.check(en.code === 0, `strata team enable failed: ${en.stderr.trim()}`)
        await writesAgain(ctx, d, 'after the team was enabled')
        const [w0, r0] = [w.ok, r.ok]
        ctx.check(await until(async () => w.ok > w0 && r.ok > r0, 60_000), 'the workload did not resume after enable')
      })
      await checkAfter(ctx, d, pid, [...before, ...acked])
    }
  }
]
