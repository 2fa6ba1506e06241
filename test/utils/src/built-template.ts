/**
 * Built templates for driver tests, made without a server or a build: one layer of files over
 * the `base` template, recorded as a finished build that drivers create sandboxes from.
 */
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { TemplateRegistry, writeBuiltTemplate, type TemplateDefaults } from '@sandcell/images'
import { createTestLogger, testTemplatesDir } from './drivers.js'

export interface TestBuiltTemplateOptions {
  /** The drivers' builds directory: the manifest goes there, and the layer beside it. */
  buildsDir: string
  /** Files of the layer, path inside the sandbox to content, owned by the sandbox's root. */
  files: Record<string, string>
  defaults: TemplateDefaults
  /** Host id of the sandbox's root (the drivers' uid base). @default 100000 */
  uidBase?: number
}

/**
 * Writes a layer of `files` and the manifest of a build that stacks it on `base`.
 * @returns the build id, which drivers take as the template name
 */
export async function writeTestBuiltTemplate(options: TestBuiltTemplateOptions): Promise<string> {
  const uidBase = options.uidBase ?? 100_000
  const base = await new TemplateRegistry({
    templatesDir: testTemplatesDir,
    uidOffset: uidBase,
    log: createTestLogger(),
  }).prepare('base')
  const buildId = randomUUID()
  const tree = join(options.buildsDir, 'test-layers', buildId, 'tree')
  mkdirSync(tree, { recursive: true, mode: 0o755 })
  for (const [path, content] of Object.entries(options.files)) {
    const file = join(tree, path)
    mkdirSync(dirname(file), { recursive: true, mode: 0o755 })
    writeFileSync(file, content, { mode: 0o644 })
  }
  execFileSync('chown', ['-R', `${uidBase}:${uidBase}`, tree])
  await writeBuiltTemplate(options.buildsDir, {
    version: 1,
    buildId,
    lowerDirs: [tree, ...base.lowerDirs],
    hostBinds: [...base.hostBinds],
    layerKeys: [],
    defaults: options.defaults,
    createdAt: new Date().toISOString(),
  })
  return buildId
}
