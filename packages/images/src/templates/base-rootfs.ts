/**
 * Builds the `base` template in milliseconds: a skeleton root filesystem (a minimal /etc, home,
 * temp and mount-point directories) over which the container driver binds the host's /usr and
 * the few other host paths that make its programs work, read-only.
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
  type Stats,
} from 'node:fs'
import { join } from 'node:path'
import { DriverError, type Logger } from '@sandcell/shared'
import { commitBuild, removeStaleBuilds, retireRootfs, withBuildDir } from '../core/build-dir.js'
import { acquireBuildLock, type BuildLock } from '../core/build-lock.js'
import { readJsonFile, writeJsonAtomic } from '../core/json-file.js'
import { shiftOwnership } from '../core/ownership.js'
import { baseBashrc, loginProfile } from './login-shell.js'
import { templatePaths, type TemplatePaths } from './template-paths.js'

/**
 * Bumped whenever the skeleton changes; recorded in template.json. A template built by an older
 * version is rebuilt (2: login-shell files that start no process, LANG, the prompt).
 */
export const baseBuilderVersion = 2

export interface BuildBaseRootfsOptions {
  /** Directory holding every template: this one goes to `<templatesDir>/base/rootfs`. */
  templatesDir: string
  /** Host uid/gid of sandbox uid/gid 0. @default 100000 */
  uidOffset?: number
  /** Only waits on another process's build of the same template can block. */
  signal?: AbortSignal
  log: Logger
  /** The host root whose layout (merged /usr or not) is mirrored; for tests. @default '/' */
  hostRoot?: string
}

export interface BaseRootfs {
  rootfsDir: string
  /**
   * Absolute host paths the driver must bind read-only at the same path inside: always `/usr`,
   * then `/bin`, `/lib`… where the host has real directories instead of links into /usr, and
   * the host's /etc/alternatives, /etc/ssl/certs and /etc/ld.so.cache when it has them (awk,
   * cc and which are alternatives; TLS needs the CA bundle). Entries may be files.
   */
  hostBinds: string[]
}

/** What `template.json` records about the base template. */
export interface BaseTemplateMetadata {
  name: 'base'
  kind: 'base'
  builtAt: string
  builderVersion: number
  uidOffset: number
  hostBinds: string[]
  fileCount: number
  sizeBytes: number
}

/**
 * Top-level entries that are links into /usr on a merged-/usr host (Debian 12) and real
 * directories on older ones. They are mirrored: the same symlink, or an empty mount point.
 */
const usrLayoutEntries = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'] as const

/** Host paths outside /usr that programs from /usr need, bound when the host has them. */
const etcBinds = [
  { path: 'etc/alternatives', kind: 'directory' },
  { path: 'etc/ssl/certs', kind: 'directory' },
  { path: 'etc/ld.so.cache', kind: 'file' },
] as const

const passwd = `root:x:0:0:root:/root:/bin/bash
user:x:1000:1000::/home/user:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`

const group = `root:x:0:
tty:x:5:
user:x:1000:
nogroup:x:65534:
`

const nsswitch = `passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
`

const hosts = `127.0.0.1\tlocalhost
127.0.1.1\tsandbox
::1\tlocalhost ip6-localhost ip6-loopback
`

/** A file has to exist for the driver to bind a real one over it; until then lookups fail fast. */
const resolvConf = `# Placeholder written by sandcell's template builder: the sandbox's real resolver
# configuration replaces this file when a sandbox gets network access.
nameserver 127.0.0.1
`

/**
 * Returns the base template, building it first when needed (a few milliseconds), atomically and
 * under the same build lock as the other templates. Ownership is shifted by `uidOffset` like
 * every template. The host layout is read at build time; `hostBinds` is recomputed on every
 * call from the built tree and the host, so it never names a host path that is gone. One built
 * by an older {@link baseBuilderVersion} is rebuilt, and the old tree retired beside it.
 *
 * @throws DriverError when it cannot be built (not root, disk) or an existing one was built for
 * another uid offset; the signal's reason when aborted while waiting for another builder.
 */
export async function buildBaseRootfs(options: BuildBaseRootfsOptions): Promise<BaseRootfs> {
  const uidOffset = options.uidOffset ?? 100000
  const hostRoot = options.hostRoot ?? '/'
  const { signal } = options
  const log = options.log.child({ component: 'runtime.templates', template: 'base' })
  const paths = templatePaths(options.templatesDir, 'base')
  const existing = readExisting(paths, uidOffset, hostRoot)
  if (existing !== undefined) {
    return existing
  }
  const lock = await acquireBuildLock(paths.lockPath, { log, signal })
  try {
    // Another process may have built it while this one waited.
    return (
      readExisting(paths, uidOffset, hostRoot) ??
      (await build(paths, uidOffset, hostRoot, lock, log))
    )
  } finally {
    await lock.release()
  }
}

async function build(
  paths: TemplatePaths,
  uidOffset: number,
  hostRoot: string,
  lock: BuildLock,
  log: Logger,
): Promise<BaseRootfs> {
  const started = performance.now()
  await removeStaleBuilds(paths.templateDir, log)
  return withBuildDir(paths.templateDir, log, async (buildDir) => {
    populate(buildDir, hostRoot)
    const shifted = await shiftOwnership(buildDir, { offset: uidOffset })
    const hostBinds = computeHostBinds(buildDir, hostRoot)
    const metadata: BaseTemplateMetadata = {
      name: 'base',
      kind: 'base',
      builtAt: new Date().toISOString(),
      builderVersion: baseBuilderVersion,
      uidOffset,
      hostBinds,
      fileCount: shifted.paths,
      sizeBytes: shifted.sizeBytes,
    }
    await lock.assertHeld()
    if (existsSync(paths.rootfsDir)) {
      const retiredDir = await retireRootfs(paths.rootfsDir)
      log.warn({ retiredDir }, 'replaced a template built by an older builder version')
    }
    await writeJsonAtomic(paths.metadataPath, metadata)
    await commitBuild(buildDir, paths.rootfsDir)
    log.info(
      {
        rootfsDir: paths.rootfsDir,
        hostBinds,
        durationMs: Math.round(performance.now() - started),
      },
      'template built',
    )
    return { rootfsDir: paths.rootfsDir, hostBinds }
  })
}

