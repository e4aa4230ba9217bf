/**
 * POSIX error cases of the volume: each gives an FsError with the right code, and a refused
 * operation changes nothing.
 */
import t from 'tap'
import { makeVolume } from './helpers/volume.js'
import { ROOT_INO } from '../fs/volume/types.js'
import { FsError } from '../fs/errors.js'
import {
  damage, fsck, nameOf, readWhole, writeFile } from './volume-util.js'
import type { SVolume } from './volume-util.js'

async function tree (vol: SVolume): Promise<{ dir: number, file: number, full: number, empty: number }> {
  const dir = (await vol.mkdir(ROOT_INO, 'dir')).ino
  const file = (await writeFile(vol, ROOT_INO, 'file', Buffer.from('content'))).ino
  const full = (await vol.mkdir(ROOT_INO, 'full')).ino
  await writeFile(vol, full, 'child', Buffer.from('c'))
  const empty = (await vol.mkdir(ROOT_INO, 'empty')).ino
  return { dir, file, full, empty }
}

async function names (vol: SVolume, ino: number): Promise<string[]> {
  return (await vol.readdir(ino)).map(nameOf).sort()
}

t.test('ENOENT', async t => {
  const { vol } = await makeVolume(t)
  const { dir } = await tree(vol)
  await t.rejects(vol.lookup(ROOT_INO, 'missing'), { code: 'ENOENT' }, 'lookup of a missing name')
  await t.rejects(vol.lookup(dir, 'missing'), { code: 'ENOENT' })
  await t.rejects(vol.unlink(ROOT_INO, 'missing'), { code: 'ENOENT' }, 'unlink of a missing name')
  await t.rejects(vol.rmdir(ROOT_INO, 'missing'), { code: 'ENOENT' }, 'rmdir of a missing name')
  await t.rejects(vol.rename(ROOT_INO, 'missing', ROOT_INO, 'other'), { code: 'ENOENT' }, 'rename of a missing name')
  await t.rejects(vol.getattr(987654321), { code: 'ENOENT' }, 'getattr of an unknown inode')
  await t.rejects(vol.open(987654321), { code: 'ENOENT' }, 'open of an unknown inode')
  await t.rejects(vol.resolve('/dir/missing/deeper'), { code: 'ENOENT' })
  const err = await vol.lookup(ROOT_INO, 'missing').catch((e: unknown) => e)
  t.ok(err instanceof FsError, 'errors are FsError instances')
  t.equal((err as Error).name, 'FsError')
})

t.test('EEXIST', async t => {
  const { vol } = await makeVolume(t)
  const { dir, file } = await tree(vol)
  await t.rejects(vol.mkdir(ROOT_INO, 'dir'), { code: 'EEXIST' }, 'mkdir over a directory')
  await t.rejects(vol.mkdir(ROOT_INO, 'file'), { code: 'EEXIST' }, 'mkdir over a file')
  await t.rejects(vol.create(ROOT_INO, 'file'), { code: 'EEXIST' }, 'create over a file')
  await t.rejects(vol.create(ROOT_INO, 'dir'), { code: 'EEXIST' }, 'create over a directory')
  await t.rejects(vol.link(file, ROOT_INO, 'dir'), { code: 'EEXIST' }, 'link to an existing name')
  await t.rejects(vol.link(file, ROOT_INO, 'file'), { code: 'EEXIST' }, 'link to its own name')
  await t.rejects(vol.symlink(ROOT_INO, 'file', 'x'), { code: 'EEXIST' }, 'symlink over a file')
  await t.rejects(vol.mknod(ROOT_INO, 'file', { mode: 0o010644 }), { code: 'EEXIST' }, 'mknod over a file')
  t.equal((await readWhole(vol, file)).toString(), 'content', 'the existing file is untouched')
  t.equal((await vol.getattr(file)).nlink, 1)
  t.equal((await vol.lookup(ROOT_INO, 'dir')).ino, dir)
})

