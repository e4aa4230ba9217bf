/**
 * The running daemon: opens the volume, mounts it with FUSE, serves the control socket, and
 * stops cleanly — dirty data sealed, LevelDB closed, mount removed — on `strata unmount`,
 * SIGTERM or SIGINT. A stale mount left by a killed daemon is detected and cleaned up first.
 */
import { realpath, stat } from 'node:fs/promises'
import { openStrata, type Strata } from './strata.js'
import { ControlServer, socketPath, writeDaemonInfo, readDaemonInfo, removeDaemonInfo, processStartTicks, type Handler } from './control.js'
import { mountAt, isStale, fusermountU, register, unregister } from './mounts.js'

export { registeredDataDir } from './mounts.js'
import { createLogger, type Logger } from './logger.js'
import { FuseAdapter } from '../fs/fuse/adapter.js'
import { loadFuseNative } from '../fs/fuse/native/fuse-native.js'
import { fsck, pendingRotations, rotateNek } from '../fs/volume/index.js'
import { SyncNode } from './sync.js'
import { syncHandlers } from './sync-control.js'

/** How often the daemon looks for its mount being removed from outside (see watchMount). */
const MOUNT_WATCH_MS = 2000

export class DaemonError extends Error {
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.name = 'DaemonError'
    this.code = code
  }
}

/** FUSE must be usable before anything is opened: name the Debian package that is missing. */
async function checkFuse (): Promise<void> {
  const missing = (what: string, pkg: string): DaemonError =>
    new DaemonError('ERR_FUSE_MISSING', `${what} (on Debian: apt-get install ${pkg}, then npm run setup)`)
  if (!await exists('/dev/fuse')) throw missing('/dev/fuse does not exist: the kernel FUSE module is not available', 'fuse')
  if (!await exists('/bin/fusermount') && !await exists('/usr/bin/fusermount')) throw missing('fusermount is not installed', 'fuse')
  if (!await exists('/lib/x86_64-linux-gnu/libfuse.so.2') && !await exists('/usr/lib/x86_64-linux-gnu/libfuse.so.2') && !await exists('/lib/libfuse.so.2')) throw missing('libfuse2 is not installed', 'libfuse2')
  try {
    loadFuseNative()
  } catch (err) {
    throw missing(`the FUSE binding cannot be loaded (${(err as Error).message.split('\n')[0] ?? ''})`, 'libfuse2 libfuse-dev')
  }
}

async function exists (p: string): Promise<boolean> {
  try { await stat(p); return true } catch { return false }
}

/** Check a mount point before mounting; cleans up a stale FUSE mount. Returns its real path. */
export async function prepareMountpoint (mountpoint: string, log: Logger): Promise<string> {
  let real: string
  try {
    real = await realpath(mountpoint)
  } catch (err) {
    // realpath of a stale FUSE mount itself fails with ENOTCONN.
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN' || (err as NodeJS.ErrnoException).code === 'ECONNABORTED') {
      log('cleaning up the stale mount at %s (its daemon died)', mountpoint)
      await fusermountU(mountpoint, { lazy: true })
      real = await realpath(mountpoint)
    } else {
      throw new DaemonError('ERR_MOUNTPOINT', `mount point ${mountpoint} does not exist`)
    }
  }
  const m = await mountAt(real)
  if (m !== undefined) {
    if (m.fstype.startsWith('fuse') && await isStale(real)) {
      log('cleaning up the stale mount at %s (its daemon died)', real)
      await fusermountU(real, { lazy: true })
    } else {
      throw new DaemonError('ERR_MOUNTPOINT_BUSY', `mount point ${real} is busy: ${m.source} (${m.fstype}) is mounted there`)
    }
  }
  const st = await stat(real)
  if (!st.isDirectory()) throw new DaemonError('ERR_MOUNTPOINT', `mount point ${real} is not a directory`)
  return real
}

export interface DaemonOptions {
  dataDir: string
  mountpoint: string
  pinEnv?: string
  /** Called once the mount is ready (or failed), e.g. to tell a waiting parent. */
  onReady?: (info: { mountpoint: string, pid: number }) => void
}

export class Daemon {
  private strata: Strata | undefined
  private sync: SyncNode | undefined
  private adapter: FuseAdapter | undefined
  private control: ControlServer | undefined
  private stopping: Promise<void> | undefined
  private readonly log: Logger
  private mountpoint = ''
  private mountWatch: NodeJS.Timeout | undefined
  readonly stopped: Promise<void>
  private resolveStopped!: () => void

  constructor (private readonly options: DaemonOptions) {
    this.log = createLogger({ trace: process.env.STRATA_TRACE === '1' }).forComponent('daemon')
    this.stopped = new Promise(resolve => { this.resolveStopped = resolve })
  }

