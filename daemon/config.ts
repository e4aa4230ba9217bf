/**
 * The data directory's configuration file (strata.json): its shape, validation and atomic
 * rewrite. Kept apart from the wiring (strata.ts) so that commands which only talk to a running
 * daemon load nothing heavier than this.
 */
import { readFile, writeFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { VolumeFormatError } from '../fs/errors.js'

export interface StrataConfigFile {
  format: 1
  token: {
    module: string
    label: string
    /** Relative to the data dir, or absolute. Absent: the PIN comes from STRATA_PIN. */
    pinFile?: string
    /** SoftHSM2 configuration Strata made for its own token (relative to the data dir). */
    softhsmConf?: string
  }
  blockStore: 'log' | 'level'
  /** Key hierarchy tunables; absent: defaults (hsm/constants.ts). */
  keys?: {
    /** How long an unwrapped NEK stays in memory (ms): the longest a removed token goes unnoticed. */
    nekCacheMs?: number
  }
  /** LAN sync (daemon/sync.ts); absent: on, with defaults. */
  sync?: {
    enabled?: boolean
    listen?: string[]
    /** Addresses other devices are told to reach this one at, instead of the listen addresses. */
    announce?: string[]
    peers?: string[]
    mdns?: boolean
    deviceName?: string
  }
}

export const CONFIG_FILE = 'strata.json'

/** Rewrite the configuration (atomically), e.g. after `strata peer add`. */
export async function writeConfig (dataDir: string, cfg: StrataConfigFile): Promise<void> {
  const tmp = join(dataDir, `${CONFIG_FILE}.tmp`)
  await writeFile(tmp, JSON.stringify(cfg, null, 2) + '\n', { mode: 0o600 })
  await rename(tmp, join(dataDir, CONFIG_FILE))
}

export async function readConfig (dataDir: string): Promise<StrataConfigFile> {
  const file = join(dataDir, CONFIG_FILE)
  let raw: string
  try {
    raw = await readFile(file, 'utf8')
  } catch {
    throw new VolumeFormatError(`${dataDir} is not a Strata data directory (no ${CONFIG_FILE}; run "strata init --data ${dataDir}")`)
  }
  let cfg: StrataConfigFile
  try {
    cfg = JSON.parse(raw) as StrataConfigFile
  } catch (err) {
    throw new VolumeFormatError(`${file} is not valid JSON`, { cause: err })
  }
  if (cfg.format !== 1 || typeof cfg.token?.label !== 'string' || typeof cfg.token?.module !== 'string') {
    throw new VolumeFormatError(`${file} is not a Strata configuration of a supported format`)
  }
  const nekCacheMs = cfg.keys?.nekCacheMs
  if (nekCacheMs !== undefined && (typeof nekCacheMs !== 'number' || !Number.isFinite(nekCacheMs) || nekCacheMs < 0)) {
    throw new VolumeFormatError(`${file}: "keys.nekCacheMs" must be a number of milliseconds >= 0`)
  }
  if (cfg.blockStore !== 'log' && cfg.blockStore !== 'level') throw new VolumeFormatError(`${file}: blockStore must be "log" or "level"`)
  const sync = cfg.sync as Record<string, unknown> | undefined
  if (sync !== undefined) {
    const strings = (v: unknown): boolean => v === undefined || (Array.isArray(v) && v.every(x => typeof x === 'string'))
    if (typeof sync !== 'object' || sync === null || !strings(sync.listen) || !strings(sync.announce) || !strings(sync.peers) ||
      (sync.enabled !== undefined && typeof sync.enabled !== 'boolean') || (sync.mdns !== undefined && typeof sync.mdns !== 'boolean') ||
      (sync.deviceName !== undefined && typeof sync.deviceName !== 'string')) {
      throw new VolumeFormatError(`${file}: "sync" must be { enabled?: boolean, listen?: [multiaddr], announce?: [multiaddr], peers?: [multiaddr], mdns?: boolean, deviceName?: string }`)
    }
  }
  return cfg
}
