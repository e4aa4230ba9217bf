// net/invite.ts: one-time invite codes (text form, encode/decode) and the inviting side's book of
// issued invites (InviteBook: create, redeem single-use).
//
// Code: "strata1-" + base64url(body || SHA-256(body)[0..4]), body =
//   u8 version (1) | u8 len, team id | u8 len, inviter peer id | u8 count (1..8), per address:
//   u16 len, multiaddr string | 32 bytes secret | u64 expiry (ms since the epoch)
// all integers big-endian, strings UTF-8.
//
// The book persists per invite only SHA-256(secret) (as the record key), the expiry and a used
// flag, so a copy of the disk cannot redeem an open invite. The joiner therefore presents the
// secret itself (over the Noise channel it opened to the inviter's authenticated peer id, so only
// the inviter sees it) together with proof = HMAC-SHA256(secret, "strata/enrol/v1\0" ||
// u8 len || joiner peer id || joiner SPKI), which binds the device and its enrolment key.
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import {
  InvalidInviteCodeError, InviteDamagedError, InviteExpiredError, InviteProofError, InviteUnknownError, InviteUsedError
} from './enrol-errors.js'
import { InvalidParametersError } from './errors.js'
import { Mutex } from '../hsm/mutex.js'

export const INVITE_PREFIX = 'strata1-'
export const INVITE_VERSION = 1
export const INVITE_SECRET_BYTES = 32
export const INVITE_MAX_ADDRESSES = 8
export const INVITE_MAX_ADDRESS_CHARS = 256
export const INVITE_MAX_TEAM_ID_BYTES = 64
/** Default and largest lifetime of an invite. */
export const DEFAULT_INVITE_TTL_MS = 15 * 60_000
export const MAX_INVITE_TTL_MS = 7 * 24 * 3600_000

const CHECKSUM_BYTES = 4
const MAX_CODE_CHARS = 4096
const PROOF_LABEL = new TextEncoder().encode('strata/enrol/v1\0')

export interface Invite {
  version: number
  teamId: string
  inviterPeerId: string
  /** Multiaddr strings without /p2p/ (the dialer adds the inviter's peer id). */
  addresses: string[]
  /** 32 random bytes. */
  secret: Uint8Array
  /** Milliseconds since the epoch. */
  expiresAt: number
}

/** The text form of an invite. Validates every field; throws InvalidInviteCodeError. */
export function encodeInvite (invite: Invite): string {
  check(invite)
  const parts: Uint8Array[] = [Uint8Array.of(INVITE_VERSION)]
  const str = (s: string, lenBytes: 1 | 2): void => {
    const b = Buffer.from(s, 'utf8')
    const len = Buffer.alloc(lenBytes)
    len.writeUIntBE(b.byteLength, 0, lenBytes)
    parts.push(len, b)
  }
  str(invite.teamId, 1)
  str(invite.inviterPeerId, 1)
  parts.push(Uint8Array.of(invite.addresses.length))
  for (const a of invite.addresses) str(a, 2)
  parts.push(invite.secret)
  const exp = Buffer.alloc(8)
  exp.writeBigUInt64BE(BigInt(invite.expiresAt))
  parts.push(exp)
  const body = Buffer.concat(parts)
  return INVITE_PREFIX + Buffer.concat([body, checksum(body)]).toString('base64url')
}

/** Parse an invite code (surrounding whitespace ignored). Throws InvalidInviteCodeError or InviteDamagedError. */
export function decodeInvite (code: string): Invite {
  if (typeof code !== 'string') throw new InvalidInviteCodeError('not text')
  const text = code.trim()
  if (text.length > MAX_CODE_CHARS) throw new InvalidInviteCodeError(`longer than ${MAX_CODE_CHARS} characters`)
  if (!text.startsWith(INVITE_PREFIX)) {
    throw new InvalidInviteCodeError(/^strata\d+-/.test(text) ? 'made by an incompatible Strata version' : `does not start with "${INVITE_PREFIX}"`)
  }
  const b64 = text.slice(INVITE_PREFIX.length)
  if (!/^[A-Za-z0-9_-]+$/.test(b64)) throw new InvalidInviteCodeError('contains characters that cannot be in a code (spaces or punctuation)')
  const raw = Buffer.from(b64, 'base64url')
  if (raw.byteLength <= CHECKSUM_BYTES) throw new InviteDamagedError()
  const body = raw.subarray(0, raw.byteLength - CHECKSUM_BYTES)
  if (!timingSafeEqual(checksum(body), raw.subarray(raw.byteLength - CHECKSUM_BYTES))) throw new InviteDamagedError()
  return parseBody(body)
}

