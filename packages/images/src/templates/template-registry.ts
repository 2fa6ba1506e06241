/** The templates a container or VM sandbox can start from, and how each is built. */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { TemplateNotFoundError, type Logger } from '@sandcell/shared'
import type { TemplateProgress } from '../core/progress.js'
import { buildBaseRootfs } from './base-rootfs.js'
import { buildDebianRootfs } from './debian/debian-rootfs.js'
import { isBuildId, readBuiltTemplate, type TemplateDefaults } from './built-template.js'

export interface TemplateStatus {
  name: string
  /** Ready to create sandboxes from without a build. */
  ready: boolean
  description: string
}

export interface PreparedTemplate {
  name: string
  /** The root filesystem as overlay lower directories, topmost first (one for a built-in). */
  lowerDirs: readonly string[]
  /** Host directories bound read-only at the same path inside (the base template's /usr…). */
  hostBinds: readonly string[]
  /** A built template's environment, user, workdir and start command; none for a built-in. */
  defaults?: TemplateDefaults
}

export interface TemplateBuildContext {
  templatesDir: string
  /** Where template builds leave their manifests and layers (see built-template.ts). */
  buildsDir?: string
  uidOffset: number
  log: Logger
  signal?: AbortSignal
  onProgress?: (progress: TemplateProgress) => void
}

interface TemplateDefinition {
  description: string
  rootfsDir(templatesDir: string): string
  build(context: TemplateBuildContext): Promise<PreparedTemplate>
}

const definitions: Record<string, TemplateDefinition> = {
  base: {
    description: "instant: the host's /usr read-only, a minimal /etc with root and user",
    rootfsDir: (templatesDir) => join(templatesDir, 'base', 'rootfs'),
    async build(context) {
      const { rootfsDir, hostBinds } = await buildBaseRootfs({
        templatesDir: context.templatesDir,
        uidOffset: context.uidOffset,
        log: context.log,
      })
      return { name: 'base', lowerDirs: [rootfsDir], hostBinds }
    },
  },
  debian: {
    description: 'Debian 12 with python3, nodejs, gcc, g++, git and curl (built on first use)',
    rootfsDir: (templatesDir) => join(templatesDir, 'debian', 'rootfs'),
    async build(context) {
      const { rootfsDir } = await buildDebianRootfs({
        templatesDir: context.templatesDir,
        name: 'debian',
        uidOffset: context.uidOffset,
        log: context.log,
        ...(context.signal === undefined ? {} : { signal: context.signal }),
        ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
      })
      return { name: 'debian', lowerDirs: [rootfsDir], hostBinds: [] }
    },
  },
}

export const templateNames = Object.keys(definitions)

function definition(name: string): TemplateDefinition {
  const found = Object.hasOwn(definitions, name) ? definitions[name] : undefined
  if (found === undefined) {
    throw new TemplateNotFoundError(name, templateNames)
  }
  return found
}

/** Throws TemplateNotFoundError for a name that is neither a built-in nor a finished build. */
export function assertTemplateExists(name: string, buildsDir?: string): void {
  if (buildsDir !== undefined && isBuildId(name)) {
    if (readBuiltTemplate(buildsDir, name) === undefined) {
      throw new TemplateNotFoundError(name, templateNames)
    }
    return
  }
  definition(name)
}

export function templateStatuses(templatesDir: string): TemplateStatus[] {
  return Object.entries(definitions).map(([name, def]) => ({
    name,
    ready: existsSync(def.rootfsDir(templatesDir)),
    description: def.description,
  }))
}

/**
 * Builds the template if it is not built yet (once per process for concurrent callers; the
 * builders lock against other processes) and returns where it is.
 */
export class TemplateRegistry {
  readonly #prepared = new Map<string, Promise<PreparedTemplate>>()
  readonly #context: Omit<TemplateBuildContext, 'signal' | 'onProgress'>

  constructor(context: Omit<TemplateBuildContext, 'signal' | 'onProgress'>) {
    this.#context = context
  }

  prepare(
    name: string,
    options: { signal?: AbortSignal; onProgress?: (progress: TemplateProgress) => void } = {},
  ): Promise<PreparedTemplate> {
    const buildsDir = this.#context.buildsDir
    if (buildsDir !== undefined && isBuildId(name)) {
      // Read each time: a build finishes (or is deleted) in whichever process runs the builder.
      const built = readBuiltTemplate(buildsDir, name)
      if (built === undefined) {
        return Promise.reject(new TemplateNotFoundError(name, templateNames))
      }
      return Promise.resolve({
        name,
        lowerDirs: built.lowerDirs,
        hostBinds: built.hostBinds,
        defaults: built.defaults,
      })
    }
    const def = definition(name)
    const cached = this.#prepared.get(name)
    if (cached !== undefined) {
      return cached
    }
    const building = def.build({ ...this.#context, ...options })
    this.#prepared.set(name, building)
    // A failed or aborted build must not poison later attempts.
    building.catch(() => this.#prepared.delete(name))
    return building
  }
}
