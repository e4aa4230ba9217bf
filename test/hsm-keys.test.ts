import t from 'tap'
import {
  KeyHierarchy, MemoryKeyRecordStore, Pkcs11Token, keyCheckValue, kcvEqual, KeyCustodyError, NamespaceExistsError,
  NamespaceKeyNotFoundError, KeyInUseError, TeamDisabledError, TeamDestroyedError, InvalidKeyArgumentError
} from '../hsm/index.js'
import type { CustodyFaultHook, KeyRecordStore } from '../hsm/index.js'
import { makeToken, openToken, until } from './helpers/softhsm.js'
import type { TestToken } from './helpers/softhsm.js'

interface T { teardown: (fn: () => void | Promise<void>) => void }

/** A token plus a key hierarchy over a fresh store; `reopen()` simulates a daemon restart. */
async function setup (t: T, init: { nekCacheMs?: number, custodyFaultHook?: CustodyFaultHook } = {}, store: KeyRecordStore = new MemoryKeyRecordStore()): Promise<{
  tok: TestToken, token: Pkcs11Token, kh: KeyHierarchy, store: KeyRecordStore, reopen: () => Promise<{ token: Pkcs11Token, kh: KeyHierarchy }>
}> {
  const tok = await makeToken(t)
  const open: Array<{ token: Pkcs11Token, kh: KeyHierarchy }> = []
  const start = async (): Promise<{ token: Pkcs11Token, kh: KeyHierarchy }> => {
    const token = await openToken(tok)
    let kh: KeyHierarchy
    try {
      kh = await KeyHierarchy.open({ token, store }, init)
    } catch (err) {
      await token.close()
      throw err
    }
    open.push({ token, kh })
    return { token, kh }
  }
  const closeAll = async (): Promise<void> => {
    for (const o of open.splice(0)) { await o.kh.close(); await o.token.close() }
  }
  t.teardown(closeAll)
  const first = await start()
  return {
    tok,
    ...first,
    store,
    reopen: async () => { await closeAll(); return await start() }
  }
}

const ns = 'ns-one'

t.test('first open creates TEK v1 and records it', async t => {
  const { token, kh, store } = await setup(t)
  const teks = await token.findSecretKeys('strata-tek-v')
  t.same(teks.map(k => k.label), ['strata-tek-v1'])
  t.ok(await store.get('team'))
  t.ok(await store.get('tek/0000000001'))
  t.equal(await kh.teamState(), 'enabled')
  t.same(await kh.namespaces(), [])
  t.same(await kh.verifyKeys(), [])
})

t.test('NEK create / unwrap round trip and versions', async t => {
  const { kh, store, reopen } = await setup(t)
  await kh.createNamespace(ns)
  await kh.createNamespace('ns-two')
  await t.rejects(kh.createNamespace(ns), NamespaceExistsError)
  await t.rejects(kh.createNamespace('a/b'), InvalidKeyArgumentError)
  t.same(await kh.namespaces(), [ns, 'ns-two'])
  t.equal(await kh.currentNekVersion(ns), 1)
  const a = await kh.nek(ns)
  t.equal(a.key.byteLength, 32)
  t.equal(a.version, 1)
  t.ok(kcvEqual(a.kcv, keyCheckValue(a.key)))
  const copy = a.key.slice()
  t.notOk(copy.every(b => b === 0))
  const record = await store.get('nek/ns-one/0000000001')
  t.equal(record?.byteLength, 73, 'record layout of FORMAT.md')
  t.notOk(Buffer.from(record ?? []).includes(Buffer.from(copy)), 'plaintext not in the record')

  kh.clearCache()
  t.same((await kh.nek(ns, 1)).key, copy, 'unwrapped again by the token: same key')
  const other = await kh.nek('ns-two')
  t.notSame(other.key, copy)

  const next = await kh.addNekVersion(ns)
  t.ok(next > 1, `a higher version (drawn at random above the last, so two devices rotating at once do not collide): ${next}`)
  t.equal(await kh.currentNekVersion(ns), next)
  const v2 = await kh.nek(ns)
  t.equal(v2.version, next)
  t.notSame(v2.key, copy)
  t.same((await kh.nek(ns, 1)).key, copy, 'old version still readable')
  t.same(await kh.nekVersions(ns), [1, next])
  await t.rejects(kh.retireNekVersion(ns, next), KeyInUseError)
  await t.rejects(kh.addNekVersion('nope'), NamespaceKeyNotFoundError)
  await t.rejects(kh.nek('nope'), NamespaceKeyNotFoundError)

  const v1 = await kh.nek(ns, 1)
  await kh.retireNekVersion(ns, 1)
  t.ok(v1.key.every(b => b === 0), 'retired version zeroed in the cache')
  t.same(await kh.nekVersions(ns), [next])
  await t.rejects(kh.nek(ns, 1), NamespaceKeyNotFoundError)
  await t.rejects(kh.retireNekVersion(ns, 1), NamespaceKeyNotFoundError)

  const v2copy = v2.key.slice()
  const again = await reopen()
  t.same((await again.kh.nek(ns)).key, v2copy, 'readable after a restart')
  t.same(await again.kh.verifyKeys(), [])
})

