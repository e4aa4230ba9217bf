// net/enrol-errors.ts: typed errors of device identity, invite codes and enrolment. Match on
// `name` or `code`, never on messages. Messages never contain secrets or invite codes.
import { NetError } from './errors.js'

/** The device key file is not a Strata device key file (another format or a future version). */
export class DeviceKeyForeignError extends NetError {
  readonly path: string
  constructor (path: string, detail: string, options?: ErrorOptions) {
    super(`${path} is not a Strata device key file: ${detail}`, 'ERR_DEVICE_KEY_FOREIGN', options)
    this.path = path
  }
}

/** The device key file is damaged, or was sealed by another token (another device's data dir). */
export class DeviceKeyCorruptError extends NetError {
  readonly path: string
  constructor (path: string, detail: string, options?: ErrorOptions) {
    super(`device key file ${path} cannot be used: ${detail}`, 'ERR_DEVICE_KEY_CORRUPT', options)
    this.path = path
  }
}

/** The text is not an invite code at all, or a well-formed code carries invalid contents. `problem` names what. */
export class InvalidInviteCodeError extends NetError {
  readonly problem: string
  constructor (problem: string, options?: ErrorOptions) {
    super(`not a valid invite code: ${problem}`, 'ERR_INVITE_CODE_INVALID', options)
    this.problem = problem
  }
}

/** The invite code's checksum does not match: it was mistyped or cut short. */
export class InviteDamagedError extends NetError {
  constructor (options?: ErrorOptions) {
    super('invite code is damaged (checksum mismatch): copy it again, completely', 'ERR_INVITE_DAMAGED', options)
  }
}

/** The invite expired. */
export class InviteExpiredError extends NetError {
  constructor (options?: ErrorOptions) {
    super('invite code has expired: ask for a new one', 'ERR_INVITE_EXPIRED', options)
  }
}

/** The invite was already used (each code enrols one device). */
export class InviteUsedError extends NetError {
  constructor (options?: ErrorOptions) {
    super('invite code was already used: ask for a new one', 'ERR_INVITE_USED', options)
  }
}

/** The inviting device knows no such invite (wrong device, or it was never issued there). */
export class InviteUnknownError extends NetError {
  constructor (options?: ErrorOptions) {
    super('the inviting device does not know this invite code', 'ERR_INVITE_UNKNOWN', options)
  }
}

/** The proof of the invite secret does not bind this device's peer id and key. */
export class InviteProofError extends NetError {
  constructor (options?: ErrorOptions) {
    super('the invite proof does not match this device', 'ERR_INVITE_PROOF', options)
  }
}

/** None of the inviter's addresses answered as the inviting device. */
export class InviterUnreachableError extends NetError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`cannot reach the inviting device: ${detail}`, 'ERR_INVITER_UNREACHABLE', options)
  }
}

/** The inviting device refused the enrolment (its team is disabled, or adding the device failed). */
export class EnrolRefusedError extends NetError {
  readonly reason: string
  constructor (reason: string, options?: ErrorOptions) {
    super(`the inviting device refused the enrolment: ${reason}`, 'ERR_ENROL_REFUSED', options)
    this.reason = reason
  }
}
