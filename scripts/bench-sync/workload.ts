/**
 * The bench:sync inputs (made once, outside every synced folder, the same bytes for both
 * systems) and the checks that B is identical: a cheap check polled every 50 ms whose passing
 * marks the time (both systems apply a file atomically: Syncthing renames a finished temporary
 * file, Strata applies a whole inode object in one batch), then a full content check that must
 * also pass, else polling goes on and the time moves later. The content check's own duration is
 * reported but not counted.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BenchTimeoutError, run, sleep } from './proc.js'

export const MIB = 1024 * 1024
export const BIG_BYTES = 256 * MIB
export const PATCH_BYTES = MIB
/** The 1 MiB change is centred on the middle of the file. */
export const PATCH_OFFSET = BIG_BYTES / 2 - PATCH_BYTES / 2
export const SMALL_FILES = 1000
export const SMALL_DIRS = 10
export const LATENCY_BYTES = 100
export const POLL_MS = 50

export interface Inputs {
  dir: string
  big: string
  bigSha: string
  patch: string
  patchedSha: string
  smallRoot: string
  small: Array<{ rel: string, size: number, sha: string }>
}

export async function sha256File (path: string, ranges?: Array<{ path: string, start: number, end: number }>): Promise<string> {
  const h = createHash('sha256')
  for (const r of ranges ?? [{ path, start: 0, end: Infinity }]) {
    for await (const chunk of createReadStream(r.path, { start: r.start, end: r.end, highWaterMark: 4 * MIB })) h.update(chunk as Buffer)
  }
  return h.digest('hex')
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

export async function makeInputs (dir: string): Promise<Inputs> {
  await mkdir(dir, { recursive: true })
  const big = join(dir, 'big.bin')
  const patch = join(dir, 'patch.bin')
  await run('dd', ['if=/dev/urandom', `of=${big}`, 'bs=1M', `count=${BIG_BYTES / MIB}`, 'iflag=fullblock', 'status=none'], { timeoutMs: 120_000 })
  await writeFile(patch, randomBytes(PATCH_BYTES))
  const bigSha = await sha256File(big)
  // The big file as it is after the change, hashed without writing it.
  const patchedSha = await sha256File(big, [
    { path: big, start: 0, end: PATCH_OFFSET - 1 },
    { path: patch, start: 0, end: PATCH_BYTES - 1 },
    { path: big, start: PATCH_OFFSET + PATCH_BYTES, end: BIG_BYTES - 1 }
  ])
  const smallRoot = join(dir, 'small')
  const small: Inputs['small'] = []
  for (let d = 0; d < SMALL_DIRS; d++) await mkdir(join(smallRoot, `d${d}`), { recursive: true })
  for (let i = 0; i < SMALL_FILES; i++) {
    const rel = `d${i % SMALL_DIRS}/f${String(i).padStart(4, '0')}.bin`
    const bytes = randomBytes(randomInt(1024, 4096 + 1))
    await writeFile(join(smallRoot, rel), bytes)
    small.push({ rel, size: bytes.byteLength, sha: sha(bytes) })
  }
  return { dir, big, bigSha, patch, patchedSha, smallRoot, small }
}

export interface Observed { seconds: number, verifySeconds: number, polls: number, rechecks: number }

/**
 * Poll `cheap` every 50 ms from `since` (a performance.now() time) until it passes and `full`
 * then confirms; the time is taken when `cheap` passed. Fails after `timeoutMs`.
 */
export async function waitIdentical (what: string, since: number, cheap: () => Promise<boolean>, full: () => Promise<boolean>, timeoutMs: number): Promise<Observed> {
  let polls = 0
  let rechecks = 0
  for (;;) {
    polls++
    if (await cheap().catch(() => false)) {
      const seen = performance.now()
      if (await full().catch(() => false)) {
        return { seconds: (seen - since) / 1000, verifySeconds: (performance.now() - seen) / 1000, polls, rechecks }
      }
      rechecks++
    }
    if (performance.now() - since > timeoutMs) throw new BenchTimeoutError(`${what}: not identical on B after ${(timeoutMs / 1000).toFixed(0)} s (${polls} polls, ${rechecks} failed content checks)`)
    await sleep(POLL_MS)
  }
}

/** Every small file is on B with its size (cheap check). */
export async function smallPresent (dirB: string, inputs: Inputs): Promise<boolean> {
  const byDir = new Map<string, Set<string>>()
  for (let d = 0; d < SMALL_DIRS; d++) byDir.set(`d${d}`, new Set(await readdir(join(dirB, 'small', `d${d}`))))
  for (const f of inputs.small) {
    const [d, name] = f.rel.split('/') as [string, string]
    if (byDir.get(d)?.has(name) !== true) return false
  }
  return await inBatches(inputs.small, async f => (await stat(join(dirB, 'small', f.rel))).size === f.size)
}

/** Every small file on B has the bytes written on A (full check). */
export async function smallIdentical (dirB: string, inputs: Inputs): Promise<boolean> {
  return await inBatches(inputs.small, async f => sha(await readFile(join(dirB, 'small', f.rel))) === f.sha)
}

async function inBatches<T> (items: T[], fn: (item: T) => Promise<boolean>, width = 16): Promise<boolean> {
  for (let i = 0; i < items.length; i += width) {
    const ok = await Promise.all(items.slice(i, i + width).map(fn))
    if (ok.includes(false)) return false
  }
  return true
}
