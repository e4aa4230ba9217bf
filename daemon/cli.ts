/**
 * The `strata` command line. Errors are printed as one line naming the problem, with a named
 * exit code (daemon/exit-codes.ts); PINs never come from argv.
 */
import '../net/shim.js'
import { parseArgs } from 'node:util'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { openSync, closeSync } from 'node:fs'
import { realpath } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { EXIT } from './exit-codes.js'
import { readConfig } from './config.js'
import { readDaemonInfo, request, processAlive } from './control.js'
import { mountAt, isStale, fusermountU, registeredDataDir } from './mounts.js'
import { UsageError } from './usage-error.js'
import type { Strata } from './strata.js'
import type { FsckReport } from '../fs/volume/index.js'

// The volume, token, FUSE and libp2p modules take most of a second to load: commands that only
// talk to a running daemon (status, unmount, fsck of a mounted drive) load none of them.
const openStrata = async (...a: Parameters<typeof import('./strata.js').openStrata>): Promise<Strata> => await (await import('./strata.js')).openStrata(...a)
const volume = async (): Promise<typeof import('../fs/volume/index.js')> => await import('../fs/volume/index.js')
const sync = async (): Promise<typeof import('./cli-sync.js')> => await import('./cli-sync.js')

const USAGE = `usage: strata <command> [options]

commands:
  init   [--data DIR] [--block-size BYTES]   create a volume (and a SoftHSM2 token for it)
         [--module SO --token-label L [--pin-file F]]   ... or use an existing PKCS#11 token
  mount MOUNTPOINT [--data DIR] [--foreground]   mount the drive (a background daemon by default)
  unmount MOUNTPOINT [--lazy]                stop the daemon cleanly (dirty data sealed)
  demo   [--data DIR]                        write, read back and verify files through the volume
  status [--data DIR] [--json]               volume, key and block-store figures
  fsck   [--data DIR] [--repair] [--quick]   verify every block, record and key; report by path
  rotate tek|nek [--data DIR]                rotate the team key or every namespace key
  team   disable|enable|destroy [--data DIR] switch team access off or on, or crypto-shred it
  invite [--data DIR] [--ttl MINUTES]        a one-time code for a new device (last line of output)
  join CODE [--data DIR] [--name NAME]       make this device a member: new data dir, its own token
  devices [--data DIR] [--json]              the team's devices and when each was last seen
  remove-device ID [--data DIR]              remove a device: every device refuses it from then on
  peer add MULTIADDR [--data DIR]            connect to a device by address (/ip4/…/tcp/…/p2p/ID)
(status, fsck, rotate and team act on the running daemon when the drive is mounted; invite,
 devices, remove-device and peer need it)

options:
  --data DIR   data directory (default: $XDG_DATA_HOME/strata or ~/.local/share/strata)
environment:
  STRATA_PIN   token PIN when the data directory names no PIN file`

export function defaultDataDir (env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_DATA_HOME !== undefined && env.XDG_DATA_HOME !== '' ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share')
  return join(base, 'strata')
}

function exitCodeOf (err: Error & { code?: string }): number {
  switch (err.code) {
    case 'ERR_VOLUME_FORMAT': return EXIT.DATA_DIR
    case 'ERR_HSM_WRONG_PIN': case 'ERR_HSM_PIN_LOCKED': case 'ERR_HSM_PIN_MISSING': return EXIT.PIN
    case 'ERR_HSM_MODULE_NOT_FOUND': case 'ERR_HSM_TOKEN_NOT_FOUND': case 'ERR_HSM_TOKEN': case 'ERR_HSM_TOKEN_UNAVAILABLE': return EXIT.TOKEN
    case 'ERR_TEAM_DISABLED': case 'ERR_TEAM_DESTROYED': return EXIT.TEAM
    case 'ERR_BLOCK_CORRUPT': case 'ERR_BLOCK_MISSING': case 'ERR_RECORD_CORRUPT': case 'ERR_KEY_CUSTODY': return EXIT.INTEGRITY
    case 'ERR_MOUNTPOINT': case 'ERR_MOUNTPOINT_BUSY': case 'ERR_VOLUME_BUSY': case 'ERR_MOUNT': case 'ERR_FUSE_MISSING': return EXIT.MOUNT
    case 'ERR_NOT_MOUNTED': return EXIT.NOT_MOUNTED
    case 'EBUSY': return EXIT.BUSY
    default: return EXIT.FAILURE
  }
}

