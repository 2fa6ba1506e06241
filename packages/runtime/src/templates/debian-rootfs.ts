/**
 * Builds the `debian` template once per machine: a Debian 12 root filesystem made by mmdebstrap,
 * trimmed, configured for sandboxes and shifted into the sandbox id range, with progress.
 */
import { spawn } from 'node:child_process'
import { createWriteStream, existsSync, readFileSync } from 'node:fs'
import { chmod, chown, mkdir, readdir, rm, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { createInterface } from 'node:readline'
import {
  DriverError,
  InvalidArgumentError,
  assertNever,
  errorMessage,
  type Logger,
} from '@sandcell/shared'
import type { TemplateProgress } from '../driver.js'
import {
  acquireBuildLock,
  commitBuild,
  createBuildDir,
  readJsonFile,
  removeBuildDir,
  removeStaleBuilds,
  templatePaths,
  writeJsonAtomic,
  type BuildLock,
  type TemplatePaths,
} from './build-lock.js'
import { countFiles, measureTree, shiftOwnership } from './shift-ownership.js'

/** Bumped whenever the recipe changes what ends up in the image; recorded in template.json. */
export const debianBuilderVersion = 1

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

/** The steps of a template build, in the order they first occur. */
export type TemplateBuildPhase =
  | 'waiting'
  | 'preparing'
  | 'resolving'
  | 'downloading'
  | 'extracting'
  | 'installing'
  | 'configuring'
  | 'shifting'
  | 'finishing'

/**
 * One progress report. A phase can occur more than once: mmdebstrap resolves, downloads and
 * installs twice (the base system, then the requested packages). Within one occurrence `done`
 * never decreases, and a countable occurrence (`total > 0`) ends with a report where
 * `done === total`. `fraction` covers the whole build and never decreases, so a single bar
 * with an ETA can be drawn from it alone.
 */
export interface TemplateBuildProgress extends TemplateProgress {
  phase: TemplateBuildPhase
  /** Units done in this occurrence of the phase. */
  done: number
  /** Units in this occurrence of the phase; 0 when it cannot be counted (draw a spinner). */
  total: number
  /** What `done` counts: packages fetched, dpkg steps (an unpack and a setup per package), files. */
  unit?: 'packages' | 'steps' | 'files'
  /** The whole build, 0 to 1, weighted by how long each part typically takes. */
  fraction: number
  /** What happens now, e.g. "Unpacking libc6:amd64" or "waiting for pid 4242". */
  message?: string
}

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
  const buildDir = await createBuildDir(paths.templateDir)
  log.info({ buildDir, packages }, 'building template')
  try {
    const builder = await runMmdebstrap({
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
      debianVersion: readTextFile(join(buildDir, 'etc/debian_version')) ?? 'unknown',
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
  } catch (err) {
    await removeBuildDir(buildDir).catch((cleanupError: unknown) => {
      log.error({ err: cleanupError, buildDir }, 'cannot remove a failed template build')
    })
    throw err
  }
}

/** The built template when its rootfs exists, else undefined. */
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
    // or edited the file; rebuild it from the tree rather than touching a rootfs in use.
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
  if (metadata.builderVersion !== debianBuilderVersion) {
    log.warn(
      { built: metadata.builderVersion, current: debianBuilderVersion },
      'template was built by another builder version; remove it to rebuild',
    )
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
    debianVersion: readTextFile(join(paths.rootfsDir, 'etc/debian_version')) ?? 'unknown',
    variant: 'apt',
    packages: [],
    installed: readInstalledPackages(paths.rootfsDir),
    uidOffset,
    sizeBytes: tree.sizeBytes,
    fileCount: tree.paths,
    buildDurationMs: 0,
  }
}

// Docs, man pages, info and translations are ~25% of the image and unread in a sandbox. They
// are excluded through dpkg (so later `apt-get install`s in a sandbox skip them too) only after
// the essential packages: mmdebstrap filters their extraction through a Python helper started
// per package when path-exclude is set, which made the build 45 s slower.
const noDocsDpkgConfig = [
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/lintian/*',
]

interface RunMmdebstrapOptions {
  buildDir: string
  packages: string[]
  mirrors: string[]
  paths: TemplatePaths
  progress: BuildProgressTracker
  signal?: AbortSignal
  log: Logger
}

/** Runs mmdebstrap into `buildDir`; resolves with "mmdebstrap <version>". */
async function runMmdebstrap(options: RunMmdebstrapOptions): Promise<string> {
  const { buildDir, packages, mirrors, paths, progress, signal, log } = options
  const nodocs = noDocsDpkgConfig.map((line) => `'${line}'`).join(' ')
  const args = [
    '--mode=root',
    '--variant=apt',
    '--format=directory',
    // --verbose prints apt's and dpkg's own lines, which carry the package counts parsed below.
    '--verbose',
    ...(packages.length === 0 ? [] : [`--include=${packages.join(',')}`]),
    // Sandboxes are disposable: fsync per unpacked file buys nothing here.
    '--dpkgopt=force-unsafe-io',
    `--essential-hook=printf '%s\\n' ${nodocs} > "$1/etc/dpkg/dpkg.cfg.d/90sandcell-nodocs"`,
    '--customize-hook=chroot "$1" groupadd --gid 1000 user',
    '--customize-hook=chroot "$1" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash user',
    debianSuite,
    buildDir,
    ...mirrors,
  ]
  const version = await mmdebstrapVersion(signal)
  const transcript = createWriteStream(paths.logPath, { flags: 'w', mode: 0o644 })
  transcript.on('error', (err) => {
    // The transcript is for operators; the build does not depend on it.
    log.warn({ err, logPath: paths.logPath }, 'cannot write the build transcript')
  })
  const parser = new MmdebstrapOutputParser(progress)
  log.debug({ args }, 'running mmdebstrap')
  // setpriv: if this process dies, the kernel kills unshare; unshare --kill-child then kills
  // mmdebstrap, the init of its own pid namespace, which takes every process of the build with
  // it, and the last process leaving the private mount namespace drops every chroot mount.
  const child = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'KILL',
      '--',
      'unshare',
      '--mount',
      '--propagation',
      'private',
      '--pid',
      '--fork',
      '--kill-child',
      '--mount-proc',
      '--',
      'mmdebstrap',
      ...args,
    ],
    // Its own process group, so an abort kills all of it at once.
    { detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  const onAbort = (): void => {
    if (child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }
  }
  signal?.addEventListener('abort', onAbort, { once: true })
  if (signal?.aborted === true) {
    onAbort()
  }
  const readLines = (stream: NodeJS.ReadableStream): Promise<void> =>
    new Promise((resolveLines) => {
      const lines = createInterface({ input: stream, crlfDelay: Infinity })
      lines.on('line', (line) => {
        transcript.write(`${line}\n`)
        parser.line(line)
      })
      lines.once('close', resolveLines)
    })
  try {
    const exit = new Promise<{ code: number | null; signalName: NodeJS.Signals | null }>(
      (resolveExit, reject) => {
        child.once('error', (err) => {
          reject(
            new DriverError(`cannot run setpriv/unshare (util-linux): ${errorMessage(err)}`, {
              cause: err,
            }),
          )
        })
        child.once('exit', (code, signalName) => resolveExit({ code, signalName }))
      },
    )
    const [{ code, signalName }] = await Promise.all([
      exit,
      readLines(child.stdout),
      readLines(child.stderr),
    ])
    signal?.throwIfAborted()
    if (code !== 0) {
      const lines = parser.summary()
      throw new DriverError(
        `mmdebstrap failed (${code === null ? `killed by ${signalName}` : `exit ${code}`}) building the debian template:\n  ${lines.join('\n  ')}\n` +
          `Check that the Debian mirror (${mirrors.length === 0 ? 'deb.debian.org and security.debian.org' : mirrors.join(', ')}) is reachable from this host (DNS, firewall, http_proxy), ` +
          `that ${paths.templateDir} has ~1 GB free, and read the full output in ${paths.logPath}.`,
        {
          details: { exitCode: code, signal: signalName, lastLines: lines, logPath: paths.logPath },
        },
      )
    }
    log.debug({ version }, 'mmdebstrap finished')
    return version
  } finally {
    signal?.removeEventListener('abort', onAbort)
    await new Promise<void>((resolveEnd) => transcript.end(resolveEnd))
  }
}

/**
 * "mmdebstrap <version>"; also the check that it is installed.
 * @throws DriverError when it is not
 */
function mmdebstrapVersion(signal?: AbortSignal): Promise<string> {
  return new Promise((resolveVersion, reject) => {
    const child = spawn('mmdebstrap', ['--version'], {
      stdio: ['ignore', 'pipe', 'ignore'],
      signal,
    })
    let out = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      out += chunk
    })
    child.once('error', (err) => {
      if (signal?.aborted === true) {
        reject(signal.reason as Error)
        return
      }
      reject(
        new DriverError(
          `building the debian template needs mmdebstrap: apt-get install mmdebstrap (${errorMessage(err)})`,
          { cause: err },
        ),
      )
    })
    child.once('close', () => resolveVersion(out.trim() || 'mmdebstrap'))
  })
}

