/**
 * Corruption faults (issue 5): bit flips in stored blocks, wrapped keys and metadata records of an
 * unmounted volume; then readers get EIO and a log line naming the file, never wrong bytes, every
 * other file reads back intact, and `strata fsck` reports exactly what was flipped. With a healthy
 * peer online a damaged block is fetched again and repaired. A bit flipped in a key between
 * custody steps is caught before anything is stored. The randomised scenarios set their volumes
 * up once and flip back what each iteration damaged, so every iteration starts from intact data.
 */
import { createCipheriv, createHash } from 'node:crypto'
import { openSync, readSync, writeSync, fsyncSync, closeSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { constants as osConstants } from 'node:os'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { makeDrive, strata } from '../../../test/helpers/mount.js'
import { firstDrive, joinDrive, status, until } from '../../../test/helpers/team.js'
import { makeVolume } from '../../../test/helpers/volume.js'
import { ROOT_INO, fsck as fsckVolume } from '../../../fs/volume/index.js'
import { toErrno } from '../../../fs/fuse/errno.js'
import type { FaultContext, Rng, Scenario } from '../harness.js'

const MiB = 1024 * 1024

/** A file written through the mount: its content hash, inode numbers and block records. */
interface Written { path: string, sha: string, ino: number, dirIno: number, blocks: Rec[] }
/** A block record in a segment file: where its bytes are. */
interface Rec { seg: string, id: string, at: number, len: number }

/** Deterministic, fast pseudo-random bytes from the scenario's rng (AES-CTR keystream). */
function data (rng: Rng, n: number): Buffer {
  return createCipheriv('aes-256-ctr', rng.bytes(32), rng.bytes(16)).update(Buffer.alloc(n))
}

/** Every block record of the volume's segment files, in file order. */
function records (dataDir: string): Rec[] {
  const dir = join(dataDir, 'blocks')
  const out: Rec[] = []
  for (const seg of readdirSync(dir).filter(n => /^seg-\d{8}\.log$/.test(n)).sort()) {
    const buf = readFileSync(join(dir, seg))
    for (let o = 0; o + 40 <= buf.length;) {
      if (buf.toString('latin1', o, o + 4) !== 'SBK1') throw new Error(`${seg}: no record at ${o}`)
      const len = buf.readUInt32BE(o + 4)
      out.push({ seg, id: buf.subarray(o + 8, o + 40).toString('hex'), at: o + 40, len })
      o += 40 + len
    }
  }
  return out
}

/**
 * Where a scenario runs: a real daemon and mount (EIO at the mount, the daemon's log line, the
 * CLI's fsck), or — in most iterations of the full run, to keep 50 of them cheap — the same
 * volume as a library in-process (real token, real LevelDB and segments; the typed error must be
 * one the FUSE layer maps to EIO). A target is made once per scenario and kind, then stopped and
 * started by every iteration that uses it; the methods check and log into that iteration's ctx.
 */
interface Target {
  dataDir: string
  write: (dir: string, file: string, bytes: Buffer) => Promise<{ ino: number, dirIno: number }>
  stop: () => Promise<void>
  start: () => Promise<void>
  /** The file's hash, or the errno its read failed with. */
  read: (ctx: FaultContext, rel: string) => Promise<{ sha?: string, errno?: string }>
  /** After the reads: the log since the last start names every damaged file (mount only). */
  logged: (ctx: FaultContext, damaged: Set<string>) => void
  /** fsck of the stopped volume; it is stopped again afterwards. */
  fsck: (ctx: FaultContext, expectClean: boolean) => Promise<Problem[]>
}

/**
 * Real mount in iterations 0 and 25 of the full run; in --quick only for `corrupt-block-bits` (the
 * record scenarios share its mount path, and the quick run of every area must stay short).
 */
const useMount = (ctx: FaultContext, inQuick: boolean): boolean => ctx.quick ? inQuick : ctx.iteration % 25 === 0

async function mountTarget (ctx: FaultContext): Promise<Target> {
  const d = await makeDrive(ctx)
  const logFile = join(d.dataDir, 'strata.log')
  // The drive's log spans every iteration: each checks only what its own mount logged.
  let logFrom = 0
  return {
    dataDir: d.dataDir,
    write: async (dir, file, bytes) => {
      mkdirSync(join(d.mnt, dir))
      const fd = openSync(join(d.mnt, dir, file), 'w')
      try { writeSync(fd, bytes); fsyncSync(fd) } finally { closeSync(fd) }
      return { ino: (await stat(join(d.mnt, dir, file))).ino, dirIno: (await stat(join(d.mnt, dir))).ino }
    },
    stop: async () => { await d.unmount() },
    start: async () => {
      logFrom = statSync(logFile).size
      await d.mount()
    },
    read: async (_ctx, rel) => {
      try { return { sha: sha(await readFile(join(d.mnt, rel))) } } catch (err) { return { errno: (err as NodeJS.ErrnoException).code } }
    },
    logged: (ctx, damaged) => {
      const log = readFileSync(logFile).subarray(logFrom).toString('utf8')
      for (const p of damaged) ctx.check(log.includes(`${p} failed (EIO)`), `the daemon log has no line naming ${p}`)
    },
    fsck: async (ctx, expectClean) => await fsckCli(ctx, d.dataDir, expectClean)
  }
}

async function libraryTarget (ctx: FaultContext): Promise<Target> {
  const tv = await makeVolume(ctx)
  return {
    dataDir: tv.dataDir,
    write: async (dir, file, bytes) => {
      const dirIno = (await tv.vol.mkdir(ROOT_INO, dir)).ino
      const { attr, fh } = await tv.vol.create(dirIno, file)
      try { await tv.vol.write(fh, 0, bytes); await tv.vol.fsync(fh) } finally { await tv.vol.release(fh) }
      return { ino: attr.ino, dirIno }
    },
    stop: async () => { await tv.close() },
    start: async () => { await tv.reopen() },
    read: async (ctx, rel) => {
      try {
        const attr = await tv.vol.resolve(rel)
        const fh = await tv.vol.open(attr.ino)
        try { return { sha: sha(await tv.vol.read(fh, 0, attr.size)) } } finally { await tv.vol.release(fh) }
      } catch (err) {
        const errno = -toErrno(err).errno === osConstants.errno.EIO ? 'EIO' : `${(err as Error).name}`
        ctx.log(`${rel}: ${(err as Error).name}: ${(err as Error).message}`)
        return { errno }
      }
    },
    logged: () => {},
    fsck: async (ctx, expectClean) => {
      // fsck runs on a stopped volume: open it, and close it again for the next corruption.
      const report = await fsckVolume(await tv.reopen()).finally(async () => { await tv.close() })
      const problems = report.problems.filter(p => p.kind !== 'orphan-block')
      for (const p of problems) ctx.log(`  fsck: ${p.kind} ${p.path} ${p.detail}`)
      ctx.check(report.ok === expectClean, `fsck ${report.ok ? 'clean' : 'found problems'}, expected ${expectClean ? 'clean' : 'problems'}`)
      return problems
    }
  }
}

/**
 * `n` files, each alone in its own directory (`/dK/fK.bin`, so its directory entry is the only
 * one under its parent), written and fsynced one after the other: the block records appended
 * meanwhile are that file's.
 */
async function writeFiles (ctx: FaultContext, t: Target, n: number): Promise<Written[]> {
  const out: Written[] = []
  for (let k = 0; k < n; k++) {
    const before = records(t.dataDir).length
    const bytes = data(ctx.rng, ctx.rng.int(1, 2500) * 1024)
    const { ino, dirIno } = await t.write(`d${k}`, `f${k}.bin`, bytes)
    const rel = `/d${k}/f${k}.bin`
    const blocks = records(t.dataDir).slice(before)
    ctx.check(blocks.length === Math.ceil(bytes.length / MiB), `${rel}: ${blocks.length} block records for ${bytes.length} bytes`)
    out.push({ path: rel, sha: sha(bytes), ino, dirIno, blocks })
  }
  return out
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')
const hex14 = (n: number): string => n.toString(16).padStart(14, '0')

/** Read every file: the damaged ones must fail with EIO, the rest be intact. */
async function checkReads (ctx: FaultContext, t: Target, files: Written[], damaged: Set<string>): Promise<void> {
  for (const f of files) {
    const { sha: got, errno } = await t.read(ctx, f.path)
    if (damaged.has(f.path)) {
      ctx.check(got === undefined, `${f.path} was damaged but read back ${got === f.sha ? 'its old bytes' : 'WRONG BYTES'}`)
      ctx.check(errno === 'EIO', `${f.path}: ${errno ?? 'no error'} instead of EIO`)
    } else {
      ctx.check(got === f.sha, `${f.path} (not damaged) ${got === undefined ? `failed: ${errno ?? '?'}` : 'read back wrong bytes'}`)
    }
  }
  t.logged(ctx, damaged)
}

interface Problem { kind: string, path: string, detail: string }

/** `strata fsck --data DIR` of an unmounted drive: its problems (orphan blocks are not problems). */
async function fsckCli (ctx: FaultContext, dataDir: string, expectClean: boolean): Promise<Problem[]> {
  const r = await strata(['fsck', '--data', dataDir])
  ctx.log(`fsck: exit ${r.code}: ${r.stdout.trim().split('\n').pop() ?? ''}`)
  const problems = r.stdout.split('\n').filter(l => l.includes('\t')).map(l => {
    const [kind = '', path = '', detail = ''] = l.split('\t')
    return { kind, path, detail }
  }).filter(p => p.kind !== 'orphan-block')
  for (const p of problems) ctx.log(`  fsck: ${p.kind} ${p.path} ${p.detail}`)
  ctx.check(expectClean ? r.code === 0 : r.code === 7, `fsck exit ${r.code}, expected ${expectClean ? 0 : 7} (stderr: ${r.stderr.trim()})`)
  return problems
}

/** Flip one random bit of `buf` in [from, to). */
function flipBit (rng: Rng, buf: Buffer, from: number, to: number): string {
  const at = rng.int(from, to - 1)
  const bit = rng.int(0, 7)
  buf[at] = (buf[at] as number) ^ (1 << bit)
  return `byte ${at} bit ${bit}`
}

/** One bit of a file, picked at random in [from, to): `toggle` flips it, and flips it back. */
interface FileBit { file: string, at: number, bit: number }

function pickBit (rng: Rng, file: string, from: number, to: number): FileBit {
  return { file, at: rng.int(from, to - 1), bit: rng.int(0, 7) }
}

/** Flip the bit in place, durably (fsync). */
function toggle (b: FileBit): string {
  const fd = openSync(b.file, 'r+')
  try {
    const byte = Buffer.alloc(1)
    readSync(fd, byte, 0, 1, b.at)
    byte[0] = (byte[0] as number) ^ (1 << b.bit)
    writeSync(fd, byte, 0, 1, b.at)
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  return `byte ${b.at} bit ${b.bit}`
}

const sublevelOf = (db: ClassicLevel<string, Uint8Array>, sub: string) => db.sublevel<string, Uint8Array>(sub, { keyEncoding: 'utf8', valueEncoding: 'view' })

/** Run `fn` on one sublevel of the stopped volume's LevelDB. */
async function inDb<T> (dataDir: string, sub: string, fn: (s: ReturnType<typeof sublevelOf>) => Promise<T>): Promise<T> {
  const db = new ClassicLevel<string, Uint8Array>(join(dataDir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  await db.open()
  try {
    return await fn(sublevelOf(db, sub))
  } finally {
    await db.close()
  }
}

/** Rewrite one value of `sub` with a bit flipped; returns what puts the original value back. */
async function flipRecord (ctx: FaultContext, dataDir: string, sub: string, key: string): Promise<() => Promise<void>> {
  const original = await inDb(dataDir, sub, async s => {
    const v = await s.get(key)
    if (v === undefined) ctx.fail(`no record ${sub}/${key} to corrupt`)
    const buf = Buffer.from(v)
    ctx.log(`flip ${sub} ${key}: ${flipBit(ctx.rng, buf, 0, buf.length)} of ${buf.length}`)
    await s.put(key, buf)
    return v
  })
  return async () => { await inDb(dataDir, sub, async s => { await s.put(key, original) }) }
}

async function recordKeys (dataDir: string, sub: string, prefix: string): Promise<string[]> {
  return await inDb(dataDir, sub, async s => await s.keys({ gte: prefix, lt: prefix + '\xff' }).all())
}

/** A volume with files written, at rest (the corruption is done to it stopped). */
interface Prepared { t: Target, files: Written[], mount: boolean }

/**
 * A scenario's volumes, each made on first use with the set-up context (so it lives until the
 * last iteration): the mount, the library volume, or both, as `useMount` picks per iteration.
 */
type Volumes = (mount: boolean) => Promise<Prepared>

function volumes (setup: FaultContext): Volumes {
  const made = new Map<boolean, Promise<Prepared>>()
  const make = async (mount: boolean): Promise<Prepared> => {
    const t = mount ? await mountTarget(setup) : await libraryTarget(setup)
    const files = await writeFiles(setup, t, 4)
    await t.stop()
    return { t, files, mount }
  }
  return async mount => {
    const p = made.get(mount) ?? make(mount)
    made.set(mount, p)
    return await p
  }
}

/** This iteration's volume (see useMount), intact: the previous iteration restored what it flipped. */
async function volumeFor (ctx: FaultContext, vols: Volumes, inQuick: boolean): Promise<Prepared> {
  const mount = useMount(ctx, inQuick)
  ctx.log(mount ? 'through a real mount' : 'through the volume library')
  return await vols(mount)
}

/** Problems fsck should report only about `victims`: by path, inode key or block id. */
function checkProblemsName (ctx: FaultContext, problems: Problem[], files: Written[], victims: Written[]): void {
  const mentions = (p: Problem, f: Written): boolean =>
    p.path === f.path || p.path === f.path.slice(0, f.path.lastIndexOf('/')) || p.path.includes(hex14(f.ino)) ||
    f.blocks.some(b => p.path.includes(b.id) || p.detail.includes(b.id))
  for (const p of problems) {
    ctx.check(victims.some(v => mentions(p, v)), `fsck reports a problem that names no damaged file: ${p.kind} ${p.path} ${p.detail}`)
    ctx.check(!files.filter(f => !victims.includes(f)).some(f => p.path === f.path), `fsck reports an intact file: ${p.path}`)
  }
  for (const v of victims) ctx.check(problems.some(p => mentions(p, v)), `fsck does not report ${v.path}`)
}

const corruptBlockBits: Scenario<Volumes> = {
  name: 'corrupt-block-bits',
  injects: 'random bit flips in stored block bytes: EIO and a log line for the files hit, others intact, fsck names exactly the flipped blocks by path',
  randomised: true,
  prepare: async ctx => volumes(ctx),
  run: async (ctx, vols) => {
    const { t, files } = await volumeFor(ctx, vols, true)
    const all = files.flatMap(f => f.blocks)
    const hit = new Set<Rec>()
    for (let n = ctx.rng.int(1, 3); n > 0; n--) hit.add(ctx.rng.pick(all))
    const flipped = [...hit].map(r => {
      const b = pickBit(ctx.rng, join(t.dataDir, 'blocks', r.seg), r.at, r.at + r.len)
      ctx.log(`flip block ${r.id.slice(0, 12)}: ${toggle(b)}`)
      return b
    })
    const victims = files.filter(f => f.blocks.some(b => hit.has(b)))
    await t.start()
    await checkReads(ctx, t, files, new Set(victims.map(v => v.path)))
    await t.stop()
    const problems = await t.fsck(ctx, false)
    const reported = new Set(problems.map(p => /block ([0-9a-f]{64})/.exec(p.detail)?.[1]))
    ctx.check(problems.every(p => p.kind === 'block-corrupt'), 'fsck reports other kinds of problems than block-corrupt')
    ctx.check(reported.size === hit.size && [...hit].every(r => reported.has(r.id)), `fsck reports blocks ${[...reported].join(',')} but ${[...hit].map(r => r.id).join(',')} were flipped`)
    for (const p of problems) {
      const id = /block ([0-9a-f]{64})/.exec(p.detail)?.[1]
      ctx.check(files.find(f => f.blocks.some(b => b.id === id))?.path === p.path, `fsck names ${p.path} for block ${id ?? '?'}, which is not that file's`)
    }
    for (const b of flipped) toggle(b) // intact again for the next iteration
  }
}

/** Records of one file, by kind, for the record-corruption scenarios. */
function recordsOf (f: Written, ns: string, idx: number): Record<string, { sub: string, key: string }> {
  const id = f.blocks[idx]?.id ?? ''
  return {
    bek: { sub: 'meta', key: `k/${ns}/${id}` },
    inode: { sub: 'meta', key: `i/${hex14(f.ino)}` },
    manifest: { sub: 'meta', key: `m/${hex14(f.ino)}/${idx.toString(16).padStart(12, '0')}` }
  }
}

/** Flip a bit in a record of one random file (of kind `kinds`), check reads and fsck, restore it. */
async function corruptOneFile (ctx: FaultContext, vols: Volumes, kinds: string[]): Promise<void> {
  const { t, files } = await volumeFor(ctx, vols, false)
  const victim = ctx.rng.pick(files)
  const kind = ctx.rng.pick(kinds)
  const ns = (await recordKeys(t.dataDir, 'meta', 'n/'))[0]?.slice(2) ?? ctx.fail('no namespace record')
  let rec: { sub: string, key: string }
  if (kind === 'dirent') {
    const keys = await recordKeys(t.dataDir, 'meta', `d/${hex14(victim.dirIno)}/`)
    ctx.check(keys.length === 1, `directory of ${victim.path} has ${keys.length} entries`)
    rec = { sub: 'meta', key: keys[0] as string }
  } else {
    rec = recordsOf(victim, ns, ctx.rng.int(0, victim.blocks.length - 1))[kind] ?? ctx.fail(`unknown kind ${kind}`)
  }
  ctx.log(`corrupt the ${kind} record of ${victim.path}`)
  const restore = await flipRecord(ctx, t.dataDir, rec.sub, rec.key)
  await t.start()
  await checkReads(ctx, t, files, new Set([victim.path]))
  await t.stop()
  checkProblemsName(ctx, await t.fsck(ctx, false), files, [victim])
  await restore()
}

/**
 * The namespace's own keys (the wrapped NEK in the token's key records, the wrapped NMK): every
 * file depends on them, so the volume must refuse to open with a named error, and fsck too.
 */
async function corruptNamespaceKey (ctx: FaultContext, vols: Volumes): Promise<void> {
  const { t, files, mount } = await volumeFor(ctx, vols, false)
  const nek = ctx.rng.next() < 0.5
  const key = (await recordKeys(t.dataDir, nek ? 'keys' : 'meta', nek ? 'nek/' : 'n/'))[0] ?? ctx.fail('no namespace key record')
  const restore = await flipRecord(ctx, t.dataDir, nek ? 'keys' : 'meta', key)
  await checkKeyRefused(ctx, t, files, mount, key)
  await restore()
}

/** The volume with a damaged namespace key refuses to open naming it, or opens and reads nothing; fsck names it. */
async function checkKeyRefused (ctx: FaultContext, t: Target, files: Written[], mount: boolean, key: string): Promise<void> {
  const refused = await t.start().then(() => undefined, (err: Error) => err)
  ctx.log(`start: ${refused === undefined ? 'opened' : `${refused.name}: ${refused.message.trim()}`}`)
  if (refused === undefined) {
    // Opened: then no file may read back at all (never wrong bytes).
    await checkReads(ctx, t, files, new Set(files.map(f => f.path)))
    await t.stop()
  } else {
    ctx.check(refused.message.includes(key), `opening fails without naming ${key}: ${refused.message.trim()}`)
  }
  if (!mount && refused !== undefined) return // the library's fsck needs an open volume
  const f = await strata(['fsck', '--data', t.dataDir])
  ctx.log(`fsck: exit ${f.code}: ${(f.stdout + f.stderr).trim().split('\n').slice(-2).join(' | ')}`)
  ctx.check(f.code !== 0, 'fsck is clean with a corrupt namespace key')
  ctx.check((f.stdout + f.stderr).includes(key), `fsck does not name ${key}: ${(f.stdout + f.stderr).trim()}`)
}

const corruptWrappedKeys: Scenario<Volumes> = {
  name: 'corrupt-wrapped-keys',
  injects: 'a bit flip in a wrapped block key (or, one time in five, the namespace key): named error, EIO on the files using it, fsck names them, nothing else affected',
  randomised: true,
  prepare: async ctx => volumes(ctx),
  run: async (ctx, vols) => {
    if (ctx.rng.next() < 0.2) await corruptNamespaceKey(ctx, vols)
    else await corruptOneFile(ctx, vols, ['bek'])
  }
}

const corruptMetadataRecords: Scenario<Volumes> = {
  name: 'corrupt-metadata-records',
  injects: 'a bit flip in an inode, directory-entry or manifest record: EIO on that file only, never wrong bytes, fsck reports it by path (or inode)',
  randomised: true,
  prepare: async ctx => volumes(ctx),
  run: async (ctx, vols) => { await corruptOneFile(ctx, vols, ['inode', 'dirent', 'manifest']) }
}

const corruptBlockRepairedFromPeer: Scenario = {
  name: 'corrupt-block-repaired-from-peer',
  injects: "a bit flip in one of B's stored blocks, A online: B reads the right bytes, the block is fetched again from A, verified and replaces the damaged copy; fsck clean",
  run: async ctx => {
    const a = await firstDrive(ctx)
    const b = await joinDrive(ctx, a, 'b')
    const bytes = data(ctx.rng, ctx.rng.int(1100, 2600) * 1024)
    const fd = openSync(join(a.mnt, 'shared.bin'), 'w')
    try { writeSync(fd, bytes); fsyncSync(fd) } finally { closeSync(fd) }
    const want = sha(bytes)
    const synced = async (): Promise<boolean> => sha(await readFile(join(b.mnt, 'shared.bin'))) === want
    ctx.check(await until(synced, 90_000), 'the file did not reach B')
    await b.unmount()
    const recs = records(b.dataDir)
    ctx.check(recs.length > 0, 'B stores no block records')
    const r = ctx.rng.pick(recs)
    ctx.log(`flip B's block ${r.id.slice(0, 12)}: ${toggle(pickBit(ctx.rng, join(b.dataDir, 'blocks', r.seg), r.at, r.at + r.len))}`)
    await b.mount()
    const aId = (await status(a)).sync.device as string
    ctx.check(await until(async () => ((await status(b)).sync.peers as string[]).includes(aId), 60_000), 'B did not connect to A')
    let got: string | undefined
    try { got = sha(await readFile(join(b.mnt, 'shared.bin'))) } catch (err) { ctx.fail(`reading on B failed: ${(err as Error).message}`) }
    ctx.check(got === want, 'B read WRONG BYTES')
    const log = readFileSync(join(b.dataDir, 'strata.log'), 'utf8')
    ctx.check(log.includes(`repaired block ${r.id}`), 'B\'s log has no line saying the block was repaired')
    ctx.check((await status(b)).sync.repair?.repaired === 1, 'B\'s status does not count one repair')
    await b.unmount()
    await fsckCli(ctx, b.dataDir, true)
    await b.mount()
    ctx.check(sha(await readFile(join(b.mnt, 'shared.bin'))) === want, 'B reads wrong bytes after a remount')
    ctx.check(sha(await readFile(join(a.mnt, 'shared.bin'))) === want, 'A\'s copy changed')
  }
}

const custodyBitFlipCaught: Scenario = {
  name: 'custody-bit-flip-caught',
  injects: 'a bit flip in a block key between custody steps (test-only hook, library level, real token): KeyCustodyError, nothing stored; stored correctly once the fault is gone',
  run: async ctx => {
    // The hook is an in-process option (daemon/strata.ts OpenOptions), not reachable through a
    // mounted daemon: this drives a real volume on a real SoftHSM token as a library.
    const step = ctx.rng.pick(['generated', 'unwrapped'])
    let armed = false
    const flips: string[] = []
    const tv = await makeVolume(ctx, {
      open: {
        custodyFaultHook: (s, keyRef, key) => {
          if (!armed || s !== step || !keyRef.startsWith('k/')) return
          const at = ctx.rng.int(0, key.length - 1)
          key[at] = (key[at] as number) ^ (1 << ctx.rng.int(0, 7))
          flips.push(`${keyRef.slice(0, 20)}… byte ${at}`)
        }
      }
    })
    const vol = tv.vol
    const keyRecords = async (): Promise<number> => (await vol.meta.meta.keys({ gte: 'k/', lt: 'k/\xff' }).all()).length
    const before = { blocks: (await tv.strata.blocks.stats()).blocks, keys: await keyRecords() }
    const bytes = data(ctx.rng, ctx.rng.int(100, 2500) * 1024)
    const { fh } = await vol.create(ROOT_INO, 'f.bin')
    await vol.write(fh, 0, bytes)
    armed = true
    const err = await vol.fsync(fh).then(() => undefined, (e: Error) => e)
    ctx.log(`step ${step}: ${flips.join(', ')}: ${err?.name ?? 'no error'}: ${err?.message ?? ''}`)
    ctx.check(flips.length > 0, 'the custody hook never fired')
    ctx.check(err?.name === 'KeyCustodyError', `fsync answered ${err?.name ?? 'success'}, not KeyCustodyError`)
    ctx.check((await tv.strata.blocks.stats()).blocks === before.blocks, 'a block was stored despite the custody failure')
    ctx.check(await keyRecords() === before.keys, 'a block key record was stored despite the custody failure')
    ctx.check(sha(await vol.read(fh, 0, bytes.length)) === sha(bytes), 'the written data is no longer readable from the write buffer')
    armed = false
    await vol.fsync(fh)
    await vol.release(fh)
    const v2 = await tv.reopen()
    const fh2 = await v2.open((await v2.lookup(ROOT_INO, 'f.bin')).ino)
    ctx.check(sha(await v2.read(fh2, 0, bytes.length)) === sha(bytes), 'the file is wrong once the fault is gone')
    await v2.release(fh2)
    ctx.check((await fsckVolume(v2)).ok, 'fsck is not clean')
  }
}

export const corruptionScenarios: Scenario[] = [corruptBlockBits, corruptWrappedKeys, corruptMetadataRecords, corruptBlockRepairedFromPeer, custodyBitFlipCaught]