const mib = (n: number): string => (n / 1048576).toFixed(1)

async function demo (s: Strata): Promise<void> {
  const vol = s.vol
  const { ROOT_INO, fsck } = await volume()
  const dirName = `demo-${new Date().toISOString().replace(/[:.]/g, '-')}`
  const dir = await vol.mkdir(ROOT_INO, dirName)
  const files: Array<{ name: string, data: Buffer }> = [
    { name: 'hello.txt', data: Buffer.from('Hello from Strata: this text is encrypted at rest.\n') },
    { name: 'random-5MiB.bin', data: randomBytes(5 * 1024 * 1024 + 123) },
    { name: 'sparse.bin', data: Buffer.alloc(0) }
  ]
  for (const f of files) {
    const { fh } = await vol.create(dir.ino, f.name)
    if (f.name === 'sparse.bin') await vol.write(fh, 3 * 1024 * 1024 * 1024, Buffer.from('end of a 3 GiB sparse file'))
    else await vol.write(fh, 0, f.data)
    await vol.fsync(fh)
    await vol.release(fh)
  }
  let ok = true
  for (const f of files) {
    const attr = await vol.lookup(dir.ino, f.name)
    const fh = await vol.open(attr.ino)
    const data = f.name === 'sparse.bin' ? await vol.read(fh, 3 * 1024 * 1024 * 1024, 64) : await vol.read(fh, 0, attr.size)
    await vol.release(fh)
    const want = f.name === 'sparse.bin' ? Buffer.from('end of a 3 GiB sparse file') : f.data
    const same = data.equals(want)
    ok &&= same
    console.log(`  ${same ? 'ok  ' : 'FAIL'} /${dirName}/${f.name}  ${attr.size} bytes  sha256 ${createHash('sha256').update(data).digest('hex').slice(0, 16)}…`)
  }
  const report = await fsck(vol)
  console.log(`  fsck: ${report.ok ? 'clean' : `${report.problems.length} problem(s)`} (${report.inodes} inodes, ${report.blocks} blocks verified)`)
  if (!ok || !report.ok) throw Object.assign(new Error('demo verification failed'), { code: 'ERR_DEMO' })
}

const BIN = fileURLToPath(new URL('../../bin/strata.js', import.meta.url))

function progressBar (p: unknown): void {
  const { label, done, total } = p as { label?: string, done: number, total: number }
  const w = 30
  const f = total === 0 ? w : Math.round(w * done / total)
  process.stderr.write(`\r${label ?? ''} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${done}/${total}`)
}

function printFsck (report: FsckReport, repair: boolean): number {
  for (const p of report.problems) console.log(`${p.kind}\t${p.path}\t${p.detail}`)
  console.log(`fsck: ${report.ok ? 'clean' : 'PROBLEMS FOUND'}: ${report.inodes} inodes, ${report.blocks} blocks, ${report.problems.length} problem(s)${repair ? `, ${report.repaired} repaired` : ''}`)
  return report.ok ? EXIT.OK : EXIT.FSCK_PROBLEMS
}

