/**
 * Crash consistency (design §3, §6): a writer process is SIGKILLed at a random moment, several
 * times; the volume then opens, fsck is clean, and every write an fsync acknowledged is there.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO } from '../fs/volume/types.js'
import { damage, fsck, KiB, prng, readRange, readWhole } from './volume-util.js'

// compiled (dist/test/fixtures/crash-writer.js), or the TypeScript source under tap's own loader
const CHILD_JS = fileURLToPath(new URL('./fixtures/crash-writer.js', import.meta.url))
const CHILD_ARGS = existsSync(CHILD_JS)
  ? [CHILD_JS]
  : [...process.execArgv, fileURLToPath(new URL('./fixtures/crash-writer.ts', import.meta.url))]
const FILES = 3
const CHUNK = 10007 // not block aligned: chunks straddle 64 KiB block edges
const ROUNDS = 4

interface RoundResult { acked: number, stderr: string, code: number | null, signal: NodeJS.Signals | null }

/**
 * Run one writer from sequence `start`; kill it with SIGKILL after `killAfter` acks plus a
 * random number of event-loop turns (so the kill lands anywhere in the write/fsync cycle).
 */
async function runWriter (env: NodeJS.ProcessEnv, start: number, killAfter: number): Promise<RoundResult> {
  const child = spawn(process.execPath, CHILD_ARGS, {
    env: { ...env, STRATA_CRASH_START_SEQ: String(start) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let acked = start - 1
  let acks = 0
  let stderr = ''
  let buf = ''
  let killing = false
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (s: string) => { stderr += s })
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (s: string) => {
    buf += s
    let nl: number
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      const m = /^ACK (\d+)$/.exec(line)
      if (m === null) continue
      acked = Number(m[1])
      acks++
      if (acks >= killAfter && !killing) {
        killing = true
        const turns = Math.floor(Math.random() * 40)
        const kill = (n: number): void => {
          if (n === 0) { child.kill('SIGKILL'); return }
          setImmediate(() => { kill(n - 1) })
        }
        kill(turns)
      }
    }
  })
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(resolve => {
    child.on('exit', (c, s) => { resolve([c, s]) })
  })
  return { acked, stderr, code, signal }
}

t.test('SIGKILL during fsynced writes: fsck clean, every acknowledged chunk present', async t => {
  const tv = await makeVolume(t, { blockSize: 64 * KiB })
  for (let f = 0; f < FILES; f++) {
    const { fh } = await tv.vol.create(ROOT_INO, `c${f}`, { write: true })
    await tv.vol.release(fh)
  }
  await tv.vol.mkdir(ROOT_INO, 'marks')
  await tv.close()

  // the child opens the same data dir (its strata.json names the token and PIN file)
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    STRATA_CRASH_DATA_DIR: tv.dataDir,
    SOFTHSM2_CONF: tv.token.conf,
    STRATA_CRASH_FILES: String(FILES),
    STRATA_CRASH_CHUNK: String(CHUNK)
  }
  let next = 0
  let maxAcked = -1
  for (let round = 0; round < ROUNDS; round++) {
    const killAfter = 3 + Math.floor(Math.random() * 10)
    const r = await runWriter(env, next, killAfter)
    t.equal(r.signal, 'SIGKILL', `round ${round}: the writer was killed (exit code ${String(r.code)}, stderr: ${r.stderr.slice(0, 500)})`)
    t.ok(r.acked >= next + killAfter - 1, `round ${round}: ${r.acked - next + 1} chunks acknowledged (kill after ${killAfter})`)
    if (r.acked < next) break
    maxAcked = r.acked
    next = r.acked + 1
  }
  t.ok(maxAcked >= ROUNDS * 3 - 1, `acknowledged through sequence ${maxAcked}`)

  await tv.reopen()
  const report = await fsck(tv.vol)
  t.same(damage(report), [], 'fsck finds no damage after the kills')
  t.equal(report.ok, true, 'fsck is ok')
  t.comment(`fsck after the kills: ${report.problems.length} orphan blocks (garbage of unacknowledged or superseded writes)`)
  let missing = 0
  for (let f = 0; f < FILES; f++) {
    const attr = await tv.vol.resolve(`/c${f}`)
    t.ok(attr.size >= (maxAcked + 1) * CHUNK, `c${f}: size ${attr.size} covers every acknowledged chunk`)
    for (let seq = 0; seq <= maxAcked; seq++) {
      const got = await readRange(tv.vol, attr.ino, seq * CHUNK, CHUNK)
      if (!got.equals(prng(`crash-${f}-${seq}`, CHUNK))) {
        missing++
        t.fail(`c${f}: acknowledged chunk ${seq} is not byte-exact (${got.length} bytes read)`)
      }
    }
  }
  t.equal(missing, 0, 'every acknowledged chunk is byte-exact')
  const marks = await tv.vol.resolve('/marks')
  for (let seq = 0; seq <= maxAcked; seq++) {
    const m = await tv.vol.lookup(marks.ino, `m${seq}`).catch(() => undefined)
    if (m === undefined) { t.fail(`acknowledged marker file m${seq} is missing`); continue }
    if ((await readWhole(tv.vol, m.ino)).toString() !== `mark ${seq}`) t.fail(`marker m${seq} has wrong content`)
  }
  // the volume stays writable after recovery
  const fh = await tv.vol.open((await tv.vol.resolve('/c0')).ino, { write: true })
  await tv.vol.write(fh, 0, Buffer.from('after'))
  await tv.vol.release(fh)
  t.same(damage(await fsck(tv.vol)), [])
  // garbage the crashes left is collectable: gc, then fsck with repair, leaves nothing at all
  await tv.vol.gc()
  await fsck(tv.vol, { repair: true })
  const clean = await fsck(tv.vol)
  t.same(clean.problems, [], 'after gc and a repairing fsck not even an orphan block is left')
  t.equal(clean.ok, true)
})
