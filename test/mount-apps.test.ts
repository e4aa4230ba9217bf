/**
 * Real applications against a real mount (a background strata daemon over FUSE): git, sqlite3,
 * rsync, tar, sed -i, mmap, locks, xattrs, links, a sparse 5 GiB file, concurrent O_APPEND,
 * rename over an open file — then unmount, remount, and the content is identical.
 */
import t, { type Test } from 'tap'
import { makeDrive, sh, treeHash, type Drive } from './helpers/mount.js'

let drive: Drive
const m = (): string => drive.mnt

t.before(async () => {
  drive = await makeDrive(t)
})

const ok = async (tt: Test, script: string, msg: string, cwd?: string): Promise<string> => {
  const r = await sh(script, { cwd: cwd ?? m() })
  tt.equal(r.code, 0, `${msg}${r.code !== 0 ? `\n${r.stderr}\n${r.stdout}` : ''}`)
  return r.stdout
}

t.test('git: init, add, commit, clone from and into the mount, gc, fsck', async t => {
  await ok(t, `
    export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@e
    git init -q repo && cd repo
    for i in $(seq 1 50); do echo "line $i" > "file$i.txt"; done
    mkdir -p src/deep && cp /etc/services src/deep/services
    git add -A && git commit -qm first
    echo change >> file1.txt && git commit -qam second
    git gc -q && git fsck --full --strict
    test "$(git log --oneline | wc -l)" = 2
  `, 'git init/add/commit/gc/fsck in the mount')
  await ok(t, `
    git clone -q "${m()}/repo" "${drive.root}/outside" && cd "${drive.root}/outside" && git fsck --full && test -f src/deep/services
    git clone -q "${drive.root}/outside" "${m()}/clone2" && cd "${m()}/clone2" && git fsck --full && git log --oneline | wc -l | grep -q 2
  `, 'clone from the mount and into the mount')
})

t.test('sqlite3: 10,000 rows, transactions, integrity_check', async t => {
  const out = await ok(t, `
    sqlite3 db.sqlite "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
    sqlite3 db.sqlite "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<10000) INSERT INTO t(v) SELECT hex(randomblob(32)) FROM c; COMMIT;"
    sqlite3 db.sqlite "BEGIN; UPDATE t SET v='x' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0; COMMIT;"
    sqlite3 db.sqlite "BEGIN; DELETE FROM t; ROLLBACK;"
    sqlite3 db.sqlite "PRAGMA journal_mode=WAL; INSERT INTO t(v) VALUES('wal');"
    sqlite3 db.sqlite "SELECT count(*) FROM t; PRAGMA integrity_check;"
  `, 'sqlite3 workload')
  t.match(out, /^9092\nok\n$/m, 'row count and integrity_check')
})

t.test('rsync -a in and out, diff -r; tar round trip', async t => {
  await ok(t, `
    src="${drive.root}/src"; mkdir -p "$src/a/b" "$src/c"
    cp -a /usr/share/doc/git "$src/a/" 2>/dev/null || cp -a /etc "$src/a/etc"
    head -c 3000000 /dev/urandom > "$src/c/big.bin"; ln -s ../c/big.bin "$src/a/b/link"; ln "$src/c/big.bin" "$src/c/hard.bin"
    touch -d '2001-02-03 04:05:06.123456789' "$src/c/big.bin"; chmod 640 "$src/c/big.bin"; mkfifo "$src/c/fifo"
    rsync -aH "$src/" "${m()}/rs/"
    rsync -aH "${m()}/rs/" "${drive.root}/back/"
    diff -r --no-dereference -x fifo "$src" "${drive.root}/back" && test -p "${drive.root}/back/c/fifo"
    test "$(stat -c '%y %a %h' "$src/c/big.bin")" = "$(stat -c '%y %a %h' "${drive.root}/back/c/big.bin")"
    # a second rsync sends nothing: sizes and times match exactly
    test -z "$(rsync -aHi "$src/" "${m()}/rs/" | grep -v '^$' || true)"
  `, 'rsync round trip identical, no re-send')
  await ok(t, `
    tar -C "${drive.root}/src" -cf "${m()}/x.tar" .
    mkdir "${m()}/untar" && tar -C "${m()}/untar" -xf "${m()}/x.tar"
    tar -C "${m()}/untar" -cf "${drive.root}/y.tar" . 2>&1 | (! grep -i 'changed')
    diff -r --no-dereference -x fifo "${drive.root}/src" "${m()}/untar" && test -p "${m()}/untar/c/fifo"
    tar -C "${m()}/untar" --compare -f "${m()}/x.tar"
  `, 'tar create/extract round trip, no "file changed as we read it"')
})

