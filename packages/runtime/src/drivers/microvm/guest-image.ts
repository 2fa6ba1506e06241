/**
 * Builds and caches what a microVM boots from, once per host (under the images directory, each
 * artifact under a name derived from its inputs, so a changed input makes a new one):
 * - the kernel: Debian's cloud kernel package, downloaded (not installed), its bzImage unpacked
 *   to an ELF `vmlinux` that QEMU boots directly (PVH), plus the modules the guest needs;
 * - the initramfs: sandcell-init (compiled static from images/init) and those modules;
 * - the sandcell image: the host's node, its libraries and the agent bundle (read-only erofs);
 * - one root filesystem image per template (read-only erofs, real ownership).
 */
import { execFile, execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lchownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  type Stats,
} from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { vmTapAddress } from '@sandcell/network'
import { DriverError, errorMessage, type Logger, standardPath } from '@sandcell/shared'
import type { TemplateProgress } from '../../driver.js'
import type { HostNode } from '../../os/host-node.js'
import { acquireBuildLock } from '../../templates/build-lock.js'
import { writeCpio, type CpioEntry } from './cpio.js'
import {
  findCompressedPayloads,
  isElf,
  moduleDependencies,
  normalizeModuleName,
  parseModulesBuiltin,
  readModinfo,
  resolveModuleOrder,
  type KernelCompression,
} from './kernel-modules.js'

const execFileAsync = promisify(execFile)

/** Bumped when the layout of an artifact changes, so old caches are not reused. */
const guestImageVersion = 2

/** The Debian metapackage that always depends on the current cloud kernel. */
export const kernelMetapackage = 'linux-image-cloud-amd64'

/**
 * What the guest loads from the initramfs, in order of need: the virtio-mmio transport, the
 * disks, the agent's network link, the control port (virtio-serial under QEMU, vsock under
 * Firecracker), the balloon, and the filesystems. ext4 is built into Debian's kernel.
 */
export const guestModules = [
  'virtio_mmio',
  'virtio_blk',
  'virtio_net',
  'virtio_console',
  'vmw_vsock_virtio_transport',
  'virtio_balloon',
  'erofs',
  'overlay',
] as const

export interface GuestKernel {
  /** e.g. `6.1.0-56-cloud-amd64` */
  release: string
  /** Debian package version, e.g. `6.1.192-2`. */
  packageVersion: string
  vmlinux: string
  /** Directory holding the needed `.ko` files and `order` (load order, one file per line). */
  modulesDir: string
}

export interface BuildContext {
  imagesDir: string
  log: Logger
  signal?: AbortSignal
  onProgress?: (progress: TemplateProgress) => void
}

function progress(context: BuildContext, phase: string, message: string): void {
  context.log.info({ phase }, message)
  context.onProgress?.({ phase, done: 0, total: 0, message })
}

async function run(
  file: string,
  args: readonly string[],
  options: { cwd?: string; signal?: AbortSignal; what: string; maxBuffer?: number },
): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args, {
      cwd: options.cwd,
      signal: options.signal,
      maxBuffer: options.maxBuffer ?? 16 * 1024 * 1024,
      // The rest of the environment passes: apt-get may need the operator's proxy settings.
      env: { ...process.env, PATH: standardPath, LC_ALL: 'C' },
    })
    return stdout
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() ?? ''
    throw new DriverError(`${options.what} failed: ${stderr || errorMessage(err)}`, { cause: err })
  }
}

/** A short stable hash of `parts`. */
export function hashParts(parts: readonly unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16)
}

/** Identity of a file for cache keys: path, size and modification time. */
function fileIdentity(path: string): string {
  const stat = statSync(path)
  return `${path}:${stat.size}:${stat.mtimeMs}`
}

/**
 * Returns `<dir>/<name>`, building it first when it is not there: under a cross-process lock,
 * into a temporary directory that becomes `<dir>/<name>` by one rename once complete.
 */