const hostsFile = `127.0.0.1\tlocalhost
127.0.1.1\tsandbox
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
`

/**
 * A resolv.conf has to exist for the driver to bind one over it; until then, lookups fail fast
 * against localhost instead of hanging on, or leaking to, the build host's resolver.
 */
export const placeholderResolvConf = `# Placeholder written by sandcell's template builder: the sandbox's real resolver
# configuration replaces this file when a sandbox gets network access.
nameserver 127.0.0.1
`

/** The sandbox-specific touches mmdebstrap does not make, as countable steps. */
async function configureRootfs(
  root: string,
  progress: BuildProgressTracker,
  signal?: AbortSignal,
): Promise<void> {
  const steps: [string, () => Promise<void>][] = [
    [
      'writing hostname, hosts and resolv.conf',
      async () => {
        await replaceFile(join(root, 'etc/hostname'), 'sandbox\n')
        await replaceFile(join(root, 'etc/hosts'), hostsFile)
        await replaceFile(join(root, 'etc/resolv.conf'), placeholderResolvConf)
      },
    ],
    [
      'removing machine-id',
      // Every sandbox would share it; systemd-less images do not need one.
      async () => {
        await rm(join(root, 'etc/machine-id'), { force: true })
        await rm(join(root, 'var/lib/dbus/machine-id'), { force: true })
      },
    ],
    ['removing docs, man pages and translations', () => pruneDocs(root)],
    ['removing apt caches, lists and logs', () => removeCaches(root)],
    [
      'emptying /dev',
      // The sandbox gets its own /dev; device nodes in a lower layer are only risk.
      async () => {
        await emptyDir(join(root, 'dev'))
      },
    ],
    [
      'setting home and temp directories',
      async () => {
        await chmod(join(root, 'tmp'), 0o1777)
        await mkdir(join(root, 'var/tmp'), { recursive: true })
        await chmod(join(root, 'var/tmp'), 0o1777)
        await chmod(join(root, 'root'), 0o700)
        await chown(join(root, 'home/user'), 1000, 1000)
        await chmod(join(root, 'home/user'), 0o755)
      },
    ],
  ]
  progress.enter('configuring', steps.length, 'steps')
  for (const [message, run] of steps) {
    signal?.throwIfAborted()
    progress.message(message)
    try {
      await run()
    } catch (err) {
      throw new DriverError(
        `configuring the debian template failed while ${message}: ${errorMessage(err)}`,
        {
          cause: err,
        },
      )
    }
    progress.step(message)
  }
}

