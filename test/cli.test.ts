/** The strata CLI: clear one-line errors with named exit codes for bad input. */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync, readFileSync, statSync, mkdirSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EXIT } from '../daemon/exit-codes.js'

const bin = new URL('../../bin/strata.js', import.meta.url).pathname
const run = (args: string[], env: NodeJS.ProcessEnv = {}): { code: number | null, out: string, err: string } => {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 })
  return { code: r.status, out: r.stdout, err: r.stderr }
}

const root = mkdtempSync(join(tmpdir(), 'strata-cli-'))
t.teardown(() => { rmSync(root, { recursive: true, force: true }) })
const data = join(root, 'data')

t.test('usage errors exit 2 and name the problem', async t => {
  let r = run(['frobnicate'])
  t.equal(r.code, EXIT.USAGE)
  t.match(r.err, /unknown command "frobnicate"/)
  r = run(['fsck', '--bogus'])
  t.equal(r.code, EXIT.USAGE)
  t.match(r.err, /bogus/)
  r = run(['rotate', 'sideways', '--data', data])
  t.equal(r.code, EXIT.USAGE)
  t.match(r.err, /"tek" or "nek"/)
  r = run(['init', '--data', data, '--block-size', 'huge'])
  t.equal(r.code, EXIT.USAGE)
})

t.test('a missing or foreign data dir exits 3', async t => {
  let r = run(['fsck', '--data', join(root, 'nope')])
  t.equal(r.code, EXIT.DATA_DIR)
  t.match(r.err, /not a Strata data directory/)
  const foreign = join(root, 'foreign')
  run(['init', '--data', join(root, 'x')]) // a real one, then break its config
  writeFileSync(join(root, 'x', 'strata.json'), '{"format": 9}')
  r = run(['status', '--data', join(root, 'x')])
  t.equal(r.code, EXIT.DATA_DIR)
  t.match(r.err, /not a Strata configuration of a supported format/)
  // init refuses a directory that already holds other files, and leaves them alone.
  mkdirSync(foreign)
  writeFileSync(join(foreign, 'theirs.txt'), 'not ours')
  r = run(['init', '--data', foreign])
  t.equal(r.code, EXIT.DATA_DIR)
  t.match(r.err, /is not empty/)
  t.equal(readFileSync(join(foreign, 'theirs.txt'), 'utf8'), 'not ours', 'nothing of theirs touched')
  // and a bad block size is refused without leaving anything behind
  r = run(['init', '--data', join(root, 'bs'), '--block-size', '12345'])
  t.not(r.code, EXIT.OK)
  t.match(r.err, /block size 12345/)
  t.notOk(existsSync(join(root, 'bs')), 'a failed init leaves no directory behind')
})

t.test('init, demo, fsck; a wrong PIN exits 4 and names the PIN', async t => {
  let r = run(['init', '--data', data])
  t.equal(r.code, EXIT.OK, r.err)
  t.equal(statSync(join(data, 'pin')).mode & 0o777, 0o600, 'PIN file readable by the owner only')
  r = run(['init', '--data', data])
  t.equal(r.code, EXIT.DATA_DIR, 'init refuses an existing volume')
  r = run(['demo', '--data', data])
  t.equal(r.code, EXIT.OK, r.err)
  t.match(r.out, /fsck: clean/)
  const pin = readFileSync(join(data, 'pin'))
  writeFileSync(join(data, 'pin'), 'not-the-pin\n')
  r = run(['status', '--data', data])
  t.equal(r.code, EXIT.PIN)
  t.match(r.err, /rejected the PIN/)
  t.notMatch(r.err, /not-the-pin/, 'the PIN is never printed')
  writeFileSync(join(data, 'pin'), pin)
  r = run(['fsck', '--data', data])
  t.equal(r.code, EXIT.OK, r.err)
  t.match(r.out, /fsck: clean/)
})

t.test('a daemon file left by a killed daemon whose pid now belongs to another process is ignored', async t => {
  // This test process stands for the unrelated process that was given the dead daemon's pid.
  writeFileSync(join(data, 'daemon.json'), JSON.stringify({ pid: process.pid, socket: join(root, 'gone.sock'), mountpoint: join(root, 'mnt'), started: new Date(0).toISOString(), ticks: 1 }))
  t.teardown(() => { rmSync(join(data, 'daemon.json'), { force: true }) })
  const r = run(['status', '--data', data])
  t.equal(r.code, EXIT.OK, r.err)
  t.match(r.out, /^volume /, 'status of the unmounted volume, not an error about the socket')
})
