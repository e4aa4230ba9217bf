/**
 * The patched fuse-native binding (fs/fuse/native/README.md), through real mounts of a tiny
 * in-memory filesystem, with real tools. Needs root, /dev/fuse and `bash scripts/build-fuse.sh`.
 *
 * Never run a child with `cwd` inside the mount, nor any *Sync child API: libuv's spawn blocks
 * the JS thread until the child has exec'd, and the child's chdir needs that thread to answer
 * FUSE — a deadlock. Commands `cd "$M"` themselves.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, mkdirSync, chmodSync, rmSync, symlinkSync, writeFileSync, utimesSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { loadFuseNative, patchedFuseNativePath, type Fuse, type FuseOptions } from '../fs/fuse/native/fuse-native.js'
import { mountDevice, raiseReadAhead } from '../fs/fuse/adapter.js'
import { memFs, type MemFs, type MemFsOptions } from '../fs/fuse/native/test/memfs.js'

const run = promisify(execFile)
type Test = Pick<typeof t, 'teardown'>

const skip = !existsSync('/dev/fuse')
  ? 'no /dev/fuse'
  : process.getuid?.() !== 0
    ? 'needs root (allow_other, setpriv, drop_caches)'
    : !existsSync(patchedFuseNativePath())
        ? 'patched binding not built: bash scripts/build-fuse.sh'
        : false

interface Mounted { mnt: string, fs: MemFs, fuse: Fuse, sh: (script: string, env?: Record<string, string>) => Promise<string> }

/** Mounts a fresh memfs on a fresh temp mountpoint; always unmounts in teardown. */
async function mount (t: Test, opts: FuseOptions = {}, fsOpts: MemFsOptions = {}): Promise<Mounted> {
  const Fuse = loadFuseNative()
  const dir = mkdtempSync(join(tmpdir(), 'strata-fuse-native-'))
  chmodSync(dir, 0o755) // other users reach the mount (caller test)
  const mnt = join(dir, 'mnt')
  mkdirSync(mnt)
  const fs = memFs({ aclEopnotsupp: true, ...fsOpts })
  const fuse = new Fuse(mnt, fs.ops, { useIno: true, hardRemove: true, bigWrites: true, ...opts })
  t.teardown(async () => {
    // fuse.unmount runs `fusermount -uz` and unrefs the binding's uv handle (else node never exits).
    const err = await new Promise<Error | null>(resolve => { fuse.unmount(resolve) })
    if (err !== null) await run('fusermount', ['-u', mnt]).catch(async () => await run('umount', ['-l', mnt]).catch(() => {}))
    rmSync(dir, { recursive: true, force: true })
  })
  await new Promise<void>((resolve, reject) => { fuse.mount(err => { if (err !== null) reject(err); else resolve() }) })
  const sh = async (script: string, env: Record<string, string> = {}): Promise<string> =>
    (await run('bash', ['-euo', 'pipefail', '-c', `cd "$M"\n${script}`], { env: { ...process.env, ...env, M: mnt, LC_ALL: 'C' } })).stdout
  return { mnt, fs, fuse, sh }
}

const py = (code: string): string => `python3 - <<'PY'\n${code}\nPY`
const jsonBig = (s: string): unknown => JSON.parse(s)

