/** Worker thread of CryptoPool: seals and opens blocks with node:crypto. */
import { parentPort } from 'node:worker_threads'
import { sealBlock, openBlock, dedupTag } from '../crypto/block-crypto.js'

type Msg =
  { id: number, op: 'seal', bek: Uint8Array, plaintext: Uint8Array, padded: number, aad: Uint8Array, dedupKey: Uint8Array } |
  { id: number, op: 'open', bek: Uint8Array, stored: Uint8Array, aad: Uint8Array, blockId: Uint8Array }

parentPort?.on('message', (msg: Msg) => {
  try {
    if (msg.op === 'seal') {
      const tag = dedupTag(msg.dedupKey, msg.plaintext)
      const s = sealBlock(msg.bek, msg.plaintext, msg.padded, msg.aad)
      msg.bek.fill(0)
      msg.plaintext.fill(0)
      parentPort?.postMessage({ id: msg.id, stored: s.stored, blockId: s.id, tag },
        s.stored.byteOffset === 0 && s.stored.byteLength === s.stored.buffer.byteLength ? [s.stored.buffer as ArrayBuffer] : [])
    } else {
      const r = openBlock(msg.bek, msg.stored, msg.aad, msg.blockId)
      msg.bek.fill(0)
      if (r.ok) {
        const p = r.plaintext
        parentPort?.postMessage({ id: msg.id, plaintext: p },
          p.byteOffset === 0 && p.byteLength === p.buffer.byteLength ? [p.buffer as ArrayBuffer] : [])
      } else {
        parentPort?.postMessage({ id: msg.id, problem: r.problem })
      }
    }
  } catch (err) {
    parentPort?.postMessage({ id: msg.id, error: (err as Error).message })
  }
})
