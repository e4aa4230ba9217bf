// net/errors.ts: typed errors of the transport and block exchange. Match on `name` or `code`,
// never on messages. Other net/ components keep their own errors in their own files.

/** Base of the errors below: `name` is the class name, `code` a stable ERR_* string. */
export class NetError extends Error {
  readonly code: string
  constructor (message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** A peer sent bytes that do not follow the protocol. That stream is aborted; the node goes on. */
export class ProtocolError extends NetError {
  constructor (message: string, code = 'ERR_STRATA_PROTOCOL', options?: ErrorOptions) {
    super(message, code, options)
  }
}

/** A message's declared size exceeds the limit: detected from its length prefix, before allocating. */
export class MessageTooLargeError extends ProtocolError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_MESSAGE_TOO_LARGE', options)
  }
}

/** The stream ended in the middle of a message, or before an expected reply. */
export class UnexpectedEndError extends ProtocolError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_UNEXPECTED_END', options)
  }
}

/** The peer is not (or no longer) allowed to talk to this node. */
export class PeerNotAllowedError extends NetError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_PEER_NOT_ALLOWED', options)
  }
}

/** A peer served bytes whose SHA-256 is not the requested id. */
export class BlockTamperedError extends NetError {
  constructor (message: string, readonly peer: string, readonly id: Uint8Array, options?: ErrorOptions) {
    super(message, 'ERR_BLOCK_TAMPERED', options)
  }
}

/** A peer did not answer within the request timeout. */
export class RequestTimeoutError extends NetError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_REQUEST_TIMEOUT', options)
  }
}

/** A caller passed an invalid argument (peer id, multiaddr, block id, option). */
export class InvalidParametersError extends NetError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_INVALID_PARAMETERS', options)
  }
}

/** The component is not started (or already stopped). */
export class NotStartedError extends NetError {
  constructor (message: string, options?: ErrorOptions) {
    super(message, 'ERR_NOT_STARTED', options)
  }
}
