/**
 * The volume's side of sync (fs/volume/replica.ts), without the network: two real volumes of
 * one team (one SoftHSM token, the second made from the first's team bundle as enrolment makes
 * it), change sets handed over as the log would carry them (encoded and decoded), and blocks
 * copied from one block store to the other as block exchange would, counting them.
 */
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes, createHash } from 'node:crypto'
import { makeVolume, type TestVolume } from './helpers/volume.js'
import { initStrata, teamBundle, type Strata } from '../daemon/strata.js'
import { Replica, ROOT_INO, type ChangeSet, type StrataVolume } from '../fs/volume/index.js'
import { encodeChangeSet, decodeChangeSet } from '../fs/volume/sync-objects.js'
import { rotateNek } from '../fs/volume/rotation.js'

const A_ID = 'deviceAxxxxxxxxxxxxxxxxxxxx'
const B_ID = 'deviceBxxxxxxxxxxxxxxxxxxxx'
const BS = 64 * 1024

interface Side { id: string, vol: StrataVolume, strata: Strata, replica: Replica, outbox: ChangeSet[] }

async function makePair (tt: { teardown: (fn: () => void | Promise<void>) => void }): Promise<{ a: Side, b: Side, deliver: (from: Side, to: Side) => Promise<number>, settle: () => Promise<void> }> {
  const ta: TestVolume = await makeVolume(tt, { blockSize: BS })
  const root = mkdtempSync(join(tmpdir(), 'strata-replica-'))
  const cfg = ta.strata.config.token
  const sb = await initStrata({ dataDir: join(root, 'b'), token: { module: cfg.module, label: cfg.label, pinFile: cfg.pinFile }, replica: { join: async () => await teamBundle(ta.strata) } })
  tt.teardown(async () => { await sb.close().catch(() => {}); rmSync(root, { recursive: true, force: true }) })
  const side = (id: string, strata: Strata): Side => {
    const outbox: ChangeSet[] = []
    const replica = new Replica({ volume: strata.vol }, { device: id, flushDelayMs: 600_000, onChanges: async cs => { outbox.push(decodeChangeSet(encodeChangeSet(cs))) }, deviceLabel: d => d === A_ID ? 'alpha' : 'beta' })
    return { id, vol: strata.vol, strata, replica, outbox }
  }
  const a = side(A_ID, ta.strata)
  const b = side(B_ID, sb)
  await a.replica.start()
  await b.replica.start()
  tt.teardown(async () => { await a.replica.stop(); await b.replica.stop() })
  /** Hand over everything `from` logged: fetch its missing blocks, apply. Returns blocks copied. */
  const deliver = async (from: Side, to: Side): Promise<number> => {
    await from.replica.flush()
    let copied = 0
    for (const cs of from.outbox.splice(0)) {
      for (const id of await to.replica.missingBlocks(cs)) {
        const bytes = await from.strata.blocks.get(Buffer.from(id, 'hex'))
        if (bytes === undefined) throw new Error(`sender lacks block ${id}`)
        await to.strata.blocks.put(Buffer.from(id, 'hex'), bytes)
        copied++
      }
      await to.replica.apply(cs)
    }
    return copied
  }
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 4; i++) { await deliver(a, b); await deliver(b, a) }
  }
  return { a, b, deliver, settle }
}

async function writeFile (vol: StrataVolume, parent: number, name: string, data: Buffer): Promise<number> {
  const { attr, fh } = await vol.create(parent, name)
  await vol.write(fh, 0, data)
  await vol.release(fh)
  return attr.ino
}

async function readAll (vol: StrataVolume, path: string): Promise<Buffer> {
  const attr = await vol.resolve(path)
  const fh = await vol.open(attr.ino)
  try { return await vol.read(fh, 0, attr.size) } finally { await vol.release(fh) }
}

/** The tree as text: path, type, mode, size and content hash of every entry. */
async function tree (vol: StrataVolume, ino = ROOT_INO, prefix = ''): Promise<string[]> {
  const out: string[] = []
  const entries = (await vol.readdir(ino)).sort((x, y) => Buffer.compare(x.name, y.name))
  for (const e of entries) {
    const path = `${prefix}/${e.name.toString()}`
    const attr = await vol.getattr(e.ino)
    let extra = ''
    if (e.type === 'file') extra = createHash('sha256').update(await readAll(vol, path)).digest('hex').slice(0, 12)
    if (e.type === 'symlink') extra = (await vol.readlink(e.ino)).toString()
    out.push(`${path} ${e.type} ${(attr.mode & 0o7777).toString(8)} ${attr.size} ${attr.nlink} ${extra}`)
    if (e.type === 'dir') out.push(...await tree(vol, e.ino, path))
  }
  return out
}

