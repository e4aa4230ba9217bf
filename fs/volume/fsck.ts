/**
 * fsck: verifies every metadata record, every manifest reference, every block (hash, BEK
 * custody, AEAD tag), every reference count and link count, and every wrapped key's custody,
 * and reports what is wrong by path. With repair it fixes what can be fixed without data from
 * elsewhere: reference and link counts, dangling entries, unreferenced blocks and records.
 */
import { K, decodeDirent, decodeInode, decodeManifest, decodeBlockKey, decodeXattr, encodeBlockKey, type Inode } from './records.js'
import { MetaStore, type BatchOp } from './meta-store.js'
import { IntegrityError } from '../errors.js'
import { ROOT_INO, type FsckProblem, type FsckReport } from './types.js'
import type { StrataVolume } from './strata-volume.js'

export interface FsckOptions {
  repair?: boolean
  /** Decrypt every block (default true); false checks presence and key custody only. */
  verifyData?: boolean
}

function describe (err: unknown): { kind: FsckProblem['kind'], detail: string } {
  const e = err as Error & { code?: string, name?: string }
  const kind: FsckProblem['kind'] = e.name === 'BlockCorruptError'
    ? 'block-corrupt'
    : e.name === 'BlockMissingError'
      ? 'block-missing'
      : e.name === 'KeyCustodyError' ? 'key-custody' : 'record-corrupt'
  return { kind, detail: e.message }
}

export async function fsck (vol: StrataVolume, options: FsckOptions = {}): Promise<FsckReport> {
  await vol.sync()
  return await vol.exclusive(async () => await check(vol, options))
}

