/**
 * Two real devices (daemons, mounts, SoftHSM tokens) on a LAN of two network namespaces joined
 * by a veth pair find each other with mDNS alone: after enrolment neither knows the other's
 * address (configured peers are removed and both daemons restart), yet a change on one appears
 * on the other.
 */
import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { makeDrive, sh, strataIn, type Drive } from './helpers/mount.js'
import { ok, same, status, until } from './helpers/team.js'
import { cannotUseNetns, makeLan } from './helpers/netns.js'

/** The sync section of a device on one LAN address, mDNS on, no configured peers. */
function lanOnly (address: string) {
  return (cfg: Record<string, any>): Record<string, any> => ({ ...cfg, sync: { ...cfg.sync, listen: [`/ip4/${address}/tcp/0`], mdns: true, peers: [] } })
}

function forgetPeers (d: Drive): void {
  const file = join(d.dataDir, 'strata.json')
  const cfg = JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>
  writeFileSync(file, JSON.stringify({ ...cfg, sync: { ...cfg.sync, peers: [] } }, null, 2))
}

const cannot = cannotUseNetns()
t.test('two daemons in separate network namespaces find each other with mDNS alone', { skip: cannot ?? false }, async t => {
  const lan = makeLan(t)
  const a = await makeDrive(t, { netns: lan.ns1, config: lanOnly(lan.ip1) })
  await sh(`echo 'made before the second device' > "${a.mnt}/early.txt"`)
  const code = (await ok(['invite', '--data', a.dataDir])).trim().split('\n').pop() as string
  t.match(code, /^strata1-/, 'an invite code')
  const b = await makeDrive(t, {
    netns: lan.ns2,
    create: async dataDir => {
      const r = await strataIn(lan.ns2, ['join', code, '--data', dataDir, '--name', 'other-host'])
      if (r.code !== 0) throw new Error(`join failed: ${r.stderr}`)
    },
    config: lanOnly(lan.ip2)
  })
  t.ok(await until(same(a, b), 90_000), 'enrolled across the veth pair: the first files arrive')

  // Forget every address: only mDNS can bring them together again.
  await b.unmount(); await a.unmount()
  forgetPeers(a); forgetPeers(b)
  t.same(JSON.parse(readFileSync(join(b.dataDir, 'strata.json'), 'utf8')).sync.peers, [], 'the joined device knows no peer address')
  await a.mount(); await b.mount()
  await sh(`mkdir "${a.mnt}/found" && head -c 2000000 /dev/urandom > "${a.mnt}/found/by-mdns.bin" && echo reply > "${a.mnt}/found/note.txt"`)
  t.ok(await until(same(a, b), 90_000), 'a change on one device reaches the other, found by mDNS')
  const sa = await status(a)
  const sb = await status(b)
  t.ok((sa.sync.peers as string[]).includes(sb.sync.device as string), 'the first device has a session with the second')
  t.ok((sb.sync.peers as string[]).includes(sa.sync.device as string), 'and the second with the first')
  t.match(JSON.stringify(sb.sync.addresses), /10\.77\.0\.2/, 'the second device listens on its LAN address only')
})
