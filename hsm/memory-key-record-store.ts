import type { KeyRecordStore } from './types.js'

/** KeyRecordStore in memory (tests, tools). Values are copied in and out. */
export class MemoryKeyRecordStore implements KeyRecordStore {
  private readonly map = new Map<string, Uint8Array>()

  async get (key: string): Promise<Uint8Array | undefined> {
    const v = this.map.get(key)
    return v === undefined ? undefined : v.slice()
  }

  async put (key: string, value: Uint8Array): Promise<void> {
    this.map.set(key, value.slice())
  }

  async del (key: string): Promise<void> {
    this.map.delete(key)
  }

  async * entries (prefix: string): AsyncIterable<[string, Uint8Array]> {
    const keys = [...this.map.keys()].filter(k => k.startsWith(prefix)).sort(compareUtf8)
    for (const k of keys) {
      const v = this.map.get(k)
      if (v !== undefined) yield [k, v.slice()]
    }
  }
}

/** Byte order of the UTF-8 encodings, as LevelDB sorts keys. */
function compareUtf8 (a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))
}
