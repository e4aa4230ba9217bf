// mDNS discovery between two network namespaces joined by a veth pair: each side runs one node
// process with mDNS only (no configured peers); they must find each other, connect and open a
// stream. A third, unlisted node on the LAN discovers them too but is refused by both.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { cannotUseNetns, makeLan } from './helpers/netns.js'

const FIXTURE = fileURLToPath(new URL('./fixtures/mdns-node.js', import.meta.url))
/** A guard against a hang, not an assertion about speed. */
const HANG_GUARD_MS = 90_000

interface Ev { event: string, peer?: string, ok?: boolean, [k: string]: unknown }

class NodeProc {
  readonly events: Ev[] = []
  readonly child: ChildProcess
  private waiters: Array<() => void> = []
  exited = false

  constructor (t: Test, ns: string, key: Uint8Array, allow: string[]) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, FIXTURE, ...allow], {
      env: { ...process.env, STRATA_TEST_KEY: Buffer.from(key).toString('base64') },
      stdio: ['pipe', 'pipe', 'inherit']
    })
    t.teardown(async () => {
      if (this.exited) return
      const gone = new Promise(resolve => this.child.once('exit', resolve))
      const pid = this.child.pid
      if (pid != null) process.kill(pid, 'SIGTERM')
      const timer = setTimeout(() => { if (!this.exited && pid != null) process.kill(pid, 'SIGKILL') }, 5000)
      await gone
      clearTimeout(timer)
    })
    this.child.on('exit', () => { this.exited = true; this.wake() })
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', line => {
      try { this.events.push(JSON.parse(line) as Ev) } catch { this.events.push({ event: 'garbage', line }) }
      this.wake()
    })
  }

  private wake (): void { const w = this.waiters; this.waiters = []; for (const f of w) f() }

  async waitFor (what: string, match: (e: Ev) => boolean): Promise<Ev> {
    const deadline = Date.now() + HANG_GUARD_MS
    while (true) {
      const hit = this.events.find(match)
      if (hit != null) return hit
      if (this.exited) throw new Error(`node exited before ${what}; events: ${JSON.stringify(this.events)}`)
      if (Date.now() > deadline) throw new Error(`no ${what} within the hang guard; events: ${JSON.stringify(this.events)}`)
      await new Promise<void>(resolve => { const timer = setTimeout(resolve, 1000); this.waiters.push(() => { clearTimeout(timer); resolve() }) })
    }
  }
}

const cannot = cannotUseNetns()
t.test('two nodes in separate namespaces find each other with mDNS only and connect', { skip: cannot ?? false }, async t => {
  const lan = makeLan(t)
  const [k1, k2, kx] = await Promise.all([generateKeyPair('Ed25519'), generateKeyPair('Ed25519'), generateKeyPair('Ed25519')])
  const [p1, p2, px] = [k1, k2, kx].map(k => peerIdFromPrivateKey(k).toString()) as [string, string, string]

  const n1 = new NodeProc(t, lan.ns1, privateKeyToProtobuf(k1), [p2])
  const n2 = new NodeProc(t, lan.ns2, privateKeyToProtobuf(k2), [p1])
  const hostile = new NodeProc(t, lan.ns2, privateKeyToProtobuf(kx), ['*']) // unlisted, accepts anyone
  t.equal((await n1.waitFor('ready', e => e.event === 'ready')).peer, p1)
  await n2.waitFor('ready', e => e.event === 'ready')
  await hostile.waitFor('ready', e => e.event === 'ready')

  await n1.waitFor('discovery of n2', e => e.event === 'discovery' && e.peer === p2)
  await n2.waitFor('discovery of n1', e => e.event === 'discovery' && e.peer === p1)
  t.ok(await n1.waitFor('connect to n2', e => e.event === 'connect' && e.peer === p2), 'n1 connected to n2')
  t.ok(await n2.waitFor('connect to n1', e => e.event === 'connect' && e.peer === p1), 'n2 connected to n1')
  t.equal((await n1.waitFor('stream to n2', e => e.event === 'stream' && e.peer === p2)).ok, true, 'a stream n1 -> n2 works')
  t.equal((await n2.waitFor('stream to n1', e => e.event === 'stream' && e.peer === p1)).ok, true, 'a stream n2 -> n1 works')

  // The unlisted node discovers both over the same LAN, and neither lets it in.
  t.equal((await hostile.waitFor('probe of n1', e => e.event === 'stream' && e.peer === p1)).ok, false, 'the unlisted node gets no stream to n1')
  t.equal((await hostile.waitFor('probe of n2', e => e.event === 'stream' && e.peer === p2)).ok, false, 'nor to n2')
  t.notOk(n1.events.some(e => e.event === 'connect' && e.peer === px), 'n1 never accepted it')
  t.notOk(n2.events.some(e => e.event === 'connect' && e.peer === px), 'n2 never accepted it')
})
