/**
 * The `strata` command line. Errors are printed as one line naming the problem, with a named
 * exit code (daemon/exit-codes.ts); PINs never come from argv.
 */
import { parseArgs } from 'node:util'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { EXIT } from './exit-codes.js'
import { initStrata, openStrata, type Strata } from './strata.js'
import { fsck, rotateNek, ROOT_INO } from '../fs/volume/index.js'

const USAGE = `usage: strata <command> [options]

commands:
  init   [--data DIR] [--block-size BYTES]   create a volume (and a SoftHSM2 token for it)
         [--module SO --token-label L [--pin-file F]]   ... or use an existing PKCS#11 token
  demo   [--data DIR]                        write, read back and verify files through the volume
  status [--data DIR] [--json]               volume, key and block-store figures
  fsck   [--data DIR] [--repair] [--quick]   verify every block, record and key; report by path
  rotate tek|nek [--data DIR]                rotate the team key or every namespace key
  team   disable|enable|destroy [--data DIR] switch team access off or on, or crypto-shred it

options:
  --data DIR   data directory (default: $XDG_DATA_HOME/strata or ~/.local/share/strata)
environment:
  STRATA_PIN   token PIN when the data directory names no PIN file`

class UsageError extends Error {}

export function defaultDataDir (env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_DATA_HOME !== undefined && env.XDG_DATA_HOME !== '' ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share')
  return join(base, 'strata')
}

function exitCodeOf (err: Error & { code?: string }): number {
  switch (err.code) {
    case 'ERR_VOLUME_FORMAT': return EXIT.DATA_DIR
    case 'ERR_HSM_WRONG_PIN': case 'ERR_HSM_PIN_LOCKED': case 'ERR_HSM_PIN_MISSING': return EXIT.PIN
    case 'ERR_HSM_MODULE_NOT_FOUND': case 'ERR_HSM_TOKEN_NOT_FOUND': case 'ERR_HSM_TOKEN': return EXIT.TOKEN
    case 'ERR_TEAM_DISABLED': case 'ERR_TEAM_DESTROYED': return EXIT.TEAM
    case 'ERR_BLOCK_CORRUPT': case 'ERR_BLOCK_MISSING': case 'ERR_RECORD_CORRUPT': case 'ERR_KEY_CUSTODY': return EXIT.INTEGRITY
    default: return EXIT.FAILURE
  }
}

const mib = (n: number): string => (n / 1048576).toFixed(1)

async function demo (s: Strata): Promise<void> {
  const vol = s.vol
  const dirName = `demo-${new Date().toISOString().replace(/[:.]/g, '-')}`
  const dir = await vol.mkdir(ROOT_INO, dirName)
  const files: Array<{ name: string, data: Buffer }> = [
    { name: 'hello.txt', data: Buffer.from('Hello from Strata: this text is encrypted at rest.\n') },
    { name: 'random-5MiB.bin', data: randomBytes(5 * 1024 * 1024 + 123) },
    { name: 'sparse.bin', data: Buffer.alloc(0) }
  ]
  for (const f of files) {
    const { fh } = await vol.create(dir.ino, f.name)
    if (f.name === 'sparse.bin') await vol.write(fh, 3 * 1024 * 1024 * 1024, Buffer.from('end of a 3 GiB sparse file'))
    else await vol.write(fh, 0, f.data)
    await vol.fsync(fh)
    await vol.release(fh)
  }
  let ok = true
  for (const f of files) {
    const attr = await vol.lookup(dir.ino, f.name)
    const fh = await vol.open(attr.ino)
    const data = f.name === 'sparse.bin' ? await vol.read(fh, 3 * 1024 * 1024 * 1024, 64) : await vol.read(fh, 0, attr.size)
    await vol.release(fh)
    const want = f.name === 'sparse.bin' ? Buffer.from('end of a 3 GiB sparse file') : f.data
    const same = data.equals(want)
    ok &&= same
    console.log(`  ${same ? 'ok  ' : 'FAIL'} /${dirName}/${f.name}  ${attr.size} bytes  sha256 ${createHash('sha256').update(data).digest('hex').slice(0, 16)}…`)
  }
  const report = await fsck(vol)
  console.log(`  fsck: ${report.ok ? 'clean' : `${report.problems.length} problem(s)`} (${report.inodes} inodes, ${report.blocks} blocks verified)`)
  if (!ok || !report.ok) throw Object.assign(new Error('demo verification failed'), { code: 'ERR_DEMO' })
}

