// net/enrol-protocol.ts: '/strata/enrol/1', a new device joining the team with an invite code.
//
// One stream, one round trip, each message a length-prefixed frame (net/wire.ts):
//   joiner → inviter  JSON {"v":1,"secret":b64,"proof":b64,"spki":b64,"deviceName":str}   ≤ 8 KiB
//   inviter → joiner  JSON {"v":1,"status":"ok","version":N,"wrapped":b64,"kcv":b64,"bundleBytes":n}
//                     then one frame of exactly bundleBytes (≤ 4 MiB): the team bundle
//                  or JSON {"v":1,"status":"expired"|"used"|"unknown"|"refused"|"bad-request","reason"?:str}
// The joiner's peer id is the Noise-authenticated remote peer of the connection, never a claim.
// The joiner dials the inviter's addresses with its peer id, so Noise proves it reached the
// inviting device before the invite secret is sent (see net/invite.ts for why it is sent).
import { defaultLogger } from '@libp2p/logger'
import { multiaddr } from '@multiformats/multiaddr'
import type { AbortOptions, ComponentLogger, Connection, Libp2p, Logger, Stream } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'
import type { WrappedTek } from '../hsm/index.js'
import {
  EnrolRefusedError, InviteExpiredError, InviterUnreachableError, InviteUnknownError, InviteUsedError
} from './enrol-errors.js'
import { InvalidParametersError, ProtocolError, UnexpectedEndError } from './errors.js'
import { decodeInvite, inviteProof, INVITE_SECRET_BYTES } from './invite.js'
import type { InviteBook } from './invite.js'
import { FrameReader, writeFrame } from './wire.js'

export const ENROL_PROTOCOL = '/strata/enrol/1'
/** Largest join request and reply header. */
export const MAX_ENROL_MESSAGE_BYTES = 8 * 1024
/** Largest team bundle (device list, wrapped NEKs, team id). */
export const MAX_TEAM_BUNDLE_BYTES = 4 * 1024 * 1024
/** Time each side gives the other for the whole exchange (the inviter also waits for onEnrolled). */
export const DEFAULT_ENROL_TIMEOUT_MS = 60_000
const MAX_DEVICE_NAME_CHARS = 64
const MAX_SPKI_BYTES = 1024

type Status = 'ok' | 'expired' | 'used' | 'unknown' | 'refused' | 'bad-request'

/** What the inviting side needs of hsm/TokenEnrolment. */
export interface InvitingEnrolment {
  wrapTekFor: (publicKeySpki: Uint8Array, options?: AbortOptions) => Promise<WrappedTek>
}

/** What the joining side needs of hsm/TokenEnrolment. */
export interface JoiningEnrolment {
  createEnrolmentKeyPair: (options?: AbortOptions) => Promise<{ publicKeySpki: Uint8Array }>
  receiveTek: (tek: WrappedTek, options?: AbortOptions) => Promise<unknown>
  discardEnrolmentKeyPair: () => Promise<void>
}

export interface HandleEnrolOptions {
  node: Pick<Libp2p, 'handle' | 'unhandle'>
  invites: Pick<InviteBook, 'redeem'>
  enrolment: InvitingEnrolment
  /** Add the device to the signed device list; return the opaque team bundle (≤ 4 MiB). */
  onEnrolled: (peerId: string, deviceName: string) => Promise<{ bundle: Uint8Array }>
  logger?: ComponentLogger
  timeoutMs?: number
}

export interface EnrolHandler {
  /** Unregister the protocol and abort enrolments in progress. */
  stop: () => Promise<void>
}

/** Serve '/strata/enrol/1' on the node. */
export async function handleEnrol (options: HandleEnrolOptions): Promise<EnrolHandler> {
  const { node, invites, enrolment, onEnrolled } = options ?? {}
  if (node == null || invites == null || enrolment == null || typeof onEnrolled !== 'function') throw new InvalidParametersError('node, invites, enrolment and onEnrolled are required')
  const timeoutMs = options.timeoutMs ?? DEFAULT_ENROL_TIMEOUT_MS
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) throw new InvalidParametersError('timeoutMs must be a positive integer')
  const log = (options.logger ?? defaultLogger()).forComponent('strata:net:enrol')
  const controller = new AbortController()
  const ctx: ServeContext = { invites, enrolment, onEnrolled, log, timeoutMs, stop: controller.signal }
  await node.handle(ENROL_PROTOCOL, (stream, connection) => serve(ctx, stream, connection), { maxInboundStreams: 2, maxOutboundStreams: 1 })
  let stopping: Promise<void> | undefined
  return {
    stop: async () => {
      stopping ??= (async () => {
        controller.abort(new Error('enrolment handler stopped'))
        await node.unhandle(ENROL_PROTOCOL).catch(err => { log.error('unhandle failed - %e', err) })
      })()
      await stopping
    }
  }
}