async function check (vol: StrataVolume, options: FsckOptions): Promise<FsckReport> {
  const meta = vol.meta
  const problems: FsckProblem[] = []
  const repairs: BatchOp[] = []
  let repaired = 0
  const report = (p: FsckProblem): void => { problems.push(p) }

  for (const p of await vol.keys.verifyKeys()) report({ path: p.key, kind: 'key-custody', detail: p.problem })
  for (const ns of await vol.keys.namespaces()) {
    try { await meta.nsKeys(ns) } catch (err) { report({ path: K.namespace(ns), ...describe(err) }) }
  }

  // Inodes.
  const inodes = new Map<number, Inode>()
  // Unreadable inode records: reported once the tree walk knows their path (else by key below).
  const corrupt = new Map<number, { key: string, err: unknown }>()
  for await (const [key, value] of meta.range('i/')) {
    const ino = parseInt(key.slice(2), 16)
    try {
      const { ns, body } = await meta.open(key, value)
      inodes.set(ino, decodeInode(key, ino, ns, body))
    } catch (err) { corrupt.set(ino, { key, err }) }
  }

  // The tree, from the root: paths, link counts, dangling entries.
  const paths = new Map<number, string>([[ROOT_INO, '/']])
  const links = new Map<number, number>()
  const subdirs = new Map<number, number>()
  const queue = [ROOT_INO]
  while (queue.length > 0) {
    const dir = queue.shift() as number
    for await (const [key, value] of meta.range(K.direntPrefix(dir))) {
      let d
      try {
        d = decodeDirent(key, (await meta.open(key, value)).body)
      } catch (err) { report({ path: `${paths.get(dir) ?? key}`, ...describe(err) }); continue }
      const path = (paths.get(dir) === '/' ? '/' : `${paths.get(dir) ?? '?'}/`) + d.name.toString('utf8')
      const child = inodes.get(d.ino)
      const bad = corrupt.get(d.ino)
      if (bad !== undefined) {
        // Not dangling: the inode exists but its record is damaged (never delete the entry).
        const { detail } = describe(bad.err)
        if (!paths.has(d.ino)) report({ path, kind: 'record-corrupt', detail: `inode record ${bad.key}: ${detail}` })
        paths.set(d.ino, paths.get(d.ino) ?? path)
        continue
      }
      if (child === undefined) {
        report({ path, kind: 'dangling-entry', detail: `entry names inode ${d.ino}, which does not exist` })
        repairs.push({ type: 'del', key })
        continue
      }
      links.set(d.ino, (links.get(d.ino) ?? 0) + 1)
      if (!paths.has(d.ino)) paths.set(d.ino, path)
      if (child.type === 'dir') {
        subdirs.set(dir, (subdirs.get(dir) ?? 0) + 1)
        queue.push(d.ino)
      }
    }
  }
  // The root has its path from the start (no entry names it), so a damaged root record is reported here too.
  for (const [ino, { key, err }] of corrupt) {
    if (ino === ROOT_INO) report({ path: '/', kind: 'record-corrupt', detail: `inode record ${key}: ${describe(err).detail}` })
    else if (!paths.has(ino)) report({ path: key, ...describe(err) })
  }
  const orphans = new Set<number>()
  for await (const key of meta.meta.keys({ gte: 'o/', lt: 'o/\xff' })) orphans.add(parseInt(key.slice(2), 16))
  for (const [ino, inode] of inodes) {
    const path = paths.get(ino)
    if (path === undefined) {
      if (!orphans.has(ino)) report({ path: K.inode(ino), kind: 'orphan-inode', detail: `inode ${ino} has no directory entry` })
      continue
    }
    const want = inode.type === 'dir' ? 2 + (subdirs.get(ino) ?? 0) : (links.get(ino) ?? 0)
    if (inode.nlink !== want) {
      report({ path, kind: 'nlink', detail: `link count is ${inode.nlink}, entries say ${want}` })
      inode.nlink = want
      repairs.push(await vol.inodeOp(inode))
    }
  }

  // Manifests and blocks.
  const refs = new Map<string, number>() // `${ns}/${id}` -> references counted
  const verified = new Set<string>()
  // An unreadable manifest record hides references: counts must then never be lowered (a repair
  // would free a block the damaged record still names).
  let hiddenRefs = false
  for await (const [key, value] of meta.range('m/')) {
    const ino = parseInt(key.slice(2, key.indexOf('/', 2)), 16)
    const path = paths.get(ino) ?? K.inode(ino)
    let ns: string
    let entry
    try {
      const rec = await meta.open(key, value)
      ns = rec.ns
      entry = decodeManifest(key, rec.body)
    } catch (err) { hiddenRefs = true; report({ path, ...describe(err) }); continue }
    const ref = `${ns}/${entry.id}`
    refs.set(ref, (refs.get(ref) ?? 0) + 1)
    if (verified.has(ref)) continue
    verified.add(ref)
    try {
      if (options.verifyData === false) {
        if (!await vol.blocks.has(Buffer.from(entry.id, 'hex'))) throw Object.assign(new IntegrityError(`block ${entry.id} is missing`, 'ERR_BLOCK_MISSING'), { name: 'BlockMissingError' })
      } else {
        await vol.loadBlock(ns, entry.id)
      }
    } catch (err) {
      if (!(err instanceof Error) || !('code' in err)) throw err
      report({ path, ...describe(err) })
    }
  }

  // Block-key records against the references counted.
  const known = new Set<string>()
  for await (const [key, value] of meta.range('k/')) {
    const [, ns, id] = key.split('/')
    if (ns === undefined || id === undefined) continue
    known.add(id)
    let rec
    try {
      if (MetaStore.envelopeNamespace(key, value) !== ns) throw new IntegrityError(`${key} is sealed under another namespace`, 'ERR_RECORD_CORRUPT')
      rec = decodeBlockKey(key, (await meta.open(key, value)).body)
    } catch (err) { report({ path: key, ...describe(err) }); continue }
    const counted = refs.get(`${ns}/${id}`) ?? 0
    if (rec.refs !== counted) {
      const keep = hiddenRefs && counted < rec.refs
      report({ path: key, kind: 'refcount', detail: `block ${id} records ${rec.refs} references, manifests hold ${counted}${keep ? ' (not lowered: a manifest record is unreadable)' : ''}` })
      if (keep) continue
      if (counted === 0) {
        repairs.push({ type: 'del', key }, { type: 'del', key: K.dedup(ns, rec.tag) }, { type: 'put', key: K.gc(ns, id), value: new Uint8Array(0) })
      } else {
        rec.refs = counted
        repairs.push({ type: 'put', key, value: await meta.seal(ns, key, encodeBlockKey(rec)) })
      }
    }
  }
  for (const ref of refs.keys()) {
    const [ns, id] = ref.split('/') as [string, string]
    if (!known.has(id)) report({ path: K.blockKey(ns, id), kind: 'record-corrupt', detail: `block ${id} is referenced but has no block key record` })
  }

  // Extended attributes.
  for await (const [key, value] of meta.range('x/')) {
    const ino = parseInt(key.slice(2, key.indexOf('/', 2)), 16)
    try {
      decodeXattr(key, (await meta.open(key, value)).body)
    } catch (err) { report({ path: paths.get(ino) ?? K.inode(ino), ...describe(err) }) }
    if (!inodes.has(ino)) {
      report({ path: key, kind: 'orphan-inode', detail: `extended attribute of inode ${ino}, which does not exist` })
      repairs.push({ type: 'del', key })
    }
  }

  // Stored blocks nothing names (blocks already queued for the GC are not news).
  const queued = new Set<string>()
  for await (const key of meta.meta.keys({ gte: 'g/', lt: 'g/\xff' })) queued.add(key.slice(key.lastIndexOf('/') + 1))
  let blocks = 0
  const orphanBlocks: Buffer[] = []
  for await (const id of vol.blocks.ids()) {
    blocks++
    const hex = id.toString('hex')
    if (!known.has(hex) && !queued.has(hex) && !vol.isInflight(hex)) {
      report({ path: `block ${hex}`, kind: 'orphan-block', detail: 'stored block is not referenced by any file' })
      orphanBlocks.push(id)
    }
  }

  if (options.repair === true) {
    // Unreferenced blocks are queued for the GC, which checks again before deleting.
    for (const id of orphanBlocks) repairs.push({ type: 'put', key: K.gc('-', id.toString('hex')), value: new Uint8Array(0) })
    await meta.write(repairs, { sync: true })
    repaired = repairs.length > 0 || orphanBlocks.length > 0 ? problems.filter(p => ['refcount', 'dangling-entry', 'nlink', 'orphan-block'].includes(p.kind)).length : 0
  }
  // Unreferenced blocks are garbage, not damage: a crash between storing a block and committing
  // the metadata that names it leaves one, and GC removes it.
  const ok = problems.every(p => p.kind === 'orphan-block')
  if (options.repair === true && orphanBlocks.length > 0) setImmediate(() => { vol.gc().catch(() => {}) })
  return { ok, problems, inodes: inodes.size, blocks, repaired }
}