t.test('every kind of change on one device appears on the other', async t => {
  const { a, b, deliver } = await makePair(t)
  const big = randomBytes(5 * BS + 123)
  const docs = (await a.vol.mkdir(ROOT_INO, 'docs')).ino
  const sub = (await a.vol.mkdir(docs, 'sub', { mode: 0o700 })).ino
  const f = await writeFile(a.vol, docs, 'report.txt', Buffer.from('hello from A\n'))
  await writeFile(a.vol, sub, 'big.bin', big)
  await a.vol.symlink(docs, 'link', 'report.txt')
  await a.vol.link(f, ROOT_INO, 'hard.txt')
  await a.vol.setattr(f, { mode: 0o600, mtime: 1_700_000_000_123_456_789n })
  await a.vol.setxattr(f, 'user.tag', Buffer.from('blue'))
  await a.vol.mknod(docs, 'pipe', { mode: 0o010644 })
  const copied = await deliver(a, b)
  t.same(await tree(b.vol), await tree(a.vol), 'same tree, modes, sizes, link counts and contents')
  t.equal(copied, 7, 'exactly the blocks of the two files crossed (6 + 1)')
  const rf = await b.vol.resolve('/docs/report.txt')
  t.equal(rf.mtime, 1_700_000_000_123_456_789n, 'mtime to the nanosecond')
  t.same(await b.vol.getxattr(rf.ino, 'user.tag'), Buffer.from('blue'), 'xattr')
  t.equal(rf.nlink, 2, 'hard link count')

  // Renames (file and directory), an edit, deletes.
  await a.vol.rename(docs, 'report.txt', ROOT_INO, 'moved.txt')
  await a.vol.rename(docs, 'sub', ROOT_INO, 'sub2')
  const fh = await a.vol.open((await a.vol.resolve('/hard.txt')).ino, { write: true })
  await a.vol.write(fh, 6, Buffer.from('FROM'))
  await a.vol.release(fh)
  await a.vol.unlink(docs, 'pipe')
  t.equal(await deliver(a, b), 1, 'an edit of a small file moves one block; renames move none')
  t.same(await tree(b.vol), await tree(a.vol), 'renames, edit and delete converge')
  t.same(await readAll(b.vol, '/moved.txt'), Buffer.from('hello FROM A\n'))

  // And back: B edits, A sees it.
  await b.vol.rmdir((await b.vol.resolve('/sub2')).ino, 'nothing').catch(() => {})
  await b.vol.unlink((await b.vol.resolve('/sub2')).ino, 'big.bin')
  await b.vol.rmdir(ROOT_INO, 'sub2')
  await writeFile(b.vol, docs === 0 ? ROOT_INO : (await b.vol.resolve('/docs')).ino, 'from-b.txt', Buffer.from('B was here'))
  await deliver(b, a)
  t.same(await tree(a.vol), await tree(b.vol), 'changes made on B converge on A')
  t.equal(a.replica.pending + b.replica.pending, 0, 'nothing left waiting')
})

t.test('a rename of a large file, a copy, and a 1-block change inside a large file move only what changed', async t => {
  const { a, b, deliver } = await makePair(t)
  const data = randomBytes(40 * BS)
  await writeFile(a.vol, ROOT_INO, 'large.bin', data)
  t.equal(await deliver(a, b), 40, 'first sync moves every block')
  await a.vol.rename(ROOT_INO, 'large.bin', ROOT_INO, 'renamed.bin')
  t.equal(await deliver(a, b), 0, 'rename moves no block')
  await writeFile(a.vol, ROOT_INO, 'copy.bin', data)
  t.equal(await deliver(a, b), 0, 'a copy (dedup) moves no block')
  const fh = await a.vol.open((await a.vol.resolve('/renamed.bin')).ino, { write: true })
  await a.vol.write(fh, 20 * BS + 100, randomBytes(BS - 200))
  await a.vol.release(fh)
  t.equal(await deliver(a, b), 1, 'a change inside one block moves one block')
  t.same(await readAll(b.vol, '/renamed.bin'), await readAll(a.vol, '/renamed.bin'))
})