t.test('ENOTEMPTY', async t => {
  const { vol } = await makeVolume(t)
  const { full, empty } = await tree(vol)
  await t.rejects(vol.rmdir(ROOT_INO, 'full'), { code: 'ENOTEMPTY' }, 'rmdir of a non-empty directory')
  await t.rejects(vol.rename(ROOT_INO, 'empty', ROOT_INO, 'full'), { code: 'ENOTEMPTY' }, 'rename a directory over a non-empty one')
  t.same(await names(vol, full), ['child'])
  t.equal((await vol.lookup(ROOT_INO, 'empty')).ino, empty)
  // a directory holding only a subdirectory is not empty either
  const sub = await vol.mkdir(empty, 'sub')
  await t.rejects(vol.rmdir(ROOT_INO, 'empty'), { code: 'ENOTEMPTY' })
  t.equal((await vol.lookup(empty, 'sub')).ino, sub.ino)
})

t.test('ENOTDIR', async t => {
  const { vol } = await makeVolume(t)
  const { file } = await tree(vol)
  await t.rejects(vol.lookup(file, 'x'), { code: 'ENOTDIR' }, 'lookup under a file')
  await t.rejects(vol.readdir(file), { code: 'ENOTDIR' }, 'readdir of a file')
  await t.rejects(vol.mkdir(file, 'x'), { code: 'ENOTDIR' }, 'mkdir under a file')
  await t.rejects(vol.create(file, 'x'), { code: 'ENOTDIR' }, 'create under a file')
  await t.rejects(vol.rmdir(ROOT_INO, 'file'), { code: 'ENOTDIR' }, 'rmdir of a file')
  await t.rejects(vol.rename(ROOT_INO, 'dir', ROOT_INO, 'file'), { code: 'ENOTDIR' }, 'rename a directory over a file')
  await t.rejects(vol.resolve('/file/x'), { code: 'ENOTDIR' })
  t.equal((await readWhole(vol, file)).toString(), 'content')
  t.same(await names(vol, ROOT_INO), ['dir', 'empty', 'file', 'full'])
})

t.test('EISDIR', async t => {
  const { vol } = await makeVolume(t)
  const { dir } = await tree(vol)
  await t.rejects(vol.unlink(ROOT_INO, 'dir'), { code: 'EISDIR' }, 'unlink of a directory')
  await t.rejects(vol.rename(ROOT_INO, 'file', ROOT_INO, 'empty'), { code: 'EISDIR' }, 'rename a file over a directory')
  await t.rejects(vol.open(dir, { write: true }), { code: 'EISDIR' }, 'open a directory for writing')
  await t.rejects(vol.truncate(dir, 0), { code: 'EISDIR' }, 'truncate a directory')
  t.same(await names(vol, ROOT_INO), ['dir', 'empty', 'file', 'full'])
})

t.test('EPERM: hard link to a directory', async t => {
  const { vol } = await makeVolume(t)
  const { dir } = await tree(vol)
  await t.rejects(vol.link(dir, ROOT_INO, 'dirlink'), { code: 'EPERM' })
  await t.rejects(vol.lookup(ROOT_INO, 'dirlink'), { code: 'ENOENT' })
})

t.test('ENAMETOOLONG', async t => {
  const { vol } = await makeVolume(t)
  const { file } = await tree(vol)
  const n256 = 'n'.repeat(256)
  const u256 = 'é'.repeat(128) // 128 characters, 256 bytes
  await t.rejects(vol.mkdir(ROOT_INO, n256), { code: 'ENAMETOOLONG' }, 'mkdir')
  await t.rejects(vol.create(ROOT_INO, n256), { code: 'ENAMETOOLONG' }, 'create')
  await t.rejects(vol.create(ROOT_INO, u256), { code: 'ENAMETOOLONG' }, 'the limit is 255 bytes, not characters')
  await t.rejects(vol.lookup(ROOT_INO, n256), { code: 'ENAMETOOLONG' }, 'lookup')
  await t.rejects(vol.symlink(ROOT_INO, n256, 'x'), { code: 'ENAMETOOLONG' }, 'symlink')
  await t.rejects(vol.link(file, ROOT_INO, n256), { code: 'ENAMETOOLONG' }, 'link')
  await t.rejects(vol.rename(ROOT_INO, 'file', ROOT_INO, n256), { code: 'ENAMETOOLONG' }, 'rename')
  await t.rejects(vol.mkdir(ROOT_INO, Buffer.alloc(256, 0x61)), { code: 'ENAMETOOLONG' }, 'byte names too')
  t.same(await names(vol, ROOT_INO), ['dir', 'empty', 'file', 'full'])
})

