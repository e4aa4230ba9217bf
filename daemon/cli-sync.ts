/**
 * `strata invite | join | devices | remove-device | peer add`: the team's devices. Everything but
 * `join` asks the running daemon (sync lives in it); `join` makes a new data directory whose
 * token receives the team key from the inviting device's token.
 */
import '../net/shim.js'
import { hostname } from 'node:os'
import { readDaemonInfo, request } from './control.js'
import { UsageError } from './usage-error.js'
import { initStrata, readConfig, writeConfig, type TeamBundle } from './strata.js'
import { writeTeamFile, type JoinBundle, type TeamFile } from './sync.js'
import { DeviceVault, TokenEnrolment } from '../hsm/index.js'
import { loadOrCreateDeviceIdentity } from '../net/identity.js'
import { createStrataNode } from '../net/node.js'
import { decodeInvite } from '../net/invite.js'
import { joinTeam } from '../net/enrol-protocol.js'


async function daemonSocket (dataDir: string): Promise<string> {
  const running = await readDaemonInfo(dataDir)
  if (running === undefined) throw Object.assign(new Error(`the drive of ${dataDir} is not mounted: sync runs in the mount daemon (strata mount MOUNTPOINT --data ${dataDir})`), { code: 'ERR_NOT_MOUNTED' })
  return running.socket
}

export async function inviteCommand (dataDir: string, ttl: string | undefined): Promise<void> {
  const ttlMinutes = ttl === undefined ? 15 : Number(ttl)
  if (!Number.isInteger(ttlMinutes) || ttlMinutes < 1) throw new UsageError(`--ttl must be a whole number of minutes, not "${String(ttl)}"`)
  const r = await request(await daemonSocket(dataDir), 'invite', { ttlMinutes }) as { code: string, expiresAt: number, device: string, addresses: string[] }
  console.log(`invite from device ${r.device}, valid once until ${new Date(r.expiresAt).toISOString()}`)
  console.log(`addresses: ${r.addresses.join(' ')}`)
  console.log('on the new device run: strata join CODE --data DIR')
  console.log(r.code)
}

export async function joinCommand (dataDir: string, code: string, name: string | undefined, pinEnv: string | undefined): Promise<void> {
  const invite = decodeInvite(code) // a damaged or expired code fails here, before anything is made
  if (invite.expiresAt <= Date.now()) throw Object.assign(new Error('the invite code has expired: ask for a new one (strata invite)'), { code: 'ERR_INVITE_EXPIRED' })
  const deviceName = name ?? hostname()
  let team: TeamFile | undefined
  const s = await initStrata({
    dataDir,
    pinEnv,
    replica: {
      join: async (token): Promise<TeamBundle> => {
        const { privateKey } = await loadOrCreateDeviceIdentity({ dir: dataDir, vault: new DeviceVault({ token }) })
        const node = await createStrataNode({ privateKey, listen: [], mdns: false, allowPeer: id => id === invite.inviterPeerId })
        try {
          const r = await joinTeam({ node, code, enrolment: new TokenEnrolment({ token }), deviceName, signal: AbortSignal.timeout(60_000) })
          let bundle: JoinBundle
          try {
            bundle = JSON.parse(Buffer.from(r.bundle).toString('utf8')) as JoinBundle
          } catch {
            throw new Error('the inviting device sent a team bundle that is not JSON')
          }
          const t = bundle.team
          if (t === undefined || t.v !== 1 || t.id !== r.teamId || typeof t.founder !== 'string' || !Array.isArray(t.records) || t.records.some(x => typeof x !== 'string')) {
            throw new Error('the inviting device sent a malformed team record')
          }
          team = { v: 1, id: t.id, founder: t.founder, records: t.records }
          return bundle
        } finally {
          await node.stop()
        }
      }
    }
  })
  try {
    await writeTeamFile(dataDir, team as TeamFile)
    const cfg = await readConfig(dataDir)
    const peers = invite.addresses.map(a => `${a}/p2p/${invite.inviterPeerId}`)
    await writeConfig(dataDir, { ...cfg, sync: { ...cfg.sync, peers, deviceName } })
  } finally {
    await s.close()
  }
  console.log(`joined the team as "${deviceName}": ${dataDir} holds this device's replica (its own token "${s.config.token.label}")`)
  console.log(`mount it with: strata mount MOUNTPOINT --data ${dataDir}`)
}

export async function devicesCommand (dataDir: string, json: boolean): Promise<void> {
  const list = await request(await daemonSocket(dataDir), 'devices') as Array<{ id: string, name: string, self: boolean, connected: boolean, lastSeen?: number }>
  if (json) { console.log(JSON.stringify(list, null, 2)); return }
  for (const d of list) {
    const seen = d.self ? 'this device' : d.connected ? 'connected now' : d.lastSeen === undefined ? 'never seen' : `last seen ${new Date(d.lastSeen).toISOString()}`
    console.log(`${d.id}  ${d.name}  ${seen}`)
  }
}

export async function removeDeviceCommand (dataDir: string, id: string): Promise<void> {
  await request(await daemonSocket(dataDir), 'remove-device', { id })
  console.log(`removed device ${id}: every device of the team refuses it from now on`)
}

export async function peerAddCommand (dataDir: string, addr: string): Promise<void> {
  const r = await request(await daemonSocket(dataDir), 'peer-add', { addr }) as { peer: string }
  console.log(`added peer ${r.peer} (${addr}); it is dialled now and after every restart`)
}
