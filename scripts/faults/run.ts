/**
 * `npm run faults [-- --quick] [--only NAME] [--seed N] [--iterations N] [--list] [--verbose]`
 *
 * Runs every fault scenario (scripts/faults/scenarios/) against live deployments in fresh temp
 * dirs, one at a time, and prints `PASS name` or `FAIL name: reason` per scenario, then exactly
 * `N passed, N failed`. The default form repeats each randomised scenario (at least 50
 * iterations); `--quick` runs each once with small workloads (the form `npm test` runs).
 * `--seed N` replays a randomised run. Exit status 0 only when nothing failed.
 */
import '../../net/shim.js'
import { randomInt } from 'node:crypto'
import { runScenario, type Scenario } from './harness.js'
import { scenarios } from './scenarios/index.js'

const FULL_ITERATIONS = 50

interface Options { quick: boolean, only: string[], seed: number, iterations: number | undefined, list: boolean, verbose: boolean }

function usage (message: string): never {
  process.stderr.write(`faults: ${message}\nusage: npm run faults -- [--quick] [--only NAME]... [--seed N] [--iterations N] [--list] [--verbose]\n`)
  process.exit(2)
}

function parse (argv: string[]): Options {
  const o: Options = { quick: false, only: [], seed: randomInt(1, 2 ** 31), iterations: undefined, list: false, verbose: false }
  const value = (i: number, flag: string): string => {
    const v = argv[i + 1]
    if (v === undefined || v.startsWith('--')) usage(`${flag} needs a value`)
    return v
  }
  const count = (v: string, flag: string): number => {
    if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 2 ** 31) usage(`${flag} must be a whole number from 1 to 2^31, not "${v}"`)
    return Number(v)
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string
    if (a === '--quick') o.quick = true
    else if (a === '--list') o.list = true
    else if (a === '--verbose' || a === '-v') o.verbose = true
    else if (a === '--only') { o.only.push(value(i, a)); i++ } else if (a === '--seed') { o.seed = count(value(i, a), a); i++ } else if (a === '--iterations') { o.iterations = count(value(i, a), a); i++ } else usage(`unknown argument "${a}"`)
  }
  const names = new Set(scenarios.map(s => s.name))
  for (const n of o.only) if (!names.has(n)) usage(`no scenario named "${n}" (--list shows them)`)
  return o
}

function chosen (o: Options): Scenario[] {
  if (o.only.length > 0) return scenarios.filter(s => o.only.includes(s.name))
  return o.quick ? scenarios.filter(s => s.slow !== true) : scenarios
}

async function main (): Promise<void> {
  const o = parse(process.argv.slice(2))
  if (o.list) {
    for (const s of scenarios) process.stdout.write(`${s.name}${s.randomised === true ? ' (randomised)' : ''}${s.slow === true ? ' (full run only)' : ''}: ${s.injects}\n`)
    return
  }
  if (process.getuid?.() !== 0) usage('fault scenarios mount filesystems and make network namespaces: run as root')
  const list = chosen(o)
  process.stdout.write(`faults: ${list.length} scenarios, ${o.quick ? 'quick' : 'full'} run, seed ${o.seed} (replay: npm run faults -- ${o.quick ? '--quick ' : ''}--seed ${o.seed})\n`)
  let passed = 0; let failed = 0
  const runStarted = Date.now()
  for (const s of list) {
    const iterations = s.randomised === true ? (o.iterations ?? (o.quick ? 1 : FULL_ITERATIONS)) : 1
    const started = Date.now()
    const r = await runScenario(s, { quick: o.quick, seed: o.seed, verbose: o.verbose, iterations })
    const failure = r.ok ? undefined : r.reason ?? 'failed'
    if (!r.ok && !o.verbose) for (const line of r.log) process.stdout.write(line + '\n')
    const secs = ((Date.now() - started) / 1000).toFixed(1)
    if (failure === undefined) {
      passed++
      process.stdout.write(`PASS ${s.name}\n`)
      process.stdout.write(`  (${iterations > 1 ? `${iterations} iterations, ` : ''}${secs} s)\n`)
    } else {
      failed++
      process.stdout.write(`FAIL ${s.name}: ${failure.replace(/\s*\n\s*/g, ' ')}\n`)
    }
  }
  const total = Math.round((Date.now() - runStarted) / 1000)
  process.stdout.write(`faults: ${list.length} scenarios in ${Math.floor(total / 60)} min ${total % 60} s\n`)
  process.stdout.write(`${passed} passed, ${failed} failed\n`)
  process.exitCode = failed === 0 ? 0 : 1
}

main().catch(err => {
  process.stderr.write(`faults: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