export async function ensureArtifact(
  dir: string,
  name: string,
  context: BuildContext,
  build: (workDir: string) => Promise<void>,
): Promise<string> {
  const final = join(dir, name)
  const marker = join(final, '.complete')
  if (existsSync(marker)) {
    return final
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  const lock = await acquireBuildLock(join(dir, `.${name}.lock`), {
    log: context.log,
    ...(context.signal === undefined ? {} : { signal: context.signal }),
    onWait: () => context.log.info({ name }, 'waiting for another build of a guest artifact'),
  })
  try {
    if (existsSync(marker)) {
      return final
    }
    for (const entry of readdirSync(dir)) {
      if (entry.startsWith(`.build-${name}-`)) {
        await rm(join(dir, entry), { recursive: true, force: true })
      }
    }
    const work = await mkdtemp(join(dir, `.build-${name}-`))
    try {
      await build(work)
      writeFileSync(join(work, '.complete'), `${new Date().toISOString()}\n`)
      await lock.assertHeld()
      rmSync(final, { recursive: true, force: true })
      renameSync(work, final)
    } catch (err) {
      await rm(work, { recursive: true, force: true })
      throw err
    }
    return final
  } finally {
    await lock.release()
  }
}

/**
 * Finds the compressed kernel inside a bzImage by its magic bytes and decompresses it with the
 * matching Debian tool, as the kernel's own scripts/extract-vmlinux does.
 * @throws DriverError when no candidate decompresses to an ELF file
 */
export async function extractVmlinux(
  bzImage: string,
  output: string,
  signal?: AbortSignal,
): Promise<KernelCompression> {
  const image = readFileSync(bzImage)
  const tools: Record<KernelCompression, string[]> = {
    lz4: ['lz4', '-dc'],
    gzip: ['gzip', '-dc'],
    xz: ['xz', '-dc'],
    zstd: ['zstd', '-dcq'],
    bzip2: ['bzip2', '-dc'],
    lzma: ['xz', '--format=lzma', '-dc'],
  }
  for (const { format, offset } of findCompressedPayloads(image)) {
    const [tool, ...args] = tools[format]
    if (tool === undefined) {
      continue
    }
    const data = await decompress(tool, args, image.subarray(offset), signal).catch(() => undefined)
    if (data !== undefined && isElf(data)) {
      writeFileSync(output, data)
      return format
    }
  }
  throw new DriverError(
    `no compressed ELF kernel found in ${bzImage}; are lz4, zstd, xz-utils and gzip installed?`,
  )
}

/** Runs a decompressor over `input`; trailing garbage after the stream is tolerated. */
function decompress(
  tool: string,
  args: string[],
  input: Buffer,
  signal?: AbortSignal,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, {
      stdio: ['pipe', 'pipe', 'ignore'],
      ...(signal === undefined ? {} : { signal }),
    })
    const chunks: Buffer[] = []
    let size = 0
    child.stdout.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      size += chunk.length
      if (size === chunk.length && !isElf(chunk)) {
        child.kill() // a false magic hit: not worth decompressing to the end
      }
    })
    child.on('error', reject)
    child.stdin.on('error', () => undefined) // the tool may stop reading early: expected
    child.on('close', () => {
      const data = Buffer.concat(chunks)
      // Decompressors exit non-zero on trailing data; what they wrote before is the kernel.
      if (data.length > 0) {
        resolve(data)
      } else {
        reject(new Error(`${tool} produced nothing`))
      }
    })
    child.stdin.end(input)
  })
}

/**
 * Downloads Debian's cloud kernel package (no install), unpacks vmlinux and the guest's modules.
 * @throws DriverError when apt cannot download it (offline, no `apt-get update` yet)
 */
