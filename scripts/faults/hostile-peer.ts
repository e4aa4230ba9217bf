/**
 * A hostile device for the fault runner: `node dist/scripts/faults/hostile-peer.js --data DIR
 * --target MULTIADDR --mode MODE [--also MULTIADDR]... [--stay]` (--also: more peers the
 * sync-taking-part modes dial). DIR is a real data dir — enrolled with `strata join`
 * (its own token, device key and the team keys) or, for `unenrolled`, made by `strata init` for
 * another team. The tool opens it with the library, the way daemon/sync.ts does, and then drives
 * its libp2p node itself, misbehaving on the real protocols (attacks in hostile-attacks.ts).
 *
 * It runs in its own process because SoftHSM reads its configuration once per process. It
 * prints one JSON line `{"ready":{"peer":ID}}` when its node is up, then `{"result":{...}}` (or
 * `{"error":"..."}`), and with --stay keeps its node up until SIGTERM.
 */
import '../../net/shim.js'
import { parseArgs } from 'node:util'
import { openStrata, type Strata } from '../../daemon/strata.js'
import { SyncNode, readTeamFile } from '../../daemon/sync.js'
import { createLogger } from '../../daemon/logger.js'
import { DeviceVault } from '../../hsm/index.js'
import { loadOrCreateDeviceIdentity } from '../../net/identity.js'
import { createStrataNode, type StrataNode } from '../../net/node.js'
import { DeviceList, LogStore } from '../../net/log/index.js'
import { ATTACKS, type Attack, type HostileKit } from './hostile-attacks.js'

const say = (o: unknown): void => { process.stdout.write(JSON.stringify(o) + '\n') }

async function kit (strata: Strata, target: string, also: string[], mode: string): Promise<{ kit: HostileKit, stop: () => Promise<void> }> {
  const logger = createLogger({ prefix: 'hostile' })
  const { privateKey, peerId } = await loadOrCreateDeviceIdentity({ dir: strata.dataDir, vault: new DeviceVault({ token: strata.token }) })
  const team = await readTeamFile(strata.dataDir)
  const sub = (name: string) => strata.db.sublevel<string, Uint8Array>(name, { keyEncoding: 'utf8', valueEncoding: 'view' })
  let devices: DeviceList | undefined
  let logs: LogStore | undefined
  if (team !== undefined) {
    devices = new DeviceList({ db: sub('devices'), privateKey }, { teamId: Buffer.from(team.id, 'hex'), founder: team.founder })
    await devices.open()
    logs = new LogStore({ db: sub('log'), privateKey, devices, keyFor: async ns => (await strata.vol.meta.nsKeys(ns)).log })
    await logs.open()
  }
  const stops: Array<() => Promise<void>> = []
  // The tampering device takes part in sync like a daemon (so the honest one fetches from it);
  // the others drive a bare node of their own.
  let node: StrataNode
  let sn: SyncNode | undefined
  if (mode === 'tampered-blocks') {
    sn = await SyncNode.start(strata, { listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, peers: [target, ...also] }, logger)
    const started = sn
    stops.push(async () => { await started.stop() })
    node = sn.node
  } else {
    const members = devices
    node = await createStrataNode({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, allowPeer: id => members === undefined || members.isMember(id) })
    stops.push(async () => { await node.stop() })
  }
  const close = async (): Promise<void> => {
    for (const fn of stops.reverse()) await fn().catch(() => {})
    await logs?.close()
    await devices?.close()
  }
  return { kit: { strata, node, peerId, privateKey, devices, logs, target, sync: sn }, stop: close }
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { data: { type: 'string' }, target: { type: 'string' }, also: { type: 'string', multiple: true }, mode: { type: 'string' }, stay: { type: 'boolean' } } })
  const mode = values.mode ?? ''
  const attack: Attack | undefined = ATTACKS[mode]
  if (values.data === undefined || values.target === undefined || attack === undefined) {
    throw new Error(`usage: hostile-peer --data DIR --target MULTIADDR --mode ${Object.keys(ATTACKS).join('|')} [--stay]`)
  }
  const strata = await openStrata({ dataDir: values.data })
  const { kit: k, stop } = await kit(strata, values.target, values.also ?? [], mode)
  let stopping = false
  const shutdown = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    await stop()
    await strata.close().catch(() => {})
    process.exit(0)
  }
  process.on('SIGTERM', () => { void shutdown() })
  process.on('SIGINT', () => { void shutdown() })
  say({ ready: { peer: k.peerId } })
  try {
    say({ result: await attack(k) })
  } catch (err) {
    say({ error: `${(err as Error).name}: ${(err as Error).message}` })
  }
  if (values.stay !== true) await shutdown()
}

main().catch(err => {
  say({ error: `${(err as Error).name}: ${(err as Error).message}` })
  process.exit(1)
})