t.test('EINVAL: names with a slash, empty, ".", "..", NUL', async t => {
  const { vol } = await makeVolume(t)
  const { file, dir } = await tree(vol)
  const bad: Array<[string, string | Uint8Array]> = [
    ['slash', 'a/b'], ['leading slash', '/a'], ['empty', ''], ['dot', '.'], ['dotdot', '..'],
    ['NUL', 'a\0b'], ['empty bytes', new Uint8Array(0)], ['dot bytes', Buffer.from('.')]
  ]
  for (const [label, name] of bad) {
    await t.rejects(vol.mkdir(ROOT_INO, name), { code: 'EINVAL' }, `mkdir: ${label}`)
    await t.rejects(vol.create(ROOT_INO, name), { code: 'EINVAL' }, `create: ${label}`)
    await t.rejects(vol.mknod(ROOT_INO, name, { mode: 0o010644 }), { code: 'EINVAL' }, `mknod: ${label}`)
    await t.rejects(vol.symlink(ROOT_INO, name, 'target'), { code: 'EINVAL' }, `symlink: ${label}`)
    await t.rejects(vol.link(file, dir, name), { code: 'EINVAL' }, `link: ${label}`)
    await t.rejects(vol.rename(ROOT_INO, 'file', dir, name), { code: 'EINVAL' }, `rename target: ${label}`)
  }
  t.same(await names(vol, ROOT_INO), ['dir', 'empty', 'file', 'full'], 'nothing was created')
  t.same(await names(vol, dir), [])
  t.equal((await vol.getattr(file)).nlink, 1)
  t.same(damage(await fsck(vol)), [])
})

t.test('EBADF: released or read-only handles', async t => {
  const { vol } = await makeVolume(t)
  const { file } = await tree(vol)
  const ro = await vol.open(file)
  await t.rejects(vol.write(ro, 0, Buffer.from('x')), { code: 'EBADF' }, 'write on a read-only handle')
  await vol.release(ro)
  await t.rejects(vol.read(ro, 0, 1), { code: 'EBADF' }, 'read on a released handle')
  await t.rejects(vol.write(ro, 0, Buffer.from('x')), { code: 'EBADF' }, 'write on a released handle')
  await t.rejects(vol.read(123456, 0, 1), { code: 'EBADF' }, 'an unknown handle')
  t.equal((await readWhole(vol, file)).toString(), 'content')
})

t.test('ENODATA and ENOENT for xattrs of missing things', async t => {
  const { vol } = await makeVolume(t)
  const { file } = await tree(vol)
  await t.rejects(vol.getxattr(file, 'user.none'), { code: 'ENODATA' })
  await t.rejects(vol.removexattr(file, 'user.none'), { code: 'ENODATA' })
  await t.rejects(vol.setxattr(file, 'user.none', Buffer.from('x'), 'replace'), { code: 'ENODATA' })
  await t.rejects(vol.getxattr(987654321, 'user.x'), { code: 'ENOENT' })
})

t.test('readlink of a non-symlink is EINVAL', async t => {
  const { vol } = await makeVolume(t)
  const { file, dir } = await tree(vol)
  await t.rejects(vol.readlink(file), { code: 'EINVAL' })
  await t.rejects(vol.readlink(dir), { code: 'EINVAL' })
})
