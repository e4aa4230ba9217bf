/**
 * LAN sync end to end: real daemons with real mounts and their own SoftHSM tokens, enrolled
 * with `strata invite` / `strata join` (the TEK moves token to token), libp2p + Noise over
 * loopback. Changes are made with ordinary programs through one mount and checked through the
 * other; bytes that crossed the network are read from `strata status --json`.
 */
import '../net/shim.js'
import t from 'tap'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createStrataNode } from '../net/node.js'
import { LOG_PROTOCOL } from '../net/log/index.js'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { makeDrive, sh, strata, type Drive } from './helpers/mount.js'
import { LOOPBACK, joinDrive, ok, same, status, until } from './helpers/team.js'

/** Poll until fn() is true; fails the test with `what` after `ms` (a bound, not a timing claim). */
async function waitFor (t: { fail: (msg: string) => void }, what: string, fn: () => Promise<boolean>, ms = 60_000): Promise<boolean> {
  if (await until(fn, ms)) return true
  t.fail(`timed out waiting: ${what}`)
  return false
}

t.test('two devices: enrolment, then every kind of change converges both ways', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  await sh(`echo before > "${a.mnt}/before.txt"`)
  const b = await joinDrive(t, a, 'second')
  t.ok(await waitFor(t, 'the first device\'s files on the new device', same(a, b)), 'the new device receives what existed before it joined')

  const r = await sh(`cd "${a.mnt}" && mkdir -p docs/deep/er && printf 'hello\\n' > docs/hello.txt && head -c 3000000 /dev/urandom > docs/deep/big.bin &&
    ln -s hello.txt docs/link && ln docs/hello.txt hard.txt && chmod 600 docs/hello.txt && touch -m -d '2020-01-02 03:04:05.123456789' docs/hello.txt &&
    mkfifo docs/pipe && printf 'x%.0s' $(seq 1 5000) > trunc.txt && truncate -s 1234 trunc.txt`)
  t.equal(r.code, 0, r.stderr)
  t.ok(await waitFor(t, 'creates, links, modes and truncates', same(a, b)), 'creates, symlinks, hard links, chmod, fifos, truncates converge')
  const mt = await sh(`stat -c '%y %h' "${b.mnt}/docs/hello.txt"`)
  t.equal(mt.stdout.trim(), '2020-01-02 03:04:05.123456789 +0000 2', 'mtime to the nanosecond and the hard link count')

  await sh(`cd "${a.mnt}" && mv docs/hello.txt docs/deep/renamed.txt && mv docs/deep docs2 && rm hard.txt && rmdir docs2/er && rm docs/pipe`)
  t.ok(await waitFor(t, 'renames and deletes', same(a, b)), 'renames of files and directories, unlink and rmdir converge')

  await sh(`cd "${b.mnt}" && echo 'from b' > from-b.txt && rm -r docs2 && mkdir newdir && chmod 700 newdir`)
  t.ok(await waitFor(t, 'changes made on the second device', same(a, b)), 'changes made on the second device reach the first')

  const devices = await ok(['devices', '--data', a.dataDir, '--json'])
  const list = JSON.parse(devices) as Array<{ name: string, self: boolean, connected: boolean }>
  t.equal(list.length, 2, 'two devices on the list')
  t.ok(list.some(d => d.name === 'second' && d.connected), 'the second device is listed and connected')
})

t.test('three devices: changes relay through the device both are connected to', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  const b = await joinDrive(t, a, 'bee')
  const c = await joinDrive(t, a, 'sea')
  // b and c know only a's address: what b writes reaches c through a (logs relayed, blocks fetched from a).
  await sh(`mkdir "${b.mnt}/from-b" && head -c 2500000 /dev/urandom > "${b.mnt}/from-b/data.bin" && echo hi > "${c.mnt}/from-c.txt"`)
  t.ok(await waitFor(t, 'b and c converge through a', same(b, c), 90_000), 'a change on one device reaches the other two')
  t.ok(await waitFor(t, 'a converges', same(a, b)), 'and the device in the middle')
  const list = JSON.parse(await ok(['devices', '--data', c.dataDir, '--json'])) as Array<{ name: string }>
  t.same(list.map(d => d.name).sort(), ['bee', 'sea', list.find(d => d.name !== 'bee' && d.name !== 'sea')?.name].sort(), 'every device knows all three')
  t.equal(list.length, 3)
})

