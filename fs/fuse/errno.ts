/**
 * The one place that knows errnos (STYLE.md section 4): maps the volume's and the token's typed
 * errors to the negative errno fuse-native answers with.
 */
import { constants } from 'node:os'

const E = constants.errno

export interface ErrnoResult {
  errno: number
  /** The error deserves a log line (integrity failures, unknown errors). */
  log: boolean
}

export function toErrno (err: unknown): ErrnoResult {
  const e = err as { name?: string, code?: string | number }
  if (e !== null && typeof e === 'object') {
    if (e.name === 'FsError' && typeof e.code === 'string' && e.code in E) return { errno: -(E as Record<string, number>)[e.code]!, log: false }
    switch (e.name) {
      case 'TeamDisabledError':
      case 'TeamDestroyedError':
      case 'WrongPinError':
      case 'PinLockedError':
        return { errno: -E.EACCES, log: true }
      case 'BlockCorruptError':
      case 'BlockMissingError':
      case 'RecordCorruptError':
      case 'KeyCustodyError':
      case 'IntegrityError':
        return { errno: -E.EIO, log: true }
      case 'TimeoutError':
      case 'AbortError':
        return { errno: -E.ETIMEDOUT, log: true }
      case 'TokenError':
      case 'HsmClosedError':
        return { errno: -E.EIO, log: true }
    }
    // A LevelDB hook refused the write (fs/store/disk-guard.ts: the disk is full): its cause says why.
    if (e.code === 'LEVEL_HOOK_ERROR' && (err as Error).cause !== undefined) return toErrno((err as Error).cause)
    // Node's own file-system errors (the block store and LevelDB): ENOSPC, EDQUOT, EROFS, EIO.
    if (typeof e.code === 'string') {
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return { errno: -E.ENOSPC, log: true }
      if (e.code === 'EROFS') return { errno: -E.EROFS, log: true }
      if (e.code === 'LEVEL_IO_ERROR' && /No space left/i.test(String((err as Error).message))) return { errno: -E.ENOSPC, log: true }
    }
  }
  return { errno: -E.EIO, log: true }
}
