/** What bench:sync needs from two synced devices, Strata or Syncthing. */
export interface SyncPair {
  readonly name: 'strata' | 'syncthing'
  /** Where the benchmark writes, on device A. */
  readonly dirA: string
  /** Where it checks, on device B. */
  readonly dirB: string
  /** What `received()` counts, for the table. */
  readonly receivedWhat: string
  /** The system's own counter of bytes B received from A. */
  received: () => Promise<number>
  /** Kernel TCP payload bytes received by B's process on its connections to A. */
  wireReceived: () => Promise<{ bytes: number, sockets: number }>
  /** Pids of the two device processes (A, B). */
  pids: () => [number, number]
}