t.test('a device offline during 500 changes catches up; edits made apart become a conflict copy', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  await sh(`echo base > "${a.mnt}/shared.txt"`)
  const b = await joinDrive(t, a, 'laptop')
  await waitFor(t, 'initial sync', same(a, b))
  await b.unmount()
  const r = await sh(`cd "${a.mnt}" && mkdir many && for i in $(seq 1 500); do echo "change $i" > many/f$i.txt; done && echo 'edited on A' > shared.txt`)
  t.equal(r.code, 0, r.stderr)
  await a.unmount()
  await b.mount()
  await sh(`sleep 1.1; echo 'edited on laptop, later' > "${b.mnt}/shared.txt"`)
  await a.mount()
  t.ok(await waitFor(t, 'catch-up and conflict', same(a, b), 120_000), 'both devices converge')
  const ls = await sh(`ls "${b.mnt}"; ls "${b.mnt}/many" | wc -l; cat "${b.mnt}/shared.txt"`)
  t.match(ls.stdout, /shared \(conflict from [^)]+ \d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\)\.txt/, 'a conflict copy names the device and time')
  t.match(ls.stdout, /\n500\n/, 'all 500 files arrived')
  t.match(ls.stdout, /edited on laptop, later/, 'the later edit keeps the name')
  const copy = await sh(`cat "${b.mnt}"/shared\\ \\(conflict*`)
  t.equal(copy.stdout, 'edited on A\n', 'the other edit is in the conflict copy')
})

t.test('a device that restarts on a new port finds the device that only ever dialled it', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  const b = await joinDrive(t, a, 'dialler') // b knows a's address; a learns b's only from b itself
  await sh(`echo one > "${a.mnt}/one.txt"`)
  t.ok(await waitFor(t, 'initial sync', same(a, b)), 'synced')
  await a.unmount()
  const listen = JSON.parse(readFileSync(join(a.dataDir, 'strata.json'), 'utf8')).sync.listen as string[]
  const port = Number(/\/tcp\/(\d+)/.exec(listen[0] ?? '')?.[1])
  t.ok(port > 0, `a remembers its port (${port})`)
  // Something else takes a's port while it is stopped: a comes back on another one, where b never looks.
  const squatter = createServer()
  await new Promise<void>((resolve, reject) => { squatter.once('error', reject); squatter.listen(port, '127.0.0.1', resolve) })
  t.teardown(() => { squatter.close() })
  await a.mount()
  const now = (await status(a)).sync.addresses as string[]
  t.notOk(now.some(x => x.includes(`/tcp/${port}/`)), `a listens elsewhere now (${now.join(' ')})`)
  await sh(`echo two > "${a.mnt}/two.txt"`)
  t.ok(await waitFor(t, 'a dials b where b said it listens', same(a, b)), 'a reconnects to b from the remembered address and the change arrives')
  const dialing = (await status(a)).sync.dialing as Array<{ peer: string, addrs: string[], connected: boolean }>
  const bId = (await status(b)).sync.device as string
  t.ok(dialing.some(p => p.peer === bId && p.connected && p.addrs.some(x => x.startsWith('/ip4/127.0.0.1/tcp/'))), `status shows where a dials b: ${JSON.stringify(dialing)}`)
})

t.test('only changed blocks cross the network: a rename moves none, a 1 MiB change moves at most two blocks', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  const b = await joinDrive(t, a, 'mirror')
  const received = async (): Promise<number> => (await status(b)).sync.blocks.bytesReceived as number
  await sh(`head -c $((256 * 1048576)) /dev/urandom > "${a.mnt}/big.bin" && head -c $((16 * 1048576)) /dev/urandom > "${a.mnt}/sixteen.bin"`)
  t.ok(await waitFor(t, 'the 256 MiB file', same(a, b), 180_000), '256 MiB file synced')
  const before = await received()
  t.ok(before >= 272 * 1048576, `the files' blocks crossed once (${before} bytes)`)
  await sh(`mv "${a.mnt}/big.bin" "${a.mnt}/renamed.bin"`)
  await waitFor(t, 'the rename', same(a, b))
  t.equal(await received(), before, 'a rename transfers no block')
  await sh(`cp "${a.mnt}/sixteen.bin" "${a.mnt}/copy.bin"`)
  await waitFor(t, 'the copy', same(a, b), 120_000)
  t.equal(await received(), before, 'a copy (deduplicated) transfers no block')
  await sh(`head -c 1048576 /dev/urandom | dd of="${a.mnt}/renamed.bin" bs=1M seek=$((100 * 1048576 + 524288)) oflag=seek_bytes conv=notrunc status=none`)
  await waitFor(t, 'the 1 MiB change', same(a, b))
  const delta = await received() - before
  t.ok(delta > 0 && delta <= 2 * (1048576 + 65536), `a 1 MiB change in the middle moved ${delta} bytes: at most two blocks`)
})

