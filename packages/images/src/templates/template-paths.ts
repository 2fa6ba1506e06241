/** Where a template's files live under the templates directory, from its name. */
import { join, resolve } from 'node:path'
import { BugError } from '@sandcell/shared'

/** Where one template's files live under the templates directory. */
export interface TemplatePaths {
  /** `<templatesDir>/<name>`: holds everything below. */
  templateDir: string
  /** The finished root filesystem; it exists only once complete (it appears by rename). */
  rootfsDir: string
  /** `template.json`: what was built, when, and how big it is. */
  metadataPath: string
  /** The build lock: exists while a builder holds it (or after one crashed). */
  lockPath: string
  /** Full output of the last build, for operators. */
  logPath: string
}

const templateNamePattern = /^[a-z0-9][a-z0-9._-]{0,63}$/

/**
 * The paths of template `name` under `templatesDir`.
 * @throws BugError for a name that could leave the directory (names come from code, not users).
 */
export function templatePaths(templatesDir: string, name: string): TemplatePaths {
  if (!templateNamePattern.test(name)) {
    throw new BugError(`template name ${JSON.stringify(name)} is not a safe directory name`)
  }
  const templateDir = join(resolve(templatesDir), name)
  return {
    templateDir,
    rootfsDir: join(templateDir, 'rootfs'),
    metadataPath: join(templateDir, 'template.json'),
    lockPath: join(templateDir, '.lock'),
    logPath: join(templateDir, 'build.log'),
  }
}