interface ServeContext {
  invites: Pick<InviteBook, 'redeem'>
  enrolment: InvitingEnrolment
  onEnrolled: HandleEnrolOptions['onEnrolled']
  log: Logger
  timeoutMs: number
  stop: AbortSignal
}

interface JoinRequest { secret: Uint8Array, proof: Uint8Array, spki: Uint8Array, deviceName: string }

async function serve (ctx: ServeContext, stream: Stream, connection: Connection): Promise<void> {
  const reader = new FrameReader(stream, { maxMessageBytes: MAX_ENROL_MESSAGE_BYTES })
  const peer = connection.remotePeer.toString()
  const signal = AbortSignal.any([ctx.stop, AbortSignal.timeout(ctx.timeoutMs)])
  try {
    const frame = await reader.read({ signal })
    if (frame == null) throw new UnexpectedEndError('stream ended before the join request')
    let request: JoinRequest
    try {
      request = parseRequest(frame)
    } catch (err) {
      ctx.log('bad join request from %s - %e', peer, err)
      await reply(stream, { status: 'bad-request' }, signal)
      await stream.close({ signal })
      return
    }
    const answer = await admit(ctx, peer, request, signal)
    await reply(stream, answer.header, signal)
    if (answer.bundle !== undefined) await writeFrame(stream, [answer.bundle], { signal })
    await stream.close({ signal })
  } catch (err) {
    if (!ctx.stop.aborted) ctx.log.error('aborting enrol stream from %s - %e', peer, err)
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  } finally {
    reader.detach()
  }
}

/** Redeem the invite, wrap the TEK, add the device: the reply to send. */
async function admit (ctx: ServeContext, peer: string, req: JoinRequest, signal: AbortSignal): Promise<{ header: Record<string, unknown>, bundle?: Uint8Array }> {
  try {
    await ctx.invites.redeem({ secret: req.secret, proof: req.proof, joinerPeerId: peer, spki: req.spki })
  } catch (err) {
    const name = (err as Error).name
    const status: Status = name === 'InviteExpiredError' ? 'expired' : name === 'InviteUsedError' ? 'used' : 'unknown'
    if (name !== 'InviteExpiredError' && name !== 'InviteUsedError' && name !== 'InviteUnknownError' && name !== 'InviteProofError') ctx.log.error('redeem failed - %e', err)
    ctx.log('refused join of %s: %s', peer, status)
    return { header: { status } }
  }
  let tek: WrappedTek
  try {
    tek = await ctx.enrolment.wrapTekFor(req.spki, { signal })
  } catch (err) {
    ctx.log.error('cannot wrap the team key for %s - %e', peer, err)
    const name = (err as Error).name
    const reason = name === 'TeamDisabledError'
      ? 'team access is disabled on the inviting device'
      : name === 'TeamDestroyedError' ? 'the team was destroyed' : name === 'EnrolmentStateError' ? 'a key rotation is in progress, try again' : 'the team key could not be wrapped'
    return { header: { status: 'refused', reason } }
  }
  let bundle: Uint8Array
  try {
    bundle = (await ctx.onEnrolled(peer, req.deviceName)).bundle
    if (!(bundle instanceof Uint8Array) || bundle.byteLength > MAX_TEAM_BUNDLE_BYTES) throw new InvalidParametersError(`team bundle must be bytes, at most ${MAX_TEAM_BUNDLE_BYTES}`)
  } catch (err) {
    ctx.log.error('cannot add device %s - %e', peer, err)
    return { header: { status: 'refused', reason: 'the device could not be added to the team' } }
  }
  ctx.log('enrolled device %s', peer)
  return {
    header: { status: 'ok', version: tek.version, wrapped: b64(tek.wrapped), kcv: b64(tek.kcv), bundleBytes: bundle.byteLength },
    bundle
  }
}