t.test('NEK cache: counters, single flight, zeroing', async t => {
  const { kh } = await setup(t)
  await kh.createNamespace(ns)
  const s0 = kh.cacheStats()
  t.same(s0, { hits: 0, misses: 0, tokenCalls: 0, size: 0 })
  const all = await Promise.all(Array.from({ length: 100 }, async () => await kh.nek(ns)))
  const s1 = kh.cacheStats()
  t.equal(s1.tokenCalls, 1, '100 concurrent misses, one token call')
  t.equal(s1.hits + s1.misses, 100)
  t.equal(s1.size, 1)
  t.ok(all.every(n => n === all[0]))
  await kh.nek(ns)
  t.equal(kh.cacheStats().hits, s1.hits + 1)
  t.equal(kh.cacheStats().tokenCalls, 1)

  const held = all[0]?.key
  if (held === undefined) throw new Error('no key')
  t.notOk(held.every(b => b === 0))
  kh.clearCache()
  t.ok(held.every(b => b === 0), 'clear() zeroes the lent buffer')
  t.equal(kh.cacheStats().size, 0)
  await kh.nek(ns)
  t.equal(kh.cacheStats().tokenCalls, 2)
})

t.test('NEK cache: expiry zeroes and unwraps again', async t => {
  const { kh } = await setup(t, { nekCacheMs: 10 })
  await kh.createNamespace(ns)
  const n = await kh.nek(ns)
  const copy = n.key.slice()
  t.equal(kh.cacheStats().size, 1)
  await until(() => kh.cacheStats().size === 0)
  t.ok(n.key.every(b => b === 0), 'expired buffer zeroed')
  const again = await kh.nek(ns)
  t.same(again.key, copy)
  t.equal(kh.cacheStats().tokenCalls, 2)
})

t.test('custody hook: a flipped bit at any step is caught and nothing is stored', async t => {
  let target: { step: string, keyRef: string } | undefined
  const hook: CustodyFaultHook = (step, keyRef, key) => {
    // A keyRef ending in "/" matches any version of that namespace (new versions are drawn at random).
    if (target !== undefined && step === target.step && (keyRef === target.keyRef || (target.keyRef.endsWith('/') && keyRef.startsWith(target.keyRef)))) {
      key[0] = (key[0] ?? 0) ^ 0x01
      target = undefined
    }
  }
  const { kh, store } = await setup(t, { custodyFaultHook: hook })
  // Create: generated -> wrapped -> unwrapped.
  for (const step of ['generated', 'wrapped', 'unwrapped']) {
    const name = `fault-${step}`
    const keyRef = `nek/${name}/0000000001`
    target = { step, keyRef }
    const err = await kh.createNamespace(name).then(() => undefined, (e: unknown) => e)
    t.ok(err instanceof KeyCustodyError, `${step}: KeyCustodyError`)
    t.equal((err as KeyCustodyError).keyRef, keyRef, `${step}: names the key`)
    t.equal(target, undefined, `${step}: the hook fired`)
    t.equal(await store.get(keyRef), undefined, `${step}: nothing stored`)
    t.same(await kh.nekVersions(name), [])
  }
  // addNekVersion after a generated-step fault: the new version is not stored.
  await kh.createNamespace(ns)
  target = { step: 'generated', keyRef: 'nek/ns-one/' }
  await t.rejects(kh.addNekVersion(ns), KeyCustodyError)
  t.same(await kh.nekVersions(ns), [1])
  // Read: a flip right after the token unwrapped it is caught, and not cached.
  target = { step: 'unwrapped', keyRef: 'nek/ns-one/0000000001' }
  await t.rejects(kh.nek(ns), { name: 'KeyCustodyError', keyRef: 'nek/ns-one/0000000001' })
  t.equal(kh.cacheStats().size, 0)
  t.equal((await kh.nek(ns)).version, 1, 'the stored key itself is fine')
})

t.test('tampered records are custody errors naming the record', async t => {
  const { kh, store } = await setup(t)
  await kh.createNamespace(ns)
  const keyRef = 'nek/ns-one/0000000001'
  const good = await store.get(keyRef)
  if (good === undefined) throw new Error('no record')
  // format byte, TEK version, IV, KCV, ciphertext, tag
  for (const [what, offset] of [['format', 0], ['tekVersion', 4], ['iv', 5], ['kcv', 17], ['ciphertext', 25], ['tag', 72]] as const) {
    const bad = good.slice()
    bad[offset] = (bad[offset] ?? 0) ^ 0x10
    await store.put(keyRef, bad)
    kh.clearCache()
    await t.rejects(kh.nek(ns), { name: 'KeyCustodyError', keyRef }, `${what} flipped`)
    const problems = await kh.verifyKeys()
    t.same(problems.map(p => p.key), [keyRef], `verifyKeys reports ${what}`)
  }
  await store.put(keyRef, good.subarray(0, 40))
  await t.rejects(kh.nek(ns), { name: 'KeyCustodyError', keyRef }, 'truncated')
  await store.put(keyRef, good)
  t.same(await kh.verifyKeys(), [])
  t.equal((await kh.nek(ns)).version, 1)
})