  async start (): Promise<void> {
    const { dataDir } = this.options
    // A stray error of one connection or request must not take the drive down with it (every
    // application using the mount would get ENOTCONN, and peers lose the device): it is logged
    // with its stack, as the bug it is, and the daemon goes on. Stored data is safe either way:
    // every change is one LevelDB batch.
    const stack = (err: unknown): string => err instanceof Error ? (err.stack ?? `${err.name}: ${err.message}`).replace(/\n\s*/g, ' | ') : String(err)
    process.on('unhandledRejection', err => { this.log.error('BUG: unhandled rejection, the daemon keeps running: %s', stack(err)) })
    process.on('uncaughtException', err => { this.log.error('BUG: uncaught exception, the daemon keeps running: %s', stack(err)) })
    const running = await readDaemonInfo(dataDir)
    if (running !== undefined && running.pid !== process.pid) {
      throw new DaemonError('ERR_VOLUME_BUSY', `the volume in ${dataDir} is already mounted at ${running.mountpoint} by strata daemon pid ${running.pid}`)
    }
    await checkFuse()
    this.mountpoint = await prepareMountpoint(this.options.mountpoint, this.log)
    try {
      const volLog = createLogger({ trace: process.env.STRATA_TRACE === '1' }).forComponent('fs:volume')
      this.strata = await openStrata({
        dataDir,
        pinEnv: this.options.pinEnv,
        tokenLog: createLogger({ trace: process.env.STRATA_TRACE === '1' }).forComponent('hsm:token'),
        volume: { onBackgroundError: (what, err) => { volLog.error('background %s failed (data kept, retried later): %e', what, err) } }
      })
    } catch (err) {
      if ((err as { code?: string }).code === 'LEVEL_DATABASE_NOT_OPEN' && /lock/i.test(String((err as { cause?: Error }).cause?.message))) {
        throw new DaemonError('ERR_VOLUME_BUSY', `the volume in ${dataDir} is in use by another strata process`)
      }
      throw err
    }
    const syncCfg = this.strata.config.sync ?? {}
    if (syncCfg.enabled !== false) {
      // Before the mount: every change made through it is captured for the team's devices.
      try {
        this.sync = await SyncNode.start(this.strata, syncCfg, createLogger({ trace: process.env.STRATA_TRACE === '1' }))
      } catch (err) {
        await this.strata.close()
        throw new DaemonError('ERR_SYNC', `cannot start LAN sync: ${(err as Error).message}`)
      }
    }
    const fuseLog = createLogger({ trace: process.env.STRATA_TRACE === '1' }).forComponent('fs:fuse')
    this.adapter = new FuseAdapter({ volume: this.strata.vol, logger: fuseLog }, { mountpoint: this.mountpoint })
    try {
      await this.adapter.mount()
    } catch (err) {
      await this.sync?.stop().catch(() => {})
      await this.strata.close()
      throw new DaemonError('ERR_MOUNT', `cannot mount at ${this.mountpoint}: ${(err as Error).message} (is the "fuse" Debian package installed and /dev/fuse present?)`)
    }
    this.control = new ControlServer(this.handlers(), err => { this.log.error('control request failed: %e', err) })
    const socket = socketPath(dataDir)
    await this.control.listen(socket)
    await writeDaemonInfo(dataDir, { pid: process.pid, socket, mountpoint: this.mountpoint, started: new Date().toISOString(), ticks: await processStartTicks(process.pid) })
    await register(this.mountpoint, dataDir)
    for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      process.on(sig, () => {
        this.log('%s: unmounting %s', sig, this.mountpoint)
        this.stop({ lazy: true }).catch(err => { this.failStop(err as Error) })
      })
    }
    const ours = await mountAt(this.mountpoint)
    if (ours !== undefined) this.watchMount(ours.fstype)
    else this.log.error('cannot find %s in /proc/self/mounts: an unmount from outside will not stop this daemon', this.mountpoint)
    this.log('mounted %s at %s (pid %d)', dataDir, this.mountpoint, process.pid)
    this.options.onReady?.({ mountpoint: this.mountpoint, pid: process.pid })
  }

  /** Unmount (lazily if files are open and `lazy`), seal, close. Idempotent. */
  async stop (options: { lazy?: boolean } = {}): Promise<void> {
    await this.detach(options)
    this.stopping ??= this.shutdown()
    await this.stopping
  }

  /**
   * Remove the mount. Non-lazy first, so open files are reported as "busy" (like umount(8));
   * `lazy` then detaches it anyway. fuse-native's own close (always `fusermount -uz`) follows
   * only to end its FUSE thread; its complaint that nothing is mounted any more is expected.
   */
  private async detach (options: { lazy?: boolean }): Promise<void> {
    const adapter = this.adapter
    if (adapter === undefined) return
    try {
      await fusermountU(this.mountpoint, { lazy: false })
    } catch (err) {
      if ((err as { code?: string }).code !== 'EBUSY' || options.lazy !== true) throw err
      this.log('%s is busy: detaching it lazily', this.mountpoint)
      await fusermountU(this.mountpoint, { lazy: true })
    }
    this.adapter = undefined
    await adapter.unmount().catch(() => {})
  }

  /**
   * `umount MOUNTPOINT` or `fusermount -u` from outside ends the FUSE session, and nothing tells
   * the JS side: the daemon would keep the volume open (and busy for the next mount) forever.
   * So the mount table is checked every MOUNT_WATCH_MS; once our mount is gone, the daemon stops
   * as `strata unmount` would (dirty data sealed, volume closed).
   */
  private watchMount (fstype: string): void {
    let checking = false
    this.mountWatch = setInterval(() => {
      if (checking || this.adapter === undefined) return
      checking = true
      mountAt(this.mountpoint).then(async entry => {
        const adapter = this.adapter
        if (entry?.fstype === fstype || adapter === undefined) return
        this.log('%s was unmounted from outside Strata: sealing and closing the volume', this.mountpoint)
        this.adapter = undefined
        await adapter.unmount().catch(() => {})
        await this.stop()
      }).catch(err => { this.failStop(err as Error) }).finally(() => { checking = false })
    }, MOUNT_WATCH_MS)
    this.mountWatch.unref()
  }

  /**
   * The mount is gone but closing failed (e.g. dirty data could not be sealed on a full disk):
   * say so, leave no records claiming a live daemon, and exit non-zero rather than linger.
   */
  private failStop (err: Error): void {
    this.log.error('stop failed, exiting: %e', err)
    Promise.allSettled([removeDaemonInfo(this.options.dataDir), unregister(this.mountpoint)]).finally(() => { process.exit(1) })
  }

  private async shutdown (): Promise<void> {
    clearInterval(this.mountWatch)
    await this.control?.close()
    const sync = this.sync
    this.sync = undefined
    await sync?.stop().catch(err => { this.log.error('stopping sync failed: %e', err) })
    const strata = this.strata
    this.strata = undefined
    await strata?.close()
    await removeDaemonInfo(this.options.dataDir)
    await unregister(this.mountpoint)
    this.log('stopped: %s unmounted, volume closed', this.mountpoint)
    this.resolveStopped()
  }

  private handlers (): Record<string, Handler> {
    const s = (): Strata => {
      if (this.strata === undefined) throw new DaemonError('ERR_STOPPING', 'the daemon is stopping')
      return this.strata
    }
    return {
      status: async () => {
        const st = s()
        const blocks = await st.blocks.stats()
        return {
          pid: process.pid,
          mountpoint: this.mountpoint,
          dataDir: this.options.dataDir,
          token: st.config.token.label,
          team: await st.keys.teamState(),
          blockSize: st.vol.blockSize,
          namespaces: await st.keys.namespaces(),
          keys: await keyStatus(st),
          blocks: blocks.blocks,
          storedBytes: blocks.bytes,
          diskBytes: blocks.diskBytes,
          nekCache: st.keys.cacheStats(),
          rssBytes: process.memoryUsage.rss(),
          sync: this.sync?.status()
        }
      },
      ...syncHandlers(() => {
        if (this.sync === undefined) throw new DaemonError('ERR_SYNC_OFF', 'LAN sync is off for this volume (strata.json "sync": { "enabled": false })')
        return this.sync
      }, () => s()),
      unmount: async (args) => {
        // Detach now (a busy mount is an error answer), answer, then seal and close.
        await this.detach({ lazy: args.lazy === true })
        setImmediate(() => { this.stop().catch(err => { this.failStop(err as Error) }) })
        return { mountpoint: this.mountpoint }
      },
      team: async (args) => {
        const action = args.action
        const st = s()
        if (action === 'disable') { await st.keys.disableTeam(); st.vol.forgetSecrets() } else if (action === 'enable') await st.keys.enableTeam()
        else if (action === 'destroy') { await st.keys.destroyTeam(); st.vol.forgetSecrets() } else throw new DaemonError('ERR_BAD_REQUEST', 'team action must be disable, enable or destroy')
        return { team: await st.keys.teamState() }
      },
      rotate: async (args, progress) => {
        const st = s()
        if (args.which === 'tek') return { version: await st.keys.rotateTek({ onProgress: p => { progress({ label: 're-wrapping NEKs', ...p }) } }) }
        if (args.which === 'nek') {
          for (const ns of await st.keys.namespaces()) await rotateNek(st.vol, ns, { onProgress: p => { progress({ label: `namespace ${ns}`, ...p }) } })
          return { rotated: 'nek' }
        }
        throw new DaemonError('ERR_BAD_REQUEST', 'rotate expects "tek" or "nek"')
      },
      fsck: async (args) => await fsck(s().vol, { repair: args.repair === true, verifyData: args.quick !== true })
    }
  }
}

/** Per namespace: its NEK versions and whether a rotation is under way (for `strata status`). */
async function keyStatus (st: Strata): Promise<Array<{ ns: string, nekVersions: number[], rotating: boolean }>> {
  const rotating = await pendingRotations(st.vol)
  const out = []
  for (const ns of await st.keys.namespaces()) out.push({ ns, nekVersions: await st.keys.nekVersions(ns), rotating: rotating.includes(ns) })
  return out
}
