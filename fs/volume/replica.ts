/**
 * The volume's side of sync: captures local changes as change sets (for this device's log) and
 * applies other devices' change sets, ordering them with version vectors.
 *
 * Objects: an inode object per file id (attributes, blocks with wrapped keys, xattrs) and a
 * dirent object per (parent file id, name). Local state per object lives in sealed `V/…`
 * records: its version vector, the hash of the state last exported or applied (so nothing is
 * logged twice), and for dirents the name and child, so a removal can be described.
 *
 * Capture: MetaStore tells us every committed batch; the keys say which inodes and entries
 * changed; a short debounce later their current state is exported, each changed object's vector
 * gains one for this device, and the change set goes to `onChanges` (the log) before the new
 * vectors are stored. Changes made while applying remote change sets are not captured (an
 * AsyncLocalStorage marks that work).
 *
 * Apply: an object whose vector is not newer than ours is ignored. A newer one is applied
 * through the volume's ordinary operations (mkdir, create, link, rename, unlink, setattr, xattrs)
 * and `replaceContent` for file content. A concurrent one is a conflict: for file content the
 * newer mtime wins (ties by device id, then state) and the other side becomes a conflict copy
 * beside it, named after its device and time; its id derives from the losing state, so every
 * device makes the same copy without logging it. A removal concurrent with an edit keeps the
 * edit; a directory that gained entries is not removed. Objects that cannot apply yet (parent
 * unknown, file open here) wait and are retried.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { createHash } from 'node:crypto'
import { constants as C } from 'node:fs'
import type { StrataVolume } from './strata-volume.js'
import { decodeDirent, decodeManifest } from './records.js'
import { ROOT_INO, type FileType } from './types.js'
import type { BatchOp } from './meta-store.js'
import { PendingObjects, type Waiting } from './replica-pending.js'
import {
  bumpVv, compareVv, mergeVv, stateHash, vvLeq, vvText, type VvOrder,
  type ChangeSet, type DirentObject, type InodeObject, type NekCarried, type SyncObject, type VersionVector
} from './sync-objects.js'

export type { ChangeSet, SyncObject, InodeObject, DirentObject, VersionVector } from './sync-objects.js'

export interface ReplicaInit {
  /** This device's id (its peer id). */
  device: string
  /** Append a change set to this device's log; resolves once it is stored. */
  onChanges: (cs: ChangeSet) => Promise<void>
  /** A person-readable device name for conflict copies (default: the id's last 8 characters). */
  deviceLabel?: (device: string) => string
  /** Debounce of change capture. */
  flushDelayMs?: number
  /**
   * Blocks (hex ids) just sealed into a file that is still open here. Its change set waits until
   * it is closed; peers told now can fetch the blocks meanwhile (a hint: they verify and may drop it).
   */
  onBlocksSealed?: (ids: string[]) => void
  onError?: (what: string, err: Error) => void
}

interface InodeState { vv: VersionVector, h: string, by: string, names: string[] }
/**
 * `pv`: the vector of the change that put the current child under this name. A removal that
 * covers it removes that child even when the entry's vector also holds unrelated concurrent
 * history (this device replaced and removed the name too: `write x.tmp; mv x.tmp x` on both
 * sides of a partition).
 */
interface DirentState { vv: VersionVector, h: string, by: string, p: string, n: string, c: string, t: FileType, dead?: boolean, pv?: VersionVector }

const SCANNED = 'V/scanned'
/** Present while a replica runs: found at start, the last run ended in a crash. */
const RUNNING = 'V/running'
const TYPE_BITS: Record<FileType, number> = {
  file: C.S_IFREG, dir: C.S_IFDIR, symlink: C.S_IFLNK, fifo: C.S_IFIFO, socket: C.S_IFSOCK, chardev: C.S_IFCHR, blockdev: C.S_IFBLK
}

