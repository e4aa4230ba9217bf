/**
 * Typed errors of the token and key hierarchy. Match on `name` or `code`, never on messages.
 * Messages never contain key material, PINs or plaintext.
 */
export class HsmError extends Error {
  readonly code: string
  constructor (message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** The PKCS#11 module file could not be loaded (missing file, not a PKCS#11 library). */
export class ModuleNotFoundError extends HsmError {
  constructor (path: string, options?: ErrorOptions) {
    super(`PKCS#11 module not found or not loadable: ${path} (on Debian: apt-get install softhsm2)`, 'ERR_HSM_MODULE_NOT_FOUND', options)
  }
}

/** No initialised token carries the requested label. */
export class TokenNotFoundError extends HsmError {
  constructor (label: string, options?: ErrorOptions) {
    super(`no PKCS#11 token with label "${label}"`, 'ERR_HSM_TOKEN_NOT_FOUND', options)
  }
}

/** The token rejected the user PIN (CKR_PIN_INCORRECT / CKR_PIN_LEN_RANGE). */
export class WrongPinError extends HsmError {
  constructor (options?: ErrorOptions) {
    super('the token rejected the PIN', 'ERR_HSM_WRONG_PIN', options)
  }
}

/** The user PIN is locked after too many wrong attempts (CKR_PIN_LOCKED). */
export class PinLockedError extends HsmError {
  constructor (options?: ErrorOptions) {
    super('the token PIN is locked', 'ERR_HSM_PIN_LOCKED', options)
  }
}

/** No PIN was configured (neither a PIN file nor the environment variable). */
export class PinMissingError extends HsmError {
  constructor (where: string, options?: ErrorOptions) {
    super(`no token PIN available: ${where}`, 'ERR_HSM_PIN_MISSING', options)
  }
}

/** The team's access is switched off: the token refuses to use the TEK. */
export class TeamDisabledError extends HsmError {
  constructor (options?: ErrorOptions) {
    super('team access is disabled: the token refuses to use the team key', 'ERR_TEAM_DISABLED', options)
  }
}

/** The TEK was destroyed (crypto-shredded): nothing it protected can be read again. */
export class TeamDestroyedError extends HsmError {
  /**
   * `missingFrom`: the volume was never told of a destruction, the key is just not in this token
   * (destroyed by other means, or the token's object files are damaged or missing).
   */
  constructor (options?: ErrorOptions & { missingFrom?: string }) {
    super(options?.missingFrom === undefined
      ? 'the team key was destroyed: this data can never be read again'
      : `the team key is not in PKCS#11 token "${options.missingFrom}": it was destroyed, or the token's object files are damaged or missing (restore them from a backup to read this data)`, 'ERR_TEAM_DESTROYED', options)
  }
}

/** A key failed its check value or authentication: it is corrupt and was not used or stored. */
export class KeyCustodyError extends HsmError {
  readonly keyRef: string
  constructor (keyRef: string, detail: string, options?: ErrorOptions) {
    super(`key custody check failed for ${keyRef}: ${detail}`, 'ERR_KEY_CUSTODY', options)
    this.keyRef = keyRef
  }
}

/** A namespace (or a version of its key) is unknown. */
export class NamespaceKeyNotFoundError extends HsmError {
  constructor (keyRef: string, options?: ErrorOptions) {
    super(`no key for ${keyRef}`, 'ERR_NEK_NOT_FOUND', options)
  }
}

/** Any other PKCS#11 failure; `ckr` is the CKR_* name reported by the module. */
export class TokenError extends HsmError {
  readonly ckr: string
  constructor (operation: string, ckr: string, options?: ErrorOptions & { message?: string, code?: string }) {
    super(options?.message ?? `token operation ${operation} failed: ${ckr}`, options?.code ?? 'ERR_HSM_TOKEN', options)
    this.ckr = ckr
  }
}

/**
 * The PKCS#11 module ended (or hung) a process that did nothing but initialise it, so it was not
 * initialised in this one (see module-probe.ts): SoftHSM2 exits on a damaged object file.
 */
export class ModuleProbeError extends TokenError {
  constructor (modulePath: string, how: string, hint: string) {
    super('C_Initialize', 'CKR_GENERAL_ERROR', {
      message: `the PKCS#11 module ${modulePath} ${how} while initialising its tokens, so Strata did not load it: ` +
        `a token's stored objects are likely damaged or unreadable${hint}`
    })
  }
}

/**
 * The token cannot be reached: its store vanished, the module failed, or it was removed. Each
 * call fails fast with this error while the token retries, at most once a second, to come back
 * (re-initialising the module); `reason` is the CKR_* value that revealed the loss.
 */
export class TokenUnavailableError extends TokenError {
  readonly reason: string
  constructor (label: string, reason: string, options?: ErrorOptions) {
    super('access', 'CKR_TOKEN_NOT_PRESENT', {
      ...options,
      message: `PKCS#11 token "${label}" is unavailable (${reason}: its store is gone or the module failed); retrying to reach it`,
      code: 'ERR_HSM_TOKEN_UNAVAILABLE'
    })
    this.reason = reason
  }
}

/** createNamespace was called for a namespace that already has a NEK. */
export class NamespaceExistsError extends HsmError {
  constructor (namespace: string, options?: ErrorOptions) {
    super(`namespace ${namespace} already has a key`, 'ERR_NAMESPACE_EXISTS', options)
  }
}

/** A key cannot be removed because it is still in use (e.g. retiring the current NEK version). */
export class KeyInUseError extends HsmError {
  constructor (keyRef: string, options?: ErrorOptions) {
    super(`key ${keyRef} is still in use`, 'ERR_KEY_IN_USE', options)
  }
}

/** An argument failed validation (bad namespace id, version, label, ...). */
export class InvalidKeyArgumentError extends HsmError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`invalid argument: ${detail}`, 'ERR_HSM_INVALID_ARGUMENT', options)
  }
}

/** The key service (or token) was closed. */
export class HsmClosedError extends HsmError {
  constructor (what: string, options?: ErrorOptions) {
    super(`${what} is closed`, 'ERR_HSM_CLOSED', options)
  }
}

/** Enrolment cannot proceed in this state (no enrolment key pair, the token already holds a TEK, a TEK rotation is running, ...). */
export class EnrolmentStateError extends HsmError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`enrolment refused: ${detail}`, 'ERR_ENROLMENT_STATE', options)
  }
}

/** A blob sealed by the device vault is malformed, was tampered with, or was sealed with another key or context. */
export class SealedDataError extends HsmError {
  constructor (detail: string, options?: ErrorOptions) {
    super(`sealed data cannot be opened: ${detail}`, 'ERR_SEALED_DATA', options)
  }
}
