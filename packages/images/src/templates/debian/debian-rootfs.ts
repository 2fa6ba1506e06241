/**
 * Builds the `debian` template once per machine: a Debian 12 root filesystem made by mmdebstrap,
 * trimmed, configured for sandboxes and shifted into the sandbox id range, with progress.
 */
import { existsSync } from 'node:fs'
import { basename } from 'node:path'
import { DriverError, InvalidArgumentError, type Logger } from '@sandcell/shared'
import { commitBuild, removeStaleBuilds, retireRootfs, withBuildDir } from '../../core/build-dir.js'
import { acquireBuildLock, type BuildLock } from '../../core/build-lock.js'
import { readJsonFile, writeJsonAtomic } from '../../core/json-file.js'
import { shiftOwnership } from '../../core/ownership.js'
import { countFiles, measureTree } from '../../core/tree-walk.js'
import { templatePaths, type TemplatePaths } from '../template-paths.js'
import { BuildProgressTracker, type TemplateBuildProgress } from './build-progress.js'
import { configureRootfs } from './configure-rootfs.js'
import { readDebianVersion, readInstalledPackages } from './installed-packages.js'
import { runMmdebstrap } from './mmdebstrap.js'

/**
 * Bumped whenever the recipe changes what ends up in the image; recorded in template.json. A
 * template built by an older version is rebuilt (2: login-shell files that start no process).
 */
export const debianBuilderVersion = 2

/** The Debian release the template is built from. */
export const debianSuite = 'bookworm'

/**
 * What the image holds on top of Debian's essential set and apt. bash, coreutils, findutils,
 * grep, sed, tar and gzip are essential already. python3-pip and python3-venv add 10 packages
 * (~15 MB) and make `pip install` and venvs work wherever PyPI is reachable. Debian's `npm` is
 * left out: it adds ~350 node-* packages, tripling the package count and the dpkg time.
 */
export const defaultDebianPackages: readonly string[] = [
  'python3',
  'python3-pip',
  'python3-venv',
  'nodejs',
  'gcc',
  'g++',
  'make',
  'libc6-dev',
  'git',
  'curl',
  'ca-certificates',
  'procps',
  'less',
  'xz-utils',
  'unzip',
  'passwd',
]

export interface BuildDebianRootfsOptions {
  /** Directory holding every template: this one goes to `<templatesDir>/<name>/rootfs`. */
  templatesDir: string
  /** @default 'debian' */
  name?: string
  /**
   * Packages on top of the essential set and apt; they shape a new build only (an existing
   * template is returned as it is). @default defaultDebianPackages
   */
  packages?: readonly string[]
  /**
   * Apt sources, passed to mmdebstrap as its MIRROR arguments (a URL such as
   * `http://deb.debian.org/debian`, or a whole `deb ...` line). @default mmdebstrap's own:
   * deb.debian.org for bookworm, bookworm-updates and security.debian.org
   */
  mirrors?: readonly string[]
  /** Host uid/gid of sandbox uid/gid 0. @default 100000 */
  uidOffset?: number
  onProgress?: (progress: TemplateBuildProgress) => void
  /** Aborting kills mmdebstrap and everything it started, and removes the partial build. */
  signal?: AbortSignal
  log: Logger
}

/** What `template.json` records about a built Debian template. */
export interface DebianTemplateMetadata {
  name: string
  kind: 'debian'
  builtAt: string
  builderVersion: number
  /** `mmdebstrap <version>` that built it. */
  builder: string
  suite: string
  /** Contents of /etc/debian_version, e.g. "12.12". */
  debianVersion: string
  variant: 'apt'
  /** Packages asked for on top of the base. */
  packages: string[]
  /** Every installed package as `name=version`, sorted. */
  installed: string[]
  uidOffset: number
  /** Bytes of regular files, each inode once (apparent size, not blocks). */
  sizeBytes: number
  /** Paths in the tree, as `find rootfs | wc -l` counts them. */
  fileCount: number
  buildDurationMs: number
}

export interface DebianRootfs {
  rootfsDir: string
  metadata: DebianTemplateMetadata
}

const packageNamePattern = /^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?$/
const mirrorPattern = /^(deb(-src)? \S|[a-z][a-z0-9+]*:\/\/\S)/

