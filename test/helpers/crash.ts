/**
 * Kill -9 of a drive's daemon and what checks need around it, shared by
 * test/mount-reliability.test.ts and the fault runner's crash scenarios: the acknowledging
 * writer (test/fixtures/ack-writer.py) and the bytes it writes, process and mount probes, and
 * `strata mount` right after a kill (which must recover the stale mount itself).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { strata, type RunResult } from './mount.js'

export const PY = '/usr/bin/python3'
const WRITER = fileURLToPath(new URL('../../../test/fixtures/ack-writer.py', import.meta.url))

/**
 * Like mount.ts's run(), but stdin is /dev/null: a quick child (stat of a dead mount) may exit
 * before a stdin pipe is closed, and the EPIPE would be an uncaught error of the caller.
 */
export async function runQuiet (cmd: string, args: string[], options: { timeout?: number } = {}): Promise<RunResult> {
  return await new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''; let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { stderr += `\n(killed: still running after ${options.timeout ?? 300_000} ms)`; child.kill('SIGKILL') }, options.timeout ?? 300_000)
    child.on('close', code => { clearTimeout(timer); resolve({ stdout, stderr, code: code ?? -1 }) })
  })
}

export const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

export function isMounted (mnt: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === mnt)
}

export function daemonPid (dataDir: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(join(dataDir, 'daemon.json'), 'utf8')) as { pid: number }).pid
  } catch {
    return undefined
  }
}

/** A process is gone once /proc has no entry for it (a zombie still has one). */
export async function waitGone (pid: number, boundMs: number): Promise<boolean> {
  const end = Date.now() + boundMs
  while (Date.now() < end) {
    if (!existsSync(`/proc/${pid}`)) return true
    await sleep(50)
  }
  return !existsSync(`/proc/${pid}`)
}

/** Alive and not a zombie. */
export function running (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^\d+ \(.*\) Z /.test(stat)
  } catch {
    return false
  }
}

/** Resolves true when p settles within ms, false otherwise. */
export async function within (p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const r = await Promise.race([p.then(() => true, () => true), new Promise<boolean>(resolve => { timer = setTimeout(() => { resolve(false) }, ms) })])
  clearTimeout(timer)
  return r
}

/** The same bytes as record() in test/fixtures/ack-writer.py. */
export function record (seq: number, size: number): Buffer {
  const head = Buffer.from(String(seq).padStart(8, '0') + ':')
  let body = ''
  for (let i = 0; head.length + body.length < size - 1; i++) body += createHash('sha256').update(`${seq}/${i}`).digest('hex')
  return Buffer.concat([head, Buffer.from(body.slice(0, size - 1 - head.length)), Buffer.from('\n')])
}

export interface Writer { child: ChildProcess, acked: () => number, lines: string[], exited: Promise<number | null> }

/** A line-oriented child: every stdout line is kept, and `onLine` sees it as it arrives. */
export function spawnLines (cmd: string, args: string[], onLine: (line: string) => void = () => {}): { child: ChildProcess, lines: string[], exited: Promise<number | null> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  let buf = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d
    let nl: number
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      lines.push(line)
      onLine(line)
    }
  })
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { lines.push(`stderr: ${d}`) })
  const exited = new Promise<number | null>(resolve => { child.on('exit', code => { resolve(code) }) })
  return { child, lines, exited }
}

/** ack-writer.py appending `size`-byte records to logFile (markers in markerDir). */
export function startWriter (logFile: string, markerDir: string, size: number): Writer {
  let acked = -1
  const p = spawnLines(PY, [WRITER, logFile, markerDir, String(size)], line => {
    const m = /^ACK (\d+)$/.exec(line)
    if (m !== null) acked = Number(m[1])
  })
  return { ...p, acked: () => acked }
}

/**
 * What must be there after a crash: the first `acked + 1` records of logFile byte for byte, and
 * every marker of those records. '' when so, else what is wrong.
 */
export function checkAcked (logFile: string, markerDir: string, size: number, acked: number): string {
  let data: Buffer
  try {
    data = readFileSync(logFile)
  } catch (e) {
    return `${logFile} unreadable: ${(e as Error).message}`
  }
  const want = Buffer.concat(Array.from({ length: acked + 1 }, (_, s) => record(s, size)))
  if (data.length < want.length) return `${logFile} has ${data.length} bytes, ${acked + 1} acked records need ${want.length}`
  if (!data.subarray(0, want.length).equals(want)) return `${logFile}: the acked records differ from what was written`
  for (let s = 0; s <= acked; s += 4) {
    let m: string
    try {
      m = readFileSync(join(markerDir, `r${s}`), 'utf8')
    } catch (e) {
      return `marker r${s} (acked) missing: ${(e as Error).message}`
    }
    if (m !== `${s}\n`) return `marker r${s} holds ${JSON.stringify(m)}`
  }
  return ''
}

/** The most one FUSE write request carries (the mount's max_write): a longer write() is split. */
export const FUSE_MAX_WRITE = 128 * 1024

/**
 * Whether an ack-writer "ERR ..." line is how a client of a killed daemon may fail:
 * - ENOTCONN, or ECONNABORTED for a request in flight;
 * - "EIO short write" for a record longer than FUSE_MAX_WRITE (`recordSize`): the kernel split
 *   the write() and returns the bytes of the requests done before the kill;
 * - plain EIO when the daemon logged no error (`daemonErrors` empty; it logs every EIO it
 *   answers): the kernel ends a request with EIO when the daemon's reply to it cannot be copied
 *   in (fuse_dev_do_write), which a SIGKILL during that reply causes. Seen about once per 100
 *   kills, on a write(2) of a 4 KiB record (the writer names the operation).
 */
export function killedDaemonError (err: string, daemonErrors: string[], recordSize = 0): boolean {
  if (/^ERR \d+ (ENOTCONN|ECONNABORTED) /.test(err)) return true
  if (recordSize > FUSE_MAX_WRITE && /^ERR 5 EIO short write of \d+ bytes/.test(err)) return true
  return /^ERR 5 EIO /.test(err) && daemonErrors.length === 0
}

/** SIGKILL the daemon and wait (bounded) until it has exited; false if it did not. */
export async function killDaemon (pid: number, boundMs = 30_000): Promise<boolean> {
  process.kill(pid, 'SIGKILL')
  for (const end = Date.now() + boundMs; running(pid) && Date.now() < end;) await sleep(10)
  return !running(pid)
}

/**
 * `strata mount` after a kill -9. It must recover the stale mount itself; `immediate` is its
 * error when it did not at once (then it is tried again once the killed process is fully gone).
 */
export async function remountAfterKill (mnt: string, dataDir: string, killed: number): Promise<{ immediate?: string }> {
  const r = await strata(['mount', mnt, '--data', dataDir])
  if (r.code === 0) return {}
  const immediate = `exit ${r.code}; killed pid ${killed} ${running(killed) ? 'still running' : existsSync(`/proc/${killed}`) ? 'a zombie' : 'gone'}: ${r.stderr.trim()}`
  await waitGone(killed, 30_000)
  const again = await strata(['mount', mnt, '--data', dataDir])
  if (again.code !== 0) throw new Error(`strata mount failed even after the killed daemon was gone (exit ${again.code}): ${again.stderr.trim()}`)
  return { immediate }
}

/** `strata fsck --data DIR`: '' when clean, else its output. */
export async function fsckProblems (dataDir: string): Promise<string> {
  const f = await strata(['fsck', '--data', dataDir])
  return f.code === 0 && /fsck: clean/.test(f.stdout) ? '' : `fsck (exit ${f.code}): ${f.stdout}${f.stderr}`.trim()
}
