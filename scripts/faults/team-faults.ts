/**
 * Shared by the network and hostile-peer scenarios: a joined device with its own sync settings,
 * a device's address, fsck and memory of a daemon, and the hostile device as a child process.
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { makeDrive, sh, strata, type Drive } from '../../test/helpers/mount.js'
import { LOOPBACK, ok, status, until } from '../../test/helpers/team.js'
import type { FaultContext } from './harness.js'

/** A device joined to `inviter`'s team, loopback, then `edit` applied to its strata.json "sync"; `joined` is called after the join, before the mount. */
export async function joinWith (ctx: FaultContext, inviter: Drive, name: string, edit: (sync: Record<string, any>) => Record<string, any> = s => s, joined?: () => void): Promise<Drive> {
  const code = (await ok(['invite', '--data', inviter.dataDir])).trim().split('\n').pop() as string
  return await makeDrive(ctx, {
    create: async dataDir => { await ok(['join', code, '--data', dataDir, '--name', name]); joined?.() },
    config: cfg => { const c = LOOPBACK(cfg); return { ...c, sync: edit(c.sync) } }
  })
}

/** Mount again; a failure names the daemon's last log lines (the data dir is gone after teardown). */
export async function remount (d: Drive): Promise<void> {
  try {
    await d.mount()
  } catch (err) {
    const log = readFileSync(`${d.dataDir}/strata.log`, 'utf8').split('\n').filter(l => / (error|info) strata/.test(l)).slice(-5).join(' | ')
    throw new Error(`${(err as Error).message.split('(see')[0] as string}: ${log}`)
  }
}

/** The device's libp2p address with /p2p/<id>, and its id. */
export async function address (d: Drive): Promise<{ addr: string, id: string, port: number }> {
  const s = (await status(d)).sync
  const a = (s.addresses as string[]).find(x => x.startsWith('/ip4/127.0.0.1/tcp/'))
  if (a === undefined) throw new Error(`device ${d.dataDir} listens on no loopback address`)
  const addr = a.includes('/p2p/') ? a : `${a}/p2p/${s.device as string}`
  return { addr, id: s.device, port: Number(a.split('/')[4]) }
}

/** `strata fsck` (through the daemon when mounted) must say clean. */
export async function fsckClean (ctx: FaultContext, d: Drive, who: string): Promise<void> {
  const r = await strata(['fsck', '--data', d.dataDir])
  ctx.check(r.code === 0 && /fsck: clean/.test(r.stdout), `fsck on ${who} is not clean: ${(r.stdout + r.stderr).trim().split('\n').slice(-6).join(' | ')}`)
}

/** Resident memory of a process (bytes), from /proc. */
export function rss (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (m === null) throw new Error(`no VmRSS for ${pid}`)
  return Number(m[1]) * 1024
}

export function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

/** Write `bytes` random bytes to a file in a mount (fsync'ed) and return its sha256. */
export async function writeRandom (path: string, bytes: number): Promise<string> {
  const r = await sh(`head -c ${bytes} /dev/urandom > "${path}.tmp" && sync "${path}.tmp" && mv "${path}.tmp" "${path}" && sha256sum "${path}" | cut -d' ' -f1`)
  if (r.code !== 0) throw new Error(`writing ${path} failed: ${r.stderr}`)
  return r.stdout.trim()
}

/** Overwrite a file in place (same inode: truncate and write, fsync'ed) with random bytes; its sha256. */
export async function overwriteRandom (path: string, bytes: number): Promise<string> {
  const r = await sh(`head -c ${bytes} /dev/urandom > "${path}" && sync "${path}" && sha256sum "${path}" | cut -d' ' -f1`)
  if (r.code !== 0) throw new Error(`writing ${path} failed: ${r.stderr}`)
  return r.stdout.trim()
}

export async function sha (path: string): Promise<string | undefined> {
  const r = await sh(`sha256sum "${path}" | cut -d' ' -f1`)
  return r.code === 0 ? r.stdout.trim() : undefined
}

/** A change on `from` still reaches `to` (the honest devices keep syncing). */
export async function stillSyncing (ctx: FaultContext, from: Drive, to: Drive, label: string, ms = 60_000): Promise<void> {
  const name = `after-${label}-${ctx.rng.int(0, 1e9)}.txt`
  const want = await writeRandom(`${from.mnt}/${name}`, 4096)
  ctx.check(await until(async () => await sha(`${to.mnt}/${name}`) === want, ms), `a change made after ${label} did not reach the other honest device within ${ms / 1000} s`)
}

export interface Hostile {
  peer: Promise<string>
  /** The latest `{"progress": …}` line of a staying device. */
  progress: () => Record<string, any> | undefined
  result: Promise<Record<string, any>>
  lines: string[]
  pid: number
  stop: () => Promise<void>
}

const TOOL = fileURLToPath(new URL('./hostile-peer.js', import.meta.url))

/** Start the hostile device (hostile-peer.ts) on `dataDir` against `target`; stopped at teardown. */
export function hostile (ctx: FaultContext, dataDir: string, target: string, mode: string, options: { stay?: boolean, also?: string[] } = {}): Hostile {
  const args = [TOOL, '--data', dataDir, '--target', target, '--mode', mode, ...(options.stay === true ? ['--stay'] : []), ...(options.also ?? []).flatMap(a => ['--also', a])]
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  let latest: Record<string, any> | undefined
  let stderr = ''
  let onPeer: (p: string) => void = () => {}
  let onResult: (r: Record<string, any>) => void = () => {}
  let onError: (e: Error) => void = () => {}
  const peer = new Promise<string>((resolve, reject) => { onPeer = resolve; onError = reject })
  const result = new Promise<Record<string, any>>((resolve, reject) => { onResult = resolve; const prev = onError; onError = e => { prev(e); reject(e) } })
  peer.catch(() => {}); result.catch(() => {})
  let buf = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 1)
      if (!line.startsWith('{"progress"')) lines.push(line)
      try {
        const o = JSON.parse(line)
        if (o.ready !== undefined) onPeer(o.ready.peer)
        if (o.progress !== undefined) latest = o.progress
        if (o.result !== undefined) onResult(o.result)
        if (o.error !== undefined) onError(new Error(`hostile device: ${String(o.error)}`))
      } catch {}
    }
  })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-4000) })
  child.on('exit', code => { onError(new Error(`hostile device exited (${String(code)}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`)) })
  const pid = child.pid as number
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise<void>(resolve => { child.once('exit', () => { resolve() }) })
    child.kill('SIGTERM')
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 5000)
    await exited
    clearTimeout(timer)
  }
  ctx.teardown(stop)
  return { peer, result, lines, pid, stop, progress: () => latest }
}