/**
 * Returns the Debian template, building it first when it does not exist yet. The build takes a
 * minute or two (most of it dpkg) and downloads ~150 MB; it runs under the template's build lock,
 * so concurrent callers in any process wait for one build and then share its result. The tree is
 * assembled in `.build-<random>` and renamed to `rootfs` only when complete; a failed or
 * aborted build removes its directory, and stale ones from crashes are removed by the next build.
 * One built by an older {@link debianBuilderVersion} is rebuilt, and the old tree retired beside it.
 *
 * Needs root (mmdebstrap's root mode, chown) and the mmdebstrap, unshare and setpriv
 * commands. mmdebstrap runs in its own mount and pid namespaces, so none of its mounts or
 * processes can outlive it, even when this process dies.
 *
 * @throws InvalidArgumentError for bad package names or mirrors; DriverError when mmdebstrap
 * fails (the message quotes its last meaningful lines), when the host lacks root or a command, or
 * when an existing template was built for another uid offset; the signal's reason when aborted.
 */
export async function buildDebianRootfs(options: BuildDebianRootfsOptions): Promise<DebianRootfs> {
  const name = options.name ?? 'debian'
  const uidOffset = options.uidOffset ?? 100000
  const packages = [...(options.packages ?? defaultDebianPackages)]
  const mirrors = [...(options.mirrors ?? [])]
  const { signal } = options
  const log = options.log.child({ component: 'runtime.templates', template: name })
  for (const pkg of packages) {
    if (!packageNamePattern.test(pkg)) {
      throw new InvalidArgumentError(`${JSON.stringify(pkg)} is not a Debian package name`)
    }
  }
  for (const mirror of mirrors) {
    if (!mirrorPattern.test(mirror)) {
      throw new InvalidArgumentError(
        `${JSON.stringify(mirror)} is not an apt source: give a URL or a "deb ..." line`,
      )
    }
  }
  const paths = templatePaths(options.templatesDir, name)
  const existing = await readExisting(paths, uidOffset, log)
  if (existing !== undefined) {
    return existing
  }
  signal?.throwIfAborted()
  if (process.getuid?.() !== 0) {
    throw new DriverError(
      'building the debian template needs root (mmdebstrap --mode=root, chown into the sandbox id range): run sandcell as root',
    )
  }

  const progress = new BuildProgressTracker(options.onProgress)
  const lock = await acquireBuildLock(paths.lockPath, {
    log,
    signal,
    onWait: (owner) => {
      progress.enter(
        'waiting',
        0,
        undefined,
        owner === undefined
          ? `waiting for another build of ${name}`
          : `waiting for pid ${owner.pid}, which is building ${name}`,
      )
    },
  })
  try {
    // Another process may have finished the build while this one waited.
    return (
      (await readExisting(paths, uidOffset, log)) ??
      (await buildLocked({
        name,
        uidOffset,
        packages,
        mirrors,
        paths,
        progress,
        lock,
        log,
        signal,
      }))
    )
  } finally {
    await lock.release()
  }
}

interface BuildLockedOptions {
  name: string
  uidOffset: number
  packages: string[]
  mirrors: string[]
  paths: TemplatePaths
  progress: BuildProgressTracker
  lock: BuildLock
  log: Logger
  signal: AbortSignal | undefined
}

/** The build itself, run while holding the template's lock. */
async function buildLocked(options: BuildLockedOptions): Promise<DebianRootfs> {
  const { name, uidOffset, packages, mirrors, paths, progress, lock, log, signal } = options
  progress.enter('preparing', 0, undefined, 'removing stale builds')
  await removeStaleBuilds(paths.templateDir, log)
  const started = performance.now()
  return withBuildDir(paths.templateDir, log, async (buildDir) => {
    log.info({ buildDir, packages }, 'building template')
    const builder = await runMmdebstrap({
      suite: debianSuite,
      buildDir,
      packages,
      mirrors,
      paths,
      progress,
      log,
      signal,
    })
    await configureRootfs(buildDir, progress, signal)

    progress.enter('shifting', 0, 'files', 'counting files')
    const total = await countFiles(buildDir, { signal })
    progress.enter('shifting', total, 'files', `shifting ownership by ${uidOffset}`)
    const shifted = await shiftOwnership(buildDir, {
      offset: uidOffset,
      total,
      signal,
      onProgress: ({ done }) => progress.advance(done),
    })
    log.info({ paths: shifted.paths, durationMs: shifted.durationMs }, 'template ownership shifted')

    progress.enter('finishing', 1, 'steps', 'writing template.json')
    const metadata: DebianTemplateMetadata = {
      name,
      kind: 'debian',
      builtAt: new Date().toISOString(),
      builderVersion: debianBuilderVersion,
      builder,
      suite: debianSuite,
      debianVersion: readDebianVersion(buildDir),
      variant: 'apt',
      packages,
      installed: readInstalledPackages(buildDir),
      uidOffset,
      sizeBytes: shifted.sizeBytes,
      fileCount: shifted.paths,
      buildDurationMs: Math.round(performance.now() - started),
    }
    signal?.throwIfAborted()
    await lock.assertHeld()
    if (existsSync(paths.rootfsDir)) {
      const retiredDir = await retireRootfs(paths.rootfsDir)
      log.warn({ retiredDir }, 'replaced a template built by an older builder version')
    }
    await writeJsonAtomic(paths.metadataPath, metadata)
    await commitBuild(buildDir, paths.rootfsDir)
    progress.complete()
    log.info(
      {
        rootfsDir: paths.rootfsDir,
        sizeBytes: metadata.sizeBytes,
        fileCount: metadata.fileCount,
        durationMs: metadata.buildDurationMs,
      },
      'template built',
    )
    return { rootfsDir: paths.rootfsDir, metadata }
  })
}