function parseRequest (frame: Uint8ArrayList): JoinRequest {
  const m = parseJson(frame)
  const secret = bytesField(m.secret, 'secret', INVITE_SECRET_BYTES, INVITE_SECRET_BYTES)
  const proof = bytesField(m.proof, 'proof', 32, 32)
  const spki = bytesField(m.spki, 'spki', 1, MAX_SPKI_BYTES)
  const deviceName = m.deviceName
  if (typeof deviceName !== 'string' || !validDeviceName(deviceName)) throw new ProtocolError('bad deviceName', 'ERR_ENROL_PROTOCOL')
  return { secret, proof, spki, deviceName }
}

export interface JoinTeamOptions extends AbortOptions {
  node: Pick<Libp2p, 'dial' | 'peerId'>
  code: string
  enrolment: JoiningEnrolment
  /** Shown in the team's device list: 1-64 characters, no control characters. */
  deviceName: string
  timeoutMs?: number
  /** Clock for the local expiry check (tests). */
  now?: () => number
}

export interface JoinResult {
  bundle: Uint8Array
  inviterPeerId: string
  teamId: string
  /** Version of the TEK now in this device's token. */
  tekVersion: number
}

/**
 * Join the team named by an invite code: dial the inviter (Noise proves its peer id), present the
 * code bound to this device's peer id and a fresh enrolment key, receive the TEK into the token
 * and the team bundle. Throws InvalidInviteCodeError, InviteDamagedError, InviteExpiredError,
 * InviteUsedError, InviteUnknownError, InviterUnreachableError, EnrolRefusedError, ProtocolError,
 * and hsm's KeyCustodyError / EnrolmentStateError from receiving the TEK.
 */
