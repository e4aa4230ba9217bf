/**
 * The local control API of a running daemon: JSON lines over a Unix socket (mode 0600) named in
 * `DIR/daemon.json`. Request `{"id":1,"op":"status","args":{}}`; answers
 * `{"id":1,"progress":{...}}`* then `{"id":1,"ok":true,"result":...}` or
 * `{"id":1,"ok":false,"error":{"name","code","message"}}`. Requests are size-limited and
 * schema-checked: a bad line gets an error answer, never a crash.
 */
import { createServer, createConnection, type Server, type Socket } from 'node:net'
import { chmod, readFile, rm, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'

const MAX_LINE = 64 * 1024

export type Handler = (args: Record<string, unknown>, progress: (p: unknown) => void) => Promise<unknown>

/** `ticks`: the process's start time (clock ticks after boot), telling it from a later process given the same pid. */
export interface DaemonInfo { pid: number, socket: string, mountpoint: string, started: string, ticks?: number }

export const DAEMON_FILE = 'daemon.json'

/** A socket path short enough for sun_path (108 bytes). */
export function socketPath (dataDir: string): string {
  const p = join(dataDir, 'control.sock')
  return Buffer.byteLength(p) < 100 ? p : join('/tmp', `strata-${createHash('sha256').update(dataDir).digest('hex').slice(0, 16)}.sock`)
}

export class ControlServer {
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()

  constructor (private readonly handlers: Record<string, Handler>, private readonly onError: (err: Error) => void = () => {}) {}

  async listen (path: string): Promise<void> {
    await rm(path, { force: true })
    const server = createServer(sock => { this.serve(sock) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => { server.off('error', reject); resolve() })
    })
    await chmod(path, 0o600)
    this.server = server
  }

  private serve (sock: Socket): void {
    this.sockets.add(sock)
    sock.on('close', () => this.sockets.delete(sock))
    sock.on('error', () => {})
    let buf = ''
    sock.setEncoding('utf8')
    sock.on('data', (chunk: string) => {
      buf += chunk
      if (buf.length > MAX_LINE && !buf.includes('\n')) {
        this.send(sock, { id: null, ok: false, error: { name: 'ControlError', code: 'ERR_REQUEST_TOO_LARGE', message: `request exceeds ${MAX_LINE} bytes` } })
        sock.destroy()
        return
      }
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        void this.handle(sock, line)
      }
    })
  }

  private send (sock: Socket, msg: unknown): void {
    if (!sock.destroyed) sock.write(JSON.stringify(msg) + '\n')
  }

  private async handle (sock: Socket, line: string): Promise<void> {
    let req: { id?: unknown, op?: unknown, args?: unknown }
    try {
      req = JSON.parse(line) as typeof req
      if (req === null || typeof req !== 'object' || typeof req.op !== 'string') throw new Error('a request needs a string "op"')
      if (req.args !== undefined && (req.args === null || typeof req.args !== 'object')) throw new Error('"args" must be an object')
    } catch (err) {
      this.send(sock, { id: null, ok: false, error: { name: 'ControlError', code: 'ERR_BAD_REQUEST', message: (err as Error).message } })
      return
    }
    const id = typeof req.id === 'number' || typeof req.id === 'string' ? req.id : null
    const handler = Object.hasOwn(this.handlers, req.op as string) ? this.handlers[req.op as string] : undefined
    if (handler === undefined) {
      this.send(sock, { id, ok: false, error: { name: 'ControlError', code: 'ERR_UNKNOWN_OP', message: `unknown operation "${String(req.op)}"` } })
      return
    }
    try {
      const result = await handler((req.args ?? {}) as Record<string, unknown>, p => { this.send(sock, { id, progress: p }) })
      this.send(sock, { id, ok: true, result })
    } catch (err) {
      const e = err as Error & { code?: string }
      if (e.code === undefined) this.onError(e)
      this.send(sock, { id, ok: false, error: { name: e.name, code: e.code ?? 'ERR_INTERNAL', message: e.message } })
    }
  }

  async close (): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const s of this.sockets) s.destroy()
    if (server !== undefined) await new Promise<void>(resolve => { server.close(() => { resolve() }) })
  }
}

