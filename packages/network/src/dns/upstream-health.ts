/**
 * Which upstream resolvers are failing, reported once per outage and at most once a minute
 * per upstream, so that a sandbox making an upstream look flaky cannot flood the log.
 */
import type { Logger } from '@sandcell/shared'
import type { Upstream } from './parse-upstream.js'

/** An upstream that keeps coming and going is reported at most this often. */
const upstreamWarnIntervalMs = 60_000

export class UpstreamHealth {
  readonly #log: Logger
  /** Per upstream label, while it is failing: whether this outage was reported. */
  readonly #failing = new Map<string, { warned: boolean }>()
  readonly #lastWarnedAtMs = new Map<string, number>()

  constructor(log: Logger) {
    this.#log = log
  }

  answered(upstream: Upstream): void {
    const failing = this.#failing.get(upstream.label)
    if (failing === undefined) {
      return
    }
    this.#failing.delete(upstream.label)
    this.#log[failing.warned ? 'info' : 'debug'](
      { upstream: upstream.label },
      'dns upstream answering',
    )
  }

  /** `current`: the upstreams in use now; a failure of one replaced meanwhile is not news. */
  failed(upstream: Upstream, err: unknown, current: readonly Upstream[]): void {
    if (this.#failing.has(upstream.label) || !current.some((u) => u.label === upstream.label)) {
      return
    }
    const nowMs = performance.now()
    const warned =
      nowMs - (this.#lastWarnedAtMs.get(upstream.label) ?? -Infinity) >= upstreamWarnIntervalMs
    this.#failing.set(upstream.label, { warned })
    if (warned) {
      this.#lastWarnedAtMs.set(upstream.label, nowMs)
      this.#log.warn({ upstream: upstream.label, err }, 'dns upstream stopped answering')
    } else {
      this.#log.debug({ upstream: upstream.label, err }, 'dns upstream stopped answering')
    }
  }

  /** Forgets upstreams that are no longer in use. */
  retain(current: readonly Upstream[]): void {
    for (const label of [...this.#failing.keys(), ...this.#lastWarnedAtMs.keys()]) {
      if (!current.some((u) => u.label === label)) {
        this.#failing.delete(label)
        this.#lastWarnedAtMs.delete(label)
      }
    }
  }
}
