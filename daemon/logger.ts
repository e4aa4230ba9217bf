/**
 * A small component logger shaped like @libp2p/logger's ComponentLogger (forComponent(name)
 * returning a log function with .error and .trace), so libp2p can share it later. Lines go to
 * stderr (the daemon's log file in the background). Enabled: errors and info always; trace with
 * STRATA_TRACE=1. Never pass keys, PINs, plaintext or file names at rest... except the adapter's
 * EIO line, which names the path the local user asked for (the issue asks for it).
 */
import { format } from 'node:util'

export interface Logger {
  (fmt: string, ...args: unknown[]): void
  error: (fmt: string, ...args: unknown[]) => void
  trace: (fmt: string, ...args: unknown[]) => void
  enabled: boolean
}

export interface ComponentLogger { forComponent: (name: string) => Logger }

export function createLogger (options: { prefix?: string, trace?: boolean, write?: (line: string) => void } = {}): ComponentLogger {
  const prefix = options.prefix ?? 'strata'
  // A log that cannot be written (its disk is full) must never take the daemon down.
  process.stderr.on('error', () => {})
  const write = options.write ?? ((line: string) => { try { process.stderr.write(line) } catch {} })
  const emit = (level: string, name: string, fmt: string, args: unknown[]): void => {
    write(`${new Date().toISOString()} ${level} ${prefix}:${name} ${format(fmt.replace(/%e/g, '%s'), ...args.map(a => a instanceof Error ? `${a.name}: ${a.message}` : a))}\n`)
  }
  return {
    forComponent (name: string): Logger {
      const log = ((fmt: string, ...args: unknown[]) => { emit('info', name, fmt, args) }) as Logger
      log.error = (fmt, ...args) => { emit('error', name, fmt, args) }
      log.trace = options.trace === true ? (fmt, ...args) => { emit('trace', name, fmt, args) } : () => {}
      log.enabled = true
      return log
    }
  }
}
