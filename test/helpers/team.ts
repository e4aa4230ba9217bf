/**
 * Teams of real devices for tests and the fault runner: `strata invite` on one mounted drive,
 * `strata join` into a fresh data dir, loopback-only sync, and the polling and status helpers
 * every multi-device check uses.
 */
import { makeDrive, strata, treeHash, type Drive, type MakeDriveOptions } from './mount.js'

export interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

/** strata.json edit: listen on 127.0.0.1 only, no mDNS. */
export const LOOPBACK = (cfg: Record<string, any>): Record<string, any> => ({ ...cfg, sync: { ...cfg.sync, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false } })

/** Run `strata ARGS`; its stdout, or an error naming the command and its stderr. */
export async function ok (args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await strata(args, env)
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

/** `strata status --json` of a drive's daemon. */
export async function status (d: Drive): Promise<any> {
  return JSON.parse(await ok(['status', '--json', '--data', d.dataDir]))
}

/** A fresh drive on loopback (the first device of a new team). */
export async function firstDrive (t: Teardownable, options: MakeDriveOptions = {}): Promise<Drive> {
  const config = options.config
  return await makeDrive(t, { ...options, config: cfg => LOOPBACK(config !== undefined ? config(cfg) : cfg) })
}

/** A new device joined to `inviter`'s team and mounted. */
export async function joinDrive (t: Teardownable, inviter: Drive, name: string, options: MakeDriveOptions = {}): Promise<Drive> {
  const code = (await ok(['invite', '--data', inviter.dataDir])).trim().split('\n').pop() as string
  const config = options.config
  return await makeDrive(t, {
    ...options,
    create: async dataDir => { await ok(['join', code, '--data', dataDir, '--name', name]) },
    config: cfg => LOOPBACK(config !== undefined ? config(cfg) : cfg)
  })
}

/** Poll fn() every 200 ms until it is true (true) or `ms` pass (false). A bound, not a timing claim. */
export async function until (fn: () => Promise<boolean>, ms = 60_000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await fn().catch(() => false)) return true
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  return false
}

/** True when both mounts hold the same tree (paths, modes, sizes, contents, symlinks). */
export const same = (a: Drive, b: Drive) => async (): Promise<boolean> => await treeHash(a.mnt) === await treeHash(b.mnt)
