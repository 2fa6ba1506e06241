/**
 * Keeps N ready sandboxes per template so that a create is a hand-over. A pooled sandbox is
 * handed out once and never returned: no two users ever share one.
 */
import { samePolicy } from '@sandcell/network'
import { delay, errorMessage, type Logger } from '@sandcell/shared'
import type { Driver, Sandbox, SandboxLimits, SandboxSpec } from './driver.js'

export interface WarmPoolOptions {
  driver: Driver
  log: Logger
  /** Ready sandboxes to keep per template. */
  sizes: Record<string, number>
  /** Limits pooled sandboxes start with; memory, CPU and pids are set anew at hand-over. */
  limits: SandboxLimits
  /** Whether pooled sandboxes get a network of their own (SandboxSpec.network). @default true */
  network?: boolean
  /**
   * How long after a hand-over the refill starts, ms: a create costs a core for ~200 ms, which
   * the new owner's first requests would otherwise share. @default 150
   */
  refillDelayMs?: number
}

export interface AcquireResult {
  sandbox: Sandbox
  /** True when the sandbox came ready from the pool, false when it was created cold. */
  pooled: boolean
}

interface TemplatePool {
  size: number
  ready: Sandbox[]
  /** The running fill loop, if any; close() waits for it so no create outlives the pool. */
  filling: Promise<void> | undefined
  failures: number
}

const poolLabel = 'sandcell.pool'
const maxBackoffMs = 30_000

export class WarmPool {
  readonly #driver: Driver
  readonly #log: Logger
  readonly #limits: SandboxLimits
  readonly #refillDelayMs: number
  readonly #network: boolean
  readonly #pools = new Map<string, TemplatePool>()
  readonly #stop = new AbortController()
  #closed = false

  constructor(options: WarmPoolOptions) {
    this.#driver = options.driver
    this.#log = options.log.child({ component: 'runtime.pool' })
    this.#limits = options.limits
    this.#refillDelayMs = options.refillDelayMs ?? 150
    this.#network = options.network ?? true
    for (const [template, size] of Object.entries(options.sizes)) {
      this.#pools.set(template, { size, ready: [], filling: undefined, failures: 0 })
    }
  }

  /** Starts filling every pool in the background. */
  start(): void {
    for (const template of this.#pools.keys()) {
      this.#fill(template)
    }
  }

  /** Changes how many ready sandboxes a template keeps; extra idle ones are destroyed. */
  async resize(template: string, size: number): Promise<void> {
    const pool = this.#pools.get(template) ?? {
      size: 0,
      ready: [],
      filling: undefined,
      failures: 0,
    }
    pool.size = size
    this.#pools.set(template, pool)
    const extra = pool.ready.splice(size)
    await Promise.allSettled(extra.map((s) => s.destroy({ reason: 'pool shrunk' })))
    this.#fill(template)
  }

  /** Ready sandboxes per template, for metrics and tests. */
  readyCounts(): Record<string, number> {
    return Object.fromEntries([...this.#pools].map(([name, pool]) => [name, pool.ready.length]))
  }

  /** Resolves once every pool holds its full size (or the signal aborts). */
  async waitFull({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    while ([...this.#pools.values()].some((pool) => pool.ready.length < pool.size)) {
      await delay(10, signal)
    }
  }

  /**
   * Hands over a pooled sandbox matching the spec (same template, disk size and network, no
   * driver of its own, not from a snapshot), with the spec's limits and egress rules applied,
   * or creates one cold when none is ready.
   */
  async acquire(spec: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<AcquireResult> {
    const pool = this.#pools.get(spec.template)
    if (
      pool !== undefined &&
      spec.id === undefined &&
      spec.driver === undefined &&
      spec.fromSnapshot === undefined &&
      (spec.network ?? true) === this.#network &&
      spec.limits.diskMiB === this.#limits.diskMiB
    ) {
      while (pool.ready.length > 0) {
        const sandbox = pool.ready.shift() as Sandbox
        setTimeout(() => this.#fill(spec.template), this.#refillDelayMs).unref()
        if (sandbox.state !== 'running') {
          continue
        }
        try {
          await sandbox.setLimits(spec.limits, options)
          await sandbox.setLabels(spec.labels ?? {})
          const network = sandbox.info.network
          if (
            spec.egress !== undefined &&
            network !== undefined &&
            !samePolicy(network.egress, spec.egress)
          ) {
            await sandbox.setNetwork(spec.egress, options)
          }
          return { sandbox, pooled: true }
        } catch (err) {
          // The guard has destroyed it; try the next one.
          this.#log.warn({ err, sandboxId: sandbox.id }, 'pooled sandbox failed at hand-over')
        }
      }
    }
    return { sandbox: await this.#driver.create(spec, options), pooled: false }
  }

  #fill(template: string): void {
    const pool = this.#pools.get(template)
    if (pool === undefined || pool.filling !== undefined || this.#closed) {
      return
    }
    // Runs in the background; errors are logged and retried with backoff, never thrown.
    pool.filling = this.#fillLoop(template, pool).finally(() => {
      pool.filling = undefined
    })
  }

  async #fillLoop(template: string, pool: TemplatePool): Promise<void> {
    // One create at a time: on small hosts parallel creates only slow each other down.
    while (!this.#closed && pool.ready.length < pool.size) {
      try {
        const sandbox = await this.#driver.create(
          {
            template,
            limits: this.#limits,
            labels: { [poolLabel]: 'true' },
            background: true,
            network: this.#network,
          },
          { signal: this.#stop.signal },
        )
        if (this.#closed) {
          await sandbox.destroy({ reason: 'pool closed' })
          return
        }
        pool.failures = 0
        pool.ready.push(sandbox)
        void sandbox.ended.then(() => {
          const index = pool.ready.indexOf(sandbox)
          if (index >= 0) {
            pool.ready.splice(index, 1)
            this.#fill(template)
          }
        })
      } catch (err) {
        if (this.#closed) {
          return
        }
        pool.failures += 1
        const backoffMs = Math.min(maxBackoffMs, 250 * 2 ** pool.failures)
        this.#log.warn(
          { template, err: errorMessage(err), backoffMs },
          'could not fill the warm pool; retrying',
        )
        await delay(backoffMs, this.#stop.signal).catch(() => undefined)
      }
    }
  }

  /** Stops filling (waiting for creates in flight) and destroys every idle pooled sandbox. */
  async close(): Promise<void> {
    this.#closed = true
    this.#stop.abort(new Error('pool closed'))
    await Promise.allSettled([...this.#pools.values()].flatMap((pool) => pool.filling ?? []))
    const idle = [...this.#pools.values()].flatMap((pool) => pool.ready.splice(0))
    await Promise.allSettled(idle.map((s) => s.destroy({ reason: 'pool closed' })))
  }
}

/** Whether a sandbox was made for a pool and never handed over (safe to destroy on adoption). */
export function isIdlePooled(sandbox: Sandbox): boolean {
  return sandbox.info.labels[poolLabel] === 'true'
}
