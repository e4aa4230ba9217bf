/**
 * NEK rotation: a new NEK version becomes current (new blocks use it at once), then every BEK of
 * the namespace and its metadata key are re-wrapped from the old version to the new one, in
 * small batches under the volume's metadata lock so reads and writes go on meanwhile. A record
 * `r/<ns>` makes it resumable: after a crash, resumeRotations() finishes the work. Old versions
 * are retired (destroyed) once nothing references them.
 */
import { keyCheckValue, kcvEqual } from '../../hsm/custody.js'
import { KeyCustodyError } from '../../hsm/errors.js'
import { unwrapKey, wrapKey } from '../crypto/block-crypto.js'
import { K, decodeBlockKey, encodeBlockKey } from './records.js'
import { bekAad } from './block-keys.js'
import type { BatchOp } from './meta-store.js'
import type { StrataVolume } from './strata-volume.js'
import type { RotationProgress } from './types.js'

const BATCH = 256

export interface RotateNekOptions {
  onProgress?: (p: RotationProgress) => void
  signal?: AbortSignal
}

interface RotationRecord { from: number, to?: number }

export async function rotateNek (vol: StrataVolume, ns: string, options: RotateNekOptions = {}): Promise<void> {
  const meta = vol.meta
  const rkey = K.rotation(ns)
  const raw = await meta.raw(rkey)
  let rec: RotationRecord
  if (raw === undefined) {
    rec = { from: await vol.keys.currentNekVersion(ns) }
    await meta.write([{ type: 'put', key: rkey, value: Buffer.from(JSON.stringify(rec)) }], { sync: true })
  } else {
    rec = JSON.parse(Buffer.from(raw).toString('utf8')) as RotationRecord
  }
  if (rec.to === undefined) {
    const current = await vol.keys.currentNekVersion(ns)
    rec.to = current > rec.from ? current : await vol.keys.addNekVersion(ns)
    await meta.write([{ type: 'put', key: rkey, value: Buffer.from(JSON.stringify(rec)) }], { sync: true })
  }
  const to = rec.to

  let total = 1
  for await (const _ of meta.meta.keys({ gte: K.blockKeyPrefix(ns), lt: K.blockKeyPrefix(ns) + '\xff' })) total++
  let done = 0

  // The metadata key first.
  await vol.exclusive(async () => {
    const nsRec = await meta.namespaceRecord(ns)
    if (nsRec.v !== to) {
      const { nmk } = await meta.unwrapNmk(ns)
      await meta.write([await meta.wrapNmk(ns, to, nmk)], { sync: true })
    }
  })
  options.onProgress?.({ done: ++done, total })

  /** Re-wrap the given block-key records under version `to`; returns how many changed. */
  const rewrap = async (keys: string[]): Promise<number> => {
    const ops: BatchOp[] = []
    for (const key of keys) {
      const r = await meta.get(key)
      if (r === undefined) continue
      const bk = decodeBlockKey(key, r.body)
      if (bk.v === to) continue
      const id = key.slice(key.lastIndexOf('/') + 1)
      const kcv = Buffer.from(bk.c, 'base64')
      // NEKs are borrowed from the cache, which may zero them at any await: use them synchronously.
      const oldNek = await vol.keys.nek(ns, bk.v)
      const bek = unwrapKey(oldNek.key, Buffer.from(bk.w, 'base64'), bekAad(ns, bk.v, id))
      if (bek === undefined || !kcvEqual(keyCheckValue(bek), kcv)) throw new KeyCustodyError(key, 'block key fails its check during rotation')
      const newNek = await vol.keys.nek(ns, to)
      const wrapped = wrapKey(newNek.key, bek, bekAad(ns, to, id))
      bek.fill(0)
      const again = unwrapKey(newNek.key, wrapped, bekAad(ns, to, id))
      if (again === undefined || !kcvEqual(keyCheckValue(again), kcv)) throw new KeyCustodyError(key, 'block key changed while re-wrapping; nothing stored')
      again.fill(0)
      ops.push({ type: 'put', key, value: await meta.seal(ns, key, encodeBlockKey({ ...bk, v: to, w: wrapped.toString('base64') })) })
    }
    await meta.write(ops, { sync: true })
    return ops.length
  }

  let after = K.blockKeyPrefix(ns)
  for (;;) {
    options.signal?.throwIfAborted()
    const keys: string[] = []
    for await (const key of meta.meta.keys({ gt: after, lt: K.blockKeyPrefix(ns) + '\xff', limit: BATCH })) keys.push(key)
    if (keys.length === 0) break
    after = keys[keys.length - 1] as string
    await vol.exclusive(async () => await rewrap(keys))
    done += keys.length
    options.onProgress?.({ done: Math.min(done, total), total })
  }

  // Under the lock, so no block commit can interleave: a last sweep for records a concurrent
  // writer wrapped under the old version before it saw the new one, then retire old versions.
  await vol.exclusive(async () => {
    const all: string[] = []
    for await (const key of meta.meta.keys({ gte: K.blockKeyPrefix(ns), lt: K.blockKeyPrefix(ns) + '\xff' })) all.push(key)
    for (let i = 0; i < all.length; i += BATCH) await rewrap(all.slice(i, i + BATCH))
    for (const v of await vol.keys.nekVersions(ns)) if (v !== to) await vol.keys.retireNekVersion(ns, v)
    await meta.write([{ type: 'del', key: rkey }], { sync: true })
  })
  options.onProgress?.({ done: total, total })
}

/** Namespaces whose NEK rotation has begun and not finished (running, or interrupted by a crash). */
export async function pendingRotations (vol: StrataVolume): Promise<string[]> {
  const pending: string[] = []
  for await (const key of vol.meta.meta.keys({ gte: 'r/', lt: 'r/\xff' })) pending.push(key.slice(2))
  return pending
}

/** Finish every rotation a crash interrupted. */
export async function resumeRotations (vol: StrataVolume, options: RotateNekOptions = {}): Promise<string[]> {
  const pending = await pendingRotations(vol)
  for (const ns of pending) await rotateNek(vol, ns, options)
  return pending
}
