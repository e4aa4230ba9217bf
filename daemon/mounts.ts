/**
 * The kernel's mount table, as far as the daemon needs it: is a path a mount point, of which
 * file system, and is a FUSE mount there stale (its daemon died: the kernel answers ENOTCONN).
 * Also the registry of Strata's own mounts (mount point → data dir).
 */
import { readFile, stat, statfs, mkdir, writeFile, rm } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface MountEntry { source: string, target: string, fstype: string, options: string }

/** /proc/self/mounts decodes octal escapes (\040 for space…). */
function unescape (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export async function mountAt (target: string): Promise<MountEntry | undefined> {
  const text = await readFile('/proc/self/mounts', 'utf8')
  let found: MountEntry | undefined
  for (const line of text.split('\n')) {
    const [source, t, fstype, options] = line.split(' ')
    if (source === undefined || t === undefined || fstype === undefined) continue
    if (unescape(t) === target) found = { source: unescape(source), target, fstype, options: options ?? '' }
  }
  return found
}

/**
 * True when a FUSE mount's daemon is gone: statfs fails with ENOTCONN (or ECONNABORTED).
 * Not stat: the kernel answers it from cached attributes (a directory's are cached for 1 s,
 * dirAttrTimeout) without asking the dead daemon; FUSE_STATFS always reaches it.
 */
export async function isStale (target: string): Promise<boolean> {
  try {
    await statfs(target)
    return false
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOTCONN' || code === 'ECONNABORTED'
  }
}

/** Unmount a FUSE mount; lazy detaches even while files are open. */
export async function fusermountU (target: string, options: { lazy?: boolean } = {}): Promise<void> {
  try {
    await run('fusermount', ['-u', ...(options.lazy === true ? ['-z'] : []), target])
  } catch (err) {
    const e = err as Error & { stderr?: string }
    const msg = (e.stderr ?? e.message).trim()
    throw Object.assign(new Error(`cannot unmount ${target}: ${msg}`), { code: /busy/i.test(msg) ? 'EBUSY' : 'ERR_UNMOUNT' })
  }
}

/** Where mount points are registered (mount point → data dir), so `unmount` needs only the path. */
function registryDir (): string {
  return process.getuid?.() === 0 ? '/run/strata' : join('/tmp', `strata-${process.getuid?.() ?? 0}`)
}

const regFile = (mountpoint: string): string => join(registryDir(), createHash('sha256').update(mountpoint).digest('hex').slice(0, 24) + '.json')

export async function registeredDataDir (mountpoint: string): Promise<string | undefined> {
  try {
    const o = JSON.parse(await readFile(regFile(mountpoint), 'utf8')) as { dataDir?: unknown }
    return typeof o.dataDir === 'string' ? o.dataDir : undefined
  } catch {
    return undefined
  }
}

export async function register (mountpoint: string, dataDir: string): Promise<void> {
  await mkdir(registryDir(), { recursive: true, mode: 0o700 })
  await writeFile(regFile(mountpoint), JSON.stringify({ mountpoint, dataDir }) + '\n', { mode: 0o600 })
}

export async function unregister (mountpoint: string): Promise<void> {
  await rm(regFile(mountpoint), { force: true })
}