function readExisting(
  paths: TemplatePaths,
  uidOffset: number,
  hostRoot: string,
): BaseRootfs | undefined {
  if (!existsSync(paths.rootfsDir)) {
    return undefined
  }
  const metadata = readJsonFile(paths.metadataPath)
  const recorded = typeof metadata === 'object' && metadata !== null ? metadata : {}
  const builtFor = 'uidOffset' in recorded ? recorded.uidOffset : undefined
  const builtBy = 'builderVersion' in recorded ? recorded.builderVersion : undefined
  // Without metadata the offset is unknown, and so is the builder version: rebuilt below.
  if (typeof builtFor === 'number' && builtFor !== uidOffset) {
    throw new DriverError(
      `template base at ${paths.rootfsDir} is owned for uid offset ${builtFor}, but sandboxes use ${uidOffset}: remove ${paths.templateDir} (no sandbox may be using it) so that it is rebuilt`,
      { details: { rootfsDir: paths.rootfsDir, built: builtFor, wanted: uidOffset } },
    )
  }
  if (typeof builtBy !== 'number' || builtBy < baseBuilderVersion) {
    return undefined
  }
  return { rootfsDir: paths.rootfsDir, hostBinds: computeHostBinds(paths.rootfsDir, hostRoot) }
}

/** Writes the skeleton with sandbox ids (shifted afterwards). */
function populate(root: string, hostRoot: string): void {
  const dir = (path: string, mode = 0o755): void => {
    mkdirSync(join(root, path), { recursive: true })
    // Explicit: mkdir's mode is filtered by the umask, and 1777 needs chmod anyway.
    chmodSync(join(root, path), mode)
  }
  const file = (path: string, content: string, mode = 0o644): void => {
    writeFileSync(join(root, path), content, { mode })
    chmodSync(join(root, path), mode)
  }
  for (const path of ['etc', 'var', 'run', 'proc', 'dev', 'sys', 'usr', 'home', 'mnt', 'opt']) {
    dir(path)
  }
  dir('root', 0o700)
  dir('tmp', 0o1777)
  dir('var/tmp', 0o1777)
  dir('home/user')
  chownSync(join(root, 'home/user'), 1000, 1000)

  file('etc/passwd', passwd)
  file('etc/group', group)
  file('etc/hostname', 'sandbox\n')
  file('etc/hosts', hosts)
  file('etc/nsswitch.conf', nsswitch)
  file('etc/resolv.conf', resolvConf)
  file('etc/shells', '/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n')
  file('etc/profile', loginProfile)
  file('etc/bash.bashrc', baseBashrc)
  // Resolved inside the sandbox, where /usr and /proc are the bound host /usr and the
  // sandbox's own proc.
  symlinkSync('../usr/lib/os-release', join(root, 'etc/os-release'))
  symlinkSync('/usr/share/zoneinfo/Etc/UTC', join(root, 'etc/localtime'))
  symlinkSync('../proc/self/mounts', join(root, 'etc/mtab'))

  for (const name of usrLayoutEntries) {
    const host = lstatOrUndefined(join(hostRoot, name))
    if (host?.isSymbolicLink() === true) {
      symlinkSync(readlinkSync(join(hostRoot, name)), join(root, name))
    } else if (host?.isDirectory() === true) {
      dir(name)
    }
  }
  for (const bind of etcBinds) {
    const host = statKind(join(hostRoot, bind.path))
    if (host === bind.kind) {
      if (bind.kind === 'directory') {
        dir(bind.path)
      } else {
        file(bind.path, '')
      }
    }
  }
}

/** The host paths to bind: mount points the tree has and the host still provides. */
function computeHostBinds(root: string, hostRoot: string): string[] {
  const binds = ['/usr']
  for (const name of usrLayoutEntries) {
    if (lstatOrUndefined(join(root, name))?.isDirectory() === true) {
      binds.push(`/${name}`)
    }
  }
  for (const bind of etcBinds) {
    if (
      lstatKind(join(root, bind.path)) === bind.kind &&
      statKind(join(hostRoot, bind.path)) === bind.kind
    ) {
      binds.push(`/${bind.path}`)
    }
  }
  return binds
}

function lstatOrUndefined(path: string): Stats | undefined {
  return lstatSync(path, { throwIfNoEntry: false })
}

/** What a host path is, following symlinks (the host's /etc/alternatives may be a link). */
function statKind(path: string): 'directory' | 'file' | undefined {
  const stats = statSync(path, { throwIfNoEntry: false })
  return stats?.isDirectory() === true ? 'directory' : stats?.isFile() === true ? 'file' : undefined
}

/** What a path in the built tree is, never following its links (they point into the sandbox). */
function lstatKind(path: string): 'directory' | 'file' | undefined {
  const stats = lstatOrUndefined(path)
  return stats?.isDirectory() === true ? 'directory' : stats?.isFile() === true ? 'file' : undefined
}
