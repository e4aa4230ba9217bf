// Helpers for the net tests: real LogBlockStores in temp dirs and real libp2p nodes on 127.0.0.1,
// each cleaned up by t.teardown (also on failure).
import '../../net/shim.js'
import type { Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClassicLevel } from 'classic-level'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { LogBlockStore, type BlockStore, type Db } from '../../fs/store/index.js'
import { createStrataNode, type AllowPeer, type StrataNode } from '../../net/node.js'

export interface TestBlock { id: Buffer, bytes: Buffer }

export function makeBlocks (n: number, minSize: number, maxSize: number = minSize): TestBlock[] {
  const out: TestBlock[] = []
  for (let i = 0; i < n; i++) {
    const bytes = randomBytes(minSize + Math.floor(Math.random() * (maxSize - minSize + 1)))
    out.push({ id: createHash('sha256').update(bytes).digest(), bytes })
  }
  return out
}

/** A LogBlockStore in a fresh temp dir, closed and removed at teardown. */
export async function makeStore (t: Test): Promise<BlockStore> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-net-'))
  const db: Db = new ClassicLevel<string, Uint8Array>(join(dir, 'db'), { keyEncoding: 'utf8', valueEncoding: 'view' })
  const store = new LogBlockStore({ index: db.sublevel<string, Uint8Array>('blk', { keyEncoding: 'utf8', valueEncoding: 'view' }) }, { dir: join(dir, 'blocks'), segmentBytes: 8 * 1024 * 1024 })
  await store.open()
  t.teardown(async () => {
    await store.close().catch(() => {})
    await db.close().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  })
  return store
}

export async function putAll (store: BlockStore, blocks: TestBlock[]): Promise<void> {
  for (const b of blocks) await store.put(b.id, b.bytes)
}

export interface NodeOptions {
  key?: PrivateKey
  allow?: AllowPeer
  listen?: string[]
  announce?: string[]
}

/** A node on 127.0.0.1 (random port unless listen is given), stopped at teardown. */
export async function makeNode (t: Test, opts: NodeOptions = {}): Promise<StrataNode> {
  const node = await createStrataNode({
    privateKey: opts.key ?? await generateKeyPair('Ed25519'),
    listen: opts.listen ?? ['/ip4/127.0.0.1/tcp/0'],
    ...(opts.announce !== undefined ? { announce: opts.announce } : {}),
    allowPeer: opts.allow ?? (() => true)
  })
  t.teardown(async () => { await node.stop() })
  return node
}

/** A mutable allow-list: peers are added once their ids are known. */
export function allowList (...peers: string[]): AllowPeer & { add: (p: string) => void, delete: (p: string) => void } {
  const set = new Set(peers)
  const f = ((p: string) => set.has(p)) as AllowPeer & { add: (p: string) => void, delete: (p: string) => void }
  f.add = p => { set.add(p) }
  f.delete = p => { set.delete(p) }
  return f
}

/** The first TCP listen address of a node (with /p2p/). */
export function addrOf (node: StrataNode): string {
  const a = node.getMultiaddrs().find(m => m.toString().includes('/tcp/'))
  if (a == null) throw new Error('node has no TCP address')
  return a.toString()
}

/** Wait for an event on an EventTarget, optionally one matching a predicate. */
export async function once<T = unknown> (target: EventTarget, type: string, match: (detail: T) => boolean = () => true): Promise<T> {
  return await new Promise(resolve => {
    const listener = (evt: Event): void => {
      const detail = (evt as CustomEvent<T>).detail
      if (!match(detail)) return
      target.removeEventListener(type, listener)
      resolve(detail)
    }
    target.addEventListener(type, listener)
  })
}

/** Tell `from` where `to` listens (as `peer add` or mDNS would). */
export async function introduce (from: StrataNode, to: StrataNode): Promise<void> {
  await from.peerStore.merge(to.peerId, { multiaddrs: to.getMultiaddrs() })
}
