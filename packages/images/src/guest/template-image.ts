/** A template's root filesystem as a read-only erofs image with real ownership, for microVMs. */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { vmTapAddress } from '@sandcell/network'
import { DriverError, type Logger } from '@sandcell/shared'
import { ensureArtifact, fileIdentity, hashParts } from '../core/artifact-cache.js'
import { unshiftOwnership } from '../core/ownership.js'
import { runTool } from '../core/run-tool.js'
import { linkOrCopy } from '../core/tree-copy.js'
import { isBuildId, type TemplateDefaults } from '../templates/built-template.js'
import type { TemplateRegistry } from '../templates/template-registry.js'
import { guestImageVersion, reportProgress, type BuildContext } from './build-context.js'
import { mkfsErofs } from './erofs.js'

/** Busybox's applets as links to one static binary: what `base` has in a VM instead of host /usr. */
function addBusybox(tree: string): void {
  const busybox = '/bin/busybox'
  if (!existsSync(busybox)) {
    throw new DriverError('the base template in a VM needs busybox: apt-get install busybox-static')
  }
  mkdirSync(join(tree, 'usr', 'bin'), { recursive: true })
  mkdirSync(join(tree, 'usr', 'sbin'), { recursive: true })
  linkOrCopy(busybox, join(tree, 'usr', 'bin', 'busybox'))
  const list = execFileSync(busybox, ['--list-full'], { encoding: 'utf8' })
  for (const applet of list.split('\n').filter((line) => line.length > 0)) {
    const name = basename(applet)
    const where = applet.includes('sbin/') ? 'usr/sbin' : 'usr/bin'
    const link = join(tree, where, name)
    if (name !== 'busybox' && !existsSync(link)) {
      symlinkSync(where === 'usr/bin' ? 'busybox' : '../bin/busybox', link)
    }
  }
}

/**
 * Copies the union of the lower directories into `tree`: one directory is copied as is; a
 * stack is mounted as a read-only overlay (whiteouts and opaque directories applied by the
 * kernel) and its merged view copied.
 */
async function copyMergedTree(
  lowerDirs: readonly string[],
  tree: string,
  work: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  const abort = signal === undefined ? {} : { signal }
  if (lowerDirs.length === 1) {
    await runTool('cp', ['-a', '--reflink=auto', lowerDirs[0] ?? '', tree], {
      what: `copying ${lowerDirs[0] ?? ''}`,
      ...abort,
    })
    return
  }
  const merged = join(work, 'merged')
  mkdirSync(merged)
  await runTool(
    'mount',
    ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowerDirs.join(':')}`, merged],
    { what: 'mounting the template layers' },
  )
  try {
    await runTool('cp', ['-a', '--reflink=auto', merged, tree], {
      what: 'copying the template layers',
      ...abort,
    })
  } finally {
    await runTool('umount', [merged], { what: 'unmounting the template layers' })
  }
}

export interface TemplateImageSource {
  name: string
  /** Overlay lower directories, topmost first: a built-in has one, a built template several. */
  lowerDirs: readonly string[]
  /** Host id of the template's root (the container driver's uid base). */
  uidOffset: number
  /** The `base` template binds the host's /usr; a VM gets busybox instead. */
  withBusybox: boolean
}

/**
 * The name of a template's image in the artifact cache. Layers of built templates never change
 * once made, so their paths identify their content: a built template is named by its layers
 * alone, and a rebuild that reused every layer (a new build id) reuses the image.
 * @throws DriverError when the template has no lower directory
 */
export function templateImageKey(template: TemplateImageSource): string {
  const [top, ...below] = template.lowerDirs
  if (top === undefined) {
    throw new DriverError(`template ${template.name} has no root filesystem`)
  }
  const metadata = join(dirname(top), 'template.json')
  return `${isBuildId(template.name) ? 'built' : template.name}-${hashParts([
    guestImageVersion,
    below.length === 0 ? top : template.lowerDirs.join(':'),
    existsSync(metadata) ? readFileSync(metadata, 'utf8') : fileIdentity(top),
    template.uidOffset,
    template.withBusybox,
  ])}`
}

/**
 * The template's root filesystem as a read-only erofs image with real ownership: copied (the
 * template's files are owned by the container id range), re-owned, then packed.
 */
export async function ensureTemplateImage(
  context: BuildContext,
  template: TemplateImageSource,
): Promise<string> {
  const key = templateImageKey(template)
  const dir = await ensureArtifact(
    join(context.imagesDir, 'templates'),
    key,
    context,
    async (work) => {
      const tree = join(work, 'tree')
      reportProgress(context, 'template-image', `copying the ${template.name} template`)
      await copyMergedTree(template.lowerDirs, tree, work, context.signal)
      const files = await unshiftOwnership(tree, template.uidOffset, {
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      mkdirSync(join(tree, '.sandcell'), { recursive: true, mode: 0o755 })
      // Every guest resolves through its gateway (the host sends that to its DNS forwarder):
      // the same file in every VM, so it belongs in the image, not in each VM's disk.
      mkdirSync(join(tree, 'etc'), { recursive: true, mode: 0o755 })
      rmSync(join(tree, 'etc', 'resolv.conf'), { force: true })
      writeFileSync(join(tree, 'etc', 'resolv.conf'), `nameserver ${vmTapAddress}\n`, {
        mode: 0o644,
      })
      if (template.withBusybox) {
        addBusybox(tree)
      }
      reportProgress(
        context,
        'template-image',
        `packing the ${template.name} template image (${files} files)`,
      )
      await mkfsErofs(join(work, 'rootfs.erofs'), tree, context.signal)
      await rm(tree, { recursive: true, force: true })
    },
  )
  return join(dir, 'rootfs.erofs')
}

/** Where a microVM driver keeps templates and images (its settings fit this shape). */
export interface TemplateRootfsSettings {
  imagesDir: string
  /** Where template builds keep their layers and manifests. */
  buildsDir: string
  log: Logger
  /** Host id of a template's root in the templates directory. */
  uidBase: number
  templates: TemplateRegistry
}

/** A template as a VM runs it. */
export interface TemplateRootfs {
  rootfsImage: string
  /**
   * Where the template's VM artifacts (its image, its snapshots) are kept: the shared images
   * directory for a built-in; for a built template, beside the layers it is made from, so that
   * they go with them.
   */
  artifactsDir: string
  /** A built template's env, user, workdir and start command. */
  defaults?: TemplateDefaults
}

/** The template, prepared (built when needed), as a read-only image for VMs. */
export async function ensureTemplateRootfs(
  settings: TemplateRootfsSettings,
  template: string,
  context: Partial<BuildContext>,
): Promise<TemplateRootfs> {
  const prepared = await settings.templates.prepare(template, {
    ...(context.signal === undefined ? {} : { signal: context.signal }),
    ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
  })
  const artifactsDir = isBuildId(template) ? join(settings.buildsDir, 'vm') : settings.imagesDir
  const rootfsImage = await ensureTemplateImage(
    { log: settings.log, ...context, imagesDir: artifactsDir },
    {
      name: template,
      lowerDirs: prepared.lowerDirs,
      uidOffset: settings.uidBase,
      withBusybox: prepared.hostBinds.length > 0,
    },
  )
  return prepared.defaults === undefined
    ? { rootfsImage, artifactsDir }
    : { rootfsImage, artifactsDir, defaults: prepared.defaults }
}
