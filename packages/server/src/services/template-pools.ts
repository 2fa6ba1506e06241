/**
 * Warm pools of built templates: the configured size of a name (`warmPool: { my-app: 2 }`) is
 * kept for the build that name resolves to now, and moves to the next build when a rebuild
 * becomes ready (the old build's idle sandboxes are destroyed).
 */
import type { WarmPool } from '@sandcell/runtime'
import type { Logger } from '@sandcell/shared'

export class TemplatePools {
  readonly #pool: WarmPool
  readonly #sizes: ReadonlyMap<string, number>
  readonly #resolve: (name: string) => string | undefined
  readonly #log: Logger
  /** The build each configured name's pool fills with now. */
  readonly #current = new Map<string, string>()

  /**
   * @param sizes configured pool sizes of names that are not built-in templates
   * @param resolve a name's ready build, or undefined while it has none
   */
  constructor(options: {
    pool: WarmPool
    sizes: ReadonlyMap<string, number>
    resolve: (name: string) => string | undefined
    log: Logger
  }) {
    this.#pool = options.pool
    this.#sizes = options.sizes
    this.#resolve = options.resolve
    this.#log = options.log
  }

  /** Points every configured name's pool at its current build. */
  async sync(): Promise<void> {
    for (const [name, size] of this.#sizes) {
      const build = this.#resolve(name)
      const previous = this.#current.get(name)
      if (build === previous) {
        continue
      }
      if (build !== undefined) {
        this.#current.set(name, build)
        await this.#pool.resize(build, size)
      } else {
        this.#current.delete(name)
      }
      if (previous !== undefined) {
        await this.#pool.resize(previous, 0)
      }
      this.#log.info({ template: name, build, previous }, 'warm pool follows the template')
    }
  }
}
