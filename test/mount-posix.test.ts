/**
 * POSIX semantics through a real mount of the drive (a background strata daemon over FUSE), each
 * item of issue 3's "What ordinary programs rely on, and fuse-native 2.2.6 gets wrong today" and
 * the adapter's errno mapping: byte names up to 255 bytes, exact utimens (ns, UTIME_OMIT,
 * UTIME_NOW), the caller's uid/gid, setgid directories, default_permissions, stable inode numbers
 * (use_ino), link counts, no .fuse_hidden files, no posix ACL xattrs, fifos, statfs, EACCES for a
 * disabled team, EIO plus a log line for a corrupt block, ENOSPC on a full disk.
 *
 * Waits below are bounds that detect a hang (a failure), never timed assertions.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BIN, makeDrive, strata, treeHash, type Drive, type RunResult } from './helpers/mount.js'

const PY = '/usr/bin/python3'
/** An unprivileged caller: uid 1234, gid 2345, no supplementary groups. */
const AS_USER = 'setpriv --reuid=1234 --regid=2345 --clear-groups'

/** Run a program with stdin from /dev/null (a stdin pipe can EPIPE when a child exits at once). */
async function run (cmd: string, args: string[], options: { cwd?: string, timeout?: number } = {}): Promise<RunResult> {
  return await new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''; let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const ms = options.timeout ?? 300_000
    const timer = setTimeout(() => { stderr += `\n(killed: still running after ${ms} ms — a hang)`; child.kill('SIGKILL') }, ms)
    child.on('close', code => { clearTimeout(timer); resolve({ stdout, stderr, code: code ?? -1 }) })
  })
}

