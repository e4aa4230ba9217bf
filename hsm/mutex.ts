/** A FIFO async mutex: read-modify-write work (records, token objects, invites) runs one at a time. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const prev = this.tail
    let release!: () => void
    this.tail = new Promise<void>(resolve => { release = resolve })
    await prev
    try {
      return await fn()
    } finally {
      release()
    }
  }

  /** Resolves once everything queued so far has finished. */
  async idle (): Promise<void> {
    await this.tail
  }
}
