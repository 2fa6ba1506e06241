/**
 * The guest kernel: Debian's cloud kernel package, downloaded (not installed), its bzImage
 * unpacked to an ELF `vmlinux`, plus the modules the guest needs; cached per kernel release.
 */
import { existsSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { DriverError } from '@sandcell/shared'
import { ensureArtifact, hashParts } from '../core/artifact-cache.js'
import { runTool } from '../core/run-tool.js'
import { guestImageVersion, reportProgress, type BuildContext } from './build-context.js'
import { copyGuestModules, guestModules } from './guest-modules.js'
import { extractVmlinux } from './vmlinux.js'

/** The Debian metapackage that always depends on the current cloud kernel. */
export const kernelMetapackage = 'linux-image-cloud-amd64'

export interface GuestKernel {
  /** e.g. `6.1.0-56-cloud-amd64` */
  release: string
  /** Debian package version, e.g. `6.1.192-2`. */
  packageVersion: string
  vmlinux: string
  /** Directory holding the needed `.ko` files and `order` (load order, one file per line). */
  modulesDir: string
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
  reportProgress(context, 'kernel', `downloading ${kernelMetapackage}`)
  const download = await mkdtemp(join(context.imagesDir, '.download-'))
  try {
    const aptOptions = ['-o', 'APT::Sandbox::User=root', '-q']
    await runTool('apt-get', [...aptOptions, 'download', kernelMetapackage], {
      cwd: download,
      what: `apt-get download ${kernelMetapackage} (run apt-get update first?)`,
      ...(context.signal === undefined ? {} : { signal: context.signal }),
    })
    const meta = readdirSync(download).find((f) => f.endsWith('.deb'))
    if (meta === undefined) {
      throw new DriverError(`apt-get download ${kernelMetapackage} produced no .deb`)
    }
    const depends = await runTool('dpkg-deb', ['-f', join(download, meta), 'Depends'], {
      what: 'dpkg-deb -f',
    })
    const real = /linux-image-[0-9][^\s,(]*/.exec(depends)?.[0]
    if (real === undefined) {
      throw new DriverError(`${kernelMetapackage} depends on no kernel image: ${depends.trim()}`)
    }
    const key = real.replace(/^linux-image-/, '')
    const dir = await ensureArtifact(kernelsDir, `${key}-${layout}`, context, async (work) => {
      reportProgress(context, 'kernel', `downloading ${real}`)
      await runTool('apt-get', [...aptOptions, 'download', real], {
        cwd: download,
        what: `apt-get download ${real}`,
        ...(context.signal === undefined ? {} : { signal: context.signal }),
      })
      const deb = readdirSync(download).find((f) => f.startsWith(`${real}_`) && f.endsWith('.deb'))
      if (deb === undefined) {
        throw new DriverError(`apt-get download ${real} produced no .deb`)
      }
      const packageVersion = (
        await runTool('dpkg-deb', ['-f', join(download, deb), 'Version'], { what: 'dpkg-deb -f' })
      ).trim()
      const unpacked = join(download, 'unpacked')
      await runTool('dpkg-deb', ['-x', join(download, deb), unpacked], { what: 'dpkg-deb -x' })
      const vmlinuz = readdirSync(join(unpacked, 'boot')).find((f) => f.startsWith('vmlinuz-'))
      if (vmlinuz === undefined) {
        throw new DriverError(`${deb} holds no /boot/vmlinuz-*`)
      }
      const release = vmlinuz.slice('vmlinuz-'.length)
      reportProgress(context, 'kernel', `unpacking the ${release} kernel to vmlinux`)
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
