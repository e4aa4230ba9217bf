import t from 'tap'
import { KeyHierarchy, MemoryKeyRecordStore, Pkcs11Token, KeyCustodyError, TeamDisabledError } from '../hsm/index.js'
import type { CustodyFaultHook, KeyRecordStore, RotationProgress, TokenFaults } from '../hsm/index.js'
import { makeToken, openToken } from './helpers/softhsm.js'
import type { TestToken } from './helpers/softhsm.js'

interface T { teardown: (fn: () => void | Promise<void>) => void }

/** A store that fails every NEK put after `allow` more of them: a crash in the middle of a rotation. */
class CrashingStore implements KeyRecordStore {
  allow = Infinity
  constructor (private readonly inner: MemoryKeyRecordStore) {}
  async get (key: string): Promise<Uint8Array | undefined> { return await this.inner.get(key) }
  async del (key: string): Promise<void> { await this.inner.del(key) }
  entries (prefix: string): AsyncIterable<[string, Uint8Array]> { return this.inner.entries(prefix) }
  async put (key: string, value: Uint8Array): Promise<void> {
    if (key.startsWith('nek/')) {
      if (this.allow <= 0) throw new Error('simulated crash: store write failed')
      this.allow--
    }
    await this.inner.put(key, value)
  }
}

async function open (t: T, tok: TestToken, store: KeyRecordStore, init: { custodyFaultHook?: CustodyFaultHook, faults?: TokenFaults } = {}): Promise<{ token: Pkcs11Token, kh: KeyHierarchy }> {
  const token = await openToken(tok, init.faults === undefined ? {} : { faults: init.faults })
  let kh: KeyHierarchy
  try {
    kh = await KeyHierarchy.open({ token, store }, { custodyFaultHook: init.custodyFaultHook })
  } catch (err) {
    await token.close()
    throw err
  }
  let closed = false
  const close = async (): Promise<void> => { if (!closed) { closed = true; await kh.close(); await token.close() } }
  t.teardown(close)
  return { token, kh: Object.assign(kh, { shutdown: close }) }
}

async function shutdown (kh: KeyHierarchy): Promise<void> {
  await (kh as KeyHierarchy & { shutdown: () => Promise<void> }).shutdown()
}

/** Namespaces ns-0..ns-(n-1), two NEK versions each; returns copies of every plaintext key. */
async function populate (kh: KeyHierarchy, n: number): Promise<Map<string, Uint8Array>> {
  const keys = new Map<string, Uint8Array>()
  for (let i = 0; i < n; i++) {
    await kh.createNamespace(`ns-${i}`)
    const next = await kh.addNekVersion(`ns-${i}`)
    for (const v of [1, next]) keys.set(`ns-${i}/${v}`, (await kh.nek(`ns-${i}`, v)).key.slice())
  }
  kh.clearCache()
  return keys
}

/** NEKs that do not unwrap to the expected key (empty when all are fine). */
async function mismatches (kh: KeyHierarchy, keys: Map<string, Uint8Array>): Promise<string[]> {
  kh.clearCache()
  const bad: string[] = []
  for (const [ref, key] of keys) {
    const [ns, v] = ref.split('/')
    const nek = await kh.nek(ns ?? '', Number(v))
    if (!Buffer.from(nek.key).equals(Buffer.from(key))) bad.push(ref)
  }
  return bad
}

async function tekVersionsOfRecords (store: KeyRecordStore): Promise<number[]> {
  const out = new Set<number>()
  for await (const [, v] of store.entries('nek/')) out.add(new DataView(v.buffer, v.byteOffset).getUint32(1))
  return [...out].sort()
}

async function keys (store: KeyRecordStore, prefix = ''): Promise<string[]> {
  const out: string[] = []
  for await (const [k] of store.entries(prefix)) out.push(k)
  return out
}

t.test('rotateTek re-wraps every NEK, reports progress, destroys the old TEK', async t => {
  const tok = await makeToken(t)
  const store = new MemoryKeyRecordStore()
  const { token, kh } = await open(t, tok, store)
  const plain = await populate(kh, 5)
  const progress: RotationProgress[] = []
  t.equal(await kh.rotateTek({ onProgress: p => progress.push(p) }), 2)
  t.same(progress[0], { done: 0, total: 10 })
  t.same(progress[progress.length - 1], { done: 10, total: 10 })
  t.equal(progress.length, 11)
  t.ok(progress.every((p, i) => i === 0 || p.done === (progress[i - 1]?.done ?? 0) + 1), 'progress counts up')
  t.same((await token.findSecretKeys('strata-tek-v')).map(k => k.label), ['strata-tek-v2'], 'old TEK object gone')
  t.same(await tekVersionsOfRecords(store), [2])
  t.same(await keys(store, 'tek/'), ['tek/0000000002'])
  t.same(await keys(store, 'rotation/'), [])
  t.same(await mismatches(kh, plain), [], 'every NEK readable, same key')
  t.same(await kh.verifyKeys(), [])

  // Again, then a restart.
  t.equal(await kh.rotateTek(), 3)
  await shutdown(kh)
  const r = await open(t, tok, store)
  t.same(await mismatches(r.kh, plain), [], 'every NEK readable, same key')
  t.same((await r.token.findSecretKeys('strata-tek-v')).map(k => k.label), ['strata-tek-v3'])
})

