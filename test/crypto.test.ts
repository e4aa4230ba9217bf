/**
 * fs/crypto: offset/padding tables, round trips, tamper tests (every bit position class of a
 * stored block fails closed), and golden vectors that freeze the formats of FORMAT.md.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import {
  paddedLength, sealBlock, openBlock, blockAad, wrapKey, unwrapKey, dedupTag, MIN_PADDED, BLOCK_OVERHEAD
} from '../fs/crypto/block-crypto.js'
import { deriveNamespaceKeys, sealRecord, openRecord, nameTag } from '../fs/crypto/record-crypto.js'

const fixed = (seed: string) => (n: number): Buffer => createHash('sha256').update(seed).digest().subarray(0, n)
const key = (s: string): Buffer => createHash('sha256').update(`key:${s}`).digest()

t.test('paddedLength table', async t => {
  const bs = 1024 * 1024
  const table: Array<[number, number]> = [
    [0, MIN_PADDED], [1, 4096], [4096, 4096], [4097, 8192], [65535, 65536], [65537, 131072],
    [bs - 1, bs], [bs, bs], [bs + 5, bs]
  ]
  for (const [len, want] of table) t.equal(paddedLength(len, bs), want, `len ${len}`)
  t.equal(paddedLength(70_000, 65536), 65536, 'never above the block size')
})

t.test('seal/open round trip for sizes around the padding buckets', async t => {
  for (const len of [0, 1, 4095, 4096, 4097, 100_000, 1024 * 1024]) {
    const pt = Buffer.alloc(len, 0x5a)
    const padded = paddedLength(len, 1024 * 1024)
    const s = sealBlock(key('b'), pt, padded, blockAad('ns1'))
    t.equal(s.stored.length, padded + BLOCK_OVERHEAD)
    const r = openBlock(key('b'), s.stored, blockAad('ns1'), s.id)
    t.ok(r.ok && r.plaintext.subarray(0, len).equals(pt) && r.plaintext.subarray(len).every(b => b === 0), `len ${len}`)
  }
})

t.test('any flipped bit of a stored block fails closed', async t => {
  const s = sealBlock(key('b'), Buffer.alloc(5000, 1), 8192, blockAad('ns1'))
  const positions = [0, 1, 12, 13, 14, 4000, s.stored.length - 17, s.stored.length - 16, s.stored.length - 1]
  for (const at of positions) {
    const bad = Buffer.from(s.stored)
    bad[at] = (bad[at] as number) ^ 0x01
    const withId = openBlock(key('b'), bad, blockAad('ns1'), s.id)
    t.same(withId, { ok: false, problem: at === 0 ? 'format' : 'hash' }, `byte ${at} against the id`)
    const noId = openBlock(key('b'), bad, blockAad('ns1'))
    t.equal(noId.ok, false, `byte ${at} against the tag alone`)
  }
  t.same(openBlock(key('other'), s.stored, blockAad('ns1'), s.id), { ok: false, problem: 'tag' }, 'wrong key')
  t.same(openBlock(key('b'), s.stored, blockAad('ns2'), s.id), { ok: false, problem: 'tag' }, 'moved to another namespace')
})

t.test('key wrap: round trip, wrong AAD or any flipped bit fails', async t => {
  const w = wrapKey(key('nek'), key('bek'), Buffer.from('aad'))
  t.equal(w.length, 60)
  t.ok(unwrapKey(key('nek'), w, Buffer.from('aad'))?.equals(key('bek')))
  t.equal(unwrapKey(key('nek'), w, Buffer.from('aae')), undefined)
  for (let i = 0; i < w.length; i += 7) {
    const bad = Buffer.from(w); bad[i] = (bad[i] as number) ^ 0x80
    t.equal(unwrapKey(key('nek'), bad, Buffer.from('aad')), undefined, `byte ${i}`)
  }
})

t.test('records: AAD binds the record key', async t => {
  const k = deriveNamespaceKeys(key('nmk'), 'ns1')
  const sealed = sealRecord(k.record, 'i/01', Buffer.from('{"x":1}'))
  t.same(openRecord(k.record, 'i/01', sealed)?.toString(), '{"x":1}')
  t.equal(openRecord(k.record, 'i/02', sealed), undefined, 'moved to another key')
  t.not(nameTag(k.name, 1, Buffer.from('a')), nameTag(k.name, 2, Buffer.from('a')), 'tags differ per directory')
  t.not(k.record.toString('hex'), deriveNamespaceKeys(key('nmk'), 'ns2').record.toString('hex'), 'keys differ per namespace')
})

t.test('golden vectors (fs/crypto/FORMAT.md)', async t => {
  const golden = JSON.parse(readFileSync(new URL('../../test/fixtures/crypto-golden.json', import.meta.url), 'utf8')) as Record<string, string>
  const block = sealBlock(key('bek'), Buffer.from('Strata golden block'), 4096, blockAad('0011223344556677'), fixed('nonce'))
  t.equal(block.id.toString('hex'), golden.blockId, 'block id')
  t.equal(createHash('sha256').update(block.stored).digest('hex'), golden.blockId)
  t.equal(block.stored.subarray(0, 64).toString('hex'), golden.blockPrefix, 'block bytes')
  const ks = deriveNamespaceKeys(key('nmk'), '0011223344556677')
  t.equal(ks.record.toString('hex'), golden.recordKey, 'HKDF record key')
  t.equal(ks.name.toString('hex'), golden.nameKey, 'HKDF name key')
  t.equal(ks.dedup.toString('hex'), golden.dedupKey, 'HKDF dedup key')
  t.equal(sealRecord(ks.record, 'i/00000000000001', Buffer.from('{"t":"dir"}'), fixed('rnonce')).toString('hex'), golden.record, 'record envelope')
  t.equal(nameTag(ks.name, 1, Buffer.from('hello.txt')), golden.nameTag, 'name tag')
  t.equal(dedupTag(ks.dedup, Buffer.from('Strata golden block')).toString('hex'), golden.dedupTag, 'dedup tag')
  t.equal(wrapKey(key('nek'), key('bek'), Buffer.from('strata/bek/v1|0011223344556677|1|00'), fixed('wnonce')).toString('hex'), golden.wrappedBek, 'wrapped BEK')
})
