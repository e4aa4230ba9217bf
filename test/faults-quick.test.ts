/**
 * `npm run faults -- --quick` inside `npm test`: the fault runner's short form against live
 * deployments. Each scenario's PASS/FAIL line becomes one assertion; the runner's own summary
 * line must agree.
 */
import t from 'tap'
import { fileURLToPath } from 'node:url'
import { run } from './helpers/mount.js'

const RUNNER = fileURLToPath(new URL('../scripts/faults/run.js', import.meta.url))
// About 4 minutes alone; npm test runs another file beside it on two cores, so the per-file
// timeout in package.json ("tap".timeout) is 20 minutes.

t.test('npm run faults -- --quick', async t => {
  const r = await run(process.execPath, [RUNNER, '--quick'], { timeout: 19 * 60_000 })
  const lines = r.stdout.split('\n')
  const results = lines.filter(l => /^(PASS|FAIL) /.test(l))
  t.ok(results.length > 0, `the runner ran scenarios\n${r.stdout}${r.stderr}`)
  for (const line of results) {
    if (line.startsWith('PASS ')) t.pass(line)
    else t.fail(line, { output: r.stdout })
  }
  const last = lines.filter(l => l !== '').pop() ?? ''
  const m = /^(\d+) passed, (\d+) failed$/.exec(last)
  t.ok(m, `the last line is the summary: "${last}"`)
  t.equal(Number(m?.[1]) + Number(m?.[2]), results.length, 'the summary counts every scenario')
  t.equal(r.code, Number(m?.[2]) === 0 ? 0 : 1, 'exit status 0 exactly when nothing failed')
})
