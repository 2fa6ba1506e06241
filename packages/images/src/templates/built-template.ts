/**
 * Templates built from a step list (E2B's `Template` builder, a Dockerfile): each finished build
 * leaves a manifest naming its layers, bottom image below step layers, and the defaults its
 * sandboxes start with. Drivers find a built template by its build id through these files, so a
 * create needs no database and works in any process that shares the data directory.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { TemplateNotFoundError } from '@sandcell/shared'
import * as z from 'zod'
import { readJsonFile, writeJsonAtomic } from '../core/json-file.js'

/** What every sandbox of a built template starts with (the build's final ENV, USER, WORKDIR). */
export const templateDefaultsSchema = z.object({
  env: z.record(z.string(), z.string()),
  user: z.string(),
  /** Absent: the user's home. */
  workdir: z.string().optional(),
  /** Started in the background once the sandbox is up, before anyone uses it. */
  startCmd: z.string().optional(),
  /** Run until it exits 0 before the sandbox counts as ready (with a start command). */
  readyCmd: z.string().optional(),
})

export type TemplateDefaults = z.infer<typeof templateDefaultsSchema>

const builtTemplateSchema = z.object({
  version: z.literal(1),
  buildId: z.string(),
  /** Overlay lower directories, topmost first (the last is the bottom image or template). */
  lowerDirs: z.array(z.string()).min(1),
  /** Host directories bound read-only at the same path (a build on the `base` template). */
  hostBinds: z.array(z.string()),
  /** Cache keys of every step layer the build made or reused, so that none is swept. */
  layerKeys: z.array(z.string()),
  /** Who keeps this manifest when it is not a template build (`functions`): builds leave it be. */
  owner: z.string().optional(),
  defaults: templateDefaultsSchema,
  createdAt: z.string(),
})

export type BuiltTemplate = z.infer<typeof builtTemplateSchema>

/** Build ids are UUIDs: safe as file names and never the name of a built-in template. */
const buildIdPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export function isBuildId(name: string): boolean {
  return buildIdPattern.test(name)
}

function manifestPath(buildsDir: string, buildId: string): string {
  return join(buildsDir, 'templates', `${buildId}.json`)
}

/** Records a finished build; from then on drivers create sandboxes from it by its build id. */
export async function writeBuiltTemplate(
  buildsDir: string,
  template: BuiltTemplate,
): Promise<void> {
  if (!isBuildId(template.buildId)) {
    throw new TemplateNotFoundError(template.buildId, [])
  }
  mkdirSync(join(buildsDir, 'templates'), { recursive: true, mode: 0o700 })
  await writeJsonAtomic(manifestPath(buildsDir, template.buildId), template)
}

/**
 * The built template with this build id, or undefined when there is none (or its manifest is
 * damaged, or a layer it names is gone: such a build cannot start sandboxes).
 */
export function readBuiltTemplate(buildsDir: string, buildId: string): BuiltTemplate | undefined {
  if (!isBuildId(buildId)) {
    return undefined
  }
  const parsed = builtTemplateSchema.safeParse(readJsonFile(manifestPath(buildsDir, buildId)))
  if (!parsed.success || !parsed.data.lowerDirs.every((dir) => existsSync(dir))) {
    return undefined
  }
  return parsed.data
}

/** Every build manifest under `buildsDir` that parses (damaged ones are skipped). */
export function listBuiltTemplates(buildsDir: string): BuiltTemplate[] {
  const dir = join(buildsDir, 'templates')
  if (!existsSync(dir)) {
    return []
  }
  return readdirSync(dir)
    .filter((name) => name.endsWith('.json'))
    .flatMap((name) => {
      const parsed = builtTemplateSchema.safeParse(readJsonFile(join(dir, name)))
      return parsed.success ? [parsed.data] : []
    })
}

/** Where a build's manifest is: removing it forgets the build (its layers are swept later). */
export function builtTemplatePath(buildsDir: string, buildId: string): string {
  return manifestPath(buildsDir, buildId)
}
