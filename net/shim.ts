// net/shim.ts: Promise.withResolvers for Node 20 (libp2p 3 calls it). Import before libp2p.
if (typeof (Promise as any).withResolvers !== 'function') { (Promise as any).withResolvers = function <T> () { let resolve!: (v: T) => void; let reject!: (e: unknown) => void; const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej }); return { promise, resolve, reject } } }
export {}
