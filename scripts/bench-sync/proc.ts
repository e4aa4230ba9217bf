/**
 * Process plumbing for bench:sync: bounded child processes, stopping by pid (only pids this run
 * started), a LIFO cleanup list that runs once, free loopback ports, and kernel TCP byte counters.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:net'

export const t0 = performance.now()
export const elapsed = (): number => (performance.now() - t0) / 1000
export function log (msg: string): void { process.stderr.write(`[bench:sync ${elapsed().toFixed(0).padStart(4)} s] ${msg}\n`) }
export const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** A phase or command ran past its bound. */
export class BenchTimeoutError extends Error {
  override readonly name = 'BenchTimeoutError'
  readonly code = 'ERR_BENCH_TIMEOUT'
}

/** A command exited non-zero (or by a signal). */
export class CommandError extends Error {
  override readonly name = 'CommandError'
  readonly code = 'ERR_BENCH_COMMAND'
  constructor (message: string, readonly stdout: string, readonly stderr: string) { super(message) }
}

export interface RunResult { stdout: string, stderr: string, code: number | null, ms: number }
export interface RunOptions { timeoutMs?: number, env?: NodeJS.ProcessEnv, allowFail?: boolean }

const children = new Set<ChildProcess>()

/** Run a program (no shell unless asked), bounded in time; rejects on a non-zero exit. */
export async function run (cmd: string, args: string[], o: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = o.timeoutMs ?? 300_000
  return await new Promise((resolve, reject) => {
    const start = performance.now()
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env })
    children.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, timeoutMs)
    child.on('error', err => { clearTimeout(timer); children.delete(child); reject(err) })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      const ms = performance.now() - start
      if (timedOut) reject(new BenchTimeoutError(`${cmd} ${args.join(' ')}: timed out after ${(timeoutMs / 1000).toFixed(0)} s`))
      else if ((code !== 0 || signal !== null) && o.allowFail !== true) reject(new CommandError(`${cmd} ${args.join(' ')}: exit ${String(code ?? signal)}: ${(stderr + stdout).trim().slice(-2000)}`, stdout, stderr))
      else resolve({ stdout, stderr, code, ms })
    })
  })
}

/** SIGKILL every short-lived child still running (they are ours). */
export function killChildren (): void {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
}

export function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

async function gone (pid: number): Promise<boolean> {
  if (!alive(pid)) return true
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  return stat === '' || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')
}

export async function waitExit (pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await gone(pid)) return true
    await sleep(50)
  }
  return await gone(pid)
}

/** SIGTERM, then SIGKILL after 10 s: only the pid given (a process this run started). */
export async function stopPid (pid: number, what: string): Promise<void> {
  if (await gone(pid)) return
  try { process.kill(pid, 'SIGTERM') } catch { return }
  if (await waitExit(pid, 10_000)) return
  log(`${what} (pid ${pid}) ignored SIGTERM: SIGKILL`)
  try { process.kill(pid, 'SIGKILL') } catch {}
  await waitExit(pid, 5000)
}

/** What must be undone, run last-in first-out, once, also after a failure or a signal. */
export class Cleanups {
  private readonly steps: Array<{ what: string, fn: () => Promise<void> }> = []
  private running: Promise<void> | undefined

  push (what: string, fn: () => Promise<void>): void { this.steps.push({ what, fn }) }

  async run (): Promise<void> {
    this.running ??= (async () => {
      killChildren()
      for (let step = this.steps.pop(); step !== undefined; step = this.steps.pop()) {
        try { await step.fn() } catch (err) { log(`cleanup ${step.what}: ${(err as Error).message}`) }
      }
    })()
    await this.running
  }
}

/** A TCP port free on 127.0.0.1 right now (the kernel's choice). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      server.close(() => { resolve(port) })
    })
  })
}

export async function mounted (mnt: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  const esc = mnt.replace(/[ \t\n\\]/g, c => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)
  return info.split('\n').some(l => l.split(' ')[4] === esc)
}

/**
 * TCP payload bytes received (kernel `tcp_info.bytes_received`) by the established sockets of
 * process `pid` that talk to the other device: peer port `peerPort` (it dialled out) or local
 * port `localPort` (it accepted). Counters of a connection that closed are lost; the caller
 * reports how many sockets it saw.
 */
export async function tcpReceived (pid: number, peerPort: number, localPort: number): Promise<{ bytes: number, sockets: number }> {
  const r = await run('ss', ['-tinpH', 'state', 'established'], { timeoutMs: 15_000 })
  // One socket = a line starting with a non-space, then indented continuation lines.
  const sockets: string[] = []
  for (const line of r.stdout.split('\n')) {
    if (line === '') continue
    if (/^\s/.test(line) && sockets.length > 0) sockets[sockets.length - 1] += ' ' + line.trim()
    else sockets.push(line.trim())
  }
  let bytes = 0
  let count = 0
  for (const s of sockets) {
    if (!s.includes(`pid=${pid},`)) continue
    const [local, peer] = s.split(/\s+/).filter(tok => /^(\[[0-9a-f:.%]+\]|[\d.]+|\*):\d+$/i.test(tok))
    const portOf = (a: string | undefined): number => Number(a?.slice(a.lastIndexOf(':') + 1) ?? NaN)
    if (portOf(peer) !== peerPort && portOf(local) !== localPort) continue
    const m = /bytes_received:(\d+)/.exec(s)
    bytes += m === null ? 0 : Number(m[1])
    count++
  }
  return { bytes, sockets: count }
}