/** The built template when its rootfs exists and is not outdated, else undefined. */
async function readExisting(
  paths: TemplatePaths,
  uidOffset: number,
  log: Logger,
): Promise<DebianRootfs | undefined> {
  if (!existsSync(paths.rootfsDir)) {
    return undefined
  }
  let metadata = parseMetadata(readJsonFile(paths.metadataPath))
  if (metadata === undefined) {
    // The rootfs appears only after template.json is written, so this means someone removed
    // or edited the file; rebuild it from the tree rather than touching a rootfs in use. Its
    // builder version is unknown (0): the template is rebuilt below, the tree retired.
    log.warn({ metadataPath: paths.metadataPath }, 'template.json missing or invalid; rewriting it')
    metadata = await describeExisting(paths, uidOffset)
    await writeJsonAtomic(paths.metadataPath, metadata).catch((err: unknown) => {
      // The template works without it; the next read tries again.
      log.warn({ err, metadataPath: paths.metadataPath }, 'cannot rewrite template.json')
    })
  }
  if (metadata.uidOffset !== uidOffset) {
    throw new DriverError(
      `template ${metadata.name} at ${paths.rootfsDir} is owned for uid offset ${metadata.uidOffset}, but sandboxes use ${uidOffset}: remove ${paths.templateDir} (no sandbox may be using it) so that it is rebuilt`,
      { details: { rootfsDir: paths.rootfsDir, built: metadata.uidOffset, wanted: uidOffset } },
    )
  }
  if (metadata.builderVersion < debianBuilderVersion) {
    log.info(
      { built: metadata.builderVersion, current: debianBuilderVersion },
      'template was built by an older builder version; rebuilding it',
    )
    return undefined
  }
  return { rootfsDir: paths.rootfsDir, metadata }
}

function parseMetadata(value: unknown): DebianTemplateMetadata | undefined {
  if (typeof value !== 'object' || value === null) {
    return undefined
  }
  const record = value as Partial<Record<keyof DebianTemplateMetadata, unknown>>
  if (
    record.kind !== 'debian' ||
    typeof record.name !== 'string' ||
    typeof record.uidOffset !== 'number' ||
    typeof record.builderVersion !== 'number' ||
    typeof record.sizeBytes !== 'number' ||
    typeof record.fileCount !== 'number'
  ) {
    return undefined
  }
  // The remaining fields are informational: trust the file we wrote ourselves.
  return value as DebianTemplateMetadata
}

async function describeExisting(
  paths: TemplatePaths,
  uidOffset: number,
): Promise<DebianTemplateMetadata> {
  const tree = await measureTree(paths.rootfsDir)
  return {
    name: basename(paths.templateDir),
    kind: 'debian',
    builtAt: new Date(0).toISOString(),
    builderVersion: 0,
    builder: 'unknown',
    suite: debianSuite,
    debianVersion: readDebianVersion(paths.rootfsDir),
    variant: 'apt',
    packages: [],
    installed: readInstalledPackages(paths.rootfsDir),
    uidOffset,
    sizeBytes: tree.sizeBytes,
    fileCount: tree.paths,
    buildDurationMs: 0,
  }
}
