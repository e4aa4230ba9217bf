/**
 * Repair of damaged blocks: a read that finds a stored copy damaged (bits flipped in the segment
 * file) asks the volume's block repairer once, and reads again once the copy is replaced; the
 * stores' `repair` verifies what replaces the copy; BlockRepair fetches an intact copy from a
 * real libp2p peer through the block exchange (the local store already "has" the id).
 */
import '../net/shim.js'
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { makeVolume, type TestVolume } from './helpers/volume.js'
import { makeBlocks, makeNode, makeStore, putAll, introduce } from './helpers/net.js'
import { ROOT_INO, fsck } from '../fs/volume/index.js'
import { BlockExchange } from '../net/block-exchange.js'
import { BlockRepair, RepairBlockStore } from '../net/block-repair.js'

/** Flip one bit in the middle of every stored block of the (closed) volume; the intact copies. */
function damageAll (dataDir: string): Map<string, Buffer> {
  const intact = new Map<string, Buffer>()
  const dir = join(dataDir, 'blocks')
  for (const seg of readdirSync(dir).filter(n => n.endsWith('.log'))) {
    const buf = readFileSync(join(dir, seg))
    for (let o = 0; o + 40 <= buf.length;) {
      const len = buf.readUInt32BE(o + 4)
      intact.set(buf.subarray(o + 8, o + 40).toString('hex'), Buffer.from(buf.subarray(o + 40, o + 40 + len)))
      buf[o + 40 + (len >> 1)] = (buf[o + 40 + (len >> 1)] as number) ^ 0x10
      o += 40 + len
    }
    writeFileSync(join(dir, seg), buf)
  }
  return intact
}

async function damagedVolume (t: Parameters<typeof makeVolume>[0]): Promise<{ tv: TestVolume, data: Buffer, intact: Map<string, Buffer> }> {
  const tv = await makeVolume(t)
  const data = randomBytes(1_500_000)
  const { fh } = await tv.vol.create(ROOT_INO, 'f.bin')
  await tv.vol.write(fh, 0, data)
  await tv.vol.release(fh)
  await tv.close()
  const intact = damageAll(tv.dataDir)
  await tv.reopen()
  return { tv, data, intact }
}

async function readAll (tv: TestVolume, n: number): Promise<Buffer> {
  const fh = await tv.vol.open((await tv.vol.lookup(ROOT_INO, 'f.bin')).ino)
  try { return await tv.vol.read(fh, 0, n) } finally { await tv.vol.release(fh) }
}

t.test('a damaged block is repaired through the repairer and read again; fsck is then clean', async t => {
  const { tv, data, intact } = await damagedVolume(t)
  await t.rejects(readAll(tv, data.length), { name: 'BlockCorruptError', code: 'ERR_BLOCK_CORRUPT' }, 'no repairer: the integrity error stands')
  const asked: string[] = []
  tv.vol.useBlockRepair(async id => {
    asked.push(id)
    await tv.strata.blocks.repair(Buffer.from(id, 'hex'), intact.get(id) as Buffer)
    return true
  })
  t.ok((await readAll(tv, data.length)).equals(data), 'the right bytes after repair')
  t.equal(asked.length, intact.size, 'each damaged block asked for once')
  tv.vol.useBlockRepair(undefined)
  await tv.reopen()
  t.ok((await readAll(tv, data.length)).equals(data), 'the repaired copies are stored (after a reopen, no repairer)')
  t.ok((await fsck(tv.vol)).ok, 'fsck clean')
})

t.test('a repairer that fails, or offers wrong bytes, leaves the integrity error; never wrong data', async t => {
  const { tv, data, intact } = await damagedVolume(t)
  tv.vol.useBlockRepair(async () => false)
  await t.rejects(readAll(tv, data.length), { name: 'BlockCorruptError' })
  let calls = 0
  tv.vol.useBlockRepair(async id => {
    calls++
    const wrong = Buffer.from(intact.get(id) as Buffer); wrong[0] = (wrong[0] as number) ^ 1
    await tv.strata.blocks.repair(Buffer.from(id, 'hex'), wrong) // rejects: not the id's bytes
    return true
  })
  await t.rejects(readAll(tv, data.length), { name: 'BlockCorruptError' })
  t.ok(calls > 0 && calls <= intact.size, 'asked at most once per block per read')
  const report = await fsck(tv.vol)
  t.same(report.problems.map(p => p.kind), [...intact.keys()].map(() => 'block-corrupt'), 'fsck still reports each block (the repairer is asked; it fails)')
})

t.test('BlockRepair fetches an intact copy of a block the local store holds damaged, from a real peer', async t => {
  const allow = (): boolean => true
  const [good, bad] = [await makeNode(t, { allow }), await makeNode(t, { allow })]
  const goodStore = await makeStore(t)
  const exGood = new BlockExchange({ node: good, store: goodStore, allowPeer: allow })
  const badStore = new RepairBlockStore(await makeStore(t))
  const exBad = new BlockExchange({ node: bad, store: badStore, allowPeer: allow })
  await exGood.start(); await exBad.start()
  t.teardown(async () => { await exGood.stop(); await exBad.stop() })
  await introduce(bad, good)
  const [blk] = makeBlocks(1, 200_000)
  if (blk === undefined) throw new Error('no block')
  await putAll(goodStore, [blk])
  // The local store holds the id (its copy damaged on disk, which the first test covers): a plain
  // fetch would skip it as present, a repair must fetch it anyway.
  await putAll(badStore, [blk])
  const lines: string[] = []
  const log = Object.assign((f: string, ...a: unknown[]) => { lines.push(`${f} ${a.join(' ')}`) }, { error: (f: string, ...a: unknown[]) => { lines.push(`ERROR ${f} ${a.join(' ')}`) } })
  const repair = new BlockRepair({ blocks: exBad, store: badStore, peers: () => [good.peerId.toString()], log })
  const hex = blk.id.toString('hex')
  t.equal(await repair.repair(hex), true, 'repaired')
  t.ok((await badStore.get(blk.id))?.equals(blk.bytes), 'the intact copy is stored')
  t.equal(exGood.stats().blocksSent, 1, 'fetched over the network although present locally')
  t.ok(lines.some(l => l.includes('repaired block')), 'a log line says so')
  t.same(repair.stats(), { repaired: 1, failed: 0 })
  const none = new BlockRepair({ blocks: exBad, store: badStore, peers: () => [], log })
  t.equal(await none.repair(hex), false, 'no peer: not repaired')
  t.ok(lines.some(l => l.startsWith('ERROR') && l.includes('no peer')), 'and logged')
})
