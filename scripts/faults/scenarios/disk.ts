/**
 * Disk faults (issue 5, "Disk"): the data dir on a small tmpfs that fills up. Writers get
 * ENOSPC (not EIO, not a hang), what was there stays readable and intact, the daemon keeps
 * serving, and once space is freed — by deleting through the mount, or by removing what else
 * filled the disk — writing works again without a restart; fsck is clean afterwards.
 */
import { mkdirSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { makeDrive, run, sh, strata, type Drive } from '../../../test/helpers/mount.js'
import { PY, fsckProblems, isMounted, within } from '../../../test/helpers/crash.js'
import { request, socketPath } from '../../../daemon/control.js'
import type { FaultContext, Scenario } from '../harness.js'

/** The file system the data dir lives on. */
const FS_MIB = 160

/**
 * Appends 1 MiB chunks of seeded bytes to a file, fsyncs every 4 MiB and prints "ACK <bytes>";
 * on the first error prints "ERR <errno name> <where>" and exits 3; "DONE" after `limit` MiB.
 */
const FILL = `
import errno, hashlib, os, sys
path, limit = sys.argv[1], int(sys.argv[2])
def chunk(i):
    seed = hashlib.sha256(b'%d' % i).digest()
    return (seed * 32768)[:1 << 20]
where = 'open'
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(limit):
        where = 'write'
        os.write(fd, chunk(i))
        if i % 4 == 3:
            where = 'fsync'
            os.fsync(fd)
            print('ACK %d' % ((i + 1) << 20), flush=True)
    where = 'fsync'
    os.fsync(fd)
    where = 'close'
    os.close(fd)
    print('DONE', flush=True)
except OSError as e:
    print('ERR %s %s' % (errno.errorcode.get(e.errno, '?'), where), flush=True)
    sys.exit(3)
`

interface Fill { acked: number, err?: string, where?: string, done: boolean }

/** Run the filler on `file` (through the mount) for at most `limitMib` MiB; bounded, never hangs. */
async function fill (ctx: FaultContext, file: string, limitMib: number): Promise<Fill> {
  const p = run(PY, ['-c', FILL, file, String(limitMib)], { timeout: 180_000 })
  ctx.check(await within(p, 200_000), `the writer of ${file} hangs`)
  const r = await p
  const out: Fill = { acked: 0, done: false }
  for (const line of r.stdout.split('\n')) {
    const m = /^(ACK|ERR|DONE) ?(\S*) ?(\S*)/.exec(line)
    if (m?.[1] === 'ACK') out.acked = Number(m[2])
    else if (m?.[1] === 'ERR') { out.err = m[2]; out.where = m[3] } else if (m?.[1] === 'DONE') out.done = true
  }
  if (r.code !== 0 && out.err === undefined) ctx.fail(`the writer of ${file} died: ${r.stderr.trim()}`)
  return out
}

/** sha256 of the first `bytes` bytes of the filler's output (the acknowledged prefix). */
async function prefixHash (file: string, bytes: number): Promise<string> {
  const r = await sh(`head -c ${bytes} "${file}" | sha256sum | cut -d' ' -f1`)
  return r.stdout.trim()
}

async function expectedPrefixHash (bytes: number): Promise<string> {
  const r = await run(PY, ['-c', `
import hashlib, sys
n = int(sys.argv[1]) >> 20
h = hashlib.sha256()
for i in range(n):
    seed = hashlib.sha256(b'%d' % i).digest()
    h.update((seed * 32768)[:1 << 20])
print(h.hexdigest())`, String(bytes)])
  return r.stdout.trim()
}

async function sha (file: string): Promise<string> {
  return (await sh(`sha256sum "${file}" | cut -d' ' -f1`)).stdout.trim()
}

async function freeMib (dir: string): Promise<number> {
  return Number((await sh(`df -m --output=avail "${dir}" | tail -1`)).stdout.trim())
}

/** A drive whose data dir is on a fresh FS_MIB tmpfs (unmounted at teardown); `fs` is its root. */
async function driveOnSmallFs (ctx: FaultContext): Promise<{ d: Drive, fs: string }> {
  const fs = ctx.tmp('strata-disk-')
  const m = await run('mount', ['-t', 'tmpfs', '-o', `size=${FS_MIB}m,mode=0700`, 'tmpfs', fs])
  if (m.code !== 0) ctx.fail(`cannot mount a tmpfs: ${m.stderr.trim()}`)
  ctx.teardown(async () => {
    if ((await run('umount', [fs])).code !== 0 && isMounted(fs)) await run('umount', ['-l', fs])
  })
  const d = await makeDrive(ctx, {
    create: async dataDir => {
      mkdirSync(join(fs, 'data'))
      symlinkSync(join(fs, 'data'), dataDir)
      const r = await strata(['init', '--data', dataDir])
      if (r.code !== 0) throw new Error(`strata init failed: ${r.stderr}`)
    }
  })
  return { d, fs }
}

/** Every check that the full disk lost nothing: the kept file, the acknowledged prefix. */
async function checkIntact (ctx: FaultContext, d: Drive, keepHash: string, partial: Fill, when: string): Promise<void> {
  ctx.check(await sha(join(d.mnt, 'keep.bin')) === keepHash, `${when}: the file written before the disk filled reads back different bytes`)
  ctx.check(await prefixHash(join(d.mnt, 'fill.bin'), partial.acked) === await expectedPrefixHash(partial.acked), `${when}: the ${partial.acked} fsync-acknowledged bytes of the filling file changed`)
}

export const diskScenarios: Scenario[] = [
  {
    name: 'disk-full',
    injects: `the data dir on a ${FS_MIB} MiB tmpfs filled by the drive's own writes, then to the last byte by another file: ENOSPC (not EIO, no hang), data intact, reads and metadata served; space freed (rm through the mount, rm of the other file): writes work again without a restart, fsck clean`,
    timeoutMs: 300_000,
    run: async ctx => {
      const { d, fs } = await driveOnSmallFs(ctx)
      const keep = join(d.mnt, 'keep.bin')
      const k = await sh(`head -c 12M /dev/urandom > "${keep}" && sync "${keep}"`)
      ctx.check(k.code === 0, `writing the first file failed: ${k.stderr.trim()}`)
      const keepHash = await sha(keep)

      // 1. The drive's own writes fill the disk.
      const full = await fill(ctx, join(d.mnt, 'fill.bin'), FS_MIB * 2)
      ctx.log(`filling through the mount: ${full.acked >> 20} MiB acknowledged, then ${full.err ?? 'no error'} at ${full.where ?? '-'}; ${await freeMib(fs)} MiB free`)
      ctx.check(!full.done, `${FS_MIB * 2} MiB fitted on a ${FS_MIB} MiB file system`)
      ctx.check(full.err === 'ENOSPC', `the writer got ${full.err ?? 'nothing'} (at ${full.where ?? '-'}), not ENOSPC`)
      await checkIntact(ctx, d, keepHash, full, 'disk full')
      // Metadata still works on a full disk (LevelDB keeps its reserve): mkdir, rename, status.
      const meta = await sh(`mkdir "${d.mnt}/dir" && mv "${d.mnt}/dir" "${d.mnt}/dir2" && ls "${d.mnt}" >/dev/null`)
      ctx.check(meta.code === 0, `metadata operations fail on a full disk: ${meta.stderr.trim()}`)
      await request(socketPath(d.dataDir), 'status', {}, undefined, 10_000)

      // 2. Free space by deleting through the mount: writing works again, no restart.
      const pid = d.pid()
      const rm = await sh(`rm "${d.mnt}/fill.bin"`)
      ctx.check(rm.code === 0, `rm through the full mount failed: ${rm.stderr.trim()}`)
      const again = await fill(ctx, join(d.mnt, 'after-rm.bin'), 16)
      ctx.check(again.done, `writing after rm through the mount: ${again.err ?? '?'} at ${again.where ?? '-'} (${await freeMib(fs)} MiB free)`)

      // 3. Something else takes the disk to the last byte (also LevelDB's reserve).
      const other = join(fs, 'other-program.bin')
      await sh(`dd if=/dev/zero of="${other}" bs=1M status=none 2>/dev/null || true`)
      ctx.log(`another program filled the disk: ${await freeMib(fs)} MiB free`)
      const blocked = await fill(ctx, join(d.mnt, 'fill.bin'), 16)
      ctx.check(blocked.err === 'ENOSPC', `writing on a disk filled by another program: ${blocked.err ?? 'no error'} at ${blocked.where ?? '-'}, not ENOSPC`)
      const small = await sh(`mkdir -p "${d.mnt}/more" && for i in $(seq 1 20); do echo "$i" > "${d.mnt}/more/f$i" || exit 1; done`)
      ctx.log(`small files on the full disk: ${small.code === 0 ? 'written' : small.stderr.trim().split('\n')[0] ?? ''}`)
      ctx.check(small.code === 0 || /No space left/.test(small.stderr), `small writes on a full disk fail with something else than ENOSPC: ${small.stderr.trim()}`)
      await checkIntact(ctx, d, keepHash, blocked, 'disk filled by another program')

      // 4. That program's file goes: writing works again, still the same daemon.
      await sh(`rm -f "${other}"`)
      const last = await fill(ctx, join(d.mnt, 'after-free.bin'), 16)
      ctx.check(last.done, `writing once the other file is gone: ${last.err ?? '?'} at ${last.where ?? '-'}`)
      const meta2 = await sh(`mkdir "${d.mnt}/dir3" && mv "${d.mnt}/after-free.bin" "${d.mnt}/dir3/" && ls -R "${d.mnt}" >/dev/null`)
      ctx.check(meta2.code === 0, `metadata operations after space was freed: ${meta2.stderr.trim()}`)
      ctx.check(d.pid() === pid, 'the daemon was restarted')
      ctx.check(await prefixHash(join(d.mnt, 'dir3', 'after-free.bin'), 16 << 20) === await expectedPrefixHash(16 << 20), 'the file written after space was freed reads back different bytes')
      ctx.check(await sha(keep) === keepHash, 'the first file changed')

      // 5. A clean unmount, and the volume opens and checks clean (no torn record breaks it).
      const expect = (await sh(`cd "${d.mnt}" && find . | sort && find . -type f | sort | xargs sha256sum`)).stdout
      await d.unmount()
      const problems = await fsckProblems(d.dataDir)
      ctx.check(problems === '', `after the disk was full: ${problems}`)
      await d.mount()
      const got = (await sh(`cd "${d.mnt}" && find . | sort && find . -type f | sort | xargs sha256sum`)).stdout
      ctx.check(got === expect, `the files differ after a remount:\n    before ${expect.trim().replace(/\n/g, '\n           ')}\n    after  ${got.trim().replace(/\n/g, '\n           ')}`)
    }
  }
]