t.test('concurrent edits keep both sides: a conflict copy named after the device, alike on both', async t => {
  const { a, b, deliver, settle } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'notes.txt', Buffer.from('base\n'))
  await deliver(a, b)
  const edit = async (s: Side, text: string, mtime: bigint): Promise<void> => {
    const ino = (await s.vol.resolve('/notes.txt')).ino
    const fh = await s.vol.open(ino, { write: true, truncate: true })
    await s.vol.write(fh, 0, Buffer.from(text))
    await s.vol.release(fh)
    await s.vol.setattr(ino, { mtime })
  }
  await edit(a, 'edited on A\n', 1_800_000_000_000_000_000n)
  await edit(b, 'edited on B, later\n', 1_800_000_100_000_000_000n)
  await settle()
  const ta = await tree(a.vol)
  t.same(await tree(b.vol), ta, 'both devices hold the same files')
  t.same(await readAll(a.vol, '/notes.txt'), Buffer.from('edited on B, later\n'), 'the newer edit keeps the name')
  const names = (await a.vol.readdir(ROOT_INO)).map(e => e.name.toString())
  const copy = names.find(n => n.startsWith('notes (conflict from alpha '))
  t.ok(copy, `a conflict copy names the device and time: ${String(copy)}`)
  t.match(String(copy), /^notes \(conflict from alpha \d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\)\.txt$/)
  t.same(await readAll(a.vol, `/${String(copy)}`), Buffer.from('edited on A\n'), 'the other edit is in the copy')
})

t.test('a delete concurrent with an edit keeps the edit on both devices', async t => {
  const { a, b, settle } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'keep.txt', Buffer.from('v1'))
  await settle()
  await a.vol.unlink(ROOT_INO, 'keep.txt')
  const ino = (await b.vol.resolve('/keep.txt')).ino
  const fh = await b.vol.open(ino, { write: true })
  await b.vol.write(fh, 0, Buffer.from('v2 edited'))
  await b.vol.release(fh)
  await settle()
  t.same(await readAll(a.vol, '/keep.txt'), Buffer.from('v2 edited'), 'the deleting device has the edit back')
  t.same(await readAll(b.vol, '/keep.txt'), Buffer.from('v2 edited'), 'the editing device keeps it')
})

t.test('the same name created on both devices keeps both files', async t => {
  const { a, b, settle } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'todo.txt', Buffer.from('A list'))
  await writeFile(b.vol, ROOT_INO, 'todo.txt', Buffer.from('B list'))
  await settle()
  const ta = await tree(a.vol)
  t.same(await tree(b.vol), ta, 'same files on both')
  t.equal(ta.filter(l => l.includes('todo')).length, 2, `two files: ${ta.join(' | ')}`)
})

t.test('an open file on the receiving side is not changed under its reader; the change lands after close', async t => {
  const { a, b, deliver } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'open.txt', Buffer.from('old content'))
  await deliver(a, b)
  const bino = (await b.vol.resolve('/open.txt')).ino
  const rfh = await b.vol.open(bino)
  const fh = await a.vol.open((await a.vol.resolve('/open.txt')).ino, { write: true, truncate: true })
  await a.vol.write(fh, 0, Buffer.from('new content!'))
  await a.vol.release(fh)
  await deliver(a, b)
  t.same(await b.vol.read(rfh, 0, 100), Buffer.from('old content'), 'the reader sees what it opened')
  t.ok(b.replica.pending > 0, 'the change waits')
  await b.vol.release(rfh)
  await b.replica.apply({ ns: b.vol.rootNamespace, objects: [] })
  t.same(await readAll(b.vol, '/open.txt'), Buffer.from('new content!'), 'applied after close')
})

t.test('changes committed but not yet logged when the daemon dies are logged at the next start', async t => {
  const { a, b, deliver } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'gone.txt', Buffer.from('to be removed'))
  await deliver(a, b)
  // Commit changes, then "crash": the capturing replica disappears before its debounce fires.
  await writeFile(a.vol, ROOT_INO, 'unlogged.txt', Buffer.from('written just before the crash'))
  await a.vol.unlink(ROOT_INO, 'gone.txt')
  a.vol.meta.observer = undefined
  const crashed = a.replica
  // Its debounce timer would fire in 10 minutes: end it (as the dead process's would be).
  t.teardown(async () => { await crashed.stop() })
  const outbox: ChangeSet[] = []
  const again = new Replica({ volume: a.vol }, { device: A_ID, onChanges: async cs => { outbox.push(decodeChangeSet(encodeChangeSet(cs))) } })
  await again.start()
  t.teardown(async () => { await again.stop() })
  a.outbox.push(...outbox)
  a.replica = again
  await deliver(a, b)
  t.same(await readAll(b.vol, '/unlogged.txt'), Buffer.from('written just before the crash'), 'the unlogged write reaches the other device')
  await t.rejects(b.vol.resolve('/gone.txt'), { code: 'ENOENT' }, 'the unlogged removal too')
  t.same(await tree(b.vol), await tree(a.vol))
  // A clean stop leaves nothing to rescan: a restart logs nothing.
  await again.stop()
  const quiet: ChangeSet[] = []
  const third = new Replica({ volume: a.vol }, { device: A_ID, onChanges: async cs => { quiet.push(cs) } })
  await third.start()
  await third.stop()
  t.equal(quiet.length, 0, 'nothing is logged twice')
})

