/**
 * Typed errors of the change logs, the device list and the log-sync protocol. Match on `name`
 * or `code`, never on messages. Messages never contain payload plaintext or key material.
 */
export class LogError extends Error {
  readonly code: string
  constructor (message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** Bytes that are not a valid encoding (length, limit, schema, version, trailing bytes). */
export class MalformedError extends LogError {
  constructor (what: string, detail: string, options?: ErrorOptions) {
    super(`malformed ${what}: ${detail}`, 'ERR_LOG_MALFORMED', options)
  }
}

/** An argument given by local code is out of range (programmer or caller error). */
export class InvalidArgumentError extends LogError {
  constructor (detail: string) {
    super(`invalid argument: ${detail}`, 'ERR_LOG_INVALID_ARGUMENT')
  }
}

/** A signature does not verify under the signer's public key. */
export class BadSignatureError extends LogError {
  constructor (detail: string) {
    super(`bad signature: ${detail}`, 'ERR_LOG_BAD_SIGNATURE')
  }
}

/** An entry's payload does not decrypt under the namespace log key (AEAD tag mismatch). */
export class PayloadDecryptError extends LogError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`payload does not decrypt: ${detail}`, 'ERR_LOG_PAYLOAD', options)
  }
}

/** The signer of an entry or record is not a current member of the team's device list. */
export class NotMemberError extends LogError {
  constructor (device: string) {
    super(`device ${device} is not a member of the team`, 'ERR_LOG_NOT_MEMBER')
  }
}

/** The device was removed from the team; removal is permanent. */
export class DeviceRemovedError extends LogError {
  constructor (device: string) {
    super(`device ${device} was removed from the team`, 'ERR_LOG_DEVICE_REMOVED')
  }
}

/** Something belongs to another team (team id mismatch). */
export class TeamMismatchError extends LogError {
  constructor (detail: string) {
    super(`team mismatch: ${detail}`, 'ERR_LOG_TEAM_MISMATCH')
  }
}

/** A protocol peer broke the log-sync protocol (unexpected message, limits exceeded). */
export class ProtocolError extends LogError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`log-sync protocol violation: ${detail}`, 'ERR_LOG_PROTOCOL', options)
  }
}

/** The store or device list is closed or was not opened. */
export class NotOpenError extends LogError {
  constructor (what: string) {
    super(`${what} is not open`, 'ERR_LOG_NOT_OPEN')
  }
}

/** Kinds of rejected log entries, as recorded in `LogStore.problems()`. */
export type ProblemKind = 'malformed' | 'not-member' | 'removed' | 'signature' | 'chain' | 'fork' | 'rollback' | 'payload' | 'replay' | 'unexpected'

/** Why `LogStore.accept` refused an entry; `kind` is stable, `detail` is for people. */
export class EntryRejectedError extends LogError {
  readonly kind: ProblemKind
  constructor (kind: ProblemKind, detail: string, options?: ErrorOptions) {
    super(`log entry rejected (${kind}): ${detail}`, `ERR_LOG_${kind.toUpperCase().replace('-', '_')}`, options)
    this.kind = kind
  }
}
