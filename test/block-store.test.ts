import t, { type Test } from 'tap'
import { mkdtempSync, rmSync, readdirSync, openSync, readSync, writeSync, closeSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { LogBlockStore, LevelBlockStore, type BlockStore, type Db, type Sublevel } from '../fs/store/index.js'
import { blockStoreSuite } from './suites/block-store-suite.js'

function tmp (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-bs-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

function flipInFile (file: string, at: number): void {
  const fd = openSync(file, 'r+')
  const b = Buffer.alloc(1)
  readSync(fd, b, 0, 1, at)
  b[0] = (b[0] as number) ^ 0x10
  writeSync(fd, b, 0, 1, at)
  closeSync(fd)
}

blockStoreSuite(t, 'LogBlockStore', async t => {
  const dir = tmp(t)
  let db: Db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  const make = async (): Promise<LogBlockStore> => {
    const s = new LogBlockStore({ index: db.sublevel<string, Uint8Array>('blk', { keyEncoding: 'utf8', valueEncoding: 'view' }) }, { dir: join(dir, 'blocks'), segmentBytes: 512 * 1024 })
    await s.open()
    return s
  }
  const h = {
    store: await make() as BlockStore,
    reopen: async () => {
      await h.store.close(); await db.close()
      db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
      h.store = await make()
      return h.store
    },
    corrupt: async (id: Buffer) => {
      // The record's bytes follow its 40-byte header, which holds the id.
      for (const name of readdirSync(join(dir, 'blocks'))) {
        const file = join(dir, 'blocks', name)
        const fd = openSync(file, 'r'); const buf = Buffer.alloc(statSync(file).size); readSync(fd, buf, 0, buf.length, 0); closeSync(fd)
        const at = buf.indexOf(id)
        if (at >= 0) { flipInFile(file, at + 32 + 100); return }
      }
      throw new Error('block not found in any segment')
    }
  }
  t.teardown(async () => { await h.store.close(); await db.close() })
  return h
})

blockStoreSuite(t, 'LevelBlockStore', async t => {
  const dir = tmp(t)
  let db: Db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  const sub = (): Sublevel => db.sublevel<string, Uint8Array>('blkdata', { keyEncoding: 'utf8', valueEncoding: 'view' })
  const h = {
    store: new LevelBlockStore({ data: sub() }) as BlockStore,
    reopen: async () => {
      await h.store.close(); await db.close()
      db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
      h.store = new LevelBlockStore({ data: sub() })
      return h.store
    },
    corrupt: async (id: Buffer) => {
      const s = db.sublevel<string, Uint8Array>('blkdata', { keyEncoding: 'utf8', valueEncoding: 'view' })
      const hex = id.toString('hex')
      const v = Buffer.from(await s.get(hex) as Uint8Array)
      v[100] = (v[100] as number) ^ 0x10
      await s.put(hex, v)
    }
  }
  t.teardown(async () => { await h.store.close(); await db.close() })
  return h
})

t.test('LogBlockStore ignores a torn record at a segment tail and appends after it', async t => {
  const dir = tmp(t)
  const db: Db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  t.teardown(async () => { await db.close() })
  const index = db.sublevel<string, Uint8Array>('blk', { keyEncoding: 'utf8', valueEncoding: 'view' })
  const { createHash, randomBytes } = await import('node:crypto')
  const mk = (n: number): { id: Buffer, bytes: Buffer } => { const bytes = randomBytes(n); return { id: createHash('sha256').update(bytes).digest(), bytes } }
  let s = new LogBlockStore({ index }, { dir: join(dir, 'blocks') })
  const a = mk(5000)
  await s.put(a.id, a.bytes)
  await s.close()
  // A crash mid-append: half a record's header and bytes at the tail, never indexed.
  const seg = join(dir, 'blocks', readdirSync(join(dir, 'blocks'))[0] as string)
  const fd = openSync(seg, 'a'); writeSync(fd, Buffer.concat([Buffer.from('SBK1'), randomBytes(700)])); closeSync(fd)
  s = new LogBlockStore({ index }, { dir: join(dir, 'blocks') })
  const b = mk(9000)
  await s.put(b.id, b.bytes)
  t.ok((await s.get(a.id))?.equals(a.bytes))
  t.ok((await s.get(b.id))?.equals(b.bytes))
  await s.close()
})