t.test('blocks sealed into a file still open are announced as they stand, once the writer paused', async t => {
  const tv = await makeVolume(t, { blockSize: BS })
  const vol = tv.strata.vol
  const announced: string[] = []
  const replica = new Replica({ volume: vol }, { device: A_ID, flushDelayMs: 600_000, onChanges: async () => {}, onBlocksSealed: ids => { announced.push(...ids) } })
  await replica.start()
  t.teardown(async () => { await replica.stop() })
  const { attr, fh } = await vol.create(ROOT_INO, 'growing.bin')
  for (let i = 0; i < 4; i++) await vol.write(fh, i * BS, randomBytes(BS)) // each full block is sealed at once
  for (let i = 0; i < 3; i++) await vol.write(fh, 100, randomBytes(50)) // rewritten in place while open
  await vol.fsync(fh)
  const deadline = Date.now() + 10_000
  const final = async (): Promise<string[]> => (await vol.blockList(attr.ino)).map(b => b.id)
  while (!(await final()).every(id => announced.includes(id)) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 50))
  const want = await final()
  t.equal(want.length, 4)
  t.ok(want.every(id => announced.includes(id)), 'every block the file holds was announced while it was open')
  t.ok(announced.filter(id => !want.includes(id)).length <= 1, `superseded versions are not announced (at most one raced the delay): ${announced.length} announced`)
  await vol.release(fh)
  const before = announced.length
  await writeFile(vol, ROOT_INO, 'closed.txt', Buffer.from('small and closed at once'))
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(announced.length, before, 'a file written and closed at once goes by its log entry alone')
})

for (const [tempA, tempB] of [[true, false], [true, true], [false, false]] as const) t.test(`save-by-rename of one file on both sides of a partition converges: one conflict copy, named alike, no stray temp file (temp name logged on A: ${String(tempA)}, on B: ${String(tempB)})`, async t => {
  const { a, b, settle } = await makePair(t)
  await writeFile(a.vol, ROOT_INO, 'doc.txt', Buffer.from('base\n'))
  await settle()
  const save = async (s: Side, text: string, mtime: bigint, logTemp: boolean): Promise<void> => {
    const ino = await writeFile(s.vol, ROOT_INO, 'doc.txt.tmp', Buffer.from(text))
    await s.vol.setattr(ino, { mtime })
    if (logTemp) await s.replica.flush() // the temp name reaches the log before the rename on this side only
    await s.vol.rename(ROOT_INO, 'doc.txt.tmp', ROOT_INO, 'doc.txt')
  }
  await save(a, 'saved on A\n', 1_800_000_000_000_000_000n, tempA)
  await save(b, 'saved on B, later\n', 1_800_000_100_000_000_000n, tempB)
  await settle()
  const ta = await tree(a.vol)
  t.same(await tree(b.vol), ta, `both devices hold the same files: ${ta.join(' | ')}`)
  const names = (await a.vol.readdir(ROOT_INO)).map(e => e.name.toString()).sort()
  t.notOk(names.includes('doc.txt.tmp'), 'the temp name is gone on both')
  t.equal(names.length, 2, `the file and one conflict copy: ${names.join(', ')}`)
  const texts = await Promise.all(names.map(async n => (await readAll(a.vol, `/${n}`)).toString()))
  t.same(texts.sort(), ['saved on A\n', 'saved on B, later\n'], 'both saves are kept')
  t.equal(a.replica.pending + b.replica.pending, 0, 'nothing left waiting')
})

