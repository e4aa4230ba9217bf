/**
 * A TCP proxy in the runner process, for network faults: a device that reaches its peer only
 * through it can have every connection cut after some bytes or milliseconds, or be partitioned
 * (every connection dropped and new ones refused) and healed again.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'

export interface CutPlan {
  /** Cut once this many bytes (both directions together) crossed. */
  bytes?: number
  /** Cut this long after the connection opened. */
  ms?: number
}

export interface TcpProxyInit {
  /** Where connections go. */
  target: { host: string, port: number }
  /** Asked once per accepted connection: when to cut it (undefined: never). */
  cut?: () => CutPlan | undefined
}

export interface TcpProxyStats { connections: number, cuts: number, refused: number, bytes: number }

export class TcpProxy {
  private readonly server: Server
  private readonly init: TcpProxyInit
  private readonly live = new Set<Socket>()
  private partitioned = false
  readonly stats: TcpProxyStats = { connections: 0, cuts: 0, refused: 0, bytes: 0 }

  private constructor (init: TcpProxyInit) {
    this.init = init
    this.server = createServer(socket => { this.accept(socket) })
  }

  /** Listen on 127.0.0.1 at a free port. */
  static async start (init: TcpProxyInit): Promise<TcpProxy> {
    const p = new TcpProxy(init)
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject)
      p.server.listen(0, '127.0.0.1', () => { p.server.off('error', reject); resolve() })
    })
    return p
  }

  get port (): number {
    const a = this.server.address()
    if (a === null || typeof a === 'string') throw new Error('proxy is not listening')
    return a.port
  }

  /** Drop every connection and refuse new ones (connections are reset at once), until heal(). */
  partition (): void {
    this.partitioned = true
    for (const s of this.live) s.destroy()
  }

  heal (): void { this.partitioned = false }

  async stop (): Promise<void> {
    this.partition()
    await new Promise<void>(resolve => { this.server.close(() => { resolve() }) })
  }

  private accept (client: Socket): void {
    if (this.partitioned) { this.stats.refused++; client.resetAndDestroy(); return }
    this.stats.connections++
    const upstream = createConnection(this.init.target)
    const pair = [client, upstream]
    const plan = this.init.cut?.()
    let crossed = 0
    let timer: NodeJS.Timeout | undefined
    const close = (cut: boolean): void => {
      clearTimeout(timer)
      if (cut && !client.destroyed) this.stats.cuts++
      for (const s of pair) { this.live.delete(s); cut ? s.resetAndDestroy() : s.destroy() }
    }
    if (plan?.ms !== undefined) timer = setTimeout(() => { close(true) }, plan.ms)
    const forward = (from: Socket, to: Socket): void => {
      from.on('data', (chunk: Buffer) => {
        crossed += chunk.byteLength
        this.stats.bytes += chunk.byteLength
        if (plan?.bytes !== undefined && crossed >= plan.bytes) { close(true); return }
        if (!to.write(chunk)) { from.pause(); to.once('drain', () => from.resume()) }
      })
      from.on('end', () => { to.end() })
      from.on('error', () => { close(false) })
      from.on('close', () => { close(false) })
    }
    for (const s of pair) this.live.add(s)
    forward(client, upstream)
    forward(upstream, client)
  }
}