export class DaemonRequestError extends Error {
  readonly code: string
  constructor (name: string, code: string, message: string) {
    super(message)
    this.name = name
    this.code = code
  }
}

/** One request to a running daemon; resolves with its result, rejects with its error. */
export async function request (socket: string, op: string, args: Record<string, unknown> = {}, onProgress?: (p: unknown) => void, timeoutMs = 0): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    const sock = createConnection(socket)
    let buf = ''
    let timer: NodeJS.Timeout | undefined
    if (timeoutMs > 0) timer = setTimeout(() => { sock.destroy(); reject(new DaemonRequestError('TimeoutError', 'ERR_TIMEOUT', `the daemon did not answer "${op}" within ${timeoutMs} ms`)) }, timeoutMs)
    sock.setEncoding('utf8')
    sock.on('connect', () => { sock.write(JSON.stringify({ id: 1, op, args }) + '\n') })
    sock.on('error', (err) => { if (timer !== undefined) clearTimeout(timer); reject(err) })
    sock.on('close', () => { if (timer !== undefined) clearTimeout(timer); reject(new DaemonRequestError('ControlError', 'ERR_DAEMON_GONE', 'the daemon closed the connection')) })
    sock.on('data', (chunk: string) => {
      buf += chunk
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { progress?: unknown, ok?: boolean, result?: unknown, error?: { name: string, code: string, message: string } }
        buf = buf.slice(nl + 1)
        if (msg.progress !== undefined) { onProgress?.(msg.progress); continue }
        if (timer !== undefined) clearTimeout(timer)
        sock.removeAllListeners('close')
        sock.end()
        if (msg.ok === true) resolve(msg.result)
        else reject(new DaemonRequestError(msg.error?.name ?? 'ControlError', msg.error?.code ?? 'ERR_INTERNAL', msg.error?.message ?? 'request failed'))
      }
    })
  })
}

export async function writeDaemonInfo (dataDir: string, info: DaemonInfo): Promise<void> {
  await writeFile(join(dataDir, DAEMON_FILE), JSON.stringify(info) + '\n', { mode: 0o600 })
}

/**
 * The running daemon of a data dir, if its process is alive. A daemon killed with SIGKILL leaves
 * its file behind, and the kernel may give its pid to another process later: that one has
 * another start time, so it is not taken for the daemon.
 */
export async function readDaemonInfo (dataDir: string): Promise<DaemonInfo | undefined> {
  let info: DaemonInfo
  try {
    info = JSON.parse(await readFile(join(dataDir, DAEMON_FILE), 'utf8')) as DaemonInfo
  } catch {
    return undefined
  }
  if (typeof info.pid !== 'number' || typeof info.socket !== 'string') return undefined
  const stat = await liveStat(info.pid)
  if (stat === undefined) return undefined
  if (typeof info.ticks === 'number' && startTicks(stat) !== info.ticks) return undefined
  return info
}

/** Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses). */
async function procStat (pid: number): Promise<string[] | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

/** When a process started, in clock ticks after boot (field 22 of /proc/PID/stat). */
function startTicks (stat: string[]): number | undefined {
  const ticks = Number(stat[19])
  return Number.isSafeInteger(ticks) ? ticks : undefined
}

export async function processStartTicks (pid: number): Promise<number | undefined> {
  const stat = await procStat(pid)
  return stat === undefined ? undefined : startTicks(stat)
}

/** The stat fields of a process that exists and is not a zombie (killed but not yet reaped counts as dead). */
async function liveStat (pid: number): Promise<string[] | undefined> {
  try {
    process.kill(pid, 0)
  } catch {
    return undefined
  }
  const stat = await procStat(pid)
  return stat !== undefined && stat[0] !== 'Z' ? stat : undefined
}

export async function processAlive (pid: number): Promise<boolean> {
  return await liveStat(pid) !== undefined
}

export async function removeDaemonInfo (dataDir: string): Promise<void> {
  await rm(join(dataDir, DAEMON_FILE), { force: true })
}