/** A file open for reading on B while A rewrites it and B is handed the change: it waits for the reader. */
async function changeWaitingForReader (tt: { teardown: (fn: () => void | Promise<void>) => void }): Promise<{ a: Side, b: Side, rfh: number }> {
  const { a, b, deliver } = await makePair(tt)
  await writeFile(a.vol, ROOT_INO, 'open.txt', Buffer.from('old content'))
  await deliver(a, b)
  const rfh = await b.vol.open((await b.vol.resolve('/open.txt')).ino)
  const fh = await a.vol.open((await a.vol.resolve('/open.txt')).ino, { write: true, truncate: true })
  await a.vol.write(fh, 0, Buffer.from('new content!'))
  await a.vol.release(fh)
  await deliver(a, b)
  return { a, b, rfh }
}

t.test('objects that wait for apply (a file open here) survive a crash of the replica: the change lands after restart', async t => {
  const { a, b, rfh } = await changeWaitingForReader(t) // its log entry counts as applied once delivered
  t.ok(b.replica.pending > 0, 'the change waits for the reader')
  // Crash: the replica's memory is gone; a new one starts on the same volume.
  b.vol.meta.observer = undefined
  const crashed = b.replica
  t.teardown(async () => { await crashed.stop() })
  await b.vol.release(rfh)
  const again = new Replica({ volume: b.vol }, { device: B_ID, flushDelayMs: 600_000, onChanges: async () => {} })
  await again.start()
  t.teardown(async () => { await again.stop() })
  t.ok(again.pending > 0, 'the waiting object was stored and is loaded back')
  await again.apply({ ns: b.vol.rootNamespace, objects: [] })
  t.same(await readAll(b.vol, '/open.txt'), Buffer.from('new content!'), 'applied after the restart')
  t.equal(again.pending, 0, 'nothing left waiting')
  const third = new Replica({ volume: b.vol }, { device: B_ID, flushDelayMs: 600_000, onChanges: async () => {} })
  await again.stop()
  await third.start()
  t.teardown(async () => { await third.stop() })
  t.equal(third.pending, 0, 'the stored copy was removed once applied')
})

t.test('an apply that throws keeps what was waiting: the earlier change still lands', async t => {
  const { a, b, rfh } = await changeWaitingForReader(t)
  t.ok(b.replica.pending > 0, 'the change waits for the reader')
  // A change set whose apply throws (a malformed block id in a new file).
  await writeFile(a.vol, ROOT_INO, 'bad.txt', Buffer.from('x'))
  await a.replica.flush()
  const bad = a.outbox.splice(0)
  for (const cs of bad) for (const o of cs.objects) if (o.k === 'i' && o.blocks !== undefined) for (const blk of o.blocks) blk.id = 'zz'
  let threw = false
  for (const cs of bad) await b.replica.apply(cs).catch(() => { threw = true })
  t.ok(threw, 'the malformed change set is refused')
  await b.vol.release(rfh)
  await b.replica.apply({ ns: b.vol.rootNamespace, objects: [] })
  t.same(await readAll(b.vol, '/open.txt'), Buffer.from('new content!'), 'the change that waited before the failure still applies')
})

t.test('a NEK rotation on one device reaches the other with its change sets; rotations on both at once converge', async t => {
  const { a, b, deliver, settle } = await makePair(t)
  const ns = a.vol.rootNamespace
  await writeFile(a.vol, ROOT_INO, 'before.bin', randomBytes(3 * BS))
  await settle()
  await rotateNek(a.vol, ns)
  const va = await a.vol.keys.currentNekVersion(ns)
  t.notOk((await b.vol.keys.nekVersions(ns)).includes(va), 'B does not have A\'s new version yet')
  const after = randomBytes(2 * BS + 5)
  await writeFile(a.vol, ROOT_INO, 'after-a.bin', after)
  await deliver(a, b)
  t.same(await readAll(b.vol, '/after-a.bin'), after, 'B reads a file whose block keys A wrapped under its new NEK')
  t.equal(await b.vol.keys.currentNekVersion(ns), va, 'and A\'s version is current on B')
  t.same(await b.vol.keys.verifyKeys(), [], 'the adopted key record verifies in B\'s token')

  // Both rotate before hearing of each other, and write.
  await rotateNek(a.vol, ns)
  await rotateNek(b.vol, ns)
  await writeFile(a.vol, ROOT_INO, 'two-a.bin', randomBytes(BS + 1))
  await writeFile(b.vol, ROOT_INO, 'two-b.bin', randomBytes(BS + 2))
  await settle()
  t.same(await tree(b.vol), await tree(a.vol), 'both hold the same files, every one readable')
  t.equal(await a.vol.keys.currentNekVersion(ns), await b.vol.keys.currentNekVersion(ns), 'the same NEK version is current on both')
  t.equal(a.replica.pending + b.replica.pending, 0, 'nothing left waiting')
})
