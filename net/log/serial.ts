/** Run async tasks one after another per key (a promise chain per key). */
export class Serial {
  private readonly tails = new Map<string, Promise<unknown>>()

  async run<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve()
    const next = prev.then(fn, fn)
    const tail = next.catch(() => {})
    this.tails.set(key, tail)
    void tail.then(() => { if (this.tails.get(key) === tail) this.tails.delete(key) })
    return await next
  }

  /** Resolves once every task queued so far has settled. */
  async idle (): Promise<void> {
    await Promise.all([...this.tails.values()])
  }
}