t.test('tampered TEK custody record stops start-up', async t => {
  const { kh, store, reopen } = await setup(t)
  await kh.createNamespace(ns)
  const rec = await store.get('tek/0000000001')
  if (rec === undefined) throw new Error('no tek record')
  const json = JSON.parse(new TextDecoder().decode(rec)) as { checkValue: string }
  const flipped = (parseInt(json.checkValue.slice(0, 2), 16) ^ 1).toString(16).padStart(2, '0') + json.checkValue.slice(2)
  await store.put('tek/0000000001', new TextEncoder().encode(JSON.stringify({ ...json, checkValue: flipped })))
  await t.rejects(reopen(), { name: 'KeyCustodyError', keyRef: 'tek/0000000001' })
  await store.put('tek/0000000001', rec)
  const { kh: kh2 } = await reopen()
  t.equal((await kh2.nek(ns)).version, 1)
})

t.test('disable / enable, persisted in the token across restarts', async t => {
  const { kh, reopen } = await setup(t)
  await kh.createNamespace(ns)
  const held = await kh.nek(ns)
  const copy = held.key.slice()
  await kh.disableTeam()
  t.ok(held.key.every(b => b === 0), 'cache emptied and zeroed at once')
  t.equal(await kh.teamState(), 'disabled')
  await t.rejects(kh.nek(ns), TeamDisabledError)
  await t.rejects(kh.createNamespace('another'), TeamDisabledError)
  await t.rejects(kh.rotateTek(), TeamDisabledError)

  const r1 = await reopen()
  t.equal(await r1.kh.teamState(), 'disabled', 'still disabled after a restart')
  await t.rejects(r1.kh.nek(ns), TeamDisabledError)
  await r1.kh.enableTeam()
  t.equal(await r1.kh.teamState(), 'enabled')
  t.same((await r1.kh.nek(ns)).key, copy)

  const r2 = await reopen()
  t.equal(await r2.kh.teamState(), 'enabled')
  t.same((await r2.kh.nek(ns)).key, copy)
})

t.test('destroy: crypto-shred, also after a restart', async t => {
  const { token, kh, store, reopen } = await setup(t)
  await kh.createNamespace(ns)
  await kh.addNekVersion(ns)
  const held = await kh.nek(ns)
  await kh.destroyTeam()
  t.ok(held.key.every(b => b === 0))
  t.equal(await kh.teamState(), 'destroyed')
  await t.rejects(kh.nek(ns), TeamDestroyedError)
  await t.rejects(kh.createNamespace('x'), TeamDestroyedError)
  t.same(await token.findSecretKeys('strata-tek-v'), [], 'no TEK object left')
  const left: string[] = []
  for await (const [k] of store.entries('')) left.push(k)
  t.same(left, ['team'], 'only the team record (marked destroyed) is left')

  const r = await reopen()
  t.equal(await r.kh.teamState(), 'destroyed')
  await t.rejects(r.kh.nek(ns), TeamDestroyedError)
  t.same(await r.token.findSecretKeys('strata-tek-v'), [], 'no new TEK was created')
})

t.test('TEK gone from the token while the store knows the team: destroyed, not re-created', async t => {
  const { token, kh, reopen } = await setup(t)
  await kh.createNamespace(ns)
  for (const k of await token.findSecretKeys('strata-tek-v')) await token.destroyObject(k.handle)
  const r = await reopen()
  t.equal(await r.kh.teamState(), 'destroyed')
  await t.rejects(r.kh.nek(ns), TeamDestroyedError)
  t.same(await r.token.findSecretKeys('strata-tek-v'), [])
})

t.test('NEK export and import (a rotation made on another device): custody-checked, never a second key under one version', async t => {
  const { kh, store } = await setup(t)
  await kh.createNamespace(ns)
  await kh.createNamespace('ns-two')
  const v = await kh.addNekVersion(ns)
  const key = Buffer.from((await kh.nek(ns, v)).key)
  const rec = await kh.exportNek(ns, v)
  t.equal(await kh.importNek(ns, v, rec), false, 'a version already here with the same key: nothing to do')
  await t.rejects(kh.importNek(ns, 1, rec), { name: 'KeyCustodyError', message: /different key under this version/ }, 'another key under a version that is here: refused')
  await store.del(`nek/${ns}/${String(v).padStart(10, '0')}`)
  kh.clearCache()
  await t.rejects(kh.importNek(ns, v, await kh.exportNek('ns-two', 1)), KeyCustodyError, 'a record of another namespace or version fails its binding (AAD)')
  t.notOk((await kh.nekVersions(ns)).includes(v), 'nothing stored for it')
  t.equal(await kh.importNek(ns, v, rec), true, 'the real record is adopted')
  t.same(Buffer.from((await kh.nek(ns, v)).key), key, 'and unwraps to the same key')
  t.equal(await kh.currentNekVersion(ns), v, 'the highest version is current')
  t.same(await kh.verifyKeys(), [])
})