export async function ensureGuestKernel(context: BuildContext): Promise<GuestKernel> {
  const kernelsDir = join(context.imagesDir, 'kernel')
  // The module list is part of what a kernel artifact holds: another list, another artifact.
  const layout = hashParts([guestImageVersion, guestModules])
  const currentPath = join(kernelsDir, `current-${layout}.json`)
  const current = readKernelInfo(currentPath)
  if (current !== undefined && existsSync(join(current.vmlinux, '..', '.complete'))) {
    return current
  }
  progress(context, 'kernel', `downloading ${kernelMetapackage}`)
  const download = await mkdtemp(join(context.imagesDir, '.download-'))
  try {
    const aptOptions = ['-o', 'APT::Sandbox::User=root', '-q']
    await run('apt-get', [...aptOptions, 'download', kernelMetapackage], {
      cwd: download,
      what: `apt-get download ${kernelMetapackage} (run apt-get update first?)`,
      ...(context.signal === undefined ? {} : { signal: context.signal }),
    })
    const meta = readdirSync(download).find((f) => f.endsWith('.deb'))
    if (meta === undefined) {
      throw new DriverError(`apt-get download ${kernelMetapackage} produced no .deb`)
    }
    const depends = await run('dpkg-deb', ['-f', join(download, meta), 'Depends'], {
      what: 'dpkg-deb -f',
    })
    const real = /linux-image-[0-9][^\s,(]*/.exec(depends)?.[0]
    if (real === undefined) {
      throw new DriverError(`${kernelMetapackage} depends on no kernel image: ${depends.trim()}`)
    }
    const key = real.replace(/^linux-image-/, '')
    const dir = await ensureArtifact(kernelsDir, `${key}-${layout}`, context, async (work) => {
      progress(context, 'kernel', `downloading ${real}`)
      await run('apt-get', [...aptOptions, 'download', real], {
        cwd: download,
        what: `apt-get download ${real}`,
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      const deb = readdirSync(download).find((f) => f.startsWith(`${real}_`) && f.endsWith('.deb'))
      if (deb === undefined) {
        throw new DriverError(`apt-get download ${real} produced no .deb`)
      }
      const packageVersion = (
        await run('dpkg-deb', ['-f', join(download, deb), 'Version'], { what: 'dpkg-deb -f' })
      ).trim()
      const unpacked = join(download, 'unpacked')
      await run('dpkg-deb', ['-x', join(download, deb), unpacked], { what: 'dpkg-deb -x' })
      const vmlinuz = readdirSync(join(unpacked, 'boot')).find((f) => f.startsWith('vmlinuz-'))
      if (vmlinuz === undefined) {
        throw new DriverError(`${deb} holds no /boot/vmlinuz-*`)
      }
      const release = vmlinuz.slice('vmlinuz-'.length)
      progress(context, 'kernel', `unpacking the ${release} kernel to vmlinux`)
      const format = await extractVmlinux(
        join(unpacked, 'boot', vmlinuz),
        join(work, 'vmlinux'),
        context.signal,
      )
      const modulesRoot = join(unpacked, 'lib', 'modules', release)
      const order = copyGuestModules(modulesRoot, join(work, 'modules'))
      writeFileSync(
        join(work, 'kernel.json'),
        JSON.stringify(
          { release, packageVersion, package: real, compression: format, modules: order },
          null,
          2,
        ),
      )
    })
    const info = kernelInfoFrom(dir)
    writeFileSync(`${currentPath}.tmp`, JSON.stringify(info))
    renameSync(`${currentPath}.tmp`, currentPath)
    return info
  } finally {
    await rm(download, { recursive: true, force: true })
  }
}

function kernelInfoFrom(dir: string): GuestKernel {
  const json = JSON.parse(readFileSync(join(dir, 'kernel.json'), 'utf8')) as {
    release: string
    packageVersion: string
  }
  return {
    release: json.release,
    packageVersion: json.packageVersion,
    vmlinux: join(dir, 'vmlinux'),
    modulesDir: join(dir, 'modules'),
  }
}

function readKernelInfo(path: string): GuestKernel | undefined {
  try {
    const info = JSON.parse(readFileSync(path, 'utf8')) as GuestKernel
    return existsSync(info.vmlinux) ? info : undefined
  } catch {
    return undefined
  }
}

/** Every `.ko` below `dir`, by normalised module name. */
function indexModules(dir: string, index = new Map<string, string>()): Map<string, string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      indexModules(path, index)
    } else if (entry.name.endsWith('.ko')) {
      index.set(normalizeModuleName(entry.name), path)
    }
  }
  return index
}