async function sh (script: string, options: { cwd?: string, timeout?: number } = {}): Promise<RunResult> {
  return await run('bash', ['-euo', 'pipefail', '-c', script], options)
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

function isMounted (mnt: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some(l => l.split(' ')[1] === mnt)
}

let drive: Drive
const m = (): string => drive.mnt
/** Inode numbers seen before the remount test. */
const ino = new Map<string, string>()

t.before(async () => {
  drive = await makeDrive(t)
})

/** Run a script in the mount (cwd = the mount: an unprivileged caller cannot traverse the 0700 temp dir above it). */
const ok = async (tt: Test, script: string, msg: string, cwd?: string): Promise<string> => {
  const r = await sh(script, { cwd: cwd ?? m(), timeout: 120_000 })
  tt.equal(r.code, 0, `${msg}${r.code !== 0 ? `\n${r.stderr}\n${r.stdout}` : ''}`)
  return r.stdout
}

/** Python's JSON output of a script run in the mount. */
const py = async (tt: Test, code: string, msg: string, options: { user?: boolean, cwd?: string } = {}): Promise<any> => {
  const out = await ok(tt, `${options.user === true ? `${AS_USER} ` : ''}${PY} - <<'PY'\nimport os, json, errno, stat, sys\n${code}\nPY`, msg, options.cwd)
  try {
    return JSON.parse(out)
  } catch {
    tt.fail(`${msg}: not JSON: ${out}`)
    return undefined
  }
}

t.test('names are bytes: not-UTF-8 names, colliding-if-decoded names and 255-byte names round-trip; 256 bytes is ENAMETOOLONG', async t => {
  const r = await py(t, `
os.mkdir(b'names'); os.chdir(b'names')
names = [b'\\xff\\xfe', b'caf\\xe9', b'caf\\xc3\\xa9', b'\\xff', b'\\xfe', b'\\x80abc', b'\\x81abc', b'a' * 255,
         '\\u00e9'.encode() * 127 + b'x', b'\\xfe' * 255, b'tab\\tnewline\\nesc\\x1b', b' lead and trail ']
for n in names:
    with open(n, 'wb') as f: f.write(n)
os.mkdir(b'dir\\xff')
open(b'dir\\xff/in\\xfe', 'wb').write(b'inside')
os.symlink(b'\\xff\\xfe/target\\x80', b'ln\\xff')
os.rename(b'\\x80abc', b'\\x82abc')
names = [n for n in names if n != b'\\x80abc'] + [b'\\x82abc']
listed = os.listdir(b'.')
res = {
  'exact': sorted(listed) == sorted(names + [b'dir\\xff', b'ln\\xff']),
  'count': len(listed),
  'listed': sorted(x.hex() for x in listed),
  'contents': all(open(n, 'rb').read() == (n if n != b'\\x82abc' else b'\\x80abc') for n in names),
  'inner': os.listdir(b'dir\\xff') == [b'in\\xfe'] and open(b'dir\\xff/in\\xfe', 'rb').read() == b'inside',
  'readlink': os.readlink(b'ln\\xff').hex(),
  'stat255': all(os.stat(n).st_size == len(n) for n in names),
  'gone': not os.path.exists(b'\\x80abc'),
}
long = b'b' * 256
errs = {}
def attempt(what, fn):
    try:
        fn(); errs[what] = 'ok'
    except OSError as e:
        errs[what] = errno.errorcode.get(e.errno, str(e.errno))
attempt('create', lambda: open(long, 'wb'))
attempt('mkdir', lambda: os.mkdir(long))
attempt('symlink', lambda: os.symlink(b'x', long))
attempt('rename', lambda: os.rename(b'caf\\xe9', long))
attempt('link', lambda: os.link(b'caf\\xe9', long))
attempt('mknod', lambda: os.mkfifo(long))
attempt('stat', lambda: os.stat(long))
attempt('create_utf8', lambda: open('\\u00e9'.encode() * 128, 'wb'))
res['errs'] = errs
res['after'] = len(os.listdir(b'.'))
print(json.dumps(res))
`, 'byte names')
  t.ok(r.exact, `os.listdir(b'.') returns exactly the created names: ${JSON.stringify(r.listed)}`)
  t.equal(r.count, 14, 'no name collided or got lost')
  t.ok(r.contents, 'each name opens its own file')
  t.ok(r.inner, 'a not-UTF-8 directory name works as a path component')
  t.equal(r.readlink, Buffer.from('\xff\xfe/target\x80', 'latin1').toString('hex'), 'symlink target bytes round-trip')
  t.ok(r.stat255, 'stat of every name (255-byte ones too)')
  t.ok(r.gone, 'rename between not-UTF-8 names leaves no old name')
  t.same(r.errs, { create: 'ENAMETOOLONG', mkdir: 'ENAMETOOLONG', symlink: 'ENAMETOOLONG', rename: 'ENAMETOOLONG', link: 'ENAMETOOLONG', mknod: 'ENAMETOOLONG', stat: 'ENAMETOOLONG', create_utf8: 'ENAMETOOLONG' }, 'a 256-byte name fails with ENAMETOOLONG everywhere')
  t.equal(r.after, 14, 'the failed calls created nothing')
  // And through the shell tools, byte-exact: ls -b (escapes) of the not-UTF-8 names.
  const ls = await ok(t, 'cd names && LC_ALL=C ls -b | grep -c . && LC_ALL=C ls -b | grep -F "\\377\\376"', 'ls -b')
  t.equal(ls, '14\n\\377\\376\n')
})

t.test('utimens: exact nanoseconds, one time at a time (UTIME_OMIT), UTIME_NOW', async t => {
  const times = async (): Promise<[string, string]> => {
    const out = await ok(t, `${PY} -c "import os; s=os.stat('times'); print(s.st_atime_ns, s.st_mtime_ns)"`, 'stat ns')
    const [a, b] = out.trim().split(' ')
    return [a as string, b as string]
  }
  await ok(t, 'echo x > times && touch -d @1234567890.123456789 times', 'touch -d')
  t.same(await times(), ['1234567890123456789', '1234567890123456789'], 'touch -d @1234567890.123456789: exact ns, atime and mtime')
  await ok(t, 'stat -c %y times | grep -F "2009-02-13 23:31:30.123456789"', 'stat %y shows the ns')
  await ok(t, 'touch -m -d @2000000000.5 times', 'touch -m')
  t.same(await times(), ['1234567890123456789', '2000000000500000000'], 'touch -m changes mtime only')
  await ok(t, 'touch -a -d @1500000000.25 times', 'touch -a')
  t.same(await times(), ['1500000000250000000', '2000000000500000000'], 'touch -a changes atime only')

  const rt = await py(t, `
out = []
for ns in [(1, 999999999), (123456789012345678, 987654321987654321), (-315360000000000005, 4102444800000000001), (0, 0), (1700000000000000001, 1700000000999999999)]:
    os.utime('times', ns=ns)
    s = os.stat('times')
    out.append([str(s.st_atime_ns), str(s.st_mtime_ns)])
print(json.dumps(out))
`, 'os.utime(ns=...)')
  t.same(rt, [['1', '999999999'], ['123456789012345678', '987654321987654321'], ['-315360000000000005', '4102444800000000001'], ['0', '0'], ['1700000000000000001', '1700000000999999999']], 'os.utime(ns=…) round-trips (pre-1970 and 2100 too)')

  // UTIME_NOW: from the past to "now" (bounded by the clock read before and after).
  const now = await py(t, `
import time, subprocess
os.utime('times', ns=(1234567890123456789, 1234567890123456789))
t0 = time.time_ns() - 2_000_000_000  # coarse kernel/daemon clocks: "now" is not earlier than this
subprocess.run(['touch', '-m', 'times'], check=True)
s1 = os.stat('times')
subprocess.run(['touch', '-a', 'times'], check=True)
s2 = os.stat('times')
os.utime('times', ns=(1234567890123456789, 1234567890123456789))
subprocess.run(['touch', 'times'], check=True)
s3 = os.stat('times')
t1 = time.time_ns() + 2_000_000_000
inr = lambda x: t0 <= x <= t1
print(json.dumps({
  'm_only': [s1.st_atime_ns == 1234567890123456789, inr(s1.st_mtime_ns)],
  'a_only': [inr(s2.st_atime_ns), s2.st_mtime_ns == s1.st_mtime_ns],
  'both': [inr(s3.st_atime_ns), inr(s3.st_mtime_ns)],
  'raw': [s1.st_atime_ns, s1.st_mtime_ns, s2.st_atime_ns, s2.st_mtime_ns, s3.st_atime_ns, s3.st_mtime_ns, t0, t1]}))
`, 'UTIME_NOW')
  t.same(now.m_only, [true, true], `touch -m (mtime NOW, atime OMIT): ${JSON.stringify(now.raw)}`)
  t.same(now.a_only, [true, true], `touch -a (atime NOW, mtime OMIT): ${JSON.stringify(now.raw)}`)
  t.same(now.both, [true, true], `plain touch (both NOW): ${JSON.stringify(now.raw)}`)
  await ok(t, 'touch -d @1234567890.123456789 times', 'leave known times for the remount test')
})

t.test('the caller\'s uid/gid own what it creates; umask; setgid directories', async t => {
  await ok(t, 'mkdir pub && chmod 1777 pub && mkdir sg && chown 0:777 sg && chmod 2777 sg', 'world-writable and setgid dirs')
  const r = await py(t, `
os.chdir('pub')
open('f', 'w').write('x'); os.mkdir('d'); os.symlink('f', 'l'); os.mkfifo('p'); os.link('f', 'h')
os.umask(0o077); open('private', 'w').write('y'); os.mkdir('pd')
os.chdir('../sg')
os.umask(0o022)
open('f', 'w').write('x'); os.mkdir('d'); os.symlink('f', 'l'); os.mkdir('d/deeper')
st = lambda p: [os.lstat(p).st_uid, os.lstat(p).st_gid, oct(stat.S_IMODE(os.lstat(p).st_mode))]
print(json.dumps({'pub': {n: st('../pub/' + n) for n in ['f', 'd', 'l', 'p', 'h', 'private', 'pd']},
                  'sg': {n: st(n) for n in ['f', 'd', 'l', 'd/deeper']}}))
`, 'create as uid 1234', { user: true })
  t.same(r.pub.f, [1234, 2345, '0o644'], 'file: caller\'s uid:gid, mode 0666 & ~umask')
  t.same(r.pub.d, [1234, 2345, '0o755'], 'dir')
  t.same(r.pub.l.slice(0, 2), [1234, 2345], 'symlink')
  t.same(r.pub.p, [1234, 2345, '0o644'], 'fifo')
  t.same(r.pub.h, [1234, 2345, '0o644'], 'hard link: same inode, same owner')
  t.same(r.pub.private, [1234, 2345, '0o600'], 'umask 077 file')
  t.same(r.pub.pd, [1234, 2345, '0o700'], 'umask 077 dir')
  t.same(r.sg.f, [1234, 777, '0o644'], 'setgid dir: a new file inherits the dir\'s group')
  t.same(r.sg.d, [1234, 777, '0o2755'], 'setgid dir: a new subdir inherits the group and the setgid bit')
  t.same(r.sg.l.slice(0, 2), [1234, 777], 'setgid dir: a new symlink inherits the group')
  t.same(r.sg['d/deeper'], [1234, 777, '0o2755'], 'and so on down')
  const ls = await ok(t, 'stat -c "%u:%g" pub/f pub/l pub/d sg/d && ls -ln pub/f | cut -d" " -f3,4', 'stat as root sees the owner')
  t.equal(ls, '1234:2345\n1234:2345\n1234:2345\n1234:777\n1234 2345\n')
})

t.test('permissions are enforced (default_permissions): owner, mode, root', async t => {
  await ok(t, `mkdir perm && cd perm && echo secret > priv && chmod 600 priv && echo public > pubf && chmod 644 pubf
    mkdir rootdir && chmod 755 rootdir && echo no > noperm && chmod 000 noperm
    mkdir -m 1777 sticky && echo rootfile > sticky/rf && chmod 666 sticky/rf
    mkdir -m 700 userdir && chown 1234:2345 userdir && echo mine > userdir/uf && chown 1234:2345 userdir/uf && chmod 600 userdir/uf`, 'setup as root')
  const r = await py(t, `
os.chdir('perm')
def attempt(fn):
    try:
        fn(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def rd(p):
    with open(p) as f: return f.read()
def wr(p, mode='w'):
    with open(p, mode) as f: f.write('x')
print(json.dumps({
  'read_0600_root': attempt(lambda: rd('priv')),
  'read_0644_root': attempt(lambda: rd('pubf')),
  'write_0644_root': attempt(lambda: wr('pubf', 'a')),
  'read_000': attempt(lambda: rd('noperm')),
  'create_in_0755_root_dir': attempt(lambda: wr('rootdir/x')),
  'mkdir_in_0755_root_dir': attempt(lambda: os.mkdir('rootdir/d')),
  'unlink_in_0755_root_dir': attempt(lambda: os.unlink('pubf')),
  'rename_in_0755_root_dir': attempt(lambda: os.rename('pubf', 'pubf2')),
  'chmod_root_file': attempt(lambda: os.chmod('pubf', 0o777)),
  'chown_root_file': attempt(lambda: os.chown('pubf', 1234, 2345)),
  'utime_explicit_root_file': attempt(lambda: os.utime('pubf', ns=(1, 1))),
  'utime_now_root_file_not_writable': attempt(lambda: os.utime('pubf')),
  'truncate_root_file': attempt(lambda: os.truncate('pubf', 0)),
  'sticky_unlink_others': attempt(lambda: os.unlink('sticky/rf')),
  'sticky_write_others_0666': attempt(lambda: wr('sticky/rf', 'a')),
  'own_chmod': attempt(lambda: os.chmod('userdir/uf', 0o640)),
  'own_chown_to_other_uid': attempt(lambda: os.chown('userdir/uf', 0, -1)),
  'own_chgrp_to_foreign_group': attempt(lambda: os.chown('userdir/uf', -1, 0)),
  'own_setxattr': attempt(lambda: os.setxattr('userdir/uf', 'user.k', b'v')),
  'setxattr_root_file': attempt(lambda: os.setxattr('pubf', 'user.k', b'v')),
}))
`, 'as uid 1234', { user: true })
  t.same(r, {
    read_0600_root: 'EACCES',
    read_0644_root: 'ok',
    write_0644_root: 'EACCES',
    read_000: 'EACCES',
    create_in_0755_root_dir: 'EACCES',
    mkdir_in_0755_root_dir: 'EACCES',
    unlink_in_0755_root_dir: 'EACCES',
    rename_in_0755_root_dir: 'EACCES',
    chmod_root_file: 'EPERM',
    chown_root_file: 'EPERM',
    utime_explicit_root_file: 'EPERM',
    utime_now_root_file_not_writable: 'EACCES',
    truncate_root_file: 'EACCES',
    sticky_unlink_others: 'EPERM',
    sticky_write_others_0666: 'ok',
    own_chmod: 'ok',
    own_chown_to_other_uid: 'EPERM',
    own_chgrp_to_foreign_group: 'EPERM',
    own_setxattr: 'ok',
    setxattr_root_file: 'EACCES'
  }, 'an unprivileged caller gets exactly what POSIX says')
  const root = await ok(t, `cd perm && cat priv noperm userdir/uf && echo r > userdir/byroot && mkdir userdir/rd && chmod 600 userdir/uf && chown 0:0 userdir/uf && stat -c '%u:%g %a' userdir/uf && echo more >> noperm && tail -1 noperm`, 'root can do all')
  t.equal(root, 'secret\nno\nmine\n0:0 600\nmore\n')
})

t.test('stable inode numbers: over time, in readdir (ls -i), for hard links; tar sees no change while the tree is read', async t => {
  await ok(t, `mkdir -p ino/tree && cd ino/tree && for d in $(seq 1 12); do mkdir d$d; for f in $(seq 1 25); do echo "$d $f" > d$d/f$f; done; done
    head -c 2000000 /dev/urandom > d1/big && ln d1/f1 d2/hard`, 'a tree of 300 files')
  const before = await ok(t, 'stat -c %i ino/tree/d1/f1 ino/tree/d1/big ino/tree/d1', 'stat %i')
  await sleep(2000)
  t.equal(await ok(t, 'stat -c %i ino/tree/d1/f1 ino/tree/d1/big ino/tree/d1', 'stat %i'), before, 'the same after 2 s')
  const hard = await ok(t, 'stat -c %i ino/tree/d1/f1 ino/tree/d2/hard', 'hard link inode')
  const [h1, h2] = hard.trim().split('\n')
  t.equal(h1, h2, 'two names of one file: one inode number')
  const mism = await ok(t, `cd ino/tree && for d in d*; do ls -ai "$d" | while read -r i n; do s=$(stat -c %i "$d/$n"); [ "$i" = "$s" ] || echo "$d/$n readdir=$i stat=$s"; done; done`, 'ls -i vs stat')
  t.equal(mism, '', 'ls -i (readdir d_ino) matches stat for every entry, . and .. included')
  const uniq = await ok(t, 'cd ino/tree && find . -type f -printf "%i\\n" | sort | uniq -d', 'unique inode numbers')
  t.equal(uniq.trim().split('\n').filter(Boolean).length, 1, 'only the hard-linked pair shares an inode number')
  // GNU tar while other processes read the same tree.
  const tar = await ok(t, `
    (for i in 1 2 3 4 5 6; do cat ino/tree/d*/* > /dev/null; done) & r1=$!
    (for i in 1 2 3 4 5 6; do find ino/tree -type f -exec stat -c %i {} + > /dev/null; done) & r2=$!
    for i in 1 2 3; do tar -cf "${drive.root}/tree-$i.tar" -C ino tree; done 2>&1
    wait $r1 $r2
    tar -tf "${drive.root}/tree-3.tar" | grep -c /f1$`, 'tar while read')
  t.notMatch(tar, /changed|removed|truncated/i, `no "file changed as we read it": ${tar}`)
  t.match(tar, /^12\n$/m, 'the archive holds the tree')
  ino.set('ino/tree/d1/f1', h1 as string)
  ino.set('ino/tree/d1', (before.trim().split('\n')[2]) as string)
})

t.test('link counts are right at once after ln and rm', async t => {
  const out = await ok(t, `mkdir lc && cd lc && echo x > a && stat -c %h a
    ln a b && stat -c %h a b
    ln b c && stat -c %h a b c
    rm b && stat -c %h a c
    mv c d && stat -c %h a d
    ln d e && rm a && stat -c %h d e
    rm d && stat -c %h e`, 'ln / rm / mv')
  t.equal(out, '1\n2\n2\n3\n3\n3\n2\n2\n2\n2\n2\n2\n1\n')
  const fd = await py(t, `
os.chdir('lc')
fd = os.open('e', os.O_RDONLY)
a = os.fstat(fd).st_nlink
os.link('e', 'f')
b = os.fstat(fd).st_nlink
os.unlink('f'); os.unlink('e')
c = os.fstat(fd).st_nlink
os.close(fd)
print(json.dumps([a, b, c]))
`, 'fstat of an open file after link/unlink')
  t.same(fd, [1, 2, 0], 'fstat through an open descriptor follows link/unlink at once')
})

t.test('an open, unlinked file: no .fuse_hidden*, still readable and fstat-able, space reclaimed after close', async t => {
  const status = async (): Promise<{ blocks: number, storedBytes: number }> => {
    const r = await strata(['status', '--json', '--data', drive.dataDir])
    return JSON.parse(r.stdout) as { blocks: number, storedBytes: number }
  }
  await ok(t, 'mkdir hid && sync', 'dir')
  const base = await status()
  await ok(t, `head -c 3000000 /dev/urandom > "${drive.root}/hid.src" && cp "${drive.root}/hid.src" hid/f && sync hid/f`, 'a 3 MB file')
  const grown = await status()
  t.ok(grown.storedBytes > base.storedBytes + 2_500_000, `the file's blocks are stored (${base.storedBytes} -> ${grown.storedBytes})`)
  const want = createHash('sha256').update(readFileSync(join(drive.root, 'hid.src'))).digest('hex')
  const out = await ok(t, `cd hid
    exec 3<f
    rm f
    ls -a
    sha256sum <&3 | cut -d' ' -f1
    ${PY} -c "import os; s=os.fstat(3); print(s.st_nlink, s.st_size)"
    ls -a | grep -c fuse_hidden || true
    exec 3<&-`, 'open, rm, read via fd 3')
  t.equal(out, `.\n..\n${want}\n0 3000000\n0\n`, 'ls -a shows nothing; the fd reads the whole file; fstat nlink 0')
  // Read-write through the descriptor of an unlinked file.
  const rw = await py(t, `
os.chdir('hid')
fd = os.open('w', os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b'hello world')
os.unlink('w')
os.pwrite(fd, b'HELLO', 0)
os.ftruncate(fd, 8)
data = os.pread(fd, 100, 0)
st = os.fstat(fd)
os.close(fd)
print(json.dumps([data.decode(), st.st_nlink, st.st_size, sorted(os.listdir('.'))]))
`, 'rw on an unlinked file')
  t.same(rw, ['HELLO wo', 0, 8, []], 'write, ftruncate and read through the fd of an unlinked file')
  // The space comes back once the last descriptor is closed (eventually: bounded poll).
  let now = await status()
  const end = Date.now() + 60_000
  while ((now.blocks > base.blocks || now.storedBytes > base.storedBytes) && Date.now() < end) {
    await sleep(250)
    now = await status()
  }
  t.ok(now.blocks <= base.blocks && now.storedBytes <= base.storedBytes, `no leftover after close: blocks ${base.blocks} -> ${grown.blocks} -> ${now.blocks}, bytes ${base.storedBytes} -> ${grown.storedBytes} -> ${now.storedBytes}`)
  const f = await strata(['fsck', '--data', drive.dataDir])
  t.equal(f.code, 0, `fsck clean (no orphan): ${f.stdout}${f.stderr}`)
})

t.test('no posix ACL xattrs: system.posix_acl_* is "Operation not supported", and sed -i keeps the mode', async t => {
  // A valid access ACL (user::rw- group::r-- other::---), as setfacl would send it.
  const acl = '0x02000000' + '01000600ffffffff' + '04000400ffffffff' + '20000000ffffffff'
  const r = await sh(`echo a > acl && chmod 640 acl && setfattr -n system.posix_acl_access -v ${acl} acl`, { cwd: m() })
  t.not(r.code, 0, 'setting system.posix_acl_access fails')
  t.match(r.stderr, /Operation not supported/, r.stderr)
  const d = await sh(`mkdir -p acldir && setfattr -n system.posix_acl_default -v ${acl} acldir`, { cwd: m() })
  t.match(d.stderr, /Operation not supported/, `posix_acl_default too: ${d.stderr}`)
  const g = await sh('getfattr -n system.posix_acl_access acl', { cwd: m() })
  t.not(g.code, 0, 'getting it fails')
  t.match(g.stderr, /Operation not supported|No such attribute/, g.stderr)
  const out = await ok(t, `stat -c %a acl
    getfattr -d -m - acl 2>&1 | grep -c posix_acl || true
    printf 'alpha\\nbeta\\n' > ed.txt && chmod 640 ed.txt && sed -i 's/beta/gamma/' ed.txt && stat -c %a ed.txt && cat ed.txt
    chmod 604 ed.txt && sed -i 's/alpha/delta/' ed.txt && stat -c %a ed.txt
    cp -a ed.txt ed2.txt && stat -c %a ed2.txt`, 'modes survive')
  t.equal(out, '640\n0\n640\nalpha\ngamma\n604\n604\n')
})

t.test('security.capability: kept, readable, and dropped by a write as on ext4, whether set before or after the mount', async t => {
  // While no file holds one, the binding answers the kernel's query before each write itself
  // (fs/fuse/native/README.md); a capability set through the mount or found at open must
  // still reach the kernel, or a changed binary would keep its privileges.
  const d = await makeDrive(t)
  const CAP = "struct.pack('<IIIII', 0x02000001, 1 << 10, 0, 0, 0)" // cap_net_bind_service+ep
  const capScript = (files: string[]): string => `import os, struct, json
out = {}
for f in ${JSON.stringify(files)}:
    try: out[f] = os.getxattr(f, 'security.capability').hex()
    except OSError as e: out[f] = errno.errorcode[e.errno]
print(json.dumps(out))`
  const caps = async (files: string[], msg: string): Promise<Record<string, string>> => await py(t, capScript(files), msg, { cwd: d.mnt })
  const want = '0100000200040000000000000000000000000000'
  await py(t, `import struct
for f in ['c1', 'c2', 'c3']:
    open(f, 'w').write('x')
os.setxattr('c1', 'security.capability', ${CAP})
print(json.dumps(0))`, 'set a capability on c1', { cwd: d.mnt })
  t.same(await caps(['c1', 'c2'], 'read'), { c1: want, c2: 'ENODATA' }, 'the capability reads back; a file without one has none')
  await ok(t, 'echo more >> c1', 'append to c1', d.mnt)
  t.same(await caps(['c1'], 'after write'), { c1: 'ENODATA' }, 'a write drops the capability (the kernel saw it)')
  await py(t, `import struct
os.setxattr('c2', 'security.capability', ${CAP})
os.setxattr('c3', 'security.capability', ${CAP})
print(json.dumps(0))`, 'set capabilities on c2 and c3', { cwd: d.mnt })
  await d.unmount()
  await d.mount()
  t.same(await caps(['c2', 'c3'], 'after remount'), { c2: want, c3: want }, 'capabilities found at open read back')
  await ok(t, 'echo more >> c2', 'append to c2', d.mnt)
  t.same(await caps(['c2', 'c3'], 'after write'), { c2: 'ENODATA', c3: want }, 'a write drops the capability found at open, and only that one')
  const gc = await sh('getcap c3', { cwd: d.mnt })
  t.match(gc.stdout, /c3 cap_net_bind_service=ep/, `getcap reads it: ${gc.stdout}${gc.stderr}`)
})

t.test('mknod: fifos work', async t => {
  const out = await ok(t, `mkdir fifo && cd fifo && mkfifo p && stat -c '%F %a' p
    ${PY} -c "import os, stat; os.mknod('q', stat.S_IFIFO | 0o640); s=os.stat('q'); print(stat.S_ISFIFO(s.st_mode), oct(stat.S_IMODE(s.st_mode)))"
    head -c 1000000 /dev/urandom > "${drive.root}/fifo.src"
    (cat "${drive.root}/fifo.src" > p) &
    sha256sum < p | cut -d' ' -f1
    wait
    sha256sum < "${drive.root}/fifo.src" | cut -d' ' -f1
    (echo through > q) & cat q; wait
    ls -l | cut -c1`, 'fifo round trip')
  const lines = out.split('\n')
  t.equal(lines[0], 'fifo 644', 'mkfifo makes a fifo (umask 022)')
  t.equal(lines[1], 'True 0o640', 'mknod S_IFIFO with its mode')
  t.equal(lines[2], lines[3], 'a writer and a reader through the fifo')
  t.equal(lines[4], 'through')
  t.equal(lines.slice(5).join('\n'), 't\np\np\n', 'ls -l shows both as fifos')
})

t.test('statfs: real figures (df), namemax 255', async t => {
  const df = async (p: string): Promise<number[]> => {
    const out = await ok(t, `df -B1 --output=size,used,avail "${p}" | tail -1`, `df ${p}`)
    return out.trim().split(/\s+/).map(Number)
  }
  const [ms, , ma] = await df(m())
  const [ds, , da] = await df(drive.dataDir)
  t.ok((ms ?? 0) > 0 && (ma ?? 0) > 0, `non-zero size and available: ${ms} ${ma}`)
  t.ok(Math.abs((ms ?? 0) - (ds ?? 0)) <= (ds ?? 0) * 0.02, `size ≈ the data dir's file system (${ms} vs ${ds})`)
  t.ok(Math.abs((ma ?? 0) - (da ?? 0)) <= (ds ?? 0) * 0.05, `available ≈ the data dir's file system (${ma} vs ${da})`)
  const f = await ok(t, `stat -f -c '%l %S %b %a' "${m()}"`, 'stat -f')
  const [namemax, bsize, blocks, bavail] = f.trim().split(' ').map(Number)
  t.equal(namemax, 255, 'namemax 255')
  t.ok((bsize ?? 0) > 0 && (blocks ?? 0) > 0 && (bavail ?? 0) > 0, `block figures: ${f}`)
})

t.test('unmount and remount: names, inode numbers, owners, modes and times persist', async t => {
  const listing = async (): Promise<string> => await ok(t, 'find . -path ./hid -prune -o -printf "%i %n %U:%G %m %y %T@ %p\\n" | LC_ALL=C sort -k8', 'listing')
  const before = await listing()
  const timesBefore = await ok(t, `${PY} -c "import os; s=os.stat('times'); print(s.st_atime_ns, s.st_mtime_ns)"`, 'times')
  const names = await ok(t, `${PY} -c "import os; print(sorted(x.hex() for x in os.listdir(b'names')))"`, 'names')
  const hash = await treeHash(m())
  await drive.unmount()
  await drive.mount()
  t.equal(await ok(t, `${PY} -c "import os; s=os.stat('times'); print(s.st_atime_ns, s.st_mtime_ns)"`, 'times'), timesBefore, 'atime and mtime, exact ns')
  t.equal(await ok(t, `${PY} -c "import os; print(sorted(x.hex() for x in os.listdir(b'names')))"`, 'names'), names, 'byte names')
  t.equal(await listing(), before, 'inode numbers, link counts, owners, modes, types, mtimes')
  t.equal(await ok(t, 'stat -c %i ino/tree/d1/f1 ino/tree/d1', 'inodes'), `${ino.get('ino/tree/d1/f1') ?? '?'}\n${ino.get('ino/tree/d1') ?? '?'}\n`, 'stat -c %i after remount')
  t.equal(await treeHash(m()), hash, 'content identical')
})

t.test('errno: a disabled team gives EACCES ("Permission denied"); enabling it again restores access', async t => {
  await ok(t, 'echo team-data > team.txt && sync team.txt', 'a file')
  const d = await strata(['team', 'disable', '--data', drive.dataDir])
  t.equal(d.code, 0, `strata team disable (on the running daemon): ${d.stdout}${d.stderr}`)
  try {
    // (Not with the mount as cwd: the root directory itself is now EACCES.)
    const cat = await run('cat', [join(m(), 'team.txt')], { timeout: 60_000 })
    t.not(cat.code, 0, 'cat fails')
    t.match(cat.stderr, /Permission denied/, `EACCES: ${cat.stderr}`)
    const w = await sh(`echo x > "${m()}/team-new.txt"`, { timeout: 60_000 })
    t.not(w.code, 0, 'creating a file fails')
    t.match(w.stderr, /Permission denied/, `creating a file: EACCES: ${w.stderr}`)
    t.ok(isMounted(m()), 'still mounted (no crash)')
  } finally {
    const e = await strata(['team', 'enable', '--data', drive.dataDir])
    t.equal(e.code, 0, `strata team enable: ${e.stdout}${e.stderr}`)
  }
  const again = await run('cat', [join(m(), 'team.txt')], { timeout: 60_000 })
  t.equal(again.stdout, 'team-data\n', 'cat works again')
  t.equal(again.code, 0)
})

/** Records of the segment files: "SBK1" + u32be len + 32-byte id + bytes. */
function segmentRecords (blocksDir: string): Array<{ file: string, offset: number, len: number }> {
  const out: Array<{ file: string, offset: number, len: number }> = []
  for (const name of readdirSync(blocksDir).filter(n => /^seg-\d+\.log$/.test(n)).sort()) {
    const file = join(blocksDir, name)
    const b = readFileSync(file)
    let o = 0
    while (o + 40 <= b.length && b.subarray(o, o + 4).toString('latin1') === 'SBK1') {
      const len = b.readUInt32BE(o + 4)
      out.push({ file, offset: o, len })
      o += 40 + len
    }
  }
  return out
}

t.test('the log holds no libfuse debug output (the sync layer sets DEBUG with a "*")', async t => {
  const d = await makeDrive(t)
  await sh(`mkdir -p "${d.mnt}/dbg" && echo hi > "${d.mnt}/dbg/f" && cat "${d.mnt}/dbg/f" && ls -l "${d.mnt}/dbg" >/dev/null && sync`)
  const log = readFileSync(join(d.dataDir, 'strata.log'), 'utf8')
  t.match(log, /strata:sync/, 'sync ran in this daemon (it is what sets DEBUG)')
  t.notMatch(log, /opcode: |^unique: \d+|FUSE library version/m, `no per-operation lines from libfuse:\n${log.slice(0, 600)}`)
})

t.test('errno: a corrupt block gives EIO and a log line naming the file; other files still read', async t => {
  const d = await makeDrive(t)
  const src = join(d.root, 'victim.src')
  // Incompressible and larger than any other record, so its record is the largest one.
  await sh(`head -c 300000 /dev/urandom > "${src}" && mkdir -p "${d.mnt}/sub" && cp "${src}" "${d.mnt}/sub/victim.bin" && echo fine > "${d.mnt}/other.txt" && head -c 100000 /dev/urandom > "${d.mnt}/sub/neighbour.bin" && sync`)
  const neighbour = (await sh(`sha256sum < "${d.mnt}/sub/neighbour.bin"`)).stdout
  await d.unmount()
  const recs = segmentRecords(join(d.dataDir, 'blocks'))
  const big = recs.filter(r => r.len >= 300000)
  t.equal(big.length, 1, `one record holds the 300,000-byte file (records: ${recs.map(r => r.len).join(',')})`)
  const rec = big[0]
  if (rec === undefined) return
  const buf = readFileSync(rec.file)
  const at = rec.offset + 40 + Math.floor(rec.len / 2)
  buf[at] = (buf[at] as number) ^ 0x5a
  writeFileSync(rec.file, buf)
  const logBefore = readFileSync(join(d.dataDir, 'strata.log'), 'utf8').length
  await d.mount()
  const cat = await run('cat', [join(d.mnt, 'sub/victim.bin')], { timeout: 60_000 })
  t.not(cat.code, 0, 'cat fails')
  t.match(cat.stderr, /Input\/output error/, `EIO: ${cat.stderr}`)
  const log = readFileSync(join(d.dataDir, 'strata.log'), 'utf8').slice(logBefore)
  t.match(log, /\/sub\/victim\.bin/, `a log line names the file's path:\n${log}`)
  const other = await run('cat', [join(d.mnt, 'other.txt')])
  t.equal(other.stdout, 'fine\n', 'other files still read')
  t.equal((await sh(`sha256sum < "${d.mnt}/sub/neighbour.bin"`)).stdout, neighbour, 'a neighbour in the same directory reads intact')
  const ls = await run('ls', [join(d.mnt, 'sub')])
  t.equal(ls.stdout, 'neighbour.bin\nvictim.bin\n', 'the directory still lists')
  const f = await strata(['fsck', '--data', d.dataDir])
  t.equal(f.code, 7, 'fsck reports the problem (exit 7)')
  t.match(f.stdout, /\/sub\/victim\.bin/, `fsck names the file: ${f.stdout}`)
})

t.test('ENOSPC: a full disk gives "No space left on device"; files stay intact; deleting frees space', async t => {
  const root = mkdtempSync(join(tmpdir(), 'strata-enospc-'))
  const small = join(root, 'small')
  const mnt = join(root, 'mnt')
  const dataDir = join(small, 'data')
  mkdirSync(small); mkdirSync(mnt)
  const pidOf = (): number | undefined => {
    try { return (JSON.parse(readFileSync(join(dataDir, 'daemon.json'), 'utf8')) as { pid: number }).pid } catch { return undefined }
  }
  let lastPid: number | undefined
  t.teardown(async () => {
    lastPid = pidOf() ?? lastPid
    if (isMounted(mnt)) {
      const u = await run(process.execPath, [BIN, 'unmount', mnt], { timeout: 30_000 })
      if (u.code !== 0 && isMounted(mnt)) await run('fusermount', ['-u', '-z', mnt])
    }
    if (lastPid !== undefined) { try { process.kill(lastPid, 'SIGKILL') } catch {} }
    if (isMounted(small)) {
      const u = await run('umount', [small])
      if (u.code !== 0) await run('umount', ['-l', small])
    }
    rmSync(root, { recursive: true, force: true })
  })
  const tm = await run('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'tmpfs', small])
  t.equal(tm.code, 0, `a 64 MiB tmpfs for the data dir: ${tm.stderr}`)
  if (tm.code !== 0) return
  const init = await strata(['init', '--data', dataDir])
  t.equal(init.code, 0, init.stderr)
  const mo = await strata(['mount', mnt, '--data', dataDir])
  t.equal(mo.code, 0, mo.stderr)
  if (mo.code !== 0) return
  lastPid = pidOf()
  await sh(`head -c 5000000 /dev/urandom > "${root}/keep.src" && cp "${root}/keep.src" "${mnt}/keep.bin" && mkdir "${mnt}/d" && for i in $(seq 1 20); do echo "small $i" > "${mnt}/d/s$i"; done && sync`)
  const keepHash = createHash('sha256').update(readFileSync(join(root, 'keep.src'))).digest('hex')
  // Read from the drive, not the page cache.
  const hashOnDrive = async (p: string): Promise<string> => (await run(PY, ['-c', `
import os, hashlib, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
h = hashlib.sha256()
while True:
    b = os.read(fd, 1 << 20)
    if not b: break
    h.update(b)
print(h.hexdigest())`, p], { timeout: 60_000 })).stdout.trim()

  // Fill it: dd must end with ENOSPC, not hang.
  const fill = await run('dd', ['if=/dev/urandom', `of=${mnt}/fill`, 'bs=1M', 'count=200', 'conv=fsync', 'status=none'], { timeout: 180_000 })
  t.not(fill.code, 0, 'the writer fails')
  t.match(fill.stderr, /No space left on device/, `with ENOSPC: ${fill.stderr}`)
  t.notMatch(fill.stderr, /killed: still running/, 'and does not hang')
  const alive = lastPid !== undefined && existsSync(`/proc/${lastPid}`) && !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${lastPid}/stat`, 'utf8'))
  t.ok(alive, `the daemon survives the full disk (log tail: ${(await run('tail', ['-c', '300', join(dataDir, 'strata.log')])).stdout})`)
  const small2 = await run('bash', ['-c', `echo more >> "${mnt}/d/s1"; mkdir "${mnt}/d/x"; true`], { timeout: 60_000 })
  t.notMatch(small2.stderr, /killed: still running/, `small writes on a full disk return (no hang): ${small2.stderr}`)

  t.equal(await hashOnDrive(join(mnt, 'keep.bin')), keepHash, 'an existing file reads back intact on the full disk')
  t.equal((await run('cat', [join(mnt, 'd/s7')])).stdout, 'small 7\n', 'small files too')

  // Delete something: writing works again.
  const rm = await run('rm', ['-f', join(mnt, 'fill')], { timeout: 60_000 })
  t.equal(rm.code, 0, `rm of the big file on a full disk works: ${rm.stderr}`)
  let wrote: { code: number, stderr: string } = { code: -1, stderr: '' }
  const end = Date.now() + (rm.code === 0 ? 60_000 : 0)
  do {
    wrote = await run('bash', ['-c', `head -c 3000000 "${root}/keep.src" > "${mnt}/after.bin" && sync "${mnt}/after.bin"`], { timeout: 60_000 })
    if (wrote.code !== 0 && Date.now() < end) await sleep(1000) // space may come back asynchronously (bounded)
  } while (wrote.code !== 0 && Date.now() < end)
  t.equal(wrote.code, 0, `after deleting, writing works again: ${wrote.stderr}`)
  const afterHash = createHash('sha256').update(readFileSync(join(root, 'keep.src')).subarray(0, 3000000)).digest('hex')
  t.equal(await hashOnDrive(join(mnt, 'after.bin')), afterHash, 'the new file reads back')

  // And the drive unmounts and remounts cleanly, content intact.
  // (The CLI itself waits up to 120 s for the daemon; a clean stop takes a second or two.)
  const u = await run(process.execPath, [BIN, 'unmount', mnt], { timeout: 60_000 })
  t.equal(u.code, 0, `clean unmount after ENOSPC: ${u.stdout}${u.stderr}${(await run('tail', ['-3', join(dataDir, 'strata.log')])).stdout}`)
  t.notOk(isMounted(mnt), 'unmounted')
  if (u.code !== 0 || isMounted(mnt)) return
  const mo2 = await strata(['mount', mnt, '--data', dataDir])
  t.equal(mo2.code, 0, `remount: ${mo2.stderr}`)
  lastPid = pidOf() ?? lastPid
  if (mo2.code !== 0) return
  t.equal(await hashOnDrive(join(mnt, 'keep.bin')), keepHash, 'keep.bin intact after remount')
  t.equal(await hashOnDrive(join(mnt, 'after.bin')), afterHash, 'after.bin intact after remount')
  const f = await strata(['fsck', '--data', dataDir])
  t.equal(f.code, 0, `fsck clean: ${f.stdout}${f.stderr}`)
  t.ok(existsSync(join(dataDir, 'daemon.json')), 'running')
})
