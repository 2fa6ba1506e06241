/**
 * The options both microVM drivers take and what they make of them: where sandboxes, disks,
 * images and templates live, the template registry, the create queue; and the checks of a
 * create's spec that do not depend on the VMM.
 */
import { TemplateRegistry } from '@sandcell/images'
import type { SandboxNetwork } from '@sandcell/network'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { InvalidArgumentError, Semaphore, type Logger } from '@sandcell/shared'
import type { SandboxLimits, SandboxSpec } from '../../driver.js'
import { validateLimits } from '../validate-limits.js'
import { defaultAgentDir } from '../host-checks.js'

/** The microVM drivers, one per VMM. */
export type MicroVmKind = 'qemu' | 'firecracker'

/** Options shared by the qemu and firecracker drivers. */
export interface MicroVmDriverOptions {
  /** Root of what the driver keeps: sandboxes and disks under `<dataDir>/<driver>`. */
  dataDir: string
  log: Logger
  /** Where template root filesystems are kept. @default `<dataDir>/templates` */
  templatesDir?: string
  /** Where template builds keep their layers and manifests. @default `<dataDir>/builds` */
  buildsDir?: string
  /**
   * Kernel, initramfs, images and template snapshots (built on first use, reused across runs,
   * shared by both drivers). @default `<dataDir>/qemu/images`
   */
  imagesDir?: string
  /** The built agent directory; defaults to @sandcell/agent's bundle/. */
  agentDir?: string
  /** Host id of a template's root in the template directory (the container driver's). @default 100000 */
  uidBase?: number
  cgroupParent?: string
  /** Deadline for a VM's agent to answer after boot or restore, ms. */
  readyTimeoutMs?: number
  /** How long a built template's ready command may keep failing, ms. @default 600000 */
  templateReadyTimeoutMs?: number
  /** Guest RAM of every VM: the largest memory limit a sandbox can have, MiB. @default 1024 */
  vmMemoryMiB?: number
  /** vCPUs of every VM; a sandbox's `cpus` limit is enforced on the host. */
  vcpus?: number
  /** @default the number of CPU cores */
  maxConcurrentCreates?: number
  /** Sandbox networking: each new VM sits behind a TAP in a network slot. Absent: no way out. */
  network?: SandboxNetwork
}

/** What a microVM driver keeps of its options, defaults applied. */
export interface MicroVmSettings {
  log: Logger
  dataDir: string
  sandboxesDir: string
  disksDir: string
  imagesDir: string
  templatesDir: string
  buildsDir: string
  agentDir: string
  uidBase: number
  cgroupParent: string
  vmMemoryMiB: number
  templateReadyTimeoutMs: number
  templates: TemplateRegistry
  /** Bounds how many creates launch VMs at once. */
  launches: Semaphore
  network: SandboxNetwork | undefined
}

/** The smallest memory limit of a VM sandbox, MiB. */
const minVmMemoryMiB = 128

/** Applies the defaults; `kind` names the driver's directory under `dataDir` and its logger. */
export function resolveMicroVmSettings(
  kind: MicroVmKind,
  options: MicroVmDriverOptions,
  defaults: { cgroupParent: string },
): MicroVmSettings {
  const log = options.log.child({ component: `runtime.${kind}` })
  const templatesDir = options.templatesDir ?? join(options.dataDir, 'templates')
  const uidBase = options.uidBase ?? 100_000
  const buildsDir = options.buildsDir ?? join(options.dataDir, 'builds')
  return {
    log,
    dataDir: options.dataDir,
    sandboxesDir: join(options.dataDir, kind, 'sandboxes'),
    disksDir: join(options.dataDir, kind, 'disks'),
    imagesDir: options.imagesDir ?? join(options.dataDir, 'qemu', 'images'),
    templatesDir,
    agentDir: options.agentDir ?? defaultAgentDir(),
    uidBase,
    cgroupParent: options.cgroupParent ?? defaults.cgroupParent,
    vmMemoryMiB: options.vmMemoryMiB ?? 1024,
    templateReadyTimeoutMs: options.templateReadyTimeoutMs ?? 600_000,
    buildsDir,
    templates: new TemplateRegistry({ templatesDir, buildsDir, uidOffset: uidBase, log }),
    launches: new Semaphore(options.maxConcurrentCreates ?? availableParallelism()),
    network: options.network,
  }
}

/**
 * Checks a sandbox's limits for a VM of `vmMemoryMiB`.
 * @throws InvalidArgumentError naming the limit and its bounds
 */
export function validateVmLimits(limits: SandboxLimits, vmMemoryMiB: number): void {
  validateLimits(limits)
  if (limits.memoryMiB < minVmMemoryMiB || limits.memoryMiB > vmMemoryMiB) {
    throw new InvalidArgumentError(
      `impossible limits: memoryMiB must be between ${minVmMemoryMiB} and ${vmMemoryMiB} MiB for a VM (got ${limits.memoryMiB}; the largest is the driver's vmMemoryMiB)`,
      { details: { limits } },
    )
  }
}

/**
 * The spec of a create from a snapshot: the snapshot's template and disk size.
 * @throws InvalidArgumentError when the snapshot is another driver's
 */
export function specFromSnapshot(spec: SandboxSpec, kind: MicroVmKind): SandboxSpec {
  const snapshot = spec.fromSnapshot
  if (snapshot === undefined) {
    return spec
  }
  if (snapshot.driver !== kind) {
    throw new InvalidArgumentError(
      `a ${snapshot.driver} snapshot cannot start a ${kind} sandbox; use the ${snapshot.driver} driver`,
    )
  }
  return {
    ...spec,
    template: snapshot.template,
    limits: { ...spec.limits, diskMiB: snapshot.diskMiB },
  }
}