export class Replica {
  private readonly vol: StrataVolume
  private readonly init: ReplicaInit
  private readonly applying = new AsyncLocalStorage<true>()
  private changedInodes = new Set<number>()
  private changedEntries = new Set<string>()
  private timer: NodeJS.Timeout | undefined
  private chain: Promise<unknown> = Promise.resolve()
  /** Inode objects of files not placed here yet: a dirent object will place them. */
  private readonly incoming = new Map<string, { ns: string, o: InodeObject }>()
  private deferred: Waiting[] = []
  /** Both of the above, stored (they outlive the log entries that brought them). */
  private readonly waiting: PendingObjects
  private loaded: Promise<void> | undefined
  private retryTimer: NodeJS.Timeout | undefined
  private started = false
  /** Manifest records of open files committed since the last announcement. */
  private sealed: string[] = []
  private announceTimer: NodeJS.Timeout | undefined
  private readonly observer = (ops: readonly BatchOp[]): void => { this.observe(ops) }

  constructor (components: { volume: StrataVolume }, init: ReplicaInit) {
    this.vol = components.volume
    this.init = init
    this.waiting = new PendingObjects(this.vol.meta)
  }

  /** Start capturing changes; the first start on a volume exports everything already in it. */
  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    this.vol.meta.observer = this.observer
    const first = await this.vol.meta.raw(SCANNED) === undefined
    const crashed = await this.vol.meta.raw(RUNNING) !== undefined
    if (first || crashed) {
      // Everything (first start), or everything again after a crash: changes committed to the
      // volume but not yet logged were only in memory. Unchanged objects hash alike and are
      // not logged again; entries removed meanwhile are found through their sync state.
      await this.scan(ROOT_INO)
      if (crashed) for await (const key of this.vol.meta.meta.keys({ gte: 'V/d/', lt: 'V/d0' })) this.changedEntries.add(key.slice(2))
      await this.flush()
    }
    await this.vol.meta.write([{ type: 'put', key: SCANNED, value: new Uint8Array(0) }, { type: 'put', key: RUNNING, value: new Uint8Array(0) }], { sync: true })
    await this.loadWaiting()
    this.scheduleRetry()
  }

  /** Objects that waited when the last process ended (once, before the first apply). */
  private async loadWaiting (): Promise<void> {
    this.loaded ??= this.waiting.load().then(list => {
      for (const w of list) {
        if (w.incoming === true && w.o.k === 'i') this.incoming.set(w.o.fid, { ns: w.ns, o: w.o })
        else this.deferred.push(w)
      }
    })
    await this.loaded
  }

  private scheduleRetry (): void {
    if (this.deferred.length === 0 || this.retryTimer !== undefined || !this.started) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      this.apply({ ns: this.vol.rootNamespace, objects: [] }).catch(err => { this.init.onError?.('apply', err as Error) })
    }, 1000)
    this.retryTimer.unref()
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    if (this.vol.meta.observer === this.observer) this.vol.meta.observer = undefined
    clearTimeout(this.timer)
    clearTimeout(this.retryTimer)
    clearTimeout(this.announceTimer)
    this.sealed = []
    await this.flush()
    await this.vol.meta.write([{ type: 'del', key: RUNNING }], { sync: true })
  }

  /** Objects waiting to apply (a parent not known yet, a file open here). */
  get pending (): number { return this.deferred.length + this.incoming.size }

  // ---- capture ---------------------------------------------------------------------------

  private observe (ops: readonly BatchOp[]): void {
    if (this.applying.getStore() === true) return
    for (const op of ops) {
      const k = op.key
      const kind = k[0]
      if ((kind === 'i' || kind === 'm' || kind === 'x') && k[1] === '/') {
        const ino = parseInt(k.slice(2, 16), 16)
        if (Number.isSafeInteger(ino) && ino !== ROOT_INO) this.changedInodes.add(ino)
        if (kind === 'm' && op.type === 'put' && this.init.onBlocksSealed !== undefined && this.vol.isBusy(ino)) this.sealed.push(k)
      } else if (kind === 'd' && k[1] === '/') {
        this.changedEntries.add(k)
      }
    }
    this.schedule(this.init.flushDelayMs ?? 30)
    this.scheduleAnnounce()
  }

  /** Tell peers about blocks of open files every 100 ms while they are written (one message per batch). */
  private scheduleAnnounce (): void {
    if (this.sealed.length === 0 || this.announceTimer !== undefined || !this.started) return
    this.announceTimer = setTimeout(() => {
      this.announceTimer = undefined
      this.announce().catch(err => { this.init.onError?.('announce', err as Error) })
    }, 100)
    this.announceTimer.unref()
  }

  /**
   * Announce what the manifest records hold now, not each sealed version: a block rewritten in
   * place (a read-modify-write seals after every write that fills it) is announced once, as it
   * stands at the end of the delay, so peers do not fetch versions nothing will reference. Files
   * closed by then (small files, a quick `dd`) are left to their change set.
   */
  private async announce (): Promise<void> {
    const keys = new Set(this.sealed)
    this.sealed = []
    const ids = new Set<string>()
    for (const key of keys) {
      // Closed meanwhile: its change set follows within the capture delay and names the blocks.
      if (!this.vol.isBusy(parseInt(key.slice(2, 16), 16))) continue
      const rec = await this.vol.meta.get(key)
      // Only the root namespace syncs: blocks of other namespaces stay on this device.
      if (rec !== undefined && rec.ns === this.vol.rootNamespace) ids.add(decodeManifest(key, rec.body).id)
    }
    if (ids.size > 0 && this.started) this.init.onBlocksSealed?.([...ids])
  }

  private schedule (ms: number): void {
    if (this.changedInodes.size + this.changedEntries.size === 0 || this.timer !== undefined || !this.started) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.flush().catch(err => { this.init.onError?.('capture', err as Error) })
    }, ms)
  }

  private serial<T> (fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn)
    this.chain = p.catch(() => {})
    return p
  }

  /** Export what changed since the last flush, log it, then remember the new vectors. */
  async flush (): Promise<void> {
    await this.serial(async () => { await this.capture() })
  }

  private async capture (): Promise<void> {
    const inodes = this.changedInodes
    const entries = this.changedEntries
    this.changedInodes = new Set()
    this.changedEntries = new Set()
    try {
      await this.captureThese(inodes, entries)
    } catch (err) {
      // Nothing of it is lost: what failed (a full disk, a key rotated away meanwhile) is
      // exported again on the next flush, from the volume's state then.
      for (const ino of inodes) this.changedInodes.add(ino)
      for (const e of entries) this.changedEntries.add(e)
      this.schedule(1000)
      throw err
    }
  }

  private async captureThese (inodes: Set<number>, entries: Set<string>): Promise<void> {
    {
      const byNs = new Map<string, { objects: SyncObject[], ops: BatchOp[] }>()
      const add = async (ns: string, o: SyncObject, key: string, state: InodeState | DirentState): Promise<void> => {
        let g = byNs.get(ns)
        if (g === undefined) byNs.set(ns, g = { objects: [], ops: [] })
        g.objects.push(o)
        g.ops.push({ type: 'put', key, value: await this.vol.meta.seal(ns, key, Buffer.from(JSON.stringify(state))) })
      }
      for (const ino of inodes) {
        if (this.vol.isBusy(ino)) { this.changedInodes.add(ino); continue } // exported once sealed and closed
        const inode = await this.vol.getInode(ino).catch(() => undefined)
        if (inode === undefined || inode.fid === '' || (inode.nlink === 0 && inode.type !== 'dir')) continue
        const o = await this.exportInode(ino)
        const key = `V/i/${inode.fid}`
        const st = await this.readState<InodeState>(key)
        const h = stateHash(o)
        if (st?.h === h) continue
        o.vv = bumpVv(st?.vv ?? {}, this.init.device)
        await add(inode.ns, o, key, { vv: o.vv, h, by: o.by, names: st?.names ?? [] })
      }
      const dead: Array<[string, SyncObject, string, DirentState]> = []
      const newVv = new Map<string, VersionVector>()
      for (const g of byNs.values()) for (const o of g.objects) if (o.k === 'i') newVv.set(o.fid, o.vv)
      const names: Array<[string, string, string]> = []
      for (const ekey of entries) {
        const key = `V/${ekey}`
        const rec = await this.vol.meta.get(ekey)
        if (rec !== undefined) {
          const pino = parseInt(ekey.slice(2, 16), 16)
          const parent = await this.vol.getInode(pino).catch(() => undefined)
          if (parent === undefined || parent.fid === '') continue
          const st = await this.readState<DirentState>(key)
          const d = decodeDirent(ekey, rec.body)
          const child = await this.vol.getInode(d.ino).catch(() => undefined)
          if (child === undefined || child.fid === '') continue
          const o: DirentObject = { k: 'd', p: parent.fid, n: d.name.toString('base64'), c: child.fid, t: d.type, vv: {}, by: this.init.device }
          const h = stateHash(o)
          if (st?.h === h) continue
          o.vv = bumpVv(st?.vv ?? {}, this.init.device)
          await add(parent.ns, o, key, { vv: o.vv, h, by: o.by, p: o.p, n: o.n, c: o.c, t: o.t, pv: o.vv })
          names.push([parent.ns, child.fid, ekey])
          continue
        }
        // Gone: describe the removal from what we last logged or applied (the parent may be gone too).
        const srec = await this.vol.meta.get(key)
        if (srec === undefined) continue
        const st = JSON.parse(srec.body.toString('utf8')) as DirentState
        if (st.dead === true) continue
        const cv = newVv.get(st.c) ?? (await this.readState<InodeState>(`V/i/${st.c}`))?.vv ?? {}
        const o: DirentObject = { k: 'd', p: st.p, n: st.n, c: st.c, t: st.t, dead: true, cv, vv: bumpVv(st.vv, this.init.device), by: this.init.device }
        dead.push([srec.ns, o, key, { ...st, vv: o.vv, h: stateHash(o), by: o.by, dead: true }])
      }
      // Files before directories, so a removed tree empties before its directories go.
      dead.sort((x, y) => Number((x[1] as DirentObject).t === 'dir') - Number((y[1] as DirentObject).t === 'dir'))
      // Removals last: a rename arrives as "new name" then "old name gone", so a file never
      // loses its last name on the receiving side.
      for (const [ns, o, key, st] of dead) await add(ns, o, key, st)
      for (const [ns, g] of byNs) {
        await this.init.onChanges({ ns, objects: g.objects, keys: await this.keysFor(ns, g.objects) })
        await this.vol.meta.write(g.ops)
      }
      for (const [ns, fid, ekey] of names) await this.addName(ns, fid, ekey)
      // Files that were busy: look again soon. Their release may commit nothing (its data was
      // sealed already), so no batch would tell us when they are free.
      this.schedule(Math.max(250, this.init.flushDelayMs ?? 30))
    }
  }

  /** The wrapped NEK records of the versions these objects' block keys name (a rotation here reaches the peers with them). */
  private async keysFor (ns: string, objects: SyncObject[]): Promise<NekCarried[]> {
    const versions = new Set<number>()
    for (const o of objects) if (o.k === 'i') for (const b of o.blocks ?? []) versions.add(b.v)
    const out: NekCarried[] = []
    for (const v of versions) out.push({ v, rec: Buffer.from(await this.vol.keys.exportNek(ns, v)).toString('base64') })
    return out
  }

  private async exportInode (ino: number): Promise<InodeObject> {
    const inode = await this.vol.getInode(ino)
    const o: InodeObject = {
      k: 'i', fid: inode.fid, type: inode.type, mode: inode.mode & 0o7777, uid: inode.uid, gid: inode.gid,
      mtime: inode.mtime.toString(), size: inode.type === 'dir' ? 0 : inode.size, rdev: inode.rdev, vv: {}, by: this.init.device
    }
    if (inode.target !== undefined) o.target = inode.target.toString('base64')
    if (inode.type === 'file') o.blocks = await this.vol.blockList(ino)
    const names = await this.vol.listxattr(ino)
    if (names.length > 0) {
      o.xattrs = []
      for (const n of names.sort()) o.xattrs.push([n, (await this.vol.getxattr(ino, n)).toString('base64')])
    }
    return o
  }

  /** Mark every inode and entry under a directory as changed (first start on a volume). */
  private async scan (dirIno: number): Promise<void> {
    for (const e of await this.vol.readdir(dirIno)) {
      this.changedInodes.add(e.ino)
      this.changedEntries.add(await this.vol.entryKey(dirIno, e.name))
      if (e.type === 'dir') await this.scan(e.ino)
    }
  }

  // ---- sync state records ------------------------------------------------------------------

  private async readState<T> (key: string): Promise<T | undefined> {
    const rec = await this.vol.meta.get(key)
    return rec === undefined ? undefined : JSON.parse(rec.body.toString('utf8')) as T
  }

  private async writeState (ns: string, key: string, state: InodeState | DirentState): Promise<void> {
    await this.vol.meta.write([{ type: 'put', key, value: await this.vol.meta.seal(ns, key, Buffer.from(JSON.stringify(state))) }])
  }

  private async addName (ns: string, fid: string, entryKey: string): Promise<void> {
    const key = `V/i/${fid}`
    // The file may not have been exported yet (still open): start its state with the name.
    const st = await this.readState<InodeState>(key) ?? { vv: {}, h: '', by: '', names: [] }
    if (st.names.includes(entryKey)) return
    st.names = [entryKey, ...st.names].slice(0, 16)
    await this.writeState(ns, key, st)
  }

  // ---- apply -------------------------------------------------------------------------------

  /** Blocks a change set names that this device does not hold (fetch them before apply). */
  async missingBlocks (cs: ChangeSet): Promise<string[]> {
    const out = new Set<string>()
    for (const o of cs.objects) {
      if (o.k !== 'i' || o.blocks === undefined) continue
      for (const b of o.blocks) if (!out.has(b.id) && !await this.vol.blocks.has(Buffer.from(b.id, 'hex'))) out.add(b.id)
    }
    return [...out]
  }

  /** Apply another device's change set. Its blocks must be in the block store already. */
  async apply (cs: ChangeSet): Promise<{ applied: number, pending: number }> {
    return await this.serial(async () => await this.applying.run(true, async () => {
      let applied = 0
      // Local changes not yet logged must get their vectors first, or a remote change would
      // look newer than them and overwrite them.
      await this.capture()
      await this.loadWaiting()
      // Key versions first: the blocks of this set may be wrapped under a NEK rotated in on its sender.
      for (const k of cs.keys ?? []) await this.vol.keys.importNek(cs.ns, k.v, Buffer.from(k.rec, 'base64'))
      const mine = (os: SyncObject[]): Waiting[] => os.map(o => ({ ns: cs.ns, o }))
      const todo = [...this.deferred, ...mine(cs.objects.filter(o => o.k === 'i')), ...mine(cs.objects.filter(o => o.k === 'd' && o.dead !== true)),
        ...mine(cs.objects.filter(o => o.k === 'd' && o.dead === true))]
      this.deferred = []
      try {
        let progress = true
        while (progress && todo.length > 0) {
          progress = false
          for (let i = 0; i < todo.length;) {
            const { ns, o } = todo[i] as Waiting
            if (this.changedInodes.size + this.changedEntries.size > 0) await this.capture()
            const done = o.k === 'i' ? await this.applyInode(ns, o) : (o.dead === true ? await this.applyRemoval(ns, o) : await this.applyEntry(ns, o))
            if (done) { todo.splice(i, 1); applied++; progress = true } else i++
          }
        }
      } finally {
        // Also when an object threw: what had waited keeps waiting (its stored copy stays; the
        // change set's own objects come again, its log entry is not marked applied).
        this.deferred = todo
      }
      // Stored before the caller marks the entry applied: a crash from here on loses nothing.
      await this.waiting.save([...todo, ...[...this.incoming.values()].map(x => ({ ...x, incoming: true }))])
      this.scheduleRetry()
      return { applied, pending: this.pending }
    }))
  }

  private async applyInode (ns: string, o: InodeObject): Promise<boolean> {
    const key = `V/i/${o.fid}`
    const st = await this.readState<InodeState>(key)
    const order = compareVv(st?.vv ?? {}, o.vv)
    if (order === 'equal' || order === 'after') return true
    const ino = await this.vol.inoOfFid(o.fid)
    if (ino === undefined) {
      this.incoming.set(o.fid, { ns, o })
      if (st !== undefined) await this.resurrect(ns, o, st) // removed here, edited there since: the edit wins
      return true
    }
    if (this.vol.isBusy(ino)) return false
    let winner = o
    if (order === 'concurrent') {
      const local = await this.exportInode(ino)
      local.vv = st?.vv ?? {}
      local.by = st?.by !== undefined && st.by !== '' ? st.by : this.init.device
      if (stateHash(local) !== stateHash(o)) {
        winner = wins(local, o) ? local : o
        const loser = winner === o ? local : o
        if (loser.type === 'file') await this.conflictCopy(ns, loser, st?.names ?? [])
      }
    }
    if (winner === o) await this.materialise(ino, o)
    await this.writeState(ns, key, { vv: mergeVv(st?.vv ?? {}, o.vv), h: stateHash(winner), by: winner.by, names: st?.names ?? [] })
    return true
  }

  /** Where a dirent object lands here and how it orders against our state; undefined: parent unknown. */
  private async entryTarget (o: DirentObject): Promise<{ pino: number, name: Buffer, ekey: string, key: string, st: DirentState | undefined, order: VvOrder } | undefined> {
    const pino = await this.vol.inoOfFid(o.p)
    if (pino === undefined) return undefined
    const name = Buffer.from(o.n, 'base64')
    const ekey = await this.vol.entryKey(pino, name)
    const key = `V/${ekey}`
    const st = await this.readState<DirentState>(key)
    return { pino, name, ekey, key, st, order: compareVv(st?.vv ?? {}, o.vv) }
  }

  private async applyEntry (ns: string, o: DirentObject): Promise<boolean> {
    const target = await this.entryTarget(o)
    if (target === undefined) return false
    const { pino, name, ekey, key, st, order } = target
    if (order === 'equal' || order === 'after') return true
    let childIno = await this.vol.inoOfFid(o.c)
    if (childIno === undefined && !this.incoming.has(o.c)) return false
    if (childIno !== undefined && this.vol.isBusy(childIno) && (await this.vol.getInode(childIno)).type === 'dir') return false
    const cur = await this.vol.entry(pino, name)
    const curFid = cur === undefined ? undefined : (await this.vol.getInode(cur.ino)).fid
    const record = async (): Promise<void> => {
      await this.writeState(ns, key, { vv: mergeVv(st?.vv ?? {}, o.vv), h: stateHash(o), by: o.by, p: o.p, n: o.n, c: o.c, t: o.t, pv: o.vv })
      await this.addName(ns, o.c, ekey)
    }
    if (curFid === o.c) { await record(); return true }
    if (cur !== undefined) {
      if (order === 'concurrent' && st?.dead !== true && curFid !== undefined && curFid > o.c) {
        // Both devices put a different file under this name: the other one gets a conflict name.
        const mine = await this.vol.getInode(cur.ino)
        await this.place(ns, o.c, childIno, pino, conflictName(name, this.label(o.by), mtimeOf(this.incoming.get(o.c)?.o) ?? (childIno !== undefined ? (await this.vol.getInode(childIno)).mtime : mine.mtime)))
        await this.writeState(ns, key, { ...(st as DirentState), vv: mergeVv(st?.vv ?? {}, o.vv) })
        return true
      }
      const mine = await this.vol.getInode(cur.ino)
      if (order === 'concurrent' || mine.type === 'dir') {
        await this.vol.rename(pino, name, pino, conflictName(name, this.label(st?.by ?? this.init.device), mine.mtime))
      } else {
        await this.vol.unlink(pino, name)
      }
      childIno = await this.vol.inoOfFid(o.c)
    }
    await this.place(ns, o.c, childIno, pino, name)
    await record()
    return true
  }

  private async applyRemoval (ns: string, o: DirentObject): Promise<boolean> {
    const target = await this.entryTarget(o)
    if (target === undefined) return true // the directory is gone here, and its entries with it
    const { pino, name, key, st, order } = target
    if (order === 'equal' || order === 'after') return true
    const merged: DirentState = { vv: mergeVv(st?.vv ?? {}, o.vv), h: stateHash(o), by: o.by, p: o.p, n: o.n, c: o.c, t: o.t, dead: true }
    const cur = await this.vol.entry(pino, name)
    const curIno = cur === undefined ? undefined : await this.vol.getInode(cur.ino)
    const cst = await this.readState<InodeState>(`V/i/${o.c}`)
    const editedSince = cst !== undefined && !vvLeq(cst.vv, o.cv ?? {})
    // Did this device name the child here by a change the removal has not seen?
    const renamedHere = st?.pv !== undefined && st.dead !== true ? !vvLeq(st.pv, o.vv) : order === 'concurrent'
    if (curIno === undefined || curIno.fid !== o.c || renamedHere || editedSince) {
      // Nothing to remove, another file holds the name now, or this device changed it meanwhile:
      // keep what is here (a removal never beats a concurrent edit).
      if (curIno?.fid === o.c) merged.dead = undefined
      await this.writeState(ns, key, merged)
      return true
    }
    if (curIno.type === 'dir') {
      if (this.vol.isBusy(curIno.ino)) return false
      try {
        await this.vol.rmdir(pino, name)
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENOTEMPTY') throw err
        merged.dead = undefined // it gained entries here: keep it
      }
    } else {
      await this.vol.unlink(pino, name)
    }
    await this.writeState(ns, key, merged)
    return true
  }

  /** Give a file id a name here: a new entry for a known file, a move for a directory, or a new file. */
  private async place (ns: string, fid: string, ino: number | undefined, pino: number, name: Buffer): Promise<void> {
    if (ino !== undefined) {
      const inode = await this.vol.getInode(ino)
      if (inode.type !== 'dir') { await this.vol.link(ino, pino, name); return }
      const from = (await this.vol.readdir(inode.parent)).find(e => e.ino === ino)
      if (from !== undefined) { await this.vol.rename(inode.parent, from.name, pino, name); return }
    }
    const o = this.incoming.get(fid)?.o
    if (o === undefined) throw new Error(`no state for file ${fid}`)
    const opts = { mode: o.mode, uid: o.uid, gid: o.gid, fid }
    let made: number
    if (o.type === 'dir') made = (await this.vol.mkdir(pino, name, opts)).ino
    else if (o.type === 'symlink') made = (await this.vol.symlink(pino, name, Buffer.from(o.target ?? '', 'base64'), opts)).ino
    else if (o.type === 'file') {
      const { attr, fh } = await this.vol.create(pino, name, opts)
      await this.vol.release(fh)
      made = attr.ino
    } else made = (await this.vol.mknod(pino, name, { ...opts, mode: TYPE_BITS[o.type] | o.mode, rdev: o.rdev })).ino
    await this.materialise(made, o)
    this.incoming.delete(fid)
    await this.writeState(ns, `V/i/${fid}`, { vv: o.vv, h: stateHash(o), by: o.by, names: [] })
  }

  /** Make a local inode hold an inode object's state. */
  private async materialise (ino: number, o: InodeObject): Promise<void> {
    const inode = await this.vol.getInode(ino)
    if (o.type === 'file' && inode.type === 'file') {
      const have = await this.vol.blockList(ino)
      const want = o.blocks ?? []
      if (inode.size !== o.size || have.length !== want.length || have.some((b, i) => b.id !== want[i]?.id || b.i !== want[i]?.i)) {
        await this.vol.replaceContent(ino, want, o.size, BigInt(o.mtime))
      }
    }
    await this.vol.setattr(ino, { mode: o.mode, uid: o.uid, gid: o.gid, mtime: BigInt(o.mtime) })
    const want = new Map(o.xattrs ?? [])
    for (const n of await this.vol.listxattr(ino)) if (!want.has(n)) await this.vol.removexattr(ino, n)
    for (const [n, v] of want) {
      const value = Buffer.from(v, 'base64')
      const cur = await this.vol.getxattr(ino, n).catch(() => undefined)
      if (cur === undefined || !cur.equals(value)) await this.vol.setxattr(ino, n, value)
    }
  }

  /** The losing side of a content conflict, as a file beside the winner that every device makes alike. */
  private async conflictCopy (ns: string, loser: InodeObject, names: string[]): Promise<void> {
    const fid = createHash('sha256').update(`strata/conflict/v1|${loser.fid}|${vvText(loser.vv)}|${stateHash(loser)}`).digest('hex').slice(0, 32)
    if (await this.vol.inoOfFid(fid) !== undefined) return
    let pino = ROOT_INO
    let name = Buffer.from(loser.fid)
    for (const ekey of names) {
      const d = await this.readState<DirentState>(`V/${ekey}`)
      const p = d === undefined ? undefined : await this.vol.inoOfFid(d.p)
      if (d !== undefined && p !== undefined) { pino = p; name = Buffer.from(d.n, 'base64'); break }
    }
    const copy: InodeObject = { ...loser, fid, vv: {} }
    this.incoming.set(fid, { ns, o: copy })
    await this.place(ns, fid, undefined, pino, conflictName(name, this.label(loser.by), BigInt(loser.mtime)))
  }

  /** A file removed here that another device edited meanwhile comes back under its old names. */
  private async resurrect (ns: string, o: InodeObject, st: InodeState): Promise<void> {
    for (const ekey of st.names) {
      const d = await this.readState<DirentState>(`V/${ekey}`)
      if (d === undefined || d.dead !== true || d.c !== o.fid) continue
      const pino = await this.vol.inoOfFid(d.p)
      if (pino === undefined || await this.vol.entry(pino, Buffer.from(d.n, 'base64')) !== undefined) continue
      await this.place(ns, o.fid, await this.vol.inoOfFid(o.fid), pino, Buffer.from(d.n, 'base64'))
      await this.writeState(ns, `V/${ekey}`, { ...d, dead: undefined })
    }
  }

  private label (device: string): string {
    return this.init.deviceLabel?.(device) ?? device.slice(-8)
  }
}