function parseBody (body: Buffer): Invite {
  let at = 0
  const need = (n: number, what: string): void => {
    if (at + n > body.byteLength) throw new InvalidInviteCodeError(`ends inside the ${what}`)
  }
  const u8 = (what: string): number => { need(1, what); return body.readUInt8(at++) }
  const str = (lenBytes: 1 | 2, what: string): string => {
    need(lenBytes, what)
    const len = body.readUIntBE(at, lenBytes)
    at += lenBytes
    need(len, what)
    const s = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(body.subarray(at, at + len))
    at += len
    return s
  }
  const version = u8('version')
  if (version !== INVITE_VERSION) throw new InvalidInviteCodeError(`unsupported version ${version}`)
  let invite: Invite
  try {
    const teamId = str(1, 'team id')
    const inviterPeerId = str(1, 'inviter peer id')
    const count = u8('address count')
    if (count > INVITE_MAX_ADDRESSES) throw new InvalidInviteCodeError(`${count} addresses (at most ${INVITE_MAX_ADDRESSES})`)
    const addresses: string[] = []
    for (let i = 0; i < count; i++) addresses.push(str(2, 'address'))
    need(INVITE_SECRET_BYTES + 8, 'secret and expiry')
    const secret = new Uint8Array(body.subarray(at, at + INVITE_SECRET_BYTES))
    at += INVITE_SECRET_BYTES
    const expiry = body.readBigUInt64BE(at)
    at += 8
    if (at !== body.byteLength) throw new InvalidInviteCodeError('trailing bytes')
    if (expiry > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidInviteCodeError('expiry out of range')
    invite = { version, teamId, inviterPeerId, addresses, secret, expiresAt: Number(expiry) }
  } catch (err) {
    if (err instanceof InvalidInviteCodeError) throw err
    throw new InvalidInviteCodeError('text fields are not UTF-8', { cause: err })
  }
  check(invite)
  return invite
}

/** Field checks shared by encode and decode. */
function check (invite: Invite): void {
  if (invite == null || typeof invite !== 'object') throw new InvalidInviteCodeError('no invite')
  const { teamId, inviterPeerId, addresses, secret, expiresAt } = invite
  if (typeof teamId !== 'string' || !/^[A-Za-z0-9._:-]{1,64}$/.test(teamId)) throw new InvalidInviteCodeError('team id must be 1-64 characters of A-Z a-z 0-9 . _ : -')
  if (typeof inviterPeerId !== 'string' || inviterPeerId.length === 0 || inviterPeerId.length > 128) throw new InvalidInviteCodeError('inviter peer id missing or too long')
  try {
    peerIdFromString(inviterPeerId)
  } catch (err) {
    throw new InvalidInviteCodeError('inviter peer id is not a peer id', { cause: err })
  }
  if (!Array.isArray(addresses) || addresses.length === 0 || addresses.length > INVITE_MAX_ADDRESSES) throw new InvalidInviteCodeError(`1-${INVITE_MAX_ADDRESSES} inviter addresses are required`)
  for (const a of addresses) {
    if (typeof a !== 'string' || a.length === 0 || a.length > INVITE_MAX_ADDRESS_CHARS) throw new InvalidInviteCodeError(`an address must be 1-${INVITE_MAX_ADDRESS_CHARS} characters`)
    let ok = false
    try {
      ok = multiaddr(a).getComponents().every(c => c.name !== 'p2p')
    } catch (err) {
      throw new InvalidInviteCodeError('an address is not a multiaddr', { cause: err })
    }
    if (!ok) throw new InvalidInviteCodeError('an address names a peer id (/p2p/)')
  }
  if (!(secret instanceof Uint8Array) || secret.byteLength !== INVITE_SECRET_BYTES) throw new InvalidInviteCodeError(`the secret must be ${INVITE_SECRET_BYTES} bytes`)
  if (!Number.isSafeInteger(expiresAt) || expiresAt <= 0) throw new InvalidInviteCodeError('expiry out of range')
}

function checksum (body: Uint8Array): Buffer {
  return createHash('sha256').update(body).digest().subarray(0, CHECKSUM_BYTES)
}

/** proof = HMAC-SHA256(secret, "strata/enrol/v1\0" || u8 len || joiner peer id || joiner SPKI). */
export function inviteProof (secret: Uint8Array, joinerPeerId: string, spki: Uint8Array): Uint8Array {
  const id = Buffer.from(joinerPeerId, 'utf8')
  if (id.byteLength === 0 || id.byteLength > 255) throw new InvalidParametersError('joiner peer id must be 1-255 bytes')
  const mac = createHmac('sha256', secret).update(PROOF_LABEL).update(Uint8Array.of(id.byteLength)).update(id).update(spki).digest()
  return new Uint8Array(mac)
}

/** Persistence of the invite records. The daemon backs it with a LevelDB sublevel. */
export interface InviteStore {
  get (key: string): Promise<Uint8Array | undefined>
  put (key: string, value: Uint8Array): Promise<void>
  del (key: string): Promise<void>
}

export interface InviteBookComponents {
  store: InviteStore
}

export interface InviteBookInit {
  teamId: string
  /** This device's peer id. */
  peerId: string
  /** This device's current listen addresses (multiaddr strings; /p2p/ suffixes are dropped). */
  addresses: () => string[]
  /** Clock (ms since the epoch); tests inject one. */
  now?: () => number
}

export interface RedeemOptions {
  /** The invite secret the joiner presented. */
  secret: Uint8Array
  proof: Uint8Array
  /** The Noise-authenticated peer id of the joiner's connection. */
  joinerPeerId: string
  /** The joiner's enrolment public key (DER SPKI). */
  spki: Uint8Array
}

interface InviteRecord { v: 1, expiresAt: number, used: boolean }

/**
 * The inviting device's invites. create() issues a code; redeem() accepts each code once, before
 * it expires, for a joiner that proves the secret. Redeems are serialised, so two concurrent
 * redeems of one code cannot both succeed.
 */
export class InviteBook {
  private readonly store: InviteStore
  private readonly teamId: string
  private readonly peerId: string
  private readonly addresses: () => string[]
  private readonly now: () => number
  private readonly mutex = new Mutex()

  constructor (components: InviteBookComponents, init: InviteBookInit) {
    if (components?.store == null) throw new InvalidParametersError('store is required')
    if (typeof init?.addresses !== 'function') throw new InvalidParametersError('addresses is required')
    this.store = components.store
    this.teamId = init.teamId
    this.peerId = init.peerId
    this.addresses = init.addresses
    this.now = init.now ?? Date.now
  }

  /** Issue a code valid for ttlMs (default 15 minutes). Throws InvalidInviteCodeError if there is no usable address. */
  async create (options: { ttlMs?: number } = {}): Promise<string> {
    const ttlMs = options.ttlMs ?? DEFAULT_INVITE_TTL_MS
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_INVITE_TTL_MS) throw new InvalidParametersError(`ttlMs must be 1..${MAX_INVITE_TTL_MS}`)
    return await this._create(ttlMs)
  }

  /** Accept an invite once. Throws InviteUnknownError, InviteProofError, InviteExpiredError, InviteUsedError. */
  async redeem (options: RedeemOptions): Promise<void> {
    const { secret, proof, joinerPeerId, spki } = options ?? {}
    if (!(secret instanceof Uint8Array) || secret.byteLength !== INVITE_SECRET_BYTES) throw new InviteUnknownError()
    if (!(proof instanceof Uint8Array) || !(spki instanceof Uint8Array) || typeof joinerPeerId !== 'string') throw new InviteProofError()
    await this.exclusive(async () => { await this._redeem(secret, proof, joinerPeerId, spki) })
  }

  private async _create (ttlMs: number): Promise<string> {
    const addresses = usableAddresses(this.addresses())
    const secret = new Uint8Array(randomBytes(INVITE_SECRET_BYTES))
    const expiresAt = this.now() + ttlMs
    const code = encodeInvite({ version: INVITE_VERSION, teamId: this.teamId, inviterPeerId: this.peerId, addresses, secret, expiresAt })
    await this.store.put(recordKey(secret), encodeRecord({ v: 1, expiresAt, used: false }))
    secret.fill(0)
    return code
  }

  private async _redeem (secret: Uint8Array, proof: Uint8Array, joinerPeerId: string, spki: Uint8Array): Promise<void> {
    const key = recordKey(secret)
    const bytes = await this.store.get(key)
    if (bytes === undefined) throw new InviteUnknownError()
    const record = decodeRecord(bytes)
    if (record === undefined) throw new InviteUnknownError()
    let expected: Uint8Array
    try {
      expected = inviteProof(secret, joinerPeerId, spki)
    } catch {
      throw new InviteProofError()
    }
    if (proof.byteLength !== expected.byteLength || !timingSafeEqual(proof, expected)) throw new InviteProofError()
    if (record.used) throw new InviteUsedError()
    if (this.now() >= record.expiresAt) {
      await this.store.del(key)
      throw new InviteExpiredError()
    }
    await this.store.put(key, encodeRecord({ ...record, used: true }))
  }

  private async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.mutex.run(fn)
  }
}

