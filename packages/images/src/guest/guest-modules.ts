/** The kernel modules the guest loads, copied with their dependencies out of a kernel package. */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  writeFileSync,
} from 'node:fs'
import { join } from 'node:path'
import {
  moduleDependencies,
  normalizeModuleName,
  parseModulesBuiltin,
  readModinfo,
  resolveModuleOrder,
} from './kernel-modules.js'

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
export function copyGuestModules(modulesRoot: string, target: string): string[] {
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
