/**
 * Two Strata devices on loopback, made the way a user would: `strata init` + mount on A,
 * `strata invite` / `strata join` for B, both with sync listening on 127.0.0.1 only and mDNS off.
 * Every mount is registered for unmounting (then SIGKILL of the daemon, lazy unmount) first.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BenchTimeoutError, type Cleanups, log, sleep, mounted, run, stopPid, tcpReceived, waitExit } from './proc.js'
import type { SyncPair } from './sync-pair.js'

interface Device { data: string, mnt: string, pid: number, port: number }

const LOOPBACK_SYNC = { listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false }

export async function strataPair (components: { base: string, bin: string, cleanups: Cleanups }): Promise<SyncPair> {
  const { base, bin, cleanups } = components
  const strata = async (args: string[], timeoutMs = 180_000): Promise<string> =>
    (await run(process.execPath, [bin, ...args], { timeoutMs })).stdout

  async function loopback (data: string): Promise<void> {
    const file = join(data, 'strata.json')
    const cfg = JSON.parse(await readFile(file, 'utf8')) as Record<string, any>
    cfg.sync = { ...(cfg.sync ?? {}), ...LOOPBACK_SYNC } // keeps the "peers" join wrote
    await writeFile(file, JSON.stringify(cfg, null, 2))
  }

  async function mount (name: string, data: string): Promise<Device> {
    const mnt = join(base, `strata-${name}-mnt`)
    await mkdir(mnt)
    let pid = 0
    cleanups.push(`strata unmount ${name}`, async () => {
      if (await mounted(mnt)) {
        const r = await run(process.execPath, [bin, 'unmount', mnt], { timeoutMs: 120_000, allowFail: true }).catch((err: Error) => ({ code: -1, stderr: err.message }))
        if (r.code !== 0) log(`strata unmount ${name} failed: ${r.stderr.trim()}`)
      }
      if (pid > 0 && !(await waitExit(pid, 30_000))) await stopPid(pid, `strata daemon ${name}`)
      if (await mounted(mnt)) await run('fusermount', ['-uz', mnt], { timeoutMs: 30_000, allowFail: true }).catch(() => {})
    })
    await strata(['mount', mnt, '--data', data])
    pid = (JSON.parse(await readFile(join(data, 'daemon.json'), 'utf8')) as { pid: number }).pid
    if (!(await mounted(mnt))) throw new Error(`strata mount ${name} returned but ${mnt} is not mounted`)
    const status = JSON.parse(await strata(['status', '--json', '--data', data])) as { sync?: { addresses?: string[] } }
    const addr = status.sync?.addresses?.find(a => a.startsWith('/ip4/127.0.0.1/tcp/')) ?? ''
    const port = Number(/\/tcp\/(\d+)/.exec(addr)?.[1] ?? NaN)
    if (!Number.isInteger(port)) throw new Error(`strata ${name} has no loopback sync address: ${JSON.stringify(status.sync)}`)
    return { data, mnt, pid, port }
  }

  const dataA = join(base, 'strata-a')
  const dataB = join(base, 'strata-b')
  log('strata: init A')
  await strata(['init', '--data', dataA])
  await loopback(dataA)
  const a = await mount('A', dataA)
  const code = (await strata(['invite', '--data', dataA])).trim().split('\n').pop() ?? ''
  log('strata: join B')
  await strata(['join', code, '--data', dataB, '--name', 'b'])
  await loopback(dataB)
  const b = await mount('B', dataB)

  // Both sessions up before anything is measured.
  const status = async (data: string): Promise<{ device?: string, peers?: string[] }> =>
    (JSON.parse(await strata(['status', '--json', '--data', data], 30_000)) as { sync?: { device?: string, peers?: string[] } }).sync ?? {}
  const idA = (await status(dataA)).device
  const idB = (await status(dataB)).device
  const end = Date.now() + 60_000
  while (!((await status(dataA)).peers ?? []).includes(idB ?? '-') || !((await status(dataB)).peers ?? []).includes(idA ?? '-')) {
    if (Date.now() > end) throw new BenchTimeoutError('strata: A and B did not connect within 60 s')
    await sleep(200)
  }
  log('strata: A and B connected')

  const received = async (): Promise<number> => {
    const s = JSON.parse(await strata(['status', '--json', '--data', dataB], 30_000)) as { sync?: { blocks?: { bytesReceived?: number } } }
    const n = s.sync?.blocks?.bytesReceived
    if (typeof n !== 'number') throw new Error('strata status --json has no sync.blocks.bytesReceived')
    return n
  }
  return {
    name: 'strata',
    dirA: a.mnt,
    dirB: b.mnt,
    receivedWhat: 'block bytes B fetched (status sync.blocks.bytesReceived)',
    received,
    wireReceived: async () => await tcpReceived(b.pid, a.port, b.port),
    pids: () => [a.pid, b.pid]
  }
}