t.test('patched fuse-native', { skip }, async t => {
  t.test('utimens: both times, nanoseconds, UTIME_NOW and UTIME_OMIT', async t => {
    const { fs, sh } = await mount(t)
    // os.utime(ns=...) -> utimensat with two exact times
    const st = jsonBig(await sh(py(`
import os, json
open('f', 'w').close()
os.utime('f', ns=(1234567890123456789, 1500000000987654321))
s = os.stat('f')
print(json.dumps([str(s.st_atime_ns), str(s.st_mtime_ns)]))`)))
    t.same(st, ['1234567890123456789', '1500000000987654321'], 'stat shows both exact times')
    t.same(fs.utimens.at(-1), { path: '/f', atime: 1234567890123456789n, mtime: 1500000000987654321n }, 'JS got atime and mtime as BigInt ns')

    await sh('touch -d @1234567890.123456789 g')
    t.equal(await sh('stat -c "%.9X %.9Y" g'), '1234567890.123456789 1234567890.123456789\n', 'touch -d @sec.nsec')

    await sh('touch -m g')
    t.same(fs.utimens.at(-1), { path: '/g', atime: 'omit', mtime: 'now' }, 'touch -m: atime omitted, mtime now')
    const [a1, m1] = (await sh('stat -c "%.9X %Y" g')).trim().split(' ')
    t.equal(a1, '1234567890.123456789', 'touch -m keeps atime exactly')
    t.ok(Math.abs(Number(m1) - Date.now() / 1000) < 60, 'touch -m sets mtime to now')

    await sh('touch -a -d @1000000000.5 g')
    t.same(fs.utimens.at(-1), { path: '/g', atime: 1000000000500000000n, mtime: 'omit' }, 'touch -a -d: mtime omitted')
    t.equal((await sh('stat -c "%.9X %Y" g')).trim(), `1000000000.500000000 ${m1!}`, 'touch -a keeps mtime')

    await sh('touch h')
    t.same(fs.utimens.at(-1), { path: '/h', atime: 'now', mtime: 'now' }, 'touch of a new file: both now')
    await sh('touch -d @-1.25 h')
    t.equal(await sh('stat -c "%.9X %.9Y" h'), '-1.250000000 -1.250000000\n', 'times before 1970')
  })

  t.test('tar x and rsync -a keep exact times', async t => {
    const { sh, mnt } = await mount(t)
    const src = mkdtempSync(join(tmpdir(), 'strata-fuse-src-'))
    t.teardown(() => rmSync(src, { recursive: true, force: true }))
    mkdirSync(join(src, 'tree/sub'), { recursive: true })
    for (const [i, name] of ['tree/a.txt', 'tree/sub/b.bin', 'tree/sub/c'].entries()) {
      writeFileSync(join(src, name), `file ${i}\n`)
      utimesSync(join(src, name), 1600000000 + i, 1600000000 + i)
    }
    await run('python3', ['-c', `import os
for i, n in enumerate(['tree/a.txt', 'tree/sub/b.bin', 'tree/sub/c']):
    os.utime(os.path.join('${src}', n), ns=(1600000000111111111 + i, 1600000000222222222 + i))`])
    const mtimes = `find . -type f -printf '%P %T@\\n' | sort`
    const want = (await run('bash', ['-c', `cd ${src}/tree && ${mtimes}`])).stdout

    await run('tar', ['--format=posix', '-C', src, '-cf', join(src, 't.tar'), 'tree'])
    await sh(`tar -xf ${src}/t.tar`)
    t.equal(await sh(`cd tree && ${mtimes}`), want, 'tar x: exact ns mtimes')
    await sh(`tar -df ${src}/t.tar`) // exits non-zero ("Mod time differs") on any difference
    t.pass('tar -d finds no differences')

    if ((await run('bash', ['-c', 'command -v rsync']).catch(() => ({ stdout: '' }))).stdout === '') {
      t.comment('SKIP rsync not installed (apt-get install rsync)')
      return
    }
    await run('rsync', ['-a', `${src}/tree/`, `${mnt}/copy/`])
    t.equal(await sh(`cd copy && ${mtimes}`), want, 'rsync -a: exact ns mtimes')
    const again = (await run('rsync', ['-a', '-i', `${src}/tree/`, `${mnt}/copy/`])).stdout
    t.equal(again, '', 'a second rsync -a re-sends nothing')
  })

  t.test('names are bytes: non-UTF-8 and 255-byte names round-trip', async t => {
    const { fs, sh } = await mount(t)
    const out = jsonBig(await sh(py(`
import os, json, errno
names = [b'\\xff', b'\\xfe', b'caf\\xc3\\xa9', b'caf\\xe9', b'\\x80\\x81 \\x0a\\x7f', b'x' * 255, b'\\xe9' * 255]
for n in names:
    with open(n, 'wb') as f: f.write(n)
os.mkdir(b'd\\xff')
with open(b'd\\xff/in\\xfe', 'wb') as f: f.write(b'nested')
os.symlink(b'target\\xff/\\xc3(', b'link\\xfe')
os.rename(b'\\xfe', b're\\xf0\\x28\\x8c\\x28')
os.link(b'\\xff', b'hard\\xc0\\xaf')
res = {}
res['listdir'] = sorted(x.hex() for x in os.listdir(b'.'))
res['contents'] = all(open(n, 'rb').read() == n for n in names if n != b'\\xfe')
res['renamed'] = open(b're\\xf0\\x28\\x8c\\x28', 'rb').read().hex()
res['hard'] = open(b'hard\\xc0\\xaf', 'rb').read().hex()
res['nested'] = open(b'd\\xff/in\\xfe', 'rb').read().decode()
res['sub'] = [x.hex() for x in os.listdir(b'd\\xff')]
res['readlink'] = os.readlink(b'link\\xfe').hex()
try:
    open(b'y' * 256, 'wb')
    res['toolong'] = 'created'
except OSError as e:
    res['toolong'] = errno.errorcode[e.errno]
print(json.dumps(res))`))) as Record<string, unknown>
    const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex')
    const expected = ['\xff', 'caf\xc3\xa9', 'caf\xe9', '\x80\x81 \x0a\x7f', 'x'.repeat(255), '\xe9'.repeat(255),
      'd\xff', 'link\xfe', 're\xf0\x28\x8c\x28', 'hard\xc0\xaf'].map(hex).sort()
    t.same(out.listdir, expected, 'listdir(bytes) returns exactly the bytes created')
    t.equal(out.contents, true, 'each file opened by its byte name holds its own content')
    t.equal(out.renamed, hex('\xfe'), 'rename to a non-UTF-8 target')
    t.equal(out.hard, hex('\xff'), 'link to a non-UTF-8 name')
    t.equal(out.nested, 'nested', 'non-UTF-8 directory component')
    t.same(out.sub, [hex('in\xfe')], 'listdir of a non-UTF-8 directory')
    t.equal(out.readlink, hex('target\xff/\xc3('), 'symlink target and readlink round-trip bytes')
    t.equal(out.toolong, 'ENAMETOOLONG', 'a 256-byte name reaches JS whole (memfs refuses it)')
    t.ok(fs.calls.some(c => c.path === '/' + 'x'.repeat(255)), 'JS saw the 255-byte path as 255 latin1 chars')
  })

  t.test('the caller uid, gid and pid reach JS', async t => {
    const { fs, sh } = await mount(t, { allowOther: true })
    const pid = (await sh(`setpriv --reuid=1234 --regid=2345 --clear-groups /usr/bin/python3 -c "
import os; print(os.getpid()); open('mine', 'w').close(); os.mkdir('dir')"`)).trim()
    t.equal(await sh('stat -c "%u:%g" mine dir'), '1234:2345\n1234:2345\n', 'new file and dir belong to the caller')
    const create = fs.calls.find(c => c.op === 'create' && c.path === '/mine')
    t.same(create?.caller, { uid: 1234, gid: 2345, pid: Number(pid), umask: create?.caller?.umask }, 'create saw uid, gid and pid of the caller')
    await sh('touch root-owned')
    t.equal(await sh('stat -c "%u:%g" root-owned'), '0:0\n')
    t.ok(fs.calls.filter(c => c.op !== 'release' && c.op !== 'releasedir' && c.op !== 'init').every(c => c.caller !== undefined && c.caller.pid > 0), 'every op carries a caller')
  })

  t.test('stable 64-bit inode numbers (use_ino), also in readdir', async t => {
    const { fs, sh } = await mount(t)
    await sh('touch a b; mkdir d; touch d/c')
    const ino = (p: string): string => fs.lookup(p)!.ino.toString()
    t.equal(await sh('stat -c %i a b d d/c'), [ino('/a'), ino('/b'), ino('/d'), ino('/d/c')].join('\n') + '\n', 'st_ino is the JS ino (> 2^32)')
    await sh('echo 3 > /proc/sys/vm/drop_caches; mv a a2') // kernel forgets the inodes
    t.equal(await sh('stat -c %i a2'), ino('/a2') + '\n', 'same number after forget and rename')
    t.equal(await sh(py(`
import os
print(sorted((e.name, e.inode()) == (e.name, os.stat(e.name).st_ino) for e in os.scandir('.')))`)), '[True, True, True]\n', 'd_ino from readdir equals st_ino')
  })

  t.test('link counts after link() and unlink(), attrTimeout 0', async t => {
    const { sh } = await mount(t, { attrTimeout: 0 })
    t.equal(await sh('touch a; stat -c %h a; ln a b; stat -c %h a b'), '1\n2\n2\n', 'both names show 2 right after link')
    t.equal(await sh('rm b; stat -c %h a'), '1\n', 'back to 1 right after unlink of the other name')
    t.equal(await sh('stat -c %i a; ln a c; stat -c %i c'), await sh('stat -c %i a; stat -c %i a'), 'both names show the same st_ino')
  })

  t.test('link counts with the default 1 s attribute cache are stale (why attrTimeout: 0)', async t => {
    const { sh } = await mount(t)
    t.equal(await sh('touch a; stat -c %h a; ln a b; stat -c %h a b'), '1\n1\n2\n', 'libfuse2 gives each name its own kernel inode; the old one keeps its cached nlink')
    t.equal(await sh('sleep 1.2; stat -c %h a'), '2\n', 'correct once attr_timeout expires')
  })

  t.test('unlinked open file: no .fuse_hidden, fd keeps working, null paths reach JS', async t => {
    const { fs, sh } = await mount(t)
    const out = jsonBig(await sh(py(`
import os, json
r = {}
fd = os.open('f', os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b'hello')
r['fstat_before_unlink'] = os.fstat(fd).st_size
os.unlink('f')
r['listdir'] = os.listdir('.')
os.write(fd, b' world')
os.lseek(fd, 0, 0)
r['read'] = os.read(fd, 100).decode()
os.ftruncate(fd, 5)
os.lseek(fd, 0, 0)
r['read_after_ftruncate'] = os.read(fd, 100).decode()
os.fsync(fd)
try:
    r['fstat'] = os.fstat(fd).st_size
except OSError as e:
    r['fstat'] = e.strerror
os.close(fd)
r['listdir_after_close'] = os.listdir('.')
print(json.dumps(r))`))) as Record<string, unknown>
    t.same(out.listdir, [], 'no .fuse_hidden* while open')
    t.equal(out.read, 'hello world', 'write and read through the fd after unlink')
    t.equal(out.read_after_ftruncate, 'hello', 'ftruncate through the fd after unlink')
    t.same(out.listdir_after_close, [])
    const nullOps = new Set(fs.calls.filter(c => c.path === null).map(c => c.op))
    for (const op of ['write', 'read', 'ftruncate', 'fsync', 'flush', 'release']) t.ok(nullOps.has(op), `${op} reached JS with path null`)
    // libfuse2 answers GETATTR without a file handle (fstat) by path: ENOENT once attrs are not cached.
    t.equal(out.fstat, 'No such file or directory', 'known libfuse2 limitation: fstat after unlink + write is ENOENT (README)')
  })

  t.test('big_writes, mount options pass through', async t => {
    const big = await mount(t)
    await big.sh('dd if=/dev/zero of=f bs=1M count=4 status=none')
    t.equal(big.fs.maxWrite, 131072, 'bigWrites: 128 KiB FUSE writes (libfuse2 ceiling)')
    const small = await mount(t, { bigWrites: false })
    await small.sh('dd if=/dev/zero of=f bs=1M count=1 status=none')
    t.equal(small.fs.maxWrite, 4096, 'without: 4 KiB')
    const viaFsname = await mount(t, { bigWrites: false, fsname: 'strata,big_writes,max_write=1048576' })
    await viaFsname.sh('dd if=/dev/zero of=f bs=1M count=1 status=none')
    t.equal(viaFsname.fs.maxWrite, 131072, 'the fsname hack still works')
    t.match(await viaFsname.sh('grep " $M " /proc/mounts'), /^strata /, 'fsname shows in /proc/mounts')

    // 1 MiB requests: the binding's own channel adds FUSE_MAX_PAGES to the INIT reply
    const wide = await mount(t, { maxWrite: 1 << 20, maxRead: 1 << 20 })
    await wide.sh('dd if=/dev/urandom of=f bs=4M count=1 status=none')
    t.equal(wide.fs.maxWrite, 1 << 20, 'maxWrite 1 MiB: 1 MiB FUSE writes')
    t.equal(await raiseReadAhead(wide.mnt, 1 << 20), undefined, 'read-ahead raised')
    const alias = `${dirname(wide.mnt)}-link`
    symlinkSync(dirname(wide.mnt), alias)
    t.teardown(() => { rmSync(alias, { force: true }) })
    t.equal(await raiseReadAhead(join(alias, 'mnt'), 1 << 20), undefined, 'also named through a symlink (mountinfo has the real path)')
    await wide.sh('echo 3 > /proc/sys/vm/drop_caches; dd if=f of=/dev/null bs=4M status=none')
    t.equal(wide.fs.maxRead, 1 << 20, 'and 1 MiB FUSE reads')
    const f = wide.fs.lookup('/f')
    t.equal((await wide.sh('sha256sum < f')).split(' ')[0], f === undefined ? 'missing' : createHash('sha256').update(f.data.subarray(0, f.size)).digest('hex'), 'what was read is what was written')
    await wide.sh('dd if=/dev/urandom of=g bs=3M count=1 status=none; cp g h; cmp g h; truncate -s 5000000 h; dd if=/dev/urandom of=h bs=1M seek=1 count=2 conv=notrunc status=none; cmp -s g h && exit 1; true')
    t.equal(await wide.sh('stat -c %s h'), '5000000\n', 'copies, truncates and overwrites through 1 MiB requests')
    t.equal(big.fs.maxRead <= 131072, true, 'the default mount stays at 128 KiB')

    const lookups = async (m: Mounted): Promise<number> => {
      await m.sh('touch f')
      const before = m.fs.calls.filter(c => c.op === 'getattr' && c.path === '/f').length
      await m.sh('for i in 1 2 3 4 5; do stat f >/dev/null; done')
      return m.fs.calls.filter(c => c.op === 'getattr' && c.path === '/f').length - before
    }
    t.equal(await lookups(await mount(t, { attrTimeout: 30, entryTimeout: 30 })), 0, 'attrTimeout/entryTimeout 30: 5 stats answered by the kernel cache')
    t.ok(await lookups(await mount(t, { attrTimeout: 0, entryTimeout: 0 })) >= 5, 'attrTimeout/entryTimeout 0: every stat reaches JS')
  })

  t.test('dirAttrTimeout: directory attributes cached, files not; changes through the mount show at once', async t => {
    const m = await mount(t, { attrTimeout: 0, entryTimeout: 30, dirAttrTimeout: 30 })
    await m.sh('mkdir d; touch d/f; stat d >/dev/null') // the create in d invalidated d's attributes
    const getattrs = (path: string): number => m.fs.calls.filter(c => c.op === 'getattr' && c.path === path).length
    const [d0, f0] = [getattrs('/d'), getattrs('/d/f')]
    await m.sh('for i in 1 2 3 4 5; do stat d d/f >/dev/null; done')
    t.equal(getattrs('/d') - d0, 0, 'the directory: 5 stats and 5 path walks answered by the kernel cache')
    t.ok(getattrs('/d/f') - f0 >= 5, 'the file: every stat reaches JS (attrTimeout 0)')
    t.equal(await m.sh('stat -c %h d; mkdir d/sub; stat -c %h d; rmdir d/sub; stat -c %h d'), '2\n3\n2\n', 'link count after mkdir and rmdir inside')
    t.equal(await m.sh('chmod 700 d; stat -c %a d; chmod 755 d; stat -c %a d'), '700\n755\n', 'mode after chmod')
    t.equal(await m.sh('touch -d @1000000000 d; stat -c %Y d; touch d/g; test $(stat -c %Y d) -gt 1000000000 && echo newer'), '1000000000\nnewer\n', 'mtime after a create inside')
    t.equal(await m.sh('mv d/g d/h; stat -c %Y d | grep -vx 1000000000 >/dev/null && echo ok'), 'ok\n')
    const plain = await mount(t, { attrTimeout: 0, entryTimeout: 30 })
    await plain.sh('mkdir d')
    const p0 = plain.fs.calls.filter(c => c.op === 'getattr' && c.path === '/d').length
    await plain.sh('for i in 1 2 3 4 5; do stat d >/dev/null; done')
    t.ok(plain.fs.calls.filter(c => c.op === 'getattr' && c.path === '/d').length - p0 >= 5, 'without it, every stat of the directory reaches JS')
  })

  t.test('noCapabilities: the kernel\'s security.capability query before each write is answered by the binding; setNoCapabilities(false) sends it to JS', async t => {
    const m = await mount(t, { noCapabilities: true })
    const queries = (): number => m.fs.calls.filter(c => c.op === 'getxattr').length
    await m.sh('echo a > f; setfattr -n user.k -v v f')
    const q0 = queries()
    await m.sh('for i in 1 2 3 4 5; do echo x >> f; done')
    t.equal(queries() - q0, 0, '5 writes: no query reaches JS')
    t.equal(await m.sh('getfattr -n user.k --only-values f'), 'v', 'other names still reach JS')
    t.ok(queries() > q0, 'the user.k query reached JS')
    t.match(await m.sh('getfattr -n security.capability f 2>&1 || true'), /No such attribute/, 'security.capability reads as absent')
    m.fuse.setNoCapabilities(false)
    const q1 = queries()
    await m.sh('for i in 1 2 3 4 5; do echo x >> f; done')
    t.ok(queries() - q1 >= 5, `after setNoCapabilities(false) each write asks JS (${queries() - q1} queries)`)
  })

  t.test('system.posix_acl_* answered EOPNOTSUPP: sed -i keeps mode 0640', async t => {
    const { sh } = await mount(t)
    t.equal(await sh('printf "abc\\n" > f; chmod 640 f; sed -i s/a/b/ f; stat -c %a f; cat f'), '640\nbbc\n')
    const plain = await mount(t, {}, { aclEopnotsupp: false })
    t.equal(await plain.sh('printf "abc\\n" > f; chmod 640 f; sed -i s/a/b/ f; stat -c %a f'), '600\n', 'stored as plain data instead, the mode is lost (the bug)')
  })
})

t.test('mountDevice finds a mount\'s MAJOR:MINOR in mountinfo, escaped names included', async t => {
  const info = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '40 22 0:40 / /tmp/a\\040b rw,nosuid - fuse.strata strata rw,user_id=0',
    '41 22 0:41 / /tmp/c\\134d rw - fuse.strata strata rw',
    '42 22 0:42 / /tmp/a\\040b rw - fuse.strata strata rw', // mounted over the first: the last wins
    ''
  ].join('\n')
  t.equal(mountDevice(info, '/tmp/a b'), '0:42')
  t.equal(mountDevice(info, '/tmp/c\\d'), '0:41')
  t.equal(mountDevice(info, '/'), '254:0')
  t.equal(mountDevice(info, '/tmp/a'), undefined)
})