/** Copies the guest's modules and their dependencies, writing `order`; returns the order. */
function copyGuestModules(modulesRoot: string, target: string): string[] {
  const files = indexModules(join(modulesRoot, 'kernel'))
  const dependencies = new Map<string, string[]>()
  for (const [name, path] of files) {
    dependencies.set(name, moduleDependencies(readModinfo(readFileSync(path))))
  }
  const builtinPath = join(modulesRoot, 'modules.builtin')
  const builtin = existsSync(builtinPath)
    ? parseModulesBuiltin(readFileSync(builtinPath, 'utf8'))
    : new Set<string>()
  const order = resolveModuleOrder(guestModules, dependencies, builtin)
  mkdirSync(target, { recursive: true })
  for (const name of order) {
    const source = files.get(name)
    if (source !== undefined) {
      copyFileSync(source, join(target, `${name}.ko`))
    }
  }
  writeFileSync(join(target, 'order'), order.map((name) => `${name}.ko\n`).join(''))
  return order
}

/** Where the init source lives: images/init in the repository, next to packages/. */
export function initSourcePath(): string {
  return fileURLToPath(new URL('../../../../../images/init/sandcell-init.c', import.meta.url))
}

/** Compiles sandcell-init and packs it with the kernel's modules into an uncompressed cpio. */
export async function ensureInitramfs(context: BuildContext, kernel: GuestKernel): Promise<string> {
  const source = initSourcePath()
  if (!existsSync(source)) {
    throw new DriverError(`the guest init source is missing: ${source}`)
  }
  const key = hashParts([
    guestImageVersion,
    readFileSync(source, 'utf8'),
    kernel.release,
    kernel.packageVersion,
  ])
  const dir = await ensureArtifact(
    join(context.imagesDir, 'initramfs'),
    key,
    context,
    async (work) => {
      progress(context, 'initramfs', 'compiling sandcell-init and packing the initramfs')
      const init = join(work, 'init')
      await run('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-o', init, source], {
        what: 'compiling sandcell-init (is build-essential installed?)',
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      const order = readFileSync(join(kernel.modulesDir, 'order'), 'utf8')
      const entries: CpioEntry[] = [
        { kind: 'directory', path: 'dev' },
        { kind: 'char-device', path: 'dev/console', major: 5, minor: 1 },
        ...['proc', 'sys', 'lower', 'sandcell', 'disk', 'newroot'].map((path): CpioEntry => ({
          kind: 'directory',
          path,
        })),
        { kind: 'file', path: 'init', data: readFileSync(init), mode: 0o755 },
        { kind: 'directory', path: 'modules' },
        { kind: 'file', path: 'modules/order', data: Buffer.from(order) },
        ...order
          .split('\n')
          .filter((name) => name.length > 0)
          .map((name): CpioEntry => ({
            kind: 'file',
            path: `modules/${name}`,
            data: readFileSync(join(kernel.modulesDir, name)),
          })),
      ]
      // Uncompressed: decompressing costs more emulated time than reading 2 MiB does.
      writeFileSync(join(work, 'initramfs.cpio'), writeCpio(entries))
      rmSync(init)
    },
  )
  return join(dir, 'initramfs.cpio')
}

async function mkfsErofs(image: string, tree: string, signal?: AbortSignal): Promise<void> {
  await run('mkfs.erofs', ['--quiet', '-T0', image, tree], {
    what: 'mkfs.erofs (is erofs-utils installed?)',
    ...(signal === undefined ? {} : { signal }),
  })
}

/** Hard link when on the same filesystem (no copy of node's ~100 MB), copy otherwise. */
function linkOrCopy(source: string, target: string): void {
  try {
    linkSync(source, target)
  } catch {
    copyFileSync(source, target)
  }
}

/**
 * A hash of the agent bundle's files by content (a few MiB): rebuilding the bundle with the
 * same result must not invalidate the sandcell image and every template snapshot above it.
 */
function treeIdentity(dir: string, hash = createHash('sha256')): string {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) {
      treeIdentity(path, hash.update(`dir ${entry.name}\0`))
    } else if (entry.isSymbolicLink()) {
      hash.update(`link ${entry.name} ${readlinkSync(path)}\0`)
    } else if (!entry.name.endsWith('.map')) {
      hash.update(`file ${entry.name}\0`).update(readFileSync(path))
    }
  }
  return hash.copy().digest('hex')
}

function copyTree(source: string, target: string): void {
  mkdirSync(target, { recursive: true })
  for (const entry of readdirSync(source, { withFileTypes: true })) {
    const from = join(source, entry.name)
    const to = join(target, entry.name)
    if (entry.isDirectory()) {
      copyTree(from, to)
    } else if (entry.isSymbolicLink()) {
      symlinkSync(readlinkSync(from), to)
    } else if (!entry.name.endsWith('.map')) {
      linkOrCopy(from, to)
    }
  }
}

