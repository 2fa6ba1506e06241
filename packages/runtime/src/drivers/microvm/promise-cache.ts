/**
 * Work done once per key and shared by every caller that asks meanwhile or later; work that
 * fails is forgotten, so the next caller tries again.
 */
export class PromiseCache<K, V> {
  readonly #pending = new Map<K, Promise<V>>()

  /** The promise for `key`, made by `make` when there is none (or the last one failed). */
  get(key: K, make: () => Promise<V>): Promise<V> {
    let pending = this.#pending.get(key)
    if (pending === undefined) {
      pending = make()
      this.#pending.set(key, pending)
      pending.catch(() => this.#pending.delete(key))
    }
    return pending
  }
}
