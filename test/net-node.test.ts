// The transport: real libp2p nodes over 127.0.0.1 (TCP + Noise + yamux), the connection gater,
// per-protocol stream limits and the reconnecting peer dialer.
import '../net/shim.js'
import t from 'tap'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Connection, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { BlockExchange } from '../net/block-exchange.js'
import { BLOCKS_MAX_INBOUND_STREAMS, BLOCKS_PROTOCOL } from '../net/constants.js'
import { PeerDialer } from '../net/peer-dialer.js'
import { createStrataNode, listeningAddrs, refusedPeers } from '../net/node.js'
import { encodeRequest } from '../net/block-messages.js'
import { writeFrame } from '../net/wire.js'
import { addrOf, allowList, introduce, makeNode, makeStore, once } from './helpers/net.js'

const ECHO = '/strata-test/echo/1'

async function echoOnce (stream: Stream, data: Uint8Array): Promise<Uint8Array> {
  const got: Uint8Array[] = []
  const done = new Promise<void>(resolve => {
    stream.addEventListener('message', evt => { got.push(evt.data.subarray()) })
    stream.addEventListener('remoteCloseWrite', () => { resolve() })
    stream.addEventListener('close', () => { resolve() })
  })
  stream.send(data)
  await stream.close()
  await done
  return Buffer.concat(got)
}

t.test('two enrolled nodes connect and exchange a stream; an unlisted peer is refused both ways', async t => {
  const allowA = allowList(); const allowB = allowList()
  const a = await makeNode(t, { allow: allowA })
  const b = await makeNode(t, { allow: allowB })
  const x = await makeNode(t) // accepts anyone: the hostile host on the LAN
  allowA.add(b.peerId.toString()); allowB.add(a.peerId.toString())

  let handled = 0
  await a.handle(ECHO, async stream => {
    handled++
    stream.addEventListener('message', evt => { stream.send(evt.data) })
    stream.addEventListener('remoteCloseWrite', () => { void stream.close() })
  })

  await introduce(b, a)
  const s = await b.dialProtocol(a.peerId, ECHO)
  t.ok(Buffer.from(await echoOnce(s, Buffer.from('hello'))).equals(Buffer.from('hello')), 'echo over an enrolled connection')
  t.equal(handled, 1)
  t.equal(a.getConnections(b.peerId).length, 1, 'a keeps the connection to b')
  t.equal(s.protocol, ECHO)

  // Inbound: x knows a's address and completes Noise, a's gater refuses it before the muxer.
  await introduce(x, a)
  await t.rejects(x.dialProtocol(a.peerId, ECHO), 'an unlisted peer cannot open a stream')
  // x's own upgrade may finish (Noise carries the muxer choice) before a's refusal arrives: then
  // the connection it got is dead on arrival.
  let conn: Connection | undefined
  try { conn = await x.dial(multiaddr(addrOf(a))) } catch { conn = undefined }
  if (conn != null) {
    const c = conn
    const closed = c.status === 'open' ? once<Connection>(x, 'connection:close', d => d.id === c.id) : Promise.resolve(c)
    await t.rejects(c.newStream(ECHO), 'no stream on a refused connection')
    await closed
  }
  t.pass('x got no usable connection')
  t.equal(handled, 1, 'the handler never ran for the unlisted peer')
  t.equal(a.getConnections(x.peerId).length, 0, 'a holds no connection from x')
  t.equal(x.getConnections(a.peerId).length, 0, 'x was disconnected')
  const refused = refusedPeers(a)
  t.ok(refused.count >= 1, 'the refusal is counted for status')
  t.ok(refused.recent.every(r => r.peer === x.peerId.toString()) && refused.recent.length >= 1, 'and names the refused peer')
  t.equal(refusedPeers(b).count, 0, 'an enrolled peer is never counted as refused')

  // Outbound: a refuses to dial x by peer id, and by a bare address (x's identity only known after Noise).
  await t.rejects(a.dial(multiaddr(addrOf(x))), 'dialing a refused peer id fails')
  const bare = addrOf(x).replace(/\/p2p\/.*$/, '')
  await t.rejects(a.dial(multiaddr(bare)), 'a bare address that turns out to be a refused peer is dropped after Noise')
  t.equal(a.getConnections(x.peerId).length, 0)

  // The enrolled connection is unaffected.
  const s2 = await b.dialProtocol(a.peerId, ECHO)
  t.ok(Buffer.from(await echoOnce(s2, Buffer.from('again'))).equals(Buffer.from('again')))
})