export async function joinTeam (options: JoinTeamOptions): Promise<JoinResult> {
  const { node, enrolment, deviceName } = options ?? {}
  if (node == null || enrolment == null) throw new InvalidParametersError('node and enrolment are required')
  if (typeof deviceName !== 'string' || !validDeviceName(deviceName)) throw new InvalidParametersError(`deviceName must be 1-${MAX_DEVICE_NAME_CHARS} characters without control characters`)
  const invite = decodeInvite(options.code)
  if ((options.now ?? Date.now)() >= invite.expiresAt) throw new InviteExpiredError()
  const timeoutMs = options.timeoutMs ?? DEFAULT_ENROL_TIMEOUT_MS
  const signal = options.signal != null ? AbortSignal.any([options.signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs)
  const self = node.peerId.toString()
  if (self === invite.inviterPeerId) throw new InvalidParametersError('this invite code was made by this device')

  const connection = await dialInviter(node, invite.inviterPeerId, invite.addresses, signal)
  let stream: Stream
  try {
    stream = await connection.newStream(ENROL_PROTOCOL, { signal })
  } catch (err) {
    throw new InviterUnreachableError('the device accepts no enrolment now: this code was used already or its invite was withdrawn (ask for a new code: strata invite)', { cause: err })
  }
  const reader = new FrameReader(stream, { maxMessageBytes: MAX_TEAM_BUNDLE_BYTES })
  let keyPending = false
  try {
    const { publicKeySpki } = await enrolment.createEnrolmentKeyPair({ signal })
    keyPending = true
    const proof = inviteProof(invite.secret, self, publicKeySpki)
    const request = { v: 1, secret: b64(invite.secret), proof: b64(proof), spki: b64(publicKeySpki), deviceName }
    await writeFrame(stream, [new TextEncoder().encode(JSON.stringify(request))], { signal })
    const headerFrame = await reader.read({ signal })
    if (headerFrame == null) throw new UnexpectedEndError('the inviting device closed the stream without answering')
    if (headerFrame.byteLength > MAX_ENROL_MESSAGE_BYTES) throw new ProtocolError('reply header too large', 'ERR_ENROL_PROTOCOL')
    const header = parseJson(headerFrame)
    refuseUnlessOk(header)
    const version = header.version
    if (!Number.isSafeInteger(version) || (version as number) < 1) throw new ProtocolError('bad TEK version in reply', 'ERR_ENROL_PROTOCOL')
    const wrapped = bytesField(header.wrapped, 'wrapped', 1, 512)
    const kcv = bytesField(header.kcv, 'kcv', 1, 64)
    const bundleBytes = header.bundleBytes
    if (!Number.isSafeInteger(bundleBytes) || (bundleBytes as number) < 0 || (bundleBytes as number) > MAX_TEAM_BUNDLE_BYTES) throw new ProtocolError('bad bundle size in reply', 'ERR_ENROL_PROTOCOL')
    const bundleFrame = await reader.read({ signal })
    if (bundleFrame == null) throw new UnexpectedEndError('the inviting device closed the stream before the team bundle')
    if (bundleFrame.byteLength !== bundleBytes) throw new ProtocolError('team bundle size differs from the announced one', 'ERR_ENROL_PROTOCOL')
    const bundle = bundleFrame.subarray()
    keyPending = false
    await enrolment.receiveTek({ wrapped, version: version as number, kcv }, { signal })
    await stream.close({ signal }).catch(() => {})
    return { bundle: new Uint8Array(bundle), inviterPeerId: invite.inviterPeerId, teamId: invite.teamId, tekVersion: version as number }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  } finally {
    reader.detach()
    if (keyPending) await enrolment.discardEnrolmentKeyPair().catch(() => {})
  }
}

async function dialInviter (node: Pick<Libp2p, 'dial'>, peerId: string, addresses: string[], signal: AbortSignal): Promise<Connection> {
  let connection: Connection
  try {
    connection = await node.dial(addresses.map(a => multiaddr(`${a}/p2p/${peerId}`)), { signal })
  } catch (err) {
    if (signal.aborted && (err as Error).name === 'AbortError') throw new InviterUnreachableError('timed out', { cause: err })
    throw new InviterUnreachableError(`no address answered as ${peerId}`, { cause: err })
  }
  if (connection.remotePeer.toString() !== peerId) {
    await connection.close().catch(() => {})
    throw new InviterUnreachableError(`the device at that address is not ${peerId}`)
  }
  return connection
}

function refuseUnlessOk (header: Record<string, unknown>): void {
  switch (header.status) {
    case 'ok': return
    case 'expired': throw new InviteExpiredError()
    case 'used': throw new InviteUsedError()
    case 'unknown': throw new InviteUnknownError()
    case 'refused': throw new EnrolRefusedError(typeof header.reason === 'string' ? header.reason.slice(0, 200) : 'no reason given')
    case 'bad-request': throw new ProtocolError('the inviting device did not understand the join request', 'ERR_ENROL_PROTOCOL')
    default: throw new ProtocolError('unknown reply status', 'ERR_ENROL_PROTOCOL')
  }
}

async function reply (stream: Stream, header: Record<string, unknown>, signal: AbortSignal): Promise<void> {
  await writeFrame(stream, [new TextEncoder().encode(JSON.stringify({ v: 1, ...header }))], { signal })
}

function parseJson (frame: Uint8ArrayList): Record<string, unknown> {
  let m: unknown
  try {
    m = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(frame.subarray()))
  } catch (err) {
    throw new ProtocolError('message is not JSON', 'ERR_ENROL_PROTOCOL', { cause: err })
  }
  if (m === null || typeof m !== 'object' || Array.isArray(m) || (m as { v?: unknown }).v !== 1) throw new ProtocolError('message is not a version 1 enrol message', 'ERR_ENROL_PROTOCOL')
  return m as Record<string, unknown>
}

function bytesField (value: unknown, what: string, min: number, max: number): Uint8Array {
  if (typeof value !== 'string' || value.length > Math.ceil(max / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) throw new ProtocolError(`bad ${what}`, 'ERR_ENROL_PROTOCOL')
  const bytes = Buffer.from(value, 'base64')
  if (bytes.byteLength < min || bytes.byteLength > max) throw new ProtocolError(`bad ${what} length`, 'ERR_ENROL_PROTOCOL')
  return new Uint8Array(bytes)
}

function validDeviceName (name: string): boolean {
  // eslint-disable-next-line no-control-regex
  return name.length >= 1 && name.length <= MAX_DEVICE_NAME_CHARS && !/[\u0000-\u001f\u007f-\u009f]/.test(name)
}

function b64 (b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64')
}
