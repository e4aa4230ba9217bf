import { FsError } from '../errors.js'

export const NAME_MAX = 255
export const XATTR_NAME_MAX = 255
export const XATTR_SIZE_MAX = 65536

/** A directory entry name as bytes, validated: 1..255 bytes, no '/' or NUL, not '.' or '..'. */
export function toName (name: Uint8Array | string): Buffer {
  const b = typeof name === 'string' ? Buffer.from(name, 'utf8') : Buffer.from(name.buffer, name.byteOffset, name.byteLength)
  if (b.length === 0) throw new FsError('EINVAL', 'empty name')
  if (b.length > NAME_MAX) throw new FsError('ENAMETOOLONG', `name of ${b.length} bytes exceeds ${NAME_MAX}`)
  if (b.includes(0x2f) || b.includes(0)) throw new FsError('EINVAL', 'name contains "/" or NUL')
  if ((b.length === 1 && b[0] === 0x2e) || (b.length === 2 && b[0] === 0x2e && b[1] === 0x2e)) throw new FsError('EINVAL', 'name is "." or ".."')
  return b
}