t.test('sed -i and save-by-rename editors keep content and mode', async t => {
  const out = await ok(t, `
    printf 'alpha\\nbeta\\n' > ed.txt && chmod 640 ed.txt
    sed -i 's/beta/gamma/' ed.txt
    cat ed.txt; stat -c %a ed.txt
    python3 -c "
import os
open('ed.txt.tmp','w').write('saved by rename\\n'); os.replace('ed.txt.tmp','ed.txt')"
    cat ed.txt
  `, 'sed -i, then a rename-over save')
  t.equal(out, 'alpha\ngamma\n640\nsaved by rename\n')
})

t.test('mmap reads, flock and fcntl locks', async t => {
  const out = await ok(t, `
    head -c 1000000 /dev/urandom > mm.bin
    python3 - <<'PY'
import mmap, hashlib, fcntl, os
with open('mm.bin', 'rb') as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    a = hashlib.sha256(m[:]).hexdigest()
b = hashlib.sha256(open('mm.bin','rb').read()).hexdigest()
print('mmap', a == b)
fd = os.open('lock', os.O_CREAT | os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
pid = os.fork()
if pid == 0:
    fd2 = os.open('lock', os.O_RDWR)
    try:
        fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB); os._exit(1)
    except OSError:
        os._exit(0)
_, st = os.waitpid(pid, 0)
print('fcntl', os.WEXITSTATUS(st) == 0)
PY
    flock -n lock2 -c 'flock -n lock2 -c true && echo flock-broken || echo flock ok'
  `, 'mmap + locks')
  t.equal(out, 'mmap True\nfcntl True\nflock ok\n')
})

t.test('xattrs, symlinks, hard links and link counts', async t => {
  const out = await ok(t, `
    echo x > xa && setfattr -n user.color -v blue xa && setfattr -n user.bin -v 0x00ff10 xa
    getfattr --only-values -n user.color xa; echo
    getfattr -d -e hex xa | grep user.bin
    setfattr -x user.color xa; getfattr -n user.color xa 2>/dev/null || echo removed
    echo t > target && ln -s target sl && ln -s /nonexistent/dangling dl
    readlink sl dl; cat sl
    ln target h1 && ln target h2 && stat -c '%h' target h1 h2
    rm h1 && stat -c '%h' target h2
  `, 'xattrs and links')
  t.equal(out, 'blue\nuser.bin=0x00ff10\nremoved\ntarget\n/nonexistent/dangling\nt\n3\n3\n3\n2\n2\n')
})

t.test('a sparse 5 GiB file written at its end', async t => {
  const out = await ok(t, `
    dd if=/dev/urandom of=sparse bs=1M count=1 seek=5119 status=none
    stat -c %s sparse
    test "$(du -k sparse | cut -f1)" -lt 10240 && echo small-on-disk
    dd if=sparse bs=1M skip=5000 count=1 status=none | tr -d '\\0' | wc -c
    dd if=sparse bs=1M skip=5119 count=1 status=none | cmp -s - <(dd if=sparse bs=1M skip=5119 count=1 status=none) && echo ok
    rm sparse # verified; keeps the remount hash below from reading 5 GiB of holes twice
  `, 'sparse file')
  t.match(out, /^5368709120\nsmall-on-disk\n0\nok\n$/)
})

t.test('two processes appending with O_APPEND lose no line', async t => {
  const out = await ok(t, `
    : > app.log
    for p in a b; do ( for i in $(seq 1 2000); do echo "$p $i" >> app.log; done ) & done; wait
    wc -l < app.log; grep -c '^a ' app.log; grep -c '^b ' app.log
  `, 'concurrent appends')
  t.equal(out.replace(/ /g, ''), '4000\n2000\n2000\n')
})

t.test('rename over an open file', async t => {
  const out = await ok(t, `
    echo old > ro.txt; echo new > ro.new
    exec 3< ro.txt
    mv ro.new ro.txt
    cat <&3; cat ro.txt
    exec 3<&-
    ls -a | grep -c fuse_hidden || true
  `, 'rename over open file')
  t.equal(out, 'old\nnew\n0\n')
})

t.test('unmount, remount: the content is identical', async t => {
  const before = await treeHash(m())
  await drive.unmount()
  await drive.mount()
  t.equal(await treeHash(m()), before)
  const r = await sh(`node ${JSON.stringify(new URL('../../bin/strata.js', import.meta.url).pathname)} fsck --data "${drive.dataDir}"`)
  t.equal(r.code, 0, r.stdout + r.stderr)
})
