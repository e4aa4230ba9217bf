/**
 * A two-host LAN for tests: two network namespaces joined by a veth pair (10.77.0.1 and
 * 10.77.0.2, multicast routed for mDNS), deleted at teardown also on failure. Needs root and
 * iproute2.
 */
import { spawnSync } from 'node:child_process'

interface Teardownable { teardown: (fn: () => void | Promise<void>) => void }

export interface Lan { ns1: string, ns2: string, ip1: string, ip2: string }

export function ip (...args: string[]): { ok: boolean, err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' })
  return { ok: r.status === 0, err: (r.stderr ?? '') + (r.error?.message ?? '') }
}

/** Why network namespaces cannot be used here, or undefined if they can. */
export function cannotUseNetns (): string | undefined {
  if (spawnSync('ip', ['-V']).status !== 0) return 'the `ip` command (Debian package iproute2) is missing'
  const probe = `strata-probe-${process.pid}`
  const r = ip('netns', 'add', probe)
  if (!r.ok) return `cannot create network namespaces (need root): ${r.err.trim()}`
  ip('netns', 'del', probe)
  return undefined
}

export function makeLan (t: Teardownable): Lan {
  const tag = `${process.pid % 100000}${Math.floor(Math.random() * 1000)}`
  const ns1 = `strata-a-${tag}`; const ns2 = `strata-b-${tag}`
  const va = `vsa${tag}`.slice(0, 15); const vb = `vsb${tag}`.slice(0, 15)
  t.teardown(() => { ip('netns', 'del', ns1); ip('netns', 'del', ns2); ip('link', 'del', va) })
  const steps: string[][] = [
    ['netns', 'add', ns1],
    ['netns', 'add', ns2],
    ['link', 'add', va, 'type', 'veth', 'peer', 'name', vb],
    ['link', 'set', va, 'netns', ns1],
    ['link', 'set', vb, 'netns', ns2],
    ['-n', ns1, 'addr', 'add', '10.77.0.1/24', 'dev', va],
    ['-n', ns2, 'addr', 'add', '10.77.0.2/24', 'dev', vb],
    ['-n', ns1, 'link', 'set', 'lo', 'up'],
    ['-n', ns2, 'link', 'set', 'lo', 'up'],
    ['-n', ns1, 'link', 'set', va, 'multicast', 'on', 'up'],
    ['-n', ns2, 'link', 'set', vb, 'multicast', 'on', 'up'],
    ['-n', ns1, 'route', 'add', '224.0.0.0/4', 'dev', va],
    ['-n', ns2, 'route', 'add', '224.0.0.0/4', 'dev', vb]
  ]
  for (const s of steps) {
    const r = ip(...s)
    if (!r.ok) throw new Error(`ip ${s.join(' ')} failed: ${r.err}`)
  }
  return { ns1, ns2, ip1: '10.77.0.1', ip2: '10.77.0.2' }
}
