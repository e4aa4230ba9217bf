/**
 * Wiring: opens the token, the key hierarchy, the database, the block store and the volume, in
 * dependency order, and closes them in reverse. Also makes a new data directory (`strata init`).
 *
 * Data directory layout:
 *   strata.json      configuration (token module/label, PIN file, block store kind)
 *   pin              the token user PIN (mode 0600) when Strata made the token
 *   softhsm2.conf    and token/: the SoftHSM2 token Strata made, if no token was configured
 *   db/              LevelDB: sublevels meta (encrypted metadata), keys (wrapped NEKs), blk (block index)
 *   blocks/          append-only block segment files (see fs/store/log-block-store.ts)
 */
import { randomBytes } from 'node:crypto'
import { mkdir, writeFile, access, readdir, chmod, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { Pkcs11Token, KeyHierarchy, readPin, DEFAULT_MODULE, type CustodyFaultHook, type TokenFaults, type TokenLog } from '../hsm/index.js'
import { StrataVolume, resumeRotations, type VolumeInit } from '../fs/volume/index.js'
import { LogBlockStore, LevelBlockStore, LevelKeyRecordStore, type BlockStore, type Db } from '../fs/store/index.js'
import { VolumeFormatError } from '../fs/errors.js'
import type { NamespaceRecord } from '../fs/volume/records.js'
import { CONFIG_FILE, readConfig, type StrataConfigFile } from './config.js'

export { CONFIG_FILE, readConfig, writeConfig, type StrataConfigFile } from './config.js'

export interface OpenOptions {
  dataDir: string
  /** PIN from the environment (the daemon reads STRATA_PIN once, in its config). */
  pinEnv?: string
  nekCacheMs?: number
  volume?: Omit<VolumeInit, 'dataDir'>
  /** Create only: key records to store before the key hierarchy opens (a replica's TEK and NEK records). */
  seedKeys?: Array<[string, string]>
  /** Test-only hooks. */
  custodyFaultHook?: CustodyFaultHook
  tokenFaults?: TokenFaults
  /** Where the token reports retries, losses and recoveries. */
  tokenLog?: TokenLog
}

export interface Strata {
  dataDir: string
  config: StrataConfigFile
  token: Pkcs11Token
  keys: KeyHierarchy
  db: Db
  blocks: BlockStore
  vol: StrataVolume
  close: () => Promise<void>
}

async function exists (p: string): Promise<boolean> {
  try { await access(p); return true } catch { return false }
}


const resolveIn = (dataDir: string, p: string): string => p.startsWith('/') ? p : join(dataDir, p)

function useSoftHsmConf (dataDir: string, cfg: StrataConfigFile): void {
  // SoftHSM reads SOFTHSM2_CONF when the module is first initialised in this process.
  if (cfg.token.softhsmConf !== undefined) process.env.SOFTHSM2_CONF = resolveIn(dataDir, cfg.token.softhsmConf)
}

export interface InitOptions {
  dataDir: string
  /** An existing token to use instead of making a SoftHSM2 token in the data dir. */
  token?: { module?: string, label: string, pinFile?: string }
  blockSize?: number
  blockStore?: 'log' | 'level'
  pinEnv?: string
  /**
   * Make this device a replica of a team's volume (enrolment): `join` gets the new token, open
   * and logged in, receives the TEK into it and returns the team's bundle.
   */
  replica?: { join: (token: Pkcs11Token) => Promise<TeamBundle> }
}

/**
 * What a device joining the team needs besides the TEK: the volume's identity and the wrapped
 * key records (NEKs wrapped by the TEK, TEK check values, the wrapped metadata key). Nothing in
 * it is plaintext key material.
 */
export interface TeamBundle {
  rootNamespace: string
  blockSize: number
  blockStore: 'log' | 'level'
  namespaceRecord: NamespaceRecord
  /** [key, base64 value] of the key store's NEK records (wrapped by the TEK; the new token records its own TEK check value). */
  keyRecords: Array<[string, string]>
}

const BUNDLE_KEY_RE = /^nek\/[\x21-\x7e]{1,200}$/

/** The bundle a new device of this team needs (see TeamBundle). */
export async function teamBundle (strata: Strata): Promise<TeamBundle> {
  const keys = strata.db.sublevel<string, Uint8Array>('keys', { keyEncoding: 'utf8', valueEncoding: 'view' })
  const keyRecords: Array<[string, string]> = []
  for await (const [k, v] of keys.iterator()) if (BUNDLE_KEY_RE.test(k)) keyRecords.push([k, Buffer.from(v).toString('base64')])
  const vol = strata.vol
  return { rootNamespace: vol.rootNamespace, blockSize: vol.blockSize, blockStore: strata.config.blockStore, namespaceRecord: await vol.meta.namespaceRecord(vol.rootNamespace), keyRecords }
}

/** Check a bundle received from the network before anything of it is stored. */
export function checkTeamBundle (b: unknown): TeamBundle {
  const o = b as Partial<TeamBundle> | null
  const bad = (what: string): never => { throw new VolumeFormatError(`the team bundle is malformed: ${what}`) }
  if (o === null || typeof o !== 'object') return bad('not an object')
  if (typeof o.rootNamespace !== 'string' || !/^[0-9a-f]{16}$/.test(o.rootNamespace)) bad('root namespace')
  if (typeof o.blockSize !== 'number' || !Number.isInteger(o.blockSize)) bad('block size')
  if (o.blockStore !== 'log' && o.blockStore !== 'level') bad('block store')
  const n = o.namespaceRecord
  if (n === undefined || typeof n.v !== 'number' || typeof n.w !== 'string' || typeof n.c !== 'string') bad('namespace record')
  if (!Array.isArray(o.keyRecords) || o.keyRecords.length > 10_000) bad('key records')
  for (const r of o.keyRecords as unknown[]) {
    if (!Array.isArray(r) || r.length !== 2 || typeof r[0] !== 'string' || !BUNDLE_KEY_RE.test(r[0]) || typeof r[1] !== 'string' || r[1].length > 4096) bad('a key record')
  }
  return o as TeamBundle
}

/** Make a new data directory: a SoftHSM2 token (unless one is given), the TEK, the root namespace. */
export async function initStrata (options: InitOptions): Promise<Strata> {
  const dataDir = options.dataDir
  const existed = await exists(dataDir)
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  if (await exists(join(dataDir, CONFIG_FILE))) throw new VolumeFormatError(`${dataDir} already holds a Strata volume`)
  const leftovers = (await readdir(dataDir)).filter(n => !n.startsWith('.'))
  if (leftovers.length > 0) throw new VolumeFormatError(`${dataDir} is not empty; choose an empty or new directory`)
  try {
    return await makeStrata(options)
  } catch (err) {
    // Leave nothing half-made behind: the directory was empty (or absent) before.
    for (const name of await readdir(dataDir).catch(() => [] as string[])) await rm(join(dataDir, name), { recursive: true, force: true })
    if (!existed) await rm(dataDir, { recursive: true, force: true })
    throw err
  }
}

async function makeStrata (options: InitOptions): Promise<Strata> {
  const dataDir = options.dataDir
  let token: StrataConfigFile['token']
  if (options.token !== undefined) {
    token = { module: options.token.module ?? DEFAULT_MODULE, label: options.token.label, pinFile: options.token.pinFile }
  } else {
    const tokenDir = join(dataDir, 'token')
    await mkdir(tokenDir, { mode: 0o700 })
    await writeFile(join(dataDir, 'softhsm2.conf'), `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\n`, { mode: 0o600 })
    const pin = randomBytes(24).toString('base64url')
    await writeFile(join(dataDir, 'pin'), pin + '\n', { mode: 0o600 })
    await chmod(join(dataDir, 'pin'), 0o600)
    token = { module: DEFAULT_MODULE, label: `strata-${randomBytes(4).toString('hex')}`, pinFile: 'pin', softhsmConf: 'softhsm2.conf' }
    process.env.SOFTHSM2_CONF = join(dataDir, 'softhsm2.conf')
    await Pkcs11Token.initToken({ module: token.module, label: token.label, soPin: randomBytes(24).toString('base64url'), userPin: pin })
  }
  let bundle: TeamBundle | undefined
  if (options.replica !== undefined) {
    const pin = await readPin({ pinFile: token.pinFile === undefined ? undefined : resolveIn(dataDir, token.pinFile), env: options.pinEnv })
    const tok = await Pkcs11Token.open({ module: token.module, label: token.label, pin })
    pin.fill(0)
    try {
      bundle = checkTeamBundle(await options.replica.join(tok))
    } finally {
      await tok.close()
    }
  }
  const cfg: StrataConfigFile = { format: 1, token, blockStore: bundle?.blockStore ?? options.blockStore ?? 'log' }
  await writeFile(join(dataDir, CONFIG_FILE), JSON.stringify(cfg, null, 2) + '\n', { mode: 0o600 })
  const replicaOf = bundle === undefined ? undefined : { rootNamespace: bundle.rootNamespace, blockSize: bundle.blockSize, namespaceRecord: bundle.namespaceRecord }
  return await openStrata({ dataDir, pinEnv: options.pinEnv, volume: { blockSize: options.blockSize, replicaOf }, seedKeys: bundle?.keyRecords }, true)
}

/** Open everything for a data directory made by initStrata. */
export async function openStrata (options: OpenOptions, create = false): Promise<Strata> {
  const dataDir = options.dataDir
  const cfg = await readConfig(dataDir)
  useSoftHsmConf(dataDir, cfg)
  const pin = await readPin({ pinFile: cfg.token.pinFile === undefined ? undefined : resolveIn(dataDir, cfg.token.pinFile), env: options.pinEnv })
  const cleanup: Array<() => Promise<void>> = []
  /** Close everything in reverse order; report the first failure (e.g. data that could not be sealed). */
  const closeAll = async (): Promise<void> => {
    let first: unknown
    for (const fn of cleanup.reverse()) {
      try { await fn() } catch (err) { first ??= err }
    }
    cleanup.length = 0
    if (first !== undefined) throw first
  }
  try {
    const token = await Pkcs11Token.open({ module: cfg.token.module, label: cfg.token.label, pin, faults: options.tokenFaults, log: options.tokenLog })
    pin.fill(0)
    cleanup.push(async () => { await token.close() })
    const db: Db = new ClassicLevel<string, Uint8Array>(join(dataDir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
    await db.open()
    cleanup.push(async () => { await db.close() })
    let blocksRef: BlockStore | undefined
    const keySub = db.sublevel<string, Uint8Array>('keys', { keyEncoding: 'utf8', valueEncoding: 'view' })
    if (create && options.seedKeys !== undefined) await keySub.batch(options.seedKeys.map(([k, v]) => ({ type: 'put' as const, key: k, value: Buffer.from(v, 'base64') })))
    const store = new LevelKeyRecordStore(keySub, async () => { await blocksRef?.sync() })
    const keys = await KeyHierarchy.open({ token, store }, { nekCacheMs: options.nekCacheMs ?? cfg.keys?.nekCacheMs, custodyFaultHook: options.custodyFaultHook })
    cleanup.push(async () => { await keys.close() })
    let blocks: BlockStore
    if (cfg.blockStore === 'level') {
      blocks = new LevelBlockStore({ data: db.sublevel<string, Uint8Array>('blkdata', { keyEncoding: 'utf8', valueEncoding: 'view' }) })
    } else {
      const log = new LogBlockStore({ index: db.sublevel<string, Uint8Array>('blk', { keyEncoding: 'utf8', valueEncoding: 'view' }) }, { dir: join(dataDir, 'blocks') })
      await log.open()
      blocks = log
    }
    blocksRef = blocks
    cleanup.push(async () => { await blocks.close() })
    const components = { db, keys, blocks }
    const init: VolumeInit = { ...options.volume, dataDir, custodyFaultHook: options.custodyFaultHook }
    const vol = create ? await StrataVolume.create(components, init) : await StrataVolume.open(components, init)
    cleanup.push(async () => { await vol.close() })
    await resumeRotations(vol)
    return { dataDir, config: cfg, token, keys, db, blocks, vol, close: closeAll }
  } catch (err) {
    pin.fill(0)
    await closeAll().catch(() => {})
    throw err
  }
}