t.test('reads keep working during a rotation', async t => {
  const tok = await makeToken(t)
  const store = new MemoryKeyRecordStore()
  // Slow the token's encrypt (re-wrap) calls down so that reads interleave with the rotation.
  const { kh } = await open(t, tok, store, { faults: { stallMs: op => op === 'encrypt' ? 3 : 0 } })
  const plain = await populate(kh, 4)
  let rotating = true
  const rotation = kh.rotateTek().finally(() => { rotating = false })
  let reads = 0
  while (rotating) {
    for (const [ref, key] of plain) {
      const [ns, v] = ref.split('/')
      kh.clearCache()
      t.same((await kh.nek(ns ?? '', Number(v))).key, key)
      reads++
    }
  }
  t.equal(await rotation, 2)
  t.ok(reads > 0)
  t.same(await mismatches(kh, plain), [], 'every NEK readable, same key')
})

t.test('a crash in the middle of a rotation is finished by the next start', async t => {
  const tok = await makeToken(t)
  const store = new CrashingStore(new MemoryKeyRecordStore())
  const { token, kh } = await open(t, tok, store)
  const plain = await populate(kh, 4)
  store.allow = 3
  await t.rejects(kh.rotateTek(), { message: /simulated crash/ })
  t.same(await tekVersionsOfRecords(store), [1, 2], 'half re-wrapped')
  t.same((await token.findSecretKeys('strata-tek-v')).map(k => k.label).sort(), ['strata-tek-v1', 'strata-tek-v2'])
  t.ok(await store.get('rotation/tek'), 'rotation record left behind')
  t.same(await mismatches(kh, plain), [], 'reads work in the half-rotated state')
  await shutdown(kh)

  store.allow = Infinity
  const r = await open(t, tok, store)
  t.same(await tekVersionsOfRecords(store), [2], 'start() finished the rotation')
  t.same((await r.token.findSecretKeys('strata-tek-v')).map(k => k.label), ['strata-tek-v2'])
  t.equal(await store.get('rotation/tek'), undefined)
  t.same(await keys(store, 'tek/'), ['tek/0000000002'])
  t.same(await mismatches(r.kh, plain), [], 'every NEK readable, same key')
  t.equal(await r.kh.rotateTek(), 3, 'and the next rotation goes on from there')
})

t.test('crash before any re-wrap (right after the new TEK) also resumes', async t => {
  const tok = await makeToken(t)
  const store = new CrashingStore(new MemoryKeyRecordStore())
  const { kh } = await open(t, tok, store)
  const plain = await populate(kh, 2)
  store.allow = 0
  await t.rejects(kh.rotateTek(), { message: /simulated crash/ })
  await shutdown(kh)
  store.allow = Infinity
  const r = await open(t, tok, store)
  t.same(await tekVersionsOfRecords(store), [2])
  t.same(await mismatches(r.kh, plain), [], 'every NEK readable, same key')
})

t.test('a custody fault during a rotation stops it without storing the bad record', async t => {
  const tok = await makeToken(t)
  const store = new MemoryKeyRecordStore()
  let flip: string | undefined
  const hook: CustodyFaultHook = (step, keyRef, key) => {
    if (step === 'wrapped' && keyRef === flip) {
      key[3] = (key[3] ?? 0) ^ 0x80
      flip = undefined
    }
  }
  const { kh } = await open(t, tok, store, { custodyFaultHook: hook })
  const plain = await populate(kh, 3)
  const victim = `nek/ns-1/${String((await kh.nekVersions('ns-1'))[1]).padStart(10, '0')}`
  const before = await store.get(victim)
  flip = victim
  await t.rejects(kh.rotateTek(), { name: 'KeyCustodyError', keyRef: victim })
  t.same(await store.get(victim), before, 'the record was not replaced')
  t.same(await mismatches(kh, plain), [], 'every NEK readable, same key')
  t.equal(await kh.rotateTek(), 2, 'retried rotation completes (same target)')
  t.same(await tekVersionsOfRecords(store), [2])
  t.same(await mismatches(kh, plain), [], 'every NEK readable, same key')
})

t.test('no rotation while the team is disabled', async t => {
  const tok = await makeToken(t)
  const store = new MemoryKeyRecordStore()
  const { kh } = await open(t, tok, store)
  await populate(kh, 1)
  await kh.disableTeam()
  await t.rejects(kh.rotateTek(), TeamDisabledError)
  await kh.enableTeam()
  t.equal(await kh.rotateTek(), 2)
  t.ok(KeyCustodyError)
})