t.test('an unenrolled device and a removed device are refused', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  const b = await joinDrive(t, a, 'to-remove')
  await waitFor(t, 'enrolled', same(a, b))
  const addrA = ((await status(a)).sync.addresses as string[])[0] as string
  // A device of another team (its own token and TEK) cannot even name it as a peer...
  const stranger = await makeDrive(t, { config: LOOPBACK })
  const add = await strata(['peer', 'add', addrA, '--data', stranger.dataDir])
  t.not(add.code, 0)
  t.match(add.stderr, /not a device of this team/, `peer add of a foreign device: ${add.stderr.trim()}`)
  // ...and a hostile node that dials anyway gets no stream: the gater closes it after Noise.
  const hostile = await createStrataNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], allowPeer: () => true })
  t.teardown(async () => { await hostile.stop() })
  const outcome = await hostile.dialProtocol(multiaddr(addrA), LOG_PROTOCOL, { signal: AbortSignal.timeout(10_000) }).then(async s => await new Promise<string>(resolve => {
    // An optimistic stream may open locally before the refusal arrives: it must carry nothing.
    let got = 0
    s.addEventListener('message', () => { got++ })
    s.addEventListener('close', () => { resolve(got === 0 ? 'closed' : 'answered') })
    setTimeout(() => { resolve(got === 0 ? 'silent' : 'answered') }, 5_000)
    try { s.send(new Uint8Array([5, 1, 2, 3, 4, 5])) } catch { resolve('closed') }
  }), () => 'refused')
  t.not(outcome, 'answered', `an unenrolled device gets no answer on any protocol (${outcome})`)
  await waitFor(t, 'the refused connection to close', async () => hostile.getConnections().length === 0, 15_000)
  t.equal(hostile.getConnections().length, 0, 'its connection is closed')
  t.notOk(((await status(a)).sync.peers as string[]).includes(hostile.peerId.toString()), 'and no session')

  const bId = (await status(b)).sync.device as string
  await ok(['remove-device', bId, '--data', a.dataDir])
  await sh(`sleep 2; echo 'after removal' > "${a.mnt}/secret.txt"`)
  await sh('sleep 4')
  const ls = await sh(`ls "${b.mnt}"`)
  t.notMatch(ls.stdout, /secret\.txt/, 'the removed device receives nothing written after its removal')
  t.notOk(((await status(a)).sync.peers as string[]).includes(bId), 'the removed device has no session')
  const devices = JSON.parse(await ok(['devices', '--data', a.dataDir, '--json'])) as Array<{ id: string }>
  t.notOk(devices.some(d => d.id === bId), 'it is off the list')
})

t.test('join refuses a damaged, reused or expired code with a clear error', async t => {
  const a = await makeDrive(t, { config: LOOPBACK })
  const code = (await ok(['invite', '--data', a.dataDir])).trim().split('\n').pop() as string
  const damaged = code.slice(0, -3) + (code.endsWith('A') ? 'BBB' : 'AAA')
  const r1 = await strata(['join', damaged, '--data', join(a.root, 'x1')])
  t.not(r1.code, 0)
  t.match(r1.stderr, /invite code/i, `damaged: ${r1.stderr.trim()}`)
  const b = await makeDrive(t, { create: async dir => { await ok(['join', code, '--data', dir]) }, config: LOOPBACK })
  t.ok(b.dataDir, 'the code works once')
  const r2 = await strata(['join', code, '--data', join(a.root, 'x2')])
  t.not(r2.code, 0)
  t.match(r2.stderr, /used/i, `reused: ${r2.stderr.trim()}`)
  const r3 = await sh(`ls -A "${join(a.root, 'x2')}" 2>/dev/null | wc -l`)
  t.equal(r3.stdout.trim(), '0', 'a failed join leaves nothing behind')
})