async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(USAGE)
    return command === undefined ? EXIT.USAGE : EXIT.OK
  }
  let parsed
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: {
        data: { type: 'string' },
        json: { type: 'boolean' },
        repair: { type: 'boolean' },
        quick: { type: 'boolean' },
        'block-size': { type: 'string' },
        module: { type: 'string' },
        'token-label': { type: 'string' },
        'pin-file': { type: 'string' }
      }
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const { values, positionals } = parsed
  const dataDir = resolve(values.data ?? defaultDataDir())
  const pinEnv = process.env.STRATA_PIN
  const expectPositionals = (n: number, what: string): void => {
    if (positionals.length !== n) throw new UsageError(`strata ${command} expects ${what}`)
  }

  switch (command) {
    case 'init': {
      expectPositionals(0, 'no arguments besides options')
      let blockSize: number | undefined
      if (values['block-size'] !== undefined) {
        blockSize = Number(values['block-size'])
        if (!Number.isInteger(blockSize)) throw new UsageError(`--block-size must be a whole number of bytes, not "${values['block-size']}"`)
      }
      let token: { module?: string, label: string, pinFile?: string } | undefined
      if (values['token-label'] !== undefined) {
        token = { module: values.module, label: values['token-label'], pinFile: values['pin-file'] === undefined ? undefined : resolve(values['pin-file']) }
      } else if (values.module !== undefined || values['pin-file'] !== undefined) {
        throw new UsageError('--module and --pin-file go with --token-label (the label of an initialised token)')
      }
      const s = await initStrata({ dataDir, blockSize, pinEnv, token })
      console.log(`created a Strata volume in ${dataDir} (token "${s.config.token.label}", block size ${s.vol.blockSize} bytes)`)
      await s.close()
      return EXIT.OK
    }
    case 'demo': {
      expectPositionals(0, 'no arguments besides options')
      const s = await openStrata({ dataDir, pinEnv })
      try {
        console.log(`demo on the volume in ${dataDir}:`)
        await demo(s)
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'status': {
      expectPositionals(0, 'no arguments besides options')
      const s = await openStrata({ dataDir, pinEnv })
      try {
        const st = await s.blocks.stats()
        const status = {
          dataDir,
          token: s.config.token.label,
          team: await s.keys.teamState(),
          blockSize: s.vol.blockSize,
          namespaces: await s.keys.namespaces(),
          blocks: st.blocks,
          storedBytes: st.bytes,
          diskBytes: st.diskBytes,
          nekCache: s.keys.cacheStats()
        }
        if (values.json === true) console.log(JSON.stringify(status, null, 2))
        else {
          console.log(`volume   ${dataDir}\ntoken    ${status.token} (team ${status.team})\nblocks   ${status.blocks} (${mib(status.storedBytes)} MiB stored, ${mib(status.diskBytes)} MiB on disk)\nspaces   ${status.namespaces.length} namespace(s)`)
        }
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'fsck': {
      expectPositionals(0, 'no arguments besides options')
      const s = await openStrata({ dataDir, pinEnv })
      try {
        const report = await fsck(s.vol, { repair: values.repair === true, verifyData: values.quick !== true })
        for (const p of report.problems) console.log(`${p.kind}\t${p.path}\t${p.detail}`)
        console.log(`fsck: ${report.ok ? 'clean' : 'PROBLEMS FOUND'}: ${report.inodes} inodes, ${report.blocks} blocks, ${report.problems.length} problem(s)${values.repair === true ? `, ${report.repaired} repaired` : ''}`)
        return report.ok ? EXIT.OK : EXIT.FSCK_PROBLEMS
      } finally {
        await s.close()
      }
    }
    case 'rotate': {
      expectPositionals(1, '"tek" or "nek"')
      const which = positionals[0]
      if (which !== 'tek' && which !== 'nek') throw new UsageError(`strata rotate expects "tek" or "nek", not "${String(which)}"`)
      const s = await openStrata({ dataDir, pinEnv })
      try {
        const bar = (label: string) => (p: { done: number, total: number }): void => {
          const w = 30
          const f = p.total === 0 ? w : Math.round(w * p.done / p.total)
          process.stderr.write(`\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${p.done}/${p.total}`)
        }
        if (which === 'tek') {
          const v = await s.keys.rotateTek({ onProgress: bar('re-wrapping NEKs') })
          process.stderr.write('\n')
          console.log(`team key rotated to version ${v}`)
        } else {
          for (const ns of await s.keys.namespaces()) {
            await rotateNek(s.vol, ns, { onProgress: bar(`namespace ${ns}`) })
            process.stderr.write('\n')
          }
          console.log('every namespace key rotated')
        }
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    case 'team': {
      expectPositionals(1, '"disable", "enable" or "destroy"')
      const action = positionals[0]
      if (action !== 'disable' && action !== 'enable' && action !== 'destroy') throw new UsageError(`strata team expects "disable", "enable" or "destroy", not "${String(action)}"`)
      const s = await openStrata({ dataDir, pinEnv })
      try {
        if (action === 'disable') await s.keys.disableTeam()
        else if (action === 'enable') await s.keys.enableTeam()
        else await s.keys.destroyTeam()
        console.log(`team access: ${await s.keys.teamState()}`)
      } finally {
        await s.close()
      }
      return EXIT.OK
    }
    default:
      throw new UsageError(`unknown command "${command}"`)
  }
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, (err: Error & { code?: string }) => {
  if (err instanceof UsageError) {
    console.error(`strata: ${err.message}\n\n${USAGE}`)
    process.exitCode = EXIT.USAGE
    return
  }
  console.error(`strata: ${err.message}`)
  if (process.env.STRATA_DEBUG === '1' && err.stack !== undefined) console.error(err.stack)
  process.exitCode = exitCodeOf(err)
})
