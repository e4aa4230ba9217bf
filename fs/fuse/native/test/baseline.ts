/**
 * Before/after table for fs/fuse/native/README.md: the same probes through a real mount of the
 * memfs, once with the unpatched node_modules/fuse-native 2.2.6 (its prebuilt binary and bundled
 * libfuse) and once with the patched build. Run as root after scripts/build-fuse.sh:
 *
 *   node dist/fs/fuse/native/test/baseline.js
 */
import { execFile } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { loadFuseNative, type FuseConstructor, type FuseOptions } from '../fuse-native.js'
import { memFs, type MemFs } from './memfs.js'

const run = promisify(execFile)

interface Probe { name: string, patchedOpts?: FuseOptions, script: (fs: MemFs) => string, show?: (out: string, fs: MemFs) => string }

const probes: Probe[] = [
  { name: 'touch -d @1234567890.123456789 f (atime mtime)', script: () => 'touch -d @1234567890.123456789 f; stat -c "%.9X %.9Y" f' },
  { name: 'touch -d @1e9 g; touch -m -d @2000000000.5 g (atime mtime)', script: () => 'touch -d @1000000000 g; touch -m -d @2000000000.5 g; stat -c "%.9X %.9Y" g' },
  { name: 'create \\xff and \\xfe: listdir (hex)', script: () => `/usr/bin/python3 -c "
import os
for n in [b'\\xff', b'\\xfe']: open(n, 'wb').close()
print(' '.join(sorted(x.hex() for x in os.listdir(b'.'))))"` },
  { name: 'touch as uid 1234: owner', patchedOpts: { allowOther: true }, script: () => 'setpriv --reuid=1234 --regid=1234 --clear-groups touch mine; stat -c %u mine' },
  {
    name: 'st_ino of a file vs the ino JS returned',
    patchedOpts: { useIno: true },
    script: () => 'touch a; stat -c %i a',
    show: (out, fs) => `st_ino ${out.trim()}, JS ${fs.lookup('/a')?.ino ?? '?'}`
  },
  { name: 'ln a b: stat -c %h a b', patchedOpts: { attrTimeout: 0 }, script: () => 'touch a; stat -c %h a >/dev/null; ln a b; echo $(stat -c %h a b)' },
  { name: 'open f, unlink f: listdir', patchedOpts: { hardRemove: true }, script: () => 'exec 3>f; rm f; ls -A; exec 3>&-' },
  { name: 'dd 256 MiB bs=1M write (memfs)', patchedOpts: { bigWrites: true }, script: () => 'dd if=/dev/zero of=big bs=1M count=256 2>&1 | tail -1 | sed "s/.*, //"' }
]

async function probe (Fuse: FuseConstructor, legacy: boolean, p: Probe): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-fuse-baseline-'))
  chmodSync(dir, 0o755)
  const mnt = join(dir, 'mnt')
  mkdirSync(mnt)
  const fs = memFs({ legacy })
  // The unpatched binding gets what it can take: allow_other, and big_writes through fsname.
  const opts: FuseOptions = legacy
    ? { allowOther: true, ...(p.patchedOpts?.bigWrites === true ? { fsname: 'memfs,big_writes' } : {}) }
    : { allowOther: true, ...p.patchedOpts }
  const fuse = new Fuse(mnt, fs.ops, opts)
  await new Promise<void>((resolve, reject) => { fuse.mount(err => { if (err !== null) reject(err); else resolve() }) })
  try {
    const out = await run('bash', ['-c', `cd "$M" && ${p.script(fs)}`], { env: { ...process.env, M: mnt } })
      .then(r => r.stdout, (e: { stdout?: string, stderr?: string }) => `${e.stdout ?? ''}${e.stderr ?? ''}`)
    return p.show !== undefined ? p.show(out, fs) : out.trim().replace(/\n/g, ' / ')
  } finally {
    await new Promise<void>(resolve => { fuse.unmount(() => resolve()) })
    await run('umount', ['-l', mnt]).catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}

const unpatched = createRequire(import.meta.url)('fuse-native') as FuseConstructor
const patched = loadFuseNative()
console.log('| probe | fuse-native 2.2.6 | patched |\n| --- | --- | --- |')
for (const p of probes) {
  const before = await probe(unpatched, true, p)
  const after = await probe(patched, false, p)
  console.log(`| ${p.name} | ${before} | ${after} |`)
}
process.exit(0)
