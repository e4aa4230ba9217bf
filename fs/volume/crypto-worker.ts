/**
 * Worker thread of CryptoPool: seals and opens blocks with node:crypto, one pass over the data
 * (fs/crypto sealBlockInto/openBlockInto), into the output buffer the pool sent. Every buffer
 * it was sent goes back by transfer, also on failure, so the pool can reuse it.
 */
import { parentPort } from 'node:worker_threads'
import { sealBlockInto, openBlockInto } from '../crypto/block-crypto.js'

type Msg =
  { id: number, op: 'seal', bek: Uint8Array, plain: Uint8Array, padded: number, aad: Uint8Array, dedupKey: Uint8Array, out: Uint8Array } |
  { id: number, op: 'open', bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, blockId: Uint8Array, out: Uint8Array }

function buffers (...views: Uint8Array[]): ArrayBuffer[] {
  return views.map(v => v.buffer).filter((b): b is ArrayBuffer => b instanceof ArrayBuffer && b.byteLength > 0)
}

parentPort?.on('message', (msg: Msg) => {
  const port = parentPort
  if (port === null) return
  try {
    if (msg.op === 'seal') {
      const s = sealBlockInto(msg.bek, msg.plain, msg.padded, msg.aad, msg.out, { dedupKey: msg.dedupKey })
      msg.bek.fill(0)
      msg.dedupKey.fill(0)
      msg.plain.fill(0)
      port.postMessage({ id: msg.id, plain: msg.plain, out: s.stored, blockId: s.id, tag: s.tag }, buffers(msg.plain, msg.out))
    } else {
      const r = openBlockInto(msg.bek, msg.stored, msg.aad, msg.blockId, msg.out)
      msg.bek.fill(0)
      if (r.ok) port.postMessage({ id: msg.id, ok: true, stored: msg.stored, out: r.plaintext }, buffers(msg.stored, msg.out))
      else port.postMessage({ id: msg.id, ok: false, problem: r.problem, stored: msg.stored, out: msg.out }, buffers(msg.stored, msg.out))
    }
  } catch (err) {
    msg.bek.fill(0)
    if (msg.op === 'seal') msg.plain.fill(0)
    else msg.out.fill(0)
    port.postMessage({ id: msg.id, error: (err as Error).message })
  }
})
