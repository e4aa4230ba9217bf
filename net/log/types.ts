import type { AbstractLevel } from 'abstract-level'

/**
 * The LevelDB (or sublevel) the logs and the device list live in: string keys, byte values.
 * The daemon hands in sublevels of the volume database; tests a classic-level in a temp dir.
 */
export type LogDb = AbstractLevel<any, string, Uint8Array>
