/** Control-socket requests about LAN sync, answered by the running daemon (see daemon/sync.ts). */
import type { Handler } from './control.js'
import type { SyncNode } from './sync.js'
import { readConfig, writeConfig, type Strata } from './strata.js'

export function syncHandlers (sync: () => SyncNode, strata: () => Strata): Record<string, Handler> {
  return {
    invite: async (args) => {
      const minutes = args.ttlMinutes === undefined ? 15 : Number(args.ttlMinutes)
      if (!Number.isFinite(minutes) || minutes < 1 || minutes > 7 * 24 * 60) throw Object.assign(new Error('--ttl must be 1 to 10080 minutes'), { code: 'ERR_BAD_REQUEST' })
      const s = sync()
      const r = await s.invite(minutes * 60_000)
      return { ...r, device: s.self, addresses: s.node.getMultiaddrs().map(a => a.toString()) }
    },
    devices: async () => sync().listDevices(),
    'remove-device': async (args) => {
      if (typeof args.id !== 'string') throw Object.assign(new Error('remove-device needs a device id'), { code: 'ERR_BAD_REQUEST' })
      await sync().removeDevice(args.id)
      return { removed: args.id }
    },
    'peer-add': async (args) => {
      if (typeof args.addr !== 'string') throw Object.assign(new Error('peer add needs a multiaddr'), { code: 'ERR_BAD_REQUEST' })
      const id = sync().addPeer(args.addr)
      const dataDir = strata().dataDir
      const cfg = await readConfig(dataDir)
      const peers = new Set(cfg.sync?.peers ?? [])
      peers.add(args.addr)
      await writeConfig(dataDir, { ...cfg, sync: { ...cfg.sync, peers: [...peers] } })
      return { peer: id }
    }
  }
}