/** Start the daemon in the background and return once its mount is ready. */
async function mountBackground (dataDir: string, mountpoint: string): Promise<number> {
  await readConfig(dataDir) // a clear error now rather than in the daemon's log
  const logFile = `${dataDir}/strata.log`
  const fd = openSync(logFile, 'a', 0o600)
  const child = spawn(process.execPath, [BIN, 'mount', mountpoint, '--foreground', '--data', dataDir], {
    detached: true, stdio: ['ignore', fd, fd, 'ipc'], env: process.env
  })
  closeSync(fd)
  const result = await new Promise<{ ready?: { mountpoint: string, pid: number }, error?: { message: string, code?: string } }>(resolve => {
    const timer = setTimeout(() => { resolve({ error: { message: `the daemon did not report ready within 120 s (see ${logFile})` } }) }, 120_000)
    child.once('message', (m: { ready?: { mountpoint: string, pid: number }, error?: { message: string, code?: string } }) => { clearTimeout(timer); resolve(m) })
    // 'close', not 'exit': it comes after the IPC channel is drained, so an error the daemon
    // sent just before exiting is not lost to the race between its message and its exit.
    child.once('close', (code, signal) => { clearTimeout(timer); resolve({ error: { message: `the daemon ${signal !== null ? `was killed by ${signal}` : `exited with code ${String(code)}`} before the mount was ready (see ${logFile})` } }) })
  })
  child.removeAllListeners('close')
  if (child.connected) child.disconnect()
  child.unref()
  if (result.error !== undefined) throw Object.assign(new Error(result.error.message), { code: result.error.code })
  const r = result.ready as { mountpoint: string, pid: number }
  console.log(`Strata drive mounted at ${r.mountpoint} (daemon pid ${r.pid}, log ${logFile}).`)
  console.log(`Stop it with: node ${BIN} unmount ${r.mountpoint}`)
  return EXIT.OK
}

async function waitForExit (pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (!await processAlive(pid)) return true
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return false
}

