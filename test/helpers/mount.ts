/**
 * Real mounts for tests: `strata init` (its own SoftHSM2 token inside the data dir) and
 * `strata mount` (a real background daemon) on a fresh temp mount point, always unmounted in
 * teardown — `strata unmount`, else `fusermount -u -z` and SIGKILL of the daemon we started.
 */
import { execFile, spawn } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'

const exec = promisify(execFile)
export const BIN = fileURLToPath(new URL('../../../bin/strata.js', import.meta.url))

interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

export interface RunResult { stdout: string, stderr: string, code: number }

/** Run a program (never blocking this process: the daemon may need it). */
export async function run (cmd: string, args: string[], options: { cwd?: string, env?: NodeJS.ProcessEnv, input?: string, timeout?: number } = {}): Promise<RunResult> {
  return await new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''; let stderr = ''
    child.stdout.setEncoding('utf8').on('data', d => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', d => { stderr += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, options.timeout ?? 300_000)
    child.on('close', code => { clearTimeout(timer); resolve({ stdout, stderr, code: code ?? -1 }) })
    child.stdin.on('error', () => {}) // a child that exits at once closes its stdin: EPIPE
    child.stdin.end(options.input ?? '')
  })
}

export async function sh (script: string, options: { cwd?: string, env?: NodeJS.ProcessEnv, timeout?: number } = {}): Promise<RunResult> {
  return await run('bash', ['-euo', 'pipefail', '-c', script], options)
}

export async function strata (args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return await run(process.execPath, [BIN, ...args], { env })
}

/** `strata ARGS` inside network namespace `netns` only (the mount namespace stays this one's). */
export async function strataIn (netns: string, args: string[]): Promise<RunResult> {
  return await run('nsenter', [`--net=/run/netns/${netns}`, process.execPath, BIN, ...args])
}

export interface Drive {
  mnt: string
  dataDir: string
  root: string
  pid: () => number | undefined
  mount: () => Promise<void>
  unmount: () => Promise<void>
}

function daemonPid (dataDir: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(join(dataDir, 'daemon.json'), 'utf8')) as { pid: number }).pid
  } catch {
    return undefined
  }
}

async function mounted (mnt: string): Promise<boolean> {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === mnt)
}

export interface MakeDriveOptions {
  init?: string[]
  /** Instead of `strata init`: make the data dir another way (e.g. `strata join`). */
  create?: (dataDir: string) => Promise<void>
  /** Edit strata.json before the first mount. */
  config?: (cfg: Record<string, any>) => Record<string, any>
  /** Run the daemon inside this network namespace (`ip netns`); its mount is visible here. */
  netns?: string
}

export async function makeDrive (t: Teardownable, options: MakeDriveOptions = {}): Promise<Drive> {
  const root = mkdtempSync(join(tmpdir(), 'strata-drive-'))
  const dataDir = join(root, 'data')
  const mnt = join(root, 'mnt')
  mkdirSync(mnt)
  if (options.create !== undefined) {
    await options.create(dataDir)
  } else {
    const init = await strata(['init', '--data', dataDir, ...(options.init ?? [])])
    if (init.code !== 0) throw new Error(`strata init failed: ${init.stderr}`)
  }
  if (options.config !== undefined) {
    const file = join(dataDir, 'strata.json')
    writeFileSync(file, JSON.stringify(options.config(JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>), null, 2))
  }
  let lastPid: number | undefined
  const drive: Drive = {
    mnt,
    dataDir,
    root,
    pid: () => daemonPid(dataDir) ?? lastPid,
    mount: async () => {
      const args = ['mount', mnt, '--data', dataDir]
      const r = options.netns !== undefined ? await strataIn(options.netns, args) : await strata(args)
      if (r.code !== 0) throw new Error(`strata mount failed (${r.code}): ${r.stderr}${r.stdout}`)
      lastPid = daemonPid(dataDir)
    },
    unmount: async () => {
      const r = await strata(['unmount', mnt])
      if (r.code !== 0) throw new Error(`strata unmount failed (${r.code}): ${r.stderr}`)
    }
  }
  t.teardown(async () => {
    if (await mounted(mnt)) {
      const r = await strata(['unmount', mnt])
      if (r.code !== 0 && await mounted(mnt)) await exec('fusermount', ['-u', '-z', mnt]).catch(() => {})
    }
    const pid = drive.pid()
    if (pid !== undefined && isDaemonOf(pid, root)) { try { process.kill(pid, 'SIGKILL') } catch {} }
    rmSync(root, { recursive: true, force: true })
  })
  await drive.mount()
  return drive
}

/**
 * Is pid still a daemon serving a data dir under root? A daemon that died long ago may have
 * left its pid to an unrelated process, which a teardown must not kill.
 */
function isDaemonOf (pid: number, root: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some(arg => arg.startsWith(root))
  } catch {
    return false
  }
}

/** sha256 of every file under a directory, by relative path (plus symlink targets). */
export async function treeHash (dir: string): Promise<string> {
  const r = await sh(`cd "${dir}" && find . -mindepth 1 \\( -type f -printf 'f %P %s %m\\n' -exec sha256sum {} + \\) -o \\( -type l -printf 'l %P -> %l\\n' \\) -o \\( -type d -printf 'd %P %m\\n' \\) | sort`)
  if (r.code !== 0) throw new Error(r.stderr)
  return r.stdout
}
