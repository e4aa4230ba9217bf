import { readFile } from 'node:fs/promises'
import { PinMissingError } from './errors.js'

export interface ReadPinOptions {
  /** Path of a file holding the PIN (one trailing newline is ignored). Wins over `env`. */
  pinFile?: string
  /** The value of the PIN environment variable, as read by the daemon's config. */
  env?: string
}

/**
 * The user PIN as bytes. Reads `pinFile` if given, else uses `env`; throws PinMissingError if
 * neither yields a non-empty PIN. The PIN is never logged or put in an error message.
 */
export async function readPin (options: ReadPinOptions): Promise<Uint8Array> {
  if (options.pinFile !== undefined) {
    let bytes: Buffer
    try {
      bytes = await readFile(options.pinFile)
    } catch (err) {
      throw new PinMissingError(`cannot read PIN file ${options.pinFile}`, { cause: err })
    }
    const pin = new Uint8Array(stripNewline(bytes))
    bytes.fill(0)
    if (pin.byteLength === 0) throw new PinMissingError(`PIN file ${options.pinFile} is empty`)
    return pin
  }
  if (options.env !== undefined) {
    const pin = new Uint8Array(stripNewline(Buffer.from(options.env, 'utf8')))
    if (pin.byteLength === 0) throw new PinMissingError('the PIN environment variable is empty')
    return pin
  }
  throw new PinMissingError('neither a PIN file nor the PIN environment variable is set')
}

function stripNewline (bytes: Uint8Array): Uint8Array {
  let end = bytes.byteLength
  if (end > 0 && bytes[end - 1] === 0x0a) end--
  if (end > 0 && bytes[end - 1] === 0x0d) end--
  return bytes.subarray(0, end)
}
