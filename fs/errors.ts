/**
 * Typed errors of the volume. Only the FUSE adapter (fs/fuse/errno.ts) turns them into errnos.
 * Match on `name`/`code`, never on messages. Messages name inodes and block ids, never file
 * names or contents (those are secret at rest), except where the caller passes a path in.
 */
export type PosixCode =
  'ENOENT' | 'EEXIST' | 'ENOTEMPTY' | 'ENOTDIR' | 'EISDIR' | 'ENAMETOOLONG' | 'EINVAL' |
  'EBADF' | 'EPERM' | 'EACCES' | 'ENODATA' | 'ERANGE' | 'EXDEV' | 'EMLINK' | 'EFBIG' |
  'ENOSPC' | 'EIO' | 'EROFS' | 'ELOOP' | 'ENOTSUP' | 'EBUSY'

/** A POSIX-level failure of a volume operation (the errno the FUSE layer answers with). */
export class FsError extends Error {
  readonly code: PosixCode
  constructor (code: PosixCode, message: string, options?: ErrorOptions) {
    // An expected outcome (ENOENT for a lookup, ENODATA for an xattr the kernel asks for before
    // every write), thousands a second: no stack trace, whose capture cost more than the op.
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    try {
      super(`${code}: ${message}`, options)
    } finally {
      Error.stackTraceLimit = limit
    }
    this.name = 'FsError'
    this.code = code
  }
}

/** Stored data failed verification (hash, AEAD tag, format): the volume returns no bytes of it. */
export class IntegrityError extends Error {
  readonly code: string
  constructor (message: string, code: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** A stored block does not hash to its id, or its AEAD tag does not verify. */
export class BlockCorruptError extends IntegrityError {
  readonly blockId: string
  /**
   * The stored copy itself is damaged (it does not hash to its id, or cannot be read): any
   * peer's intact copy of the id is byte-identical and may replace it. False when the bytes are
   * the ones stored but do not decrypt (a tag failure): another copy would fail the same way.
   */
  readonly copyDamaged: boolean
  constructor (blockId: string, detail: string, options?: ErrorOptions & { copyDamaged?: boolean }) {
    super(`block ${blockId} is corrupt: ${detail}`, 'ERR_BLOCK_CORRUPT', options)
    this.blockId = blockId
    this.copyDamaged = options?.copyDamaged ?? true
  }
}

/** A block named by a manifest is not in the block store. */
export class BlockMissingError extends IntegrityError {
  readonly blockId: string
  constructor (blockId: string, options?: ErrorOptions) {
    super(`block ${blockId} is missing from the block store`, 'ERR_BLOCK_MISSING', options)
    this.blockId = blockId
  }
}

/** A metadata record failed authentication or decoding. */
export class RecordCorruptError extends IntegrityError {
  readonly record: string
  constructor (record: string, detail: string, options?: ErrorOptions) {
    super(`metadata record ${record} is corrupt: ${detail}`, 'ERR_RECORD_CORRUPT', options)
    this.record = record
  }
}

/** The data directory is not a Strata volume, or one of an unsupported format. */
export class VolumeFormatError extends Error {
  readonly code = 'ERR_VOLUME_FORMAT'
  constructor (message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'VolumeFormatError'
  }
}