/** The read-only image mounted at /.sandcell: bin/node, lib/ (loader + libraries), agent/. */
export async function ensureSandcellImage(
  context: BuildContext,
  hostNode: HostNode,
  agentDir: string,
): Promise<string> {
  const libs = [hostNode.loader, ...hostNode.libraries]
  const key = hashParts([
    guestImageVersion,
    fileIdentity(hostNode.node),
    libs.map((lib) => `${lib.name}=${fileIdentity(lib.path)}`),
    treeIdentity(agentDir),
  ])
  const dir = await ensureArtifact(
    join(context.imagesDir, 'sandcell'),
    key,
    context,
    async (work) => {
      progress(context, 'sandcell-image', 'packing node and the agent into the sandcell image')
      const tree = join(work, 'tree')
      mkdirSync(join(tree, 'bin'), { recursive: true })
      mkdirSync(join(tree, 'lib'))
      linkOrCopy(hostNode.node, join(tree, 'bin', 'node'))
      for (const lib of libs) {
        linkOrCopy(lib.path, join(tree, 'lib', lib.name))
      }
      // A fixed name for the loader: sandcell-init runs node through it.
      symlinkSync(hostNode.loader.name, join(tree, 'lib', 'ld.so'))
      copyTree(agentDir, join(tree, 'agent'))
      await mkfsErofs(join(work, 'sandcell.erofs'), tree, context.signal)
      rmSync(tree, { recursive: true, force: true })
    },
  )
  return join(dir, 'sandcell.erofs')
}

/**
 * Re-owns a tree from the container user namespace's host ids back to the real ones (host id
 * `offset + n` becomes `n`); setuid/setgid bits, which chown clears, are put back.
 */
export function unshiftOwnership(root: string, offset: number): number {
  const seen = new Set<string>()
  let count = 0
  const visit = (path: string, stat: Stats): void => {
    const key = `${stat.dev}:${stat.ino}`
    if (!seen.has(key)) {
      seen.add(key)
      const uid = stat.uid >= offset ? stat.uid - offset : stat.uid
      const gid = stat.gid >= offset ? stat.gid - offset : stat.gid
      if (uid !== stat.uid || gid !== stat.gid) {
        lchownSync(path, uid, gid)
        if (!stat.isSymbolicLink() && (stat.mode & 0o6000) !== 0) {
          chmodSync(path, stat.mode & 0o7777)
        }
      }
      count++
    }
    if (stat.isDirectory()) {
      for (const name of readdirSync(path)) {
        const child = join(path, name)
        visit(child, lstatSync(child))
      }
    }
  }
  visit(root, lstatSync(root))
  return count
}

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

export interface TemplateImageSource {
  name: string
  rootfsDir: string
  /** Host id of the template's root (the container driver's uid base). */
  uidOffset: number
  /** The `base` template binds the host's /usr; a VM gets busybox instead. */
  withBusybox: boolean
}

/**
 * The template's root filesystem as a read-only erofs image with real ownership: copied (the
 * template's files are owned by the container id range), re-owned, then packed.
 */
export async function ensureTemplateImage(
  context: BuildContext,
  template: TemplateImageSource,
): Promise<string> {
  const metadata = join(dirname(template.rootfsDir), 'template.json')
  const key = `${template.name}-${hashParts([
    guestImageVersion,
    template.rootfsDir,
    existsSync(metadata) ? readFileSync(metadata, 'utf8') : fileIdentity(template.rootfsDir),
    template.uidOffset,
    template.withBusybox,
  ])}`
  const dir = await ensureArtifact(
    join(context.imagesDir, 'templates'),
    key,
    context,
    async (work) => {
      const tree = join(work, 'tree')
      progress(context, 'template-image', `copying the ${template.name} template`)
      await run('cp', ['-a', '--reflink=auto', template.rootfsDir, tree], {
        what: `copying ${template.rootfsDir}`,
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      const files = unshiftOwnership(tree, template.uidOffset)
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
      progress(
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
