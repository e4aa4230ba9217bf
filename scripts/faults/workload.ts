/**
 * Workloads the fault scenarios keep running through a mount while they inject a fault, and the
 * checks of what they leave behind. A write counts as acknowledged only once its data was
 * written, fsynced and closed without an error: every acknowledged file must read back with its
 * hash. Reads of files whose hash is known must return exactly those bytes or fail: a read that
 * returns other bytes is recorded as `wrong`, which no fault may ever cause.
 *
 *   const w = startWriter(mnt, { rng: ctx.rng })    // writes w-<n>.bin files until stopped
 *   const r = startReader(mnt, before)              // reads `before` files round-robin
 *   ... inject the fault ...
 *   const { acked, errors } = await w.stop()
 *   const problems = await verifyAcked(mnt, [...before, ...acked])
 *
 * Every file operation is bounded by `opTimeoutMs` (default 60 s): one that takes longer is
 * recorded as an error `HANG` (fuse-native answers every request within 15 s; a hang is a bug).
 */
import { createHash, randomBytes } from 'node:crypto'
import { open } from 'node:fs/promises'
import { join } from 'node:path'
import type { Rng } from './harness.js'

/** A file written and acknowledged (or known before the fault). */
export interface Acked {
  /** Relative to the mount. */
  name: string
  size: number
  sha256: string
}

export interface WorkloadError {
  op: 'write' | 'read'
  name: string
  /** errno name (EIO, EACCES, ...) or HANG. */
  code: string
  at: number
}

export interface WriterOptions {
  rng: Rng
  /** File sizes are drawn from [min, max] bytes; default 4 KiB .. 1.5 MiB (one or two blocks). */
  minSize?: number
  maxSize?: number
  /** File names are `${prefix}<n>.bin`; default "w-". */
  prefix?: string
  /** Pause between operations, so a fault window sees a handful of them; default 50 ms. */
  pauseMs?: number
  opTimeoutMs?: number
}

export interface WriterResult { acked: Acked[], errors: WorkloadError[], attempts: number }
export interface ReaderResult { reads: number, errors: WorkloadError[], wrong: string[] }

export interface Running<R> {
  stop: () => Promise<R>
  /** Operations that completed successfully so far. */
  readonly ok: number
  /** Errors so far. */
  readonly errors: readonly WorkloadError[]
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** Write one file with fsync; its Acked record once write, fsync and close all succeeded. */
export async function writeAcked (dir: string, name: string, data: Buffer, opTimeoutMs = 60_000): Promise<Acked> {
  await bounded(opTimeoutMs, async () => {
    const fh = await open(join(dir, name), 'w')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } finally {
      await fh.close()
    }
  })
  return { name, size: data.byteLength, sha256: sha256(data) }
}

/** Write `count` files of random sizes (from rng) before a fault; all must succeed. */
export async function writeSet (dir: string, count: number, options: WriterOptions): Promise<Acked[]> {
  const out: Acked[] = []
  for (let i = 0; i < count; i++) {
    const size = options.rng.int(options.minSize ?? 4096, options.maxSize ?? 1_572_864)
    out.push(await writeAcked(dir, `${options.prefix ?? 'before-'}${i}.bin`, randomBytes(size)))
  }
  return out
}

/** Write new files in a loop until stopped; see the file comment. */
export function startWriter (dir: string, options: WriterOptions): Running<WriterResult> {
  const acked: Acked[] = []
  const errors: WorkloadError[] = []
  let attempts = 0
  const loop = runLoop(options.pauseMs ?? 50, async () => {
    const name = `${options.prefix ?? 'w-'}${attempts++}.bin`
    const data = randomBytes(options.rng.int(options.minSize ?? 4096, options.maxSize ?? 1_572_864))
    try {
      acked.push(await writeAcked(dir, name, data, options.opTimeoutMs))
    } catch (err) {
      errors.push({ op: 'write', name, code: codeOf(err), at: Date.now() })
    }
  })
  return {
    stop: async () => { await loop.stop(); return { acked, errors, attempts } },
    get ok () { return acked.length },
    errors
  }
}

