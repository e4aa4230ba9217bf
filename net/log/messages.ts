/**
 * Log-sync protocol messages (FORMAT.md §6): one message per length-prefixed frame, first byte
 * the message type. The decoder treats frames as hostile (limits checked before allocation,
 * schema checks, no trailing bytes) and throws only MalformedError.
 */
import {
  DEVICE_PATTERN, MAX_DEVICE_BYTES, MAX_ENTRY_BYTES, MAX_FETCH_ENTRIES, MAX_HELLO_HEADS, MAX_HELLO_RECORDS,
  MAX_NS_BYTES, MAX_RECORD_BYTES, NS_PATTERN, TEAM_ID_BYTES
} from './constants.js'
import { InvalidArgumentError } from './errors.js'
import { Reader, Writer } from './bytes.js'

export interface HeadRef { ns: string, device: string, seq: number }

export type Message =
  | { type: 'hello', team: Uint8Array, records: Uint8Array[], heads: HeadRef[] }
  | { type: 'notify', ns: string, device: string, seq: number }
  | { type: 'get', ns: string, device: string, from: number, limit: number }
  | { type: 'entry', bytes: Uint8Array }
  | { type: 'end' }

const TYPES = { hello: 1, notify: 2, get: 3, entry: 4, end: 5 } as const

function checkRef (ns: string, device: string, seq: number): void {
  if (!NS_PATTERN.test(ns)) throw new InvalidArgumentError('bad namespace id')
  if (!DEVICE_PATTERN.test(device)) throw new InvalidArgumentError('bad device id')
  if (!Number.isSafeInteger(seq) || seq < 1) throw new InvalidArgumentError('seq must be >= 1')
}

export function encodeMessage (m: Message): Uint8Array {
  const w = new Writer().u8(TYPES[m.type])
  switch (m.type) {
    case 'hello':
      if (m.team.byteLength !== TEAM_ID_BYTES) throw new InvalidArgumentError('team id must be 16 bytes')
      if (m.records.length > MAX_HELLO_RECORDS || m.heads.length > MAX_HELLO_HEADS) throw new InvalidArgumentError('hello too large')
      w.raw(m.team).u16(m.records.length)
      for (const r of m.records) {
        if (r.byteLength > MAX_RECORD_BYTES) throw new InvalidArgumentError('record too large')
        w.blob(r)
      }
      w.u32(m.heads.length)
      for (const h of m.heads) { checkRef(h.ns, h.device, h.seq); w.str(h.ns).str(h.device).u64(h.seq) }
      break
    case 'notify':
      checkRef(m.ns, m.device, m.seq)
      w.str(m.ns).str(m.device).u64(m.seq)
      break
    case 'get':
      checkRef(m.ns, m.device, m.from)
      if (!Number.isSafeInteger(m.limit) || m.limit < 1 || m.limit > MAX_FETCH_ENTRIES) throw new InvalidArgumentError('bad limit')
      w.str(m.ns).str(m.device).u64(m.from).u16(m.limit)
      break
    case 'entry':
      if (m.bytes.byteLength > MAX_ENTRY_BYTES) throw new InvalidArgumentError('entry too large')
      w.raw(m.bytes)
      break
    case 'end':
      break
  }
  return w.finish()
}

function readRef (r: Reader, seqField: string): { ns: string, device: string, seq: number } {
  const ns = r.str(MAX_NS_BYTES, 'namespace', NS_PATTERN)
  const device = r.str(MAX_DEVICE_BYTES, 'device', DEVICE_PATTERN)
  const seq = r.u64()
  if (seq < 1) r.fail(`${seqField} 0`)
  return { ns, device, seq }
}

export function decodeMessage (frame: Uint8Array): Message {
  const r = new Reader(frame, 'log-sync message')
  const type = r.u8()
  switch (type) {
    case TYPES.hello: {
      const team = r.bytes(TEAM_ID_BYTES)
      const nRecords = r.u16()
      if (nRecords > MAX_HELLO_RECORDS) r.fail('too many records')
      if (nRecords * 4 > r.remaining) r.fail('record count exceeds the frame')
      const records: Uint8Array[] = []
      for (let i = 0; i < nRecords; i++) records.push(r.blob(MAX_RECORD_BYTES, 'record'))
      const nHeads = r.u32()
      if (nHeads > MAX_HELLO_HEADS) r.fail('too many heads')
      if (nHeads * 12 > r.remaining) r.fail('head count exceeds the frame')
      const heads: HeadRef[] = []
      const seen = new Set<string>()
      for (let i = 0; i < nHeads; i++) {
        const h = readRef(r, 'head seq')
        const k = `${h.ns}/${h.device}`
        if (seen.has(k)) r.fail('duplicate head')
        seen.add(k)
        heads.push(h)
      }
      r.end()
      return { type: 'hello', team, records, heads }
    }
    case TYPES.notify: {
      const ref = readRef(r, 'seq')
      r.end()
      return { type: 'notify', ...ref }
    }
    case TYPES.get: {
      const { ns, device, seq } = readRef(r, 'from')
      const limit = r.u16()
      if (limit < 1 || limit > MAX_FETCH_ENTRIES) r.fail('limit out of range')
      r.end()
      return { type: 'get', ns, device, from: seq, limit }
    }
    case TYPES.entry: {
      if (r.remaining > MAX_ENTRY_BYTES) r.fail('entry too large')
      return { type: 'entry', bytes: r.bytes(r.remaining) }
    }
    case TYPES.end:
      r.end()
      return { type: 'end' }
    default:
      return r.fail(`unknown message type ${type}`)
  }
}
