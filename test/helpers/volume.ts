/**
 * Volumes for tests: a real SoftHSM2 token (test/helpers/softhsm.ts), a real LevelDB and block
 * segment files in a temp dir, wired exactly as the daemon wires them (daemon/strata.ts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeToken, type TestToken } from './softhsm.js'
import { initStrata, openStrata, type Strata, type OpenOptions } from '../../daemon/strata.js'
import type { StrataVolume } from '../../fs/volume/index.js'

interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

export interface TestVolume {
  vol: StrataVolume
  strata: Strata
  dataDir: string
  token: TestToken
  /** Close and open again with the same token; updates .vol and .strata. */
  reopen: (options?: Partial<OpenOptions>) => Promise<StrataVolume>
  close: () => Promise<void>
}

export interface MakeVolumeOptions {
  blockSize?: number
  nekCacheMs?: number
  blockStore?: 'log' | 'level'
  open?: Partial<OpenOptions>
}

export async function makeVolume (t: Teardownable, options: MakeVolumeOptions = {}): Promise<TestVolume> {
  const token = await makeToken(t)
  const root = mkdtempSync(join(tmpdir(), 'strata-vol-'))
  const dataDir = join(root, 'data')
  const pinFile = join(root, 'pin')
  writeFileSync(pinFile, token.pin, { mode: 0o600 })
  let strata = await initStrata({ dataDir, token: { module: token.module, label: token.label, pinFile }, blockSize: options.blockSize, blockStore: options.blockStore })
  let open = true
  if (options.nekCacheMs !== undefined || options.open !== undefined) {
    await strata.close()
    strata = await openStrata({ dataDir, nekCacheMs: options.nekCacheMs, ...options.open })
  }
  const tv: TestVolume = {
    vol: strata.vol,
    strata,
    dataDir,
    token,
    reopen: async (extra = {}) => {
      if (open) await tv.strata.close()
      open = false
      tv.strata = await openStrata({ dataDir, nekCacheMs: options.nekCacheMs, ...options.open, ...extra })
      open = true
      tv.vol = tv.strata.vol
      return tv.vol
    },
    close: async () => {
      if (open) await tv.strata.close()
      open = false
    }
  }
  t.teardown(async () => {
    await tv.close().catch(() => {})
    rmSync(root, { recursive: true, force: true })
  })
  return tv
}

/** For child processes (crash tests): open an existing test volume given its token config. */
export async function openTestVolume (options: { dataDir: string, softhsmConf: string } & Partial<OpenOptions>): Promise<Strata> {
  process.env.SOFTHSM2_CONF = options.softhsmConf
  return await openStrata({ ...options, dataDir: options.dataDir })
}