/** Does a beat b? Newer mtime, then device id, then state: the same answer on every device. */
function wins (a: InodeObject, b: InodeObject): boolean {
  const ta = BigInt(a.mtime)
  const tb = BigInt(b.mtime)
  if (ta !== tb) return ta > tb
  if (a.by !== b.by) return a.by > b.by
  return stateHash(a) > stateHash(b)
}

const mtimeOf = (o: InodeObject | undefined): bigint | undefined => o === undefined ? undefined : BigInt(o.mtime)

/** "report.txt" → "report (conflict from laptop 2026-12-02 17.05.11).txt", within 255 bytes. */
export function conflictName (name: Buffer, device: string, mtime: bigint): Buffer {
  const s = name.toString('latin1')
  const dot = s.lastIndexOf('.')
  const stem = dot > 0 ? s.slice(0, dot) : s
  const ext = dot > 0 ? s.slice(dot) : ''
  const when = new Date(Number(mtime / 1_000_000n)).toISOString().slice(0, 19).replace('T', ' ').replace(/:/g, '.')
  const mark = Buffer.from(` (conflict from ${device.replace(/[/\0]/g, '_')} ${when})`)
  const extB = Buffer.from(ext, 'latin1')
  const stemB = Buffer.from(stem, 'latin1').subarray(0, Math.max(1, 255 - mark.length - extB.length))
  return Buffer.concat([stemB, mark, extB])
}