async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE)
    return command === undefined ? EXIT.USAGE : EXIT.OK
  }
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: {
        data: { type: 'string' },
        json: { type: 'boolean' },
        repair: { type: 'boolean' },
        quick: { type: 'boolean' },
        foreground: { type: 'boolean' },
        lazy: { type: 'boolean' },
        'block-size': { type: 'string' },
        module: { type: 'string' },
        'token-label': { type: 'string' },
        'pin-file': { type: 'string' },
        name: { type: 'string' },
        ttl: { type: 'string' }
      }
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const { values, positionals } = parsed
  const dataDir = resolve(values.data ?? defaultDataDir())
  const pinEnv = process.env.STRATA_PIN
  const expectPositionals = (n: number, what: string): void => {
    if (positionals.length !== n) throw new UsageError(`strata ${command} expects ${what}`)
  }

  switch (command) {
    case 'init': {
      expectPositionals(0, 'no arguments besides options')
      let blockSize: number | undefined
      if (values['block-size'] !== undefined) {
        blockSize = Number(values['block-size'])
        if (!Number.isInteger(blockSize)) throw new UsageError(`--block-size must be a whole number of bytes, not "${values['block-size']}"`)
      }
      let token: { module?: string, label: string, pinFile?: string } | undefined
      if (values['token-label'] !== undefined) {
        token = { module: values.module, label: values['token-label'], pinFile: values['pin-file'] === undefined ? undefined : resolve(values['pin-file']) }
      } else if (values.module !== undefined || values['pin-file'] !== undefined) {
        throw new UsageError('--module and --pin-file go with --token-label (the label of an initialised token)')
      }
      const s = await (await import('./strata.js')).initStrata({ dataDir, blockSize, pinEnv, token })
      console.log(`created a Strata volume in ${dataDir} (token "${s.config.token.label}", block size ${s.vol.blockSize} bytes)`)
      await s.close()
      return EXIT.OK
    }
    case 'mount': {
      expectPositionals(1, 'a mount point')
      const mountpoint = resolve(positionals[0] as string)
      if (values.foreground !== true) return await mountBackground(dataDir, mountpoint)
      const { Daemon } = await import('./daemon.js')
      const daemon = new Daemon({
        dataDir,
        mountpoint,
        pinEnv,
        onReady: info => {
          if (process.send !== undefined) process.send({ ready: info }, () => { process.disconnect?.() })
          else console.log(`Strata drive mounted at ${info.mountpoint} (pid ${info.pid}); stop it with Ctrl-C or: node ${BIN} unmount ${info.mountpoint}`)
        }
      })
      try {
        await daemon.start()
      } catch (err) {
        const e = err as Error & { code?: string }
        if (process.send !== undefined) process.send({ error: { message: e.message, code: e.code } })
        throw err
      }
      await daemon.stopped
      return EXIT.OK
    }
    case 'unmount': {
      expectPositionals(1, 'a mount point')
      const given = resolve(positionals[0] as string)
      const mountpoint = await realpath(given).catch(() => given)
      const dir = values.data !== undefined ? dataDir : (await registeredDataDir(mountpoint)) ?? dataDir
      const info = await readDaemonInfo(dir)
      if (info !== undefined && info.mountpoint === mountpoint) {
        try {
          await request(info.socket, 'unmount', { lazy: values.lazy === true })
        } catch (err) {
          // The daemon died between our check and the request: treat it as a stale mount below.
          const code = (err as { code?: string }).code
          if (code !== 'ECONNREFUSED' && code !== 'ENOENT' && code !== 'ERR_DAEMON_GONE') throw err
          await waitForExit(info.pid, 5_000)
        }
        if (!await waitForExit(info.pid, 120_000)) throw Object.assign(new Error(`the daemon (pid ${info.pid}) did not exit within 120 s`), { code: 'ERR_UNMOUNT' })
        if (await mountAt(mountpoint) === undefined) {
          console.log(`unmounted ${mountpoint}`)
          return EXIT.OK
        }
      }
      const m = await mountAt(mountpoint)
      if (m !== undefined && m.fstype.startsWith('fuse') && await isStale(mountpoint)) {
        await fusermountU(mountpoint, { lazy: true })
        console.log(`cleaned up the stale mount at ${mountpoint} (its daemon had died)`)
        return EXIT.OK
      }
      throw Object.assign(new Error(`${mountpoint} is not a mounted Strata drive`), { code: 'ERR_NOT_MOUNTED' })
    }
    case 'demo': {
      expectPositionals(0, 'no arguments besides options')
      const s = await openStrata({ dataDir, pinEnv })
      try {
        console.log(`demo on the volume in ${dataDir}:`)
        await demo(s)
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'status': {
      expectPositionals(0, 'no arguments besides options')
      const running = await readDaemonInfo(dataDir)
      if (running !== undefined) {
        const st = await request(running.socket, 'status') as Record<string, unknown> & { blocks: number, storedBytes: number, diskBytes: number, namespaces: string[] }
        if (values.json === true) console.log(JSON.stringify(st, null, 2))
        else console.log(`mounted  ${String(st.mountpoint)} (daemon pid ${String(st.pid)}, ${mib(Number(st.rssBytes))} MiB RSS)\nvolume   ${dataDir}\ntoken    ${String(st.token)} (team ${String(st.team)})\nblocks   ${st.blocks} (${mib(st.storedBytes)} MiB stored, ${mib(st.diskBytes)} MiB on disk)\nspaces   ${st.namespaces.length} namespace(s)`)
        return EXIT.OK
      }
      const s = await openStrata({ dataDir, pinEnv })
      try {
        const st = await s.blocks.stats()
        const status = {
          dataDir,
          token: s.config.token.label,
          team: await s.keys.teamState(),
          blockSize: s.vol.blockSize,
          namespaces: await s.keys.namespaces(),
          blocks: st.blocks,
          storedBytes: st.bytes,
          diskBytes: st.diskBytes,
          nekCache: s.keys.cacheStats()
        }
        if (values.json === true) console.log(JSON.stringify(status, null, 2))
        else {
          console.log(`volume   ${dataDir}\ntoken    ${status.token} (team ${status.team})\nblocks   ${status.blocks} (${mib(status.storedBytes)} MiB stored, ${mib(status.diskBytes)} MiB on disk)\nspaces   ${status.namespaces.length} namespace(s)`)
        }
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'fsck': {
      expectPositionals(0, 'no arguments besides options')
      const running = await readDaemonInfo(dataDir)
      if (running !== undefined) {
        return printFsck(await request(running.socket, 'fsck', { repair: values.repair === true, quick: values.quick === true }) as FsckReport, values.repair === true)
      }
      const s = await openStrata({ dataDir, pinEnv })
      try {
        return printFsck(await (await volume()).fsck(s.vol, { repair: values.repair === true, verifyData: values.quick !== true }), values.repair === true)
      } finally {
        await s.close()
      }
    }
    case 'rotate': {
      expectPositionals(1, '"tek" or "nek"')
      const which = positionals[0]
      if (which !== 'tek' && which !== 'nek') throw new UsageError(`strata rotate expects "tek" or "nek", not "${String(which)}"`)
      const running = await readDaemonInfo(dataDir)
      if (running !== undefined) {
        const r = await request(running.socket, 'rotate', { which }, progressBar) as { version?: number }
        process.stderr.write('\n')
        console.log(which === 'tek' ? `team key rotated to version ${String(r.version)}` : 'every namespace key rotated')
        return EXIT.OK
      }
      const s = await openStrata({ dataDir, pinEnv })
      try {
        const bar = (label: string) => (p: { done: number, total: number }): void => { progressBar({ label, ...p }) }
        if (which === 'tek') {
          const v = await s.keys.rotateTek({ onProgress: bar('re-wrapping NEKs') })
          process.stderr.write('\n')
          console.log(`team key rotated to version ${v}`)
        } else {
          for (const ns of await s.keys.namespaces()) {
            await (await volume()).rotateNek(s.vol, ns, { onProgress: bar(`namespace ${ns}`) })
            process.stderr.write('\n')
          }
          console.log('every namespace key rotated')
        }
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'team': {
      expectPositionals(1, '"disable", "enable" or "destroy"')
      const action = positionals[0]
      if (action !== 'disable' && action !== 'enable' && action !== 'destroy') throw new UsageError(`strata team expects "disable", "enable" or "destroy", not "${String(action)}"`)
      const running = await readDaemonInfo(dataDir)
      if (running !== undefined) {
        const r = await request(running.socket, 'team', { action }) as { team: string }
        console.log(`team access: ${r.team}`)
        return EXIT.OK
      }
      const s = await openStrata({ dataDir, pinEnv })
      try {
        if (action === 'disable') await s.keys.disableTeam()
        else if (action === 'enable') await s.keys.enableTeam()
        else await s.keys.destroyTeam()
        console.log(`team access: ${await s.keys.teamState()}`)
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'invite':
      expectPositionals(0, 'no arguments besides options')
      await (await sync()).inviteCommand(dataDir, values.ttl)
      return EXIT.OK
    case 'join':
      expectPositionals(1, 'an invite code')
      await (await sync()).joinCommand(dataDir, positionals[0] as string, values.name, pinEnv)
      return EXIT.OK
    case 'devices':
      expectPositionals(0, 'no arguments besides options')
      await (await sync()).devicesCommand(dataDir, values.json === true)
      return EXIT.OK
    case 'remove-device':
      expectPositionals(1, 'a device id')
      await (await sync()).removeDeviceCommand(dataDir, positionals[0] as string)
      return EXIT.OK
    case 'peer':
      if (positionals[0] !== 'add' || positionals.length !== 2) throw new UsageError('strata peer expects "add MULTIADDR"')
      await (await sync()).peerAddCommand(dataDir, positionals[1] as string)
      return EXIT.OK
    default:
      throw new UsageError(`unknown command "${command}"`)
  }
}

main(process.argv.slice(2)).then(code => {
  process.exitCode = code
  // A daemon that stopped may leave FUSE and worker handles behind: leave nothing running.
  if (process.argv[2] === 'mount') setImmediate(() => process.exit(code))
}, (err: Error & { code?: string }) => {
  if (err instanceof UsageError) {
    console.error(`strata: ${err.message}\n\n${USAGE}`)
    process.exitCode = EXIT.USAGE
    return
  }
  console.error(`strata: ${err.message}`)
  if (process.env.STRATA_DEBUG === '1' && err.stack !== undefined) console.error(err.stack)
  process.exitCode = exitCodeOf(err)
  if (process.argv[2] === 'mount') setImmediate(() => process.exit(exitCodeOf(err)))
})
