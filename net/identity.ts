// net/identity.ts: the device identity, an Ed25519 key (the libp2p peer id), kept in the data dir
// sealed by a token key (DESIGN.md §2 "device key").
//
// File `device.key` (mode 0600): "STRATADK" | 0x01 | vault blob, where the blob seals the libp2p
// protobuf encoding of the private key with associated data "strata/device-key/v1".
import { randomBytes } from 'node:crypto'
import { open, rename, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Ed25519PrivateKey } from '@libp2p/interface'
import type { Vault } from '../hsm/index.js'
import { DeviceKeyCorruptError, DeviceKeyForeignError } from './enrol-errors.js'
import { InvalidParametersError } from './errors.js'

export const DEVICE_KEY_FILE = 'device.key'

const MAGIC = new TextEncoder().encode('STRATADK')
const FORMAT = 0x01
const AAD = new TextEncoder().encode('strata/device-key/v1')
/** A sealed Ed25519 protobuf is about 100 bytes; anything far larger is not ours. */
const MAX_FILE_BYTES = 4096

export interface DeviceIdentity {
  privateKey: Ed25519PrivateKey
  peerId: string
}

export interface LoadOrCreateDeviceIdentityOptions {
  /** The data dir (must exist). */
  dir: string
  /** Seals the key file (the token's DeviceVault). */
  vault: Vault
}

/**
 * Load the device key from `dir/device.key`, or create it (atomically: temp file, fsync, rename,
 * fsync of the dir) if the file does not exist. Throws DeviceKeyForeignError for a file that is not
 * a device key file and DeviceKeyCorruptError for a damaged one or one sealed by another token.
 */
export async function loadOrCreateDeviceIdentity (options: LoadOrCreateDeviceIdentityOptions): Promise<DeviceIdentity> {
  if (options == null || typeof options.dir !== 'string' || options.dir === '') throw new InvalidParametersError('dir is required')
  if (options.vault == null || typeof options.vault.seal !== 'function' || typeof options.vault.open !== 'function') throw new InvalidParametersError('vault is required')
  const path = join(options.dir, DEVICE_KEY_FILE)
  const bytes = await readLimited(path)
  if (bytes !== undefined) return await loadIdentity(path, bytes, options.vault)
  return await createIdentity(options.dir, path, options.vault)
}

async function loadIdentity (path: string, bytes: Uint8Array, vault: Vault): Promise<DeviceIdentity> {
  if (bytes.byteLength < MAGIC.byteLength + 1 || !Buffer.from(bytes.subarray(0, MAGIC.byteLength)).equals(MAGIC)) {
    throw new DeviceKeyForeignError(path, 'no device key header')
  }
  if (bytes[MAGIC.byteLength] !== FORMAT) throw new DeviceKeyForeignError(path, `unsupported format ${bytes[MAGIC.byteLength] ?? 0}`)
  let plain: Uint8Array
  try {
    plain = await vault.open(bytes.subarray(MAGIC.byteLength + 1), AAD)
  } catch (err) {
    if ((err as { name?: string }).name === 'SealedDataError') throw new DeviceKeyCorruptError(path, 'it does not authenticate (damaged, or sealed by another token)', { cause: err })
    throw err
  }
  try {
    let key
    try {
      key = privateKeyFromProtobuf(plain)
    } catch (err) {
      throw new DeviceKeyCorruptError(path, 'the sealed key is not a libp2p private key', { cause: err })
    }
    if (key.type !== 'Ed25519') throw new DeviceKeyCorruptError(path, `the sealed key is ${key.type}, not Ed25519`)
    return { privateKey: key, peerId: peerIdFromPrivateKey(key).toString() }
  } finally {
    plain.fill(0)
  }
}

async function createIdentity (dir: string, path: string, vault: Vault): Promise<DeviceIdentity> {
  const key = await generateKeyPair('Ed25519')
  const plain = privateKeyToProtobuf(key)
  let sealed: Uint8Array
  try {
    sealed = await vault.seal(plain, AAD)
  } finally {
    plain.fill(0)
  }
  const file = new Uint8Array(MAGIC.byteLength + 1 + sealed.byteLength)
  file.set(MAGIC)
  file[MAGIC.byteLength] = FORMAT
  file.set(sealed, MAGIC.byteLength + 1)
  await writeAtomic(dir, path, file)
  return { privateKey: key, peerId: peerIdFromPrivateKey(key).toString() }
}

/** The file's bytes, undefined if it does not exist; a file over the limit is not read. */
async function readLimited (path: string): Promise<Uint8Array | undefined> {
  let fh
  try {
    fh = await open(path, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  try {
    const { size } = await fh.stat()
    if (size > MAX_FILE_BYTES) throw new DeviceKeyForeignError(path, `${size} bytes is too large`)
    const buf = Buffer.alloc(size)
    const { bytesRead } = await fh.read(buf, 0, size, 0)
    return new Uint8Array(buf.buffer, buf.byteOffset, bytesRead)
  } finally {
    await fh.close()
  }
}

/**
 * Write a fresh temp file (0600, fsynced), rename it into place, fsync the dir: after a crash the
 * file is either absent or complete. (Two processes creating at once is ruled out by the
 * daemon's data dir lock.)
 */
async function writeAtomic (dir: string, path: string, bytes: Uint8Array): Promise<void> {
  const tmp = join(dir, `.${DEVICE_KEY_FILE}.${randomBytes(6).toString('hex')}.tmp`)
  const fh = await open(tmp, 'wx', 0o600)
  try {
    try {
      await fh.writeFile(bytes)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  const dh = await open(dir, 'r')
  try {
    await dh.sync()
  } finally {
    await dh.close()
  }
}