/** Writes a file in place of whatever is there (mmdebstrap copies the host's resolv.conf). */
async function replaceFile(path: string, content: string): Promise<void> {
  await rm(path, { force: true })
  await writeFile(path, content, { mode: 0o644 })
}

async function emptyDir(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    await rm(join(dir, name), { recursive: true, force: true })
  }
}

/** Deletes what the dpkg path-excludes cover, for the essential packages installed before them. */
async function pruneDocs(root: string): Promise<void> {
  const share = join(root, 'usr/share')
  for (const dir of ['man', 'info', 'lintian']) {
    await emptyDir(join(share, dir)).catch(ignoreMissing)
  }
  const locale = join(share, 'locale')
  for (const name of await readdir(locale).catch(() => [])) {
    if (name !== 'locale.alias') {
      await rm(join(locale, name), { recursive: true, force: true })
    }
  }
  const doc = join(share, 'doc')
  for (const entry of await readdir(doc, { withFileTypes: true }).catch(() => [])) {
    // Copyright files stay: the licenses of what the image ships.
    if (entry.isDirectory()) {
      for (const name of await readdir(join(doc, entry.name))) {
        if (name !== 'copyright') {
          await rm(join(doc, entry.name, name), { recursive: true, force: true })
        }
      }
    }
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
    throw err
  }
}

