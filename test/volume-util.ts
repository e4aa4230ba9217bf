/**
 * Shared helpers of the volume test files (test/volume-*.test.ts). Not a test file itself.
 * Everything here goes through the public Volume API or the raw files of a data dir.
 */
import tap from 'tap'
import { createCipheriv, createHash } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ROOT_INO } from '../fs/volume/types.js'
import type { Attr, DirEntry } from '../fs/volume/types.js'
import type { TestVolume } from './helpers/volume.js'

export type TapTest = Parameters<Parameters<typeof tap.test>[0]>[0]
export type SVolume = TestVolume['vol']

export const KiB = 1024
export const MiB = 1024 * KiB
export const GiB = 1024 * MiB

/** Deterministic pseudo-random bytes (AES-256-CTR keystream of a seed); same seed, same bytes. */
export function prng (seed: string, length: number): Buffer {
  const key = createHash('sha256').update('key:' + seed).digest()
  const iv = createHash('sha256').update('iv:' + seed).digest().subarray(0, 16)
  const c = createCipheriv('aes-256-ctr', key, iv)
  return Buffer.concat([c.update(Buffer.alloc(length)), c.final()])
}

export function sha256 (data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Create a file under parent, write data at offset 0 (one call per chunk), release it. */
export async function writeFile (vol: SVolume, parent: number, name: Uint8Array | string, data: Uint8Array, chunk = 0): Promise<Attr> {
  const { attr, fh } = await vol.create(parent, name, { write: true })
  try {
    const step = chunk > 0 ? chunk : Math.max(1, data.length)
    for (let off = 0; off < data.length; off += step) {
      const piece = data.subarray(off, Math.min(data.length, off + step))
      const n = await vol.write(fh, off, piece)
      if (n !== piece.length) throw new Error(`short write: ${n} of ${piece.length} at ${off}`)
    }
  } finally {
    await vol.release(fh)
  }
  return attr
}

/** Open ino read-only, read [0, size) in one call, release. */
export async function readWhole (vol: SVolume, ino: number): Promise<Buffer> {
  const size = (await vol.getattr(ino)).size
  const fh = await vol.open(ino)
  try {
    return await vol.read(fh, 0, size)
  } finally {
    await vol.release(fh)
  }
}

/** Read the range [offset, offset+length) through a fresh read-only handle. */
export async function readRange (vol: SVolume, ino: number, offset: number, length: number): Promise<Buffer> {
  const fh = await vol.open(ino)
  try {
    return await vol.read(fh, offset, length)
  } finally {
    await vol.release(fh)
  }
}

export function nameOf (e: DirEntry): string {
  return Buffer.from(e.name).toString('latin1')
}

export interface NodeSnapshot {
  path: string
  attr: Omit<Attr, 'atime'>
  atime: bigint
  /** sha256 of file content, readlink target (hex) or sorted entry names for dirs */
  content: string
  xattrs: Record<string, string>
}

function stripAtime (a: Attr): Omit<Attr, 'atime'> {
  const { atime: _a, ...rest } = a
  return rest
}

/**
 * Walk the tree from the root: getattr of every node first (so reads do not move atimes before
 * they are recorded), then contents, link targets, entry lists and xattrs. Paths use latin1 so
 * that non-UTF-8 names stay distinct.
 */
export async function snapshot (vol: SVolume): Promise<NodeSnapshot[]> {
  const nodes: Array<{ path: string, attr: Attr }> = []
  const entries = new Map<number, string>()
  const queue: Array<{ path: string, ino: number }> = [{ path: '/', ino: ROOT_INO }]
  while (queue.length > 0) {
    const { path, ino } = queue.shift()!
    const attr = await vol.getattr(ino)
    nodes.push({ path, attr })
    if (attr.type === 'dir') {
      const list = await vol.readdir(ino)
      const names = list.map(nameOf).sort()
      entries.set(ino, JSON.stringify(names))
      for (const e of [...list].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)))) {
        queue.push({ path: (path === '/' ? '' : path) + '/' + nameOf(e), ino: e.ino })
      }
    }
  }
  const out: NodeSnapshot[] = []
  for (const { path, attr } of nodes) {
    let content = ''
    if (attr.type === 'file') content = sha256(await readWhole(vol, attr.ino))
    else if (attr.type === 'symlink') content = (await vol.readlink(attr.ino)).toString('hex')
    else if (attr.type === 'dir') content = entries.get(attr.ino) ?? ''
    const xattrs: Record<string, string> = {}
    for (const x of (await vol.listxattr(attr.ino)).sort()) {
      xattrs[x] = (await vol.getxattr(attr.ino, x)).toString('hex')
    }
    out.push({ path, attr: stripAtime(attr), atime: attr.atime, content, xattrs })
  }
  return out
}

/** Every regular file below dir, recursively. */
export async function listFilesRecursive (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, d.name)
    if (d.isDirectory()) out.push(...await listFilesRecursive(p))
    else if (d.isFile()) out.push(p)
  }
  return out
}

/** Byte patterns under which a secret string could sit in a file unencrypted. */
export function needlesFor (marker: string): Array<{ form: string, bytes: Buffer }> {
  const utf8 = Buffer.from(marker, 'utf8')
  const out = [
    { form: 'utf8', bytes: utf8 },
    { form: 'utf16le', bytes: Buffer.from(marker, 'utf16le') },
    { form: 'hex', bytes: Buffer.from(utf8.toString('hex'), 'latin1') },
    { form: 'HEX', bytes: Buffer.from(utf8.toString('hex').toUpperCase(), 'latin1') }
  ]
  // base64 at each of the three alignments, minus the edge characters that depend on neighbours
  for (let skip = 0; skip < 3; skip++) {
    const b64 = utf8.subarray(skip).toString('base64').replace(/=+$/, '')
    out.push({ form: `base64+${skip}`, bytes: Buffer.from(b64.slice(0, b64.length - 2), 'latin1') })
  }
  return out
}

/** Every (file, marker, form) hit of the markers in the files below dir. */
export async function findMarkers (dir: string, markers: string[]): Promise<string[]> {
  const hits: string[] = []
  const needles = markers.flatMap(m => needlesFor(m).map(n => ({ marker: m, ...n })))
  for (const file of await listFilesRecursive(dir)) {
    const st = await stat(file)
    if (st.size === 0) continue
    const data = await readFile(file)
    for (const n of needles) {
      if (data.indexOf(n.bytes) !== -1) hits.push(`${file}: ${n.marker} as ${n.form}`)
    }
  }
  return hits
}

/** Flip one bit in place. */
export function flipBit (buf: Uint8Array, bitIndex: number): void {
  const byte = Math.floor(bitIndex / 8)
  buf[byte] = (buf[byte] ?? 0) ^ (1 << (bitIndex % 8))
}

/** Small deterministic PRNG (mulberry32) for picking positions; print the seed on failure. */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

export function errName (err: unknown): string {
  return err instanceof Error ? err.name : typeof err
}

/** fsck and NEK rotation are functions of fs/volume taking the volume (not methods). */
export { fsck, rotateNek } from '../fs/volume/index.js'

/**
 * fsck problems that are damage: unreferenced ("orphan") blocks are garbage awaiting GC, not
 * damage (fsck keeps `ok` true for them; fs/volume/fsck.ts).
 */
export function damage (report: { problems: Array<{ kind: string, path: string, detail: string }> }): Array<{ kind: string, path: string, detail: string }> {
  return report.problems.filter(p => p.kind !== 'orphan-block')
}