/** Up to 8 addresses, /p2p/ removed, valid and short enough; non-loopback first. */
function usableAddresses (addresses: string[]): string[] {
  const out: string[] = []
  for (const a of addresses) {
    let text: string
    try {
      const ma = multiaddr(a)
      text = multiaddr(ma.getComponents().filter(c => c.name !== 'p2p')).toString()
    } catch {
      continue
    }
    if (text.length > 0 && text.length <= INVITE_MAX_ADDRESS_CHARS && !out.includes(text)) out.push(text)
  }
  const loopback = (s: string): boolean => s.startsWith('/ip4/127.') || s.startsWith('/ip6/::1/')
  out.sort((x, y) => Number(loopback(x)) - Number(loopback(y)))
  if (out.length === 0) throw new InvalidInviteCodeError('this device has no address to put in the code (is the daemon listening?)')
  return out.slice(0, INVITE_MAX_ADDRESSES)
}

function recordKey (secret: Uint8Array): string {
  return createHash('sha256').update(secret).digest('hex')
}

function encodeRecord (r: InviteRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(r))
}

function decodeRecord (bytes: Uint8Array): InviteRecord | undefined {
  try {
    const r = JSON.parse(new TextDecoder().decode(bytes)) as Partial<InviteRecord>
    if (r?.v !== 1 || typeof r.used !== 'boolean' || !Number.isSafeInteger(r.expiresAt)) return undefined
    return r as InviteRecord
  } catch {
    return undefined
  }
}