/** Package lists and caches are rebuilt by `apt-get update`; logs describe the build host's run. */
async function removeCaches(root: string): Promise<void> {
  for (const dir of ['var/lib/apt/lists', 'var/cache/apt', 'var/log/apt']) {
    await emptyDir(join(root, dir)).catch(ignoreMissing)
  }
  // apt expects these directories to exist.
  await mkdir(join(root, 'var/lib/apt/lists/partial'), { recursive: true })
  await mkdir(join(root, 'var/cache/apt/archives/partial'), { recursive: true })
  const files = [
    'var/log/dpkg.log',
    'var/log/alternatives.log',
    'var/cache/ldconfig/aux-cache',
    'var/cache/debconf/config.dat-old',
    'var/cache/debconf/templates.dat-old',
    'var/lib/dpkg/status-old',
    'var/lib/dpkg/diversions-old',
  ]
  for (const file of files) {
    await rm(join(root, file), { force: true })
  }
}

function readTextFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** `name=version` of every installed package, from dpkg's status database. */
export function readInstalledPackages(root: string): string[] {
  const status = readTextFile(join(root, 'var/lib/dpkg/status'))
  if (status === undefined) {
    return []
  }
  const installed: string[] = []
  for (const stanza of status.split(/\n\n+/)) {
    const field = (key: string): string | undefined =>
      new RegExp(`^${key}: (.*)$`, 'm').exec(stanza)?.[1]
    const pkg = field('Package')
    const version = field('Version')
    if (pkg !== undefined && version !== undefined && field('Status') === 'install ok installed') {
      installed.push(`${pkg}=${version}`)
    }
  }
  return installed.sort()
}

interface Stage {
  phase: TemplateBuildPhase
  /** Share of the whole build where this stage starts and ends, from measured builds. */
  from: number
  to: number
}

// From a measured build (68 s on a 2-core VM, fast mirror): dpkg is ~70% of it, downloads ~12%.
const stages = {
  waiting: { phase: 'waiting', from: 0, to: 0 },
  preparing: { phase: 'preparing', from: 0, to: 0.02 },
  update: { phase: 'resolving', from: 0.02, to: 0.07 },
  baseResolve: { phase: 'resolving', from: 0.07, to: 0.08 },
  baseDownload: { phase: 'downloading', from: 0.08, to: 0.14 },
  extract: { phase: 'extracting', from: 0.14, to: 0.23 },
  baseInstall: { phase: 'installing', from: 0.23, to: 0.46 },
  restResolve: { phase: 'resolving', from: 0.46, to: 0.47 },
  restDownload: { phase: 'downloading', from: 0.47, to: 0.53 },
  restInstall: { phase: 'installing', from: 0.53, to: 0.975 },
  hooks: { phase: 'configuring', from: 0.975, to: 0.98 },
  configuring: { phase: 'configuring', from: 0.98, to: 0.99 },
  shifting: { phase: 'shifting', from: 0.99, to: 0.998 },
  finishing: { phase: 'finishing', from: 0.998, to: 1 },
} satisfies Record<string, Stage>