t.test('identify: a peer learns where the other listens, or what it announces instead; a bad announce address is refused', async t => {
  const a = await makeNode(t)
  const b = await makeNode(t, { announce: ['/ip4/127.0.0.1/tcp/9'] })
  const real = listeningAddrs(b).map(String)
  t.ok(real.some(x => /\/tcp\/\d+/.test(x) && !x.includes('/tcp/9/')), `b really listens on ${real.join(' ')}`)
  t.same(b.getMultiaddrs().map(x => x.decapsulateCode(421).toString()), ['/ip4/127.0.0.1/tcp/9'], 'and announces only the announce address')
  type Identified = { listenAddrs: Array<{ toString: () => string }> }
  const aLearns = once<Identified>(a, 'peer:identify')
  const bLearns = once<Identified>(b, 'peer:identify')
  await a.dial(multiaddr(`${real[0] as string}/p2p/${b.peerId.toString()}`))
  t.same((await aLearns).listenAddrs.map(String), ['/ip4/127.0.0.1/tcp/9'], 'identify tells a the announced address')
  t.same((await bLearns).listenAddrs.map(String), listeningAddrs(a).map(String), 'and b, without announce, a\'s listen addresses')
  for (const bad of [['not-an-addr'], [''], [42]]) {
    await t.rejects(createStrataNode({ privateKey: await generateKeyPair('Ed25519'), listen: [], announce: bad as string[], allowPeer: () => true }), /announce: not a multiaddr/, `announce ${JSON.stringify(bad)}`)
  }
})

t.test('per-protocol inbound stream limit: one peer cannot open more than the limit', async t => {
  const a = await makeNode(t)
  const x = await makeNode(t)
  const ex = new BlockExchange({ node: a, store: await makeStore(t), allowPeer: () => true })
  await ex.start()
  t.teardown(async () => { await ex.stop() })

  await introduce(x, a)
  const open: Stream[] = []
  for (let i = 0; i < BLOCKS_MAX_INBOUND_STREAMS; i++) open.push(await x.dialProtocol(a.peerId, BLOCKS_PROTOCOL))
  // One more: negotiated, then reset by a; or refused outright.
  // A request on it would be answered (MISSING) if a served it; instead it must be reset.
  let refused = false
  try {
    const extra = await x.dialProtocol(a.peerId, BLOCKS_PROTOCOL)
    const outcome = extra.status !== 'open' ? Promise.resolve(extra.status) : new Promise<string>(resolve => {
      extra.addEventListener('message', () => { resolve('answered') })
      extra.addEventListener('close', evt => { resolve(evt.error != null ? 'reset' : 'closed') })
    })
    if (extra.status === 'open') await writeFrame(extra, [encodeRequest([Buffer.alloc(32, 7)])]).catch(() => {})
    refused = ['reset', 'aborted'].includes(await outcome)
  } catch {
    refused = true
  }
  t.ok(refused, `stream ${BLOCKS_MAX_INBOUND_STREAMS + 1} was reset`)
  t.ok(open.every(s => s.status === 'open'), 'the streams within the limit stay open')
  for (const s of open) s.abort(new Error('done'))
  t.equal(ex.stats().blocksSent, 0)
})

t.test('PeerDialer reconnects after the peer restarts on the same address', async t => {
  const keyB = await generateKeyPair('Ed25519')
  const allowA = allowList()
  const a = await makeNode(t, { allow: allowA })
  let b = await makeNode(t, { key: keyB })
  const addrB = addrOf(b)
  const port = Number(/\/tcp\/(\d+)/.exec(addrB)?.[1])
  allowA.add(b.peerId.toString())

  const dialer = new PeerDialer({ node: a }, { allowPeer: allowA, backoffInitialMs: 50, backoffMaxMs: 400 })
  t.throws(() => { dialer.add('not-a-peer-id') }, { name: 'InvalidParametersError' })
  const stranger = await generateKeyPair('Ed25519')
  const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
  t.throws(() => { dialer.add(peerIdFromPrivateKey(stranger).toString()) }, { name: 'InvalidParametersError' }, 'a refused peer cannot be added')
  t.throws(() => { dialer.add(b.peerId.toString(), ['/ip4/127.0.0.1/tcp/1/p2p/' + peerIdFromPrivateKey(stranger).toString()]) }, { name: 'InvalidParametersError' }, 'an address of another peer is refused')

  dialer.add(b.peerId.toString(), [addrB.replace(/\/p2p\/.*$/, '')])
  const connected = once(dialer, 'connect')
  await dialer.start()
  await dialer.start() // idempotent
  t.teardown(async () => { await dialer.stop() })
  t.same(await connected, { peer: b.peerId.toString() }, 'connected')
  t.ok(dialer.isConnected(b.peerId.toString()))

  // Kill b, then bring it back on the same port with the same key.
  const disconnected = once(dialer, 'disconnect')
  await b.stop()
  t.same(await disconnected, { peer: b.peerId.toString() }, 'noticed the drop')
  t.notOk(dialer.isConnected(b.peerId.toString()))
  const reconnected = once(dialer, 'connect')
  b = await makeNode(t, { key: keyB, listen: [`/ip4/127.0.0.1/tcp/${port}`] })
  t.same(await reconnected, { peer: b.peerId.toString() }, 'reconnected to the restarted peer')
  t.equal(a.getConnections(b.peerId).length, 1)
  const status = dialer.list()
  t.equal(status.length, 1)
  t.equal(status[0]?.failures, 0, 'backoff reset after the reconnect')

  await dialer.stop()
  await dialer.stop() // idempotent
})