/** Read `files` round-robin until stopped, comparing each read with its hash. */
export function startReader (dir: string, files: Acked[], options: { pauseMs?: number, opTimeoutMs?: number } = {}): Running<ReaderResult> {
  if (files.length === 0) throw new Error('startReader needs files with known hashes')
  const errors: WorkloadError[] = []
  const wrong: string[] = []
  let reads = 0
  let i = 0
  const loop = runLoop(options.pauseMs ?? 50, async () => {
    const f = files[i++ % files.length] as Acked
    try {
      const got = await bounded(options.opTimeoutMs ?? 60_000, async () => await readAll(join(dir, f.name)))
      if (sha256(got) !== f.sha256) wrong.push(`${f.name}: ${got.byteLength} bytes with sha256 ${sha256(got).slice(0, 12)}, expected ${f.size} bytes ${f.sha256.slice(0, 12)}`)
      else reads++
    } catch (err) {
      errors.push({ op: 'read', name: f.name, code: codeOf(err), at: Date.now() })
    }
  })
  return {
    stop: async () => { await loop.stop(); return { reads, errors, wrong } },
    get ok () { return reads },
    errors
  }
}

/** Problems with acknowledged files: each must exist with exactly its size and hash. */
export async function verifyAcked (dir: string, files: Acked[]): Promise<string[]> {
  const problems: string[] = []
  for (const f of files) {
    try {
      const got = await readAll(join(dir, f.name))
      if (sha256(got) !== f.sha256) problems.push(`${f.name}: ${got.byteLength} bytes, expected ${f.size}, hash differs`)
    } catch (err) {
      problems.push(`${f.name}: ${codeOf(err)}`)
    }
  }
  return problems
}

/**
 * A file's bytes, read as cat does: until read() returns 0. A short read is legal (the kernel
 * answers one when a later part of the request failed) and not the end of the file; Node's
 * readFile() takes it for one on files under 512 KiB, which would look like truncated data.
 */
export async function readAll (path: string): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const parts: Buffer[] = []
    let pos = 0
    for (;;) {
      const buf = Buffer.allocUnsafe(1 << 20)
      const { bytesRead } = await fh.read(buf, 0, buf.byteLength, pos)
      if (bytesRead === 0) return Buffer.concat(parts)
      parts.push(buf.subarray(0, bytesRead))
      pos += bytesRead
    }
  } finally {
    await fh.close()
  }
}

/** Error codes not in `allowed`, counted: e.g. unexpected(errors, ['EIO', 'EACCES']). */
export function unexpected (errors: readonly WorkloadError[], allowed: readonly string[]): string[] {
  const counts = new Map<string, number>()
  for (const e of errors) if (!allowed.includes(e.code)) counts.set(`${e.op} ${e.code}`, (counts.get(`${e.op} ${e.code}`) ?? 0) + 1)
  return [...counts].map(([k, n]) => `${n}x ${k}`)
}

/** errno-style code of a failed operation. */
export function codeOf (err: unknown): string {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? code : (err as Error).name ?? 'Error'
}

class HangError extends Error {
  readonly code = 'HANG'
}

async function bounded<T> (ms: number, fn: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([fn(), new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new HangError(`no answer within ${ms} ms`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
}

/** Run `step` repeatedly (one at a time) until stop(); stop() waits for the running step. */
function runLoop (pauseMs: number, step: () => Promise<void>): { stop: () => Promise<void> } {
  let stopped = false
  const done = (async () => {
    while (!stopped) {
      await step()
      if (!stopped) await new Promise(resolve => setTimeout(resolve, pauseMs))
    }
  })()
  return { stop: async () => { stopped = true; await done } }
}