export type BuildStage = keyof typeof stages

/**
 * Turns stage changes and counts into {@link TemplateBuildProgress} reports: closes a countable
 * stage with `done === total` before the next begins and keeps `fraction` from going back.
 * Exported for tests.
 */
export class BuildProgressTracker {
  readonly #emit: ((progress: TemplateBuildProgress) => void) | undefined
  #stage: BuildStage | undefined
  #done = 0
  #total = 0
  #unit: TemplateBuildProgress['unit']
  #message: string | undefined
  #fraction = 0

  constructor(emit?: (progress: TemplateBuildProgress) => void) {
    this.#emit = emit
  }

  get stage(): BuildStage | undefined {
    return this.#stage
  }

  /** Starts a stage (or restarts the current one with a new total, e.g. once counted). */
  enter(
    stage: BuildStage,
    total = 0,
    unit?: TemplateBuildProgress['unit'],
    message?: string,
  ): void {
    const sameStage = stage === this.#stage
    if (!sameStage) {
      this.#close()
    }
    this.#stage = stage
    this.#done = sameStage ? Math.min(this.#done, total) : 0
    this.#total = total
    this.#unit = unit
    this.#message = message
    this.#report()
  }

  /** Sets how much of the stage is done; never goes back, never passes the total. */
  advance(done: number, message?: string): void {
    const next = this.#total > 0 ? Math.min(done, this.#total) : done
    if (
      next < this.#done ||
      (next === this.#done && (message ?? this.#message) === this.#message)
    ) {
      return
    }
    this.#done = next
    if (message !== undefined) {
      this.#message = message
    }
    this.#report()
  }

  step(message?: string): void {
    this.advance(this.#done + 1, message)
  }

  /** Changes the message without counting. */
  message(message: string): void {
    this.#message = message
    this.#report()
  }

  /** Ends the current stage; after the last one, `fraction` is 1. */
  complete(): void {
    this.#close()
  }

  #close(): void {
    if (this.#stage !== undefined && this.#total > 0 && this.#done < this.#total) {
      this.#done = this.#total
      this.#report()
    }
  }

  #report(): void {
    if (this.#stage === undefined) {
      return
    }
    const { phase, from, to } = stages[this.#stage]
    const share = this.#total > 0 ? this.#done / this.#total : 0
    this.#fraction = Math.max(this.#fraction, from + (to - from) * share)
    this.#emit?.({
      phase,
      done: this.#done,
      total: this.#total,
      ...(this.#unit === undefined ? {} : { unit: this.#unit }),
      fraction: Math.round(this.#fraction * 10000) / 10000,
      ...(this.#message === undefined ? {} : { message: this.#message }),
    })
  }
}

// Lines that say nothing about why a build failed: progress, apt's package lists, dpkg's
// routine chatter, and mmdebstrap's own step announcements.
const noiseLine =
  /^(I: |Get:|Hit:|Ign:|Fetched |Unpacking |Setting up |Preparing to unpack |Selecting previously |Processing triggers |\(Reading database|Reading package lists|Building dependency tree|Reading state information|Calculating upgrade|\/usr\/bin\/dpkg |update-alternatives: |dpkg: warning: ignoring pre-dependency|dpkg: regarding |Chrooting into |Use of uninitialized value|Need to get |After this operation|The following|Suggested packages|Recommended packages|\d+ upgraded, )|(pre-depends on |is unpacked, but has never been configured|but is unpacked but not configured)|^\s+[a-z0-9.+:-]+( [a-z0-9.+:|-]+)*$/

const summaryLines = 10

/**
 * Reads mmdebstrap's --verbose output line by line: moves the progress tracker through the
 * stages its "I:" lines announce, counts apt's Get lines against the "N newly installed" it
 * resolved and dpkg's Unpacking/Setting up lines against twice that, and keeps the lines worth
 * quoting when the build fails. Exported for tests.
 */
export class MmdebstrapOutputParser {
  readonly #progress: BuildProgressTracker
  readonly #recent: string[] = []
  #packages = 0
  #fetchSize: string | undefined

  constructor(progress: BuildProgressTracker) {
    this.#progress = progress
  }

  line(raw: string): void {
    const line = raw.trimEnd()
    if (line === '') {
      return
    }
    this.#remember(line)
    const progress = this.#progress
    const stage = progress.stage
    if (line.startsWith('I: ')) {
      this.#info(line.slice(3))
      return
    }
    const resolved = /^\d+ upgraded, (\d+) newly installed/.exec(line)
    if (resolved !== null && (stage === 'baseResolve' || stage === 'restResolve')) {
      this.#packages = Number(resolved[1])
      progress.enter(
        stage === 'baseResolve' ? 'baseDownload' : 'restDownload',
        this.#packages,
        'packages',
        stage === 'baseResolve' ? 'downloading the base system' : 'downloading packages',
      )
      return
    }
    const size = /^Need to get (\S+ \S+)/.exec(line)
    if (size !== null) {
      this.#fetchSize = size[1]
      progress.message(`downloading ${this.#fetchSize}`)
      return
    }
    switch (stage) {
      case 'baseDownload':
      case 'restDownload': {
        const get = /^Get:(\d+)\s+\S+\s+\S+\s+\S+\s+(\S+)/.exec(line)
        if (get !== null) {
          progress.advance(Number(get[1]), `${get[2]}${this.#sizeNote()}`)
        } else if (
          stage === 'restDownload' &&
          /^(Fetched |Selecting previously|Preparing to unpack|Unpacking )/.test(line)
        ) {
          // apt-get install goes straight from fetching to dpkg.
          progress.enter('restInstall', this.#packages * 2, 'steps', 'installing packages')
          this.#countDpkg(line)
        }
        return
      }
      case 'baseInstall':
      case 'restInstall':
        this.#countDpkg(line)
        return
      case undefined:
      case 'waiting':
      case 'preparing':
      case 'update':
      case 'baseResolve':
      case 'extract':
      case 'restResolve':
      case 'hooks':
      case 'configuring':
      case 'shifting':
      case 'finishing':
        return
      default:
        assertNever(stage, 'build stage')
    }
  }

  /** The lines to quote when mmdebstrap failed: its last meaningful ones, in order. */
  summary(): string[] {
    return [...this.#recent]
  }

  #sizeNote(): string {
    return this.#fetchSize === undefined ? '' : ` (of ${this.#fetchSize})`
  }

  #countDpkg(line: string): void {
    const dpkg = /^(Unpacking|Setting up) (\S+)/.exec(line)
    if (dpkg !== null) {
      this.#progress.step(`${dpkg[1]} ${dpkg[2]}`)
    }
  }

  #info(text: string): void {
    const progress = this.#progress
    if (text.startsWith('running apt-get update')) {
      progress.enter('update', 0, undefined, 'updating package lists')
    } else if (text.startsWith('downloading packages')) {
      this.#fetchSize = undefined
      progress.enter('baseResolve', 0, undefined, 'resolving the base system')
    } else if (text.startsWith('extracting archives')) {
      progress.enter('extract', 0, undefined, 'extracting the base system')
    } else if (text.startsWith('installing essential packages')) {
      progress.enter('baseInstall', this.#packages * 2, 'steps', 'installing the base system')
    } else if (text.startsWith('installing remaining packages')) {
      this.#fetchSize = undefined
      progress.enter('restResolve', 0, undefined, 'resolving the requested packages')
    } else if (text.startsWith('running --customize-hook')) {
      progress.enter('hooks', 0, undefined, 'adding user "user"')
    } else if (text.startsWith('cleaning package lists')) {
      progress.enter('hooks', 0, undefined, 'cleaning apt caches')
    }
  }

  #remember(line: string): void {
    if (!noiseLine.test(line)) {
      this.#recent.push(line)
      if (this.#recent.length > summaryLines) {
        this.#recent.shift()
      }
    }
  }
}
