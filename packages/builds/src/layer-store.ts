/**
 * Step layers on disk, keyed by their cache key: each holds the files a step changed (an overlay
 * upper directory, whiteouts included) and the build state after it (env, user, workdir). A
 * layer appears by a rename once complete, so a crash never leaves one half made; layers are
 * immutable, which is what lets every template that stacks one share it.
 */
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { readJsonFile, writeJsonAtomic } from '@sandcell/images'
import * as z from 'zod'

/** Where a build stands after a step: what the next step and the template's sandboxes get. */
export const buildStateSchema = z.object({
  env: z.record(z.string(), z.string()),
  user: z.string(),
  workdir: z.string().optional(),
})

export type BuildState = z.infer<typeof buildStateSchema>

const layerMetaSchema = z.object({
  key: z.string(),
  /** True when the step changed no file (ENV, or a command that wrote nothing). */
  empty: z.boolean(),
  state: buildStateSchema,
  createdAt: z.string(),
})

export interface Layer {
  key: string
  /** The layer's files; absent for an empty layer. */
  treeDir?: string
  state: BuildState
}

/** A layer directory name: 128 bits of the key keep overlay option strings short. */
function layerName(key: string): string {
  return key.slice(0, 32)
}

const temporaryPrefix = '.tmp-'

export class LayerStore {
  readonly #dir: string

  constructor(buildsDir: string) {
    this.#dir = join(buildsDir, 'layers')
  }

  /** Creates the folder (owner only) and removes what crashed builds left half made. */
  async start(): Promise<void> {
    mkdirSync(this.#dir, { recursive: true, mode: 0o700 })
    for (const name of readdirSync(this.#dir)) {
      if (name.startsWith(temporaryPrefix)) {
        await rm(join(this.#dir, name), { recursive: true, force: true })
      }
    }
  }

  /** The finished layer with this key, or undefined. */
  get(key: string): Layer | undefined {
    const dir = join(this.#dir, layerName(key))
    const parsed = layerMetaSchema.safeParse(readJsonFile(join(dir, 'layer.json')))
    if (!parsed.success || parsed.data.key !== key) {
      return undefined
    }
    const treeDir = join(dir, 'tree')
    return {
      key,
      state: parsed.data.state,
      ...(parsed.data.empty ? {} : { treeDir }),
    }
  }

  /** A fresh directory for a layer being made; `commit` publishes it, `discard` drops it. */
  scratch(): string {
    const dir = join(this.#dir, `${temporaryPrefix}${randomBytes(8).toString('hex')}`)
    mkdirSync(dir, { mode: 0o700 })
    return dir
  }

  /**
   * Publishes a scratch directory (with `tree/` inside unless empty) as the layer for `key`.
   * When another build published the same key meanwhile, that one wins and this is dropped.
   */
  async commit(scratch: string, key: string, state: BuildState, empty: boolean): Promise<Layer> {
    if (empty) {
      await rm(join(scratch, 'tree'), { recursive: true, force: true })
    }
    await writeJsonAtomic(join(scratch, 'layer.json'), {
      key,
      empty,
      state,
      createdAt: new Date().toISOString(),
    })
    const target = join(this.#dir, layerName(key))
    if (existsSync(target)) {
      await this.discard(scratch)
    } else {
      await rename(scratch, target)
    }
    const layer = this.get(key)
    if (layer === undefined) {
      throw new Error(`layer ${key} vanished right after it was made`)
    }
    return layer
  }

  async discard(scratch: string): Promise<void> {
    await rm(scratch, { recursive: true, force: true })
  }

  /**
   * Removes every layer no kept build names (after templates were deleted).
   * @param inUse layer keys of every kept build (from their manifests)
   */
  async sweep(inUse: Iterable<string>): Promise<number> {
    const keep = new Set([...inUse].map(layerName))
    let removed = 0
    for (const name of readdirSync(this.#dir)) {
      if (name.startsWith(temporaryPrefix)) {
        continue
      }
      const dir = join(this.#dir, name)
      if (!keep.has(name)) {
        await rm(dir, { recursive: true, force: true })
        removed++
      }
    }
    return removed
  }
}
