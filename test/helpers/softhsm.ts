/**
 * SoftHSM2 tokens for tests: each test process gets its own token directory (a temp dir with
 * its own softhsm2.conf, set in SOFTHSM2_CONF before the module is first initialised); every
 * makeToken() call initialises a fresh token with its own label in that directory.
 * Close every Pkcs11Token a test opens before the test ends.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pkcs11Token, DEFAULT_MODULE } from '../../hsm/index.js'

export interface TestToken {
  dir: string
  module: string
  label: string
  pin: string
  soPin: string
  conf: string
}

interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

let shared: { dir: string, conf: string, users: number } | undefined
let counter = 0

const leftovers = new Set<string>()

function tokenDir (): { dir: string, conf: string } {
  if (shared === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'strata-hsm-'))
    mkdirSync(join(dir, 'tokens'))
    const conf = join(dir, 'softhsm2.conf')
    writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`)
    process.env.SOFTHSM2_CONF = conf
    shared = { dir, conf, users: 0 }
    // Fallback if the process ends before a teardown ran (one listener for every dir made).
    if (leftovers.size === 0) process.once('exit', () => { for (const d of leftovers) rmSync(d, { recursive: true, force: true }) })
    leftovers.add(dir)
  }
  return shared
}

export async function makeToken (t: Teardownable, options: { label?: string, userPin?: string } = {}): Promise<TestToken> {
  const { dir, conf } = tokenDir()
  const s = shared
  if (s === undefined) throw new Error('unreachable')
  s.users++
  t.teardown(() => {
    if (--s.users === 0 && shared === s) {
      shared = undefined
      rmSync(s.dir, { recursive: true, force: true })
    }
  })
  const label = options.label ?? `strata-test-${process.pid}-${++counter}`
  const pin = options.userPin ?? '1234'
  const soPin = 'so-pin-1234'
  await Pkcs11Token.initToken({ module: DEFAULT_MODULE, label, soPin, userPin: pin })
  return { dir, module: DEFAULT_MODULE, label, pin, soPin, conf }
}

/** Open a token made by makeToken, logged in with its PIN. */
export async function openToken (tok: TestToken, extra: Partial<ConstructorParameters<typeof Pkcs11Token>[0]> = {}): Promise<Pkcs11Token> {
  return await Pkcs11Token.open({ module: tok.module, label: tok.label, pin: tok.pin, ...extra })
}

/** SoftHSM's file object store: attribute CKA_OS_TOKENFLAGS (vendor 0x8000534b), kind ulong. */
const TOKEN_FLAGS_ATTR = Buffer.from('000000008000534b0000000000000002', 'hex')
const CKF_USER_PIN_LOCKED = 0x40000n

/**
 * Set CKF_USER_PIN_LOCKED in the persisted token flags, as a token whose retry counter ran out
 * reports it. SoftHSM 2.6.1 itself never locks the user PIN (measured: 12 wrong C_Login calls
 * only set CKF_USER_PIN_COUNT_LOW, then the right PIN still works). The module must not be
 * loaded (SoftHSM reads the file when it is initialised).
 */
export function lockUserPin (tok: TestToken): void {
  const file = join(tokenStoreDir(tok), 'token.object')
  const bytes = readFileSync(file)
  const at = bytes.indexOf(TOKEN_FLAGS_ATTR)
  if (at < 0) throw new Error('token flags attribute not found in token.object')
  const off = at + TOKEN_FLAGS_ATTR.byteLength
  bytes.writeBigUInt64BE(bytes.readBigUInt64BE(off) | CKF_USER_PIN_LOCKED, off)
  writeFileSync(file, bytes)
}

/** SoftHSM's directory of tok's token (its token.object carries the space-padded label). */
export function tokenStoreDir (tok: { dir: string, label: string }): string {
  const padded = Buffer.from(tok.label.padEnd(32, ' '))
  const tokens = join(tok.dir, 'tokens')
  for (const name of readdirSync(tokens)) {
    let bytes: Buffer
    try { bytes = readFileSync(join(tokens, name, 'token.object')) } catch { continue }
    if (bytes.includes(padded)) return join(tokens, name)
  }
  throw new Error(`token ${tok.label} not found in ${tokens}`)
}

/** Poll (no timing assertions) until cond() holds. */
export async function until (cond: () => boolean | Promise<boolean>, stepMs = 5): Promise<void> {
  while (!(await cond())) await new Promise(resolve => setTimeout(resolve, stepMs))
}
