/**
 * Keep LevelDB away from a full disk. LevelDB that runs out of space half-way through a log
 * write leaves a torn record and keeps appending after it (the next open drops what follows:
 * acknowledged changes lost), and a failed table flush or log sync makes it refuse every write
 * until it is reopened. The block store leaves its reserve free for metadata, but another
 * program may take that too: below `minFreeBytes` every write to the database is refused with
 * ENOSPC before LevelDB sees it (a prewrite hook on the root database covers every sublevel).
 * Writes that free space (a delete, a truncate, the GC) pass the `FREES` option and may go on
 * down to an eighth of the floor: a user whose disk is full must be able to delete files.
 */
import { statfsSync } from 'node:fs'
import { FsError } from '../errors.js'
import type { Db } from './types.js'

/** Room for a memtable flush (4 MiB write buffer) and log records, with margin. */
const DEFAULT_MIN_FREE_BYTES = 8 * 1024 * 1024
/** With plenty free, measure at most this often (a statfs per write would be waste). */
const RECHECK_MS = 100
const PLENTY = 4

/** Batch or del option of a write that frees space (its log record is a few KiB). */
export const FREES: Record<string, unknown> = { frees: true }

export function guardFreeSpace (db: Db, dir: string, init: { minFreeBytes?: number } = {}): void {
  const min = init.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES
  let last = { free: Infinity, at: 0 }
  db.hooks.prewrite.add((op: { frees?: unknown }) => {
    // Close to the floor, every write measures: space freed elsewhere counts at once.
    if (last.free < min * PLENTY || Date.now() - last.at > RECHECK_MS) {
      const s = statfsSync(dir)
      last = { free: s.bavail * s.bsize, at: Date.now() }
    }
    if (last.free < (op.frees === true ? min / 8 : min)) throw new FsError('ENOSPC', `no space left on device: metadata needs ${min >> 20} MiB free, ${Math.floor(last.free / 1024)} KiB are`)
  })
}
