/**
 * Reliability of the mounted drive (issue 3, "Reliability" and the CLI's mount/unmount rules):
 * kill -9 of the daemon during an fsync'ing write loop, 20 times — the writer gets an error
 * instead of hanging, the next `strata mount` recovers the stale mount by itself, fsck is clean
 * and every acknowledged record is there, byte for byte; and the mount/unmount edge cases:
 * ENOTCONN after a crash, unmount of a dead daemon, double mount, busy or missing mount point,
 * unmount while a file is open, SIGTERM.
 *
 * Waits below are bounds that detect a hang (a failure), never timed assertions.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, rmSync, mkdtempSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeDrive, sh, strata, treeHash } from './helpers/mount.js'
import { runQuiet as run, sleep, isMounted, daemonPid, waitGone, running, within, startWriter, checkAcked, killedDaemonError } from './helpers/crash.js'

t.test('kill -9 of the daemon during an fsync\'ing write loop, 20 times: no hang, recovery, fsck clean, every acked byte present', async t => {
  const drive = await makeDrive(t)
  const ROUNDS = 20
  const SIZE = 512
  const acks: number[] = []
  const immediateRemountFailures: string[] = []
  const writerErrors: string[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const logFile = join(drive.mnt, `w${round}.log`)
    const daemonLog = join(drive.dataDir, 'strata.log')
    const logFrom = existsSync(daemonLog) ? statSync(daemonLog).size : 0
    const markerDir = join(drive.mnt, `m${round}`)
    const pid = daemonPid(drive.dataDir)
    if (pid === undefined) { t.fail(`round ${round}: no daemon.json`); break }
    const w = startWriter(logFile, markerDir, SIZE)
    // A random moment: after 1..40 acknowledged records, plus 0..30 ms.
    const target = randomInt(1, 41)
    const end = Date.now() + 60_000
    while (w.acked() < target && w.child.exitCode === null && Date.now() < end) await sleep(5)
    if (w.acked() < target) {
      t.fail(`round ${round}: the writer acknowledged only ${w.acked() + 1} records: ${w.lines.join(' | ')}`)
      w.child.kill('SIGKILL')
      break
    }
    await sleep(randomInt(0, 31))
    process.kill(pid, 'SIGKILL')
    // The writer must fail (not hang) once its daemon is dead.
    if (!await within(w.exited, 30_000)) {
      t.fail(`round ${round}: the writer still blocks 30 s after the daemon was killed (an application hangs)`)
      w.child.kill('SIGKILL')
      await within(w.exited, 10_000)
      break
    }
    const acked = w.acked()
    acks.push(acked)
    const err = w.lines.find(l => l.startsWith('ERR ')) ?? `(no ERR line; exit ${String(w.child.exitCode)}: ${w.lines.slice(-3).join(' | ')})`
    // ENOTCONN/ECONNABORTED, or EIO for a reply the kill cut when the daemon logged no error.
    const daemonErrors = readFileSync(daemonLog).subarray(logFrom).toString('utf8').split('\n').filter(l => / error /.test(l))
    if (!killedDaemonError(err, daemonErrors)) writerErrors.push(`round ${round}: ${err}${daemonErrors.length > 0 ? `; the daemon logged: ${daemonErrors.slice(-3).join(' | ')}` : ''}`)

    // The next `strata mount`, right away, must detect and clean up the stale mount itself.
    const r = await strata(['mount', drive.mnt, '--data', drive.dataDir])
    if (r.code !== 0) {
      immediateRemountFailures.push(`round ${round} (exit ${r.code}; killed pid ${pid} ${running(pid) ? 'still running' : existsSync(`/proc/${pid}`) ? 'a zombie' : 'gone'}): ${r.stderr.trim()}`)
      // Go on with the rest of the round once the killed process is fully gone.
      await waitGone(pid, 30_000)
      const again = await strata(['mount', drive.mnt, '--data', drive.dataDir])
      if (again.code !== 0) { t.fail(`round ${round}: strata mount failed even after the killed daemon was gone (exit ${again.code}): ${again.stderr}`); break }
    }
    const newPid = daemonPid(drive.dataDir)
    if (newPid === undefined || newPid === pid || !isMounted(drive.mnt)) { t.fail(`round ${round}: no new daemon/mount after strata mount`); break }

    const f = await strata(['fsck', '--data', drive.dataDir])
    if (f.code !== 0 || !/fsck: clean/.test(f.stdout)) { t.fail(`round ${round}: fsck after kill -9 (exit ${f.code}): ${f.stdout}${f.stderr}`); break }

    // Every acknowledged record of every round so far is present and byte-exact.
    let bad = ''
    for (let k = 0; k <= round && bad === ''; k++) bad = checkAcked(join(drive.mnt, `w${k}.log`), join(drive.mnt, `m${k}`), SIZE, acks[k] as number)
    if (bad !== '') { t.fail(`round ${round} (acked 0..${acked}): ${bad}`); break }
  }
  t.equal(acks.length, ROUNDS, `all ${ROUNDS} rounds ran (acked per round: ${acks.join(',')})`)
  t.same(writerErrors, [], 'the writer failed with ENOTCONN/ECONNABORTED every time')
  t.same(immediateRemountFailures, [], '`strata mount` right after kill -9 recovers the stale mount itself')
  // And the content survives one clean unmount/remount as well.
  const before = await treeHash(drive.mnt)
  await drive.unmount()
  await drive.mount()
  t.equal(await treeHash(drive.mnt), before, 'identical after a clean remount')
})

t.test('after kill -9: ENOTCONN at once, `strata unmount` cleans up the stale mount, `strata mount` recovers', async t => {
  const drive = await makeDrive(t)
  await sh(`mkdir -p "${drive.mnt}/dir" && echo hello > "${drive.mnt}/dir/f" && sync "${drive.mnt}/dir/f"`)
  const pid = drive.pid() as number
  process.kill(pid, 'SIGKILL')
  // Wait until it has exited (requests in flight while it dies get ECONNABORTED; afterwards the
  // kernel answers ENOTCONN), but no longer: it may still be a zombie (not yet reaped by init)
  // below; it is dead all the same, and nothing it held (FUSE fd, socket, locks) is alive.
  for (const end = Date.now() + 30_000; running(pid) && Date.now() < end;) await sleep(10)
  t.notOk(running(pid), 'the daemon has exited')
  for (const p of [drive.mnt, join(drive.mnt, 'dir/f'), join(drive.mnt, 'anything')]) {
    const r = await run('stat', [p], { timeout: 30_000 })
    // The first request may still meet the connection being torn down (ECONNABORTED).
    t.match(r.stderr, /Transport endpoint is not connected|Software caused connection abort/, `stat ${p} fails with ENOTCONN or ECONNABORTED (no hang): ${r.stderr}`)
  }
  const ls = await run('ls', [drive.mnt], { timeout: 30_000 })
  t.match(ls.stderr, /Transport endpoint is not connected/, 'ls of the mount fails with ENOTCONN')

  const zombie = existsSync(`/proc/${pid}`) ? ' (the killed daemon was still a zombie then)' : ''
  const u = await strata(['unmount', drive.mnt])
  t.equal(u.code, 0, `strata unmount on a dead daemon cleans up${zombie}: ${u.stdout}${u.stderr}`)
  if (u.code !== 0) {
    // Go on checking the rest once the process is fully gone.
    await waitGone(pid, 30_000)
    const again = await strata(['unmount', drive.mnt])
    t.equal(again.code, 0, `strata unmount once the killed daemon is reaped: ${again.stdout}${again.stderr}`)
  }
  t.notOk(isMounted(drive.mnt), 'the stale mount is gone')

  const m = await strata(['mount', drive.mnt, '--data', drive.dataDir])
  t.equal(m.code, 0, `mount again: ${m.stderr}`)
  const cat = await run('cat', [join(drive.mnt, 'dir/f')])
  t.equal(cat.stdout, 'hello\n', 'the synced file is there')
})

t.test('a second mount of the same data dir fails with "already mounted" and exit 9', async t => {
  const drive = await makeDrive(t)
  const pid = drive.pid()
  const same = await strata(['mount', drive.mnt, '--data', drive.dataDir])
  t.equal(same.code, 9, 'exit 9 (mount failed), same mount point')
  t.match(same.stderr, /already mounted/, same.stderr)
  const other = join(drive.root, 'mnt2')
  mkdirSync(other)
  const r = await strata(['mount', other, '--data', drive.dataDir])
  t.equal(r.code, 9, 'exit 9, another mount point')
  t.match(r.stderr, /already mounted/, r.stderr)
  t.notOk(isMounted(other), 'nothing mounted at the second mount point')
  t.equal(drive.pid(), pid, 'daemon.json still names the first daemon')
  t.ok(running(pid as number), 'the first daemon still runs')
  const w = await sh(`echo still > "${drive.mnt}/ok" && cat "${drive.mnt}/ok"`)
  t.equal(w.stdout, 'still\n', 'the drive still works')
})

t.test('mounting on a busy or a missing mount point fails clearly', async t => {
  const root = mkdtempSync(join(tmpdir(), 'strata-mp-'))
  const busy = join(root, 'busy')
  mkdirSync(busy)
  t.teardown(async () => {
    if (isMounted(busy)) await run('umount', ['-l', busy])
    const pid = daemonPid(join(root, 'data'))
    if (pid !== undefined && running(pid)) {
      const mnt = (JSON.parse(readFileSync(join(root, 'data', 'daemon.json'), 'utf8')) as { mountpoint: string }).mountpoint
      await strata(['unmount', mnt])
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
    rmSync(root, { recursive: true, force: true })
  })
  const init = await strata(['init', '--data', join(root, 'data')])
  t.equal(init.code, 0, init.stderr)
  const tm = await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', busy])
  t.equal(tm.code, 0, `tmpfs mounted on the mount point: ${tm.stderr}`)
  const r = await strata(['mount', busy, '--data', join(root, 'data')])
  t.equal(r.code, 9, 'busy mount point: exit 9')
  t.match(r.stderr, /busy/i, `says busy: ${r.stderr}`)
  t.match(r.stderr, new RegExp(busy.replace(/[/.]/g, '\\$&')), 'names the mount point')
  t.notOk(existsSync(join(root, 'data', 'daemon.json')), 'no daemon left behind')
  t.equal((await run('findmnt', ['-n', '-o', 'FSTYPE', busy])).stdout.trim(), 'tmpfs', 'the tmpfs is untouched (nothing stacked on it)')

  const missing = join(root, 'no', 'such', 'dir')
  const m = await strata(['mount', missing, '--data', join(root, 'data')])
  t.equal(m.code, 9, 'missing mount point: exit 9')
  t.match(m.stderr, /does not exist|no such/i, `says it does not exist: ${m.stderr}`)
  t.match(m.stderr, /no\/such\/dir/, 'names the mount point')
  t.notOk(existsSync(join(root, 'data', 'daemon.json')), 'no daemon left behind')
})

t.test('`strata unmount` while a file is open reports busy (exit 11) and leaves the drive working', async t => {
  const drive = await makeDrive(t)
  await sh(`echo open-me > "${drive.mnt}/held"`)
  const pid = drive.pid()
  // A holder process with an open file in the mount (not our own process: it must not block us).
  const holder = spawn('bash', ['-c', 'exec 3<"$1"; read -r line; cat <&3', 'holder', join(drive.mnt, 'held')], { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  holder.stdout.setEncoding('utf8').on('data', (d: string) => { out += d })
  const holderExit = new Promise<void>(resolve => { holder.on('exit', () => { resolve() }) })
  t.teardown(() => { holder.kill('SIGKILL') })
  // Wait until the holder has the file open.
  const end = Date.now() + 30_000
  let opened = false
  while (!opened && Date.now() < end) {
    const fds = await run('ls', ['-l', `/proc/${holder.pid as number}/fd`])
    opened = fds.stdout.includes(join(drive.mnt, 'held'))
    if (!opened) await sleep(20)
  }
  t.ok(opened, 'the holder has the file open')
  const u = await strata(['unmount', drive.mnt])
  t.equal(u.code, 11, `exit 11 (busy): ${u.stdout}${u.stderr}`)
  t.match(u.stderr, /busy/i, 'says busy')
  t.ok(isMounted(drive.mnt), 'still mounted')
  t.equal(drive.pid(), pid, 'same daemon')
  t.ok(running(pid as number), 'the daemon still runs')
  const w = await sh(`echo more > "${drive.mnt}/new" && cat "${drive.mnt}/new" "${drive.mnt}/held"`)
  t.equal(w.stdout, 'more\nopen-me\n', 'the drive still works')
  holder.stdin.end('go\n')
  await holderExit
  t.equal(out, 'open-me\n', 'the open file still reads through its descriptor')
  const u2 = await strata(['unmount', drive.mnt])
  t.equal(u2.code, 0, `unmount once nothing is open: ${u2.stderr}`)
  t.notOk(isMounted(drive.mnt), 'unmounted')
})

t.test('SIGTERM to the daemon unmounts cleanly; the data is intact after remount', async t => {
  const drive = await makeDrive(t)
  await sh(`cd "${drive.mnt}" && mkdir -p a/b && head -c 3000000 /dev/urandom > a/b/big && echo small > a/s && ln -s b/big a/link`)
  const before = await treeHash(drive.mnt)
  const pid = drive.pid() as number
  process.kill(pid, 'SIGTERM')
  t.ok(await waitGone(pid, 120_000), 'the daemon exits on SIGTERM')
  t.notOk(isMounted(drive.mnt), 'the mount is gone')
  t.notOk(existsSync(join(drive.dataDir, 'daemon.json')), 'daemon.json removed')
  t.notOk(existsSync(join(drive.dataDir, 'control.sock')), 'control socket removed')
  const log = readFileSync(join(drive.dataDir, 'strata.log'), 'utf8')
  t.notMatch(log.split('\n').filter(l => / error /.test(l)).join('\n'), /./, 'no error in the log')
  const f = await strata(['fsck', '--data', drive.dataDir])
  t.equal(f.code, 0, `fsck (offline) clean: ${f.stdout}${f.stderr}`)
  await drive.mount()
  t.equal(await treeHash(drive.mnt), before, 'identical after remount')
})

t.test('an unmount from outside Strata (fusermount -u) stops the daemon cleanly; the next mount works', async t => {
  const drive = await makeDrive(t)
  // Written without fsync: the daemon must seal it when it notices the mount is gone.
  await sh(`cd "${drive.mnt}" && mkdir d && head -c 2500000 /dev/urandom > d/unsynced && echo small > d/s`)
  const before = await treeHash(drive.mnt)
  const pid = drive.pid() as number
  const u = await run('fusermount', ['-u', drive.mnt])
  t.equal(u.code, 0, `fusermount -u: ${u.stderr}`)
  t.ok(await waitGone(pid, 120_000), 'the daemon exits once its mount is gone')
  t.notOk(existsSync(join(drive.dataDir, 'daemon.json')), 'daemon.json removed')
  const log = readFileSync(join(drive.dataDir, 'strata.log'), 'utf8')
  t.match(log, /was unmounted from outside Strata/, 'the log says why the daemon stopped')
  t.notMatch(log.split('\n').filter(l => / error /.test(l)).join('\n'), /./, 'no error in the log')
  const f = await strata(['fsck', '--data', drive.dataDir])
  t.equal(f.code, 0, `fsck (offline) clean: ${f.stdout}${f.stderr}`)
  await drive.mount()
  t.equal(await treeHash(drive.mnt), before, 'identical after remount')
})
