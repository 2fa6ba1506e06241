/**
 * Settings of the sandbox runtime, shared by every program that runs sandboxes (the CLI's local
 * mode, the server). Programs embed this schema in their own and pass the parsed values in.
 */
import { z } from 'zod'
import { createSandboxNetwork, networkConfigSchema, type SandboxNetwork } from '@sandcell/network'
import type { Logger } from '@sandcell/shared'
import { driverKinds, type DriverKind } from './driver.js'
import {
  createContainerDriver,
  type ContainerDriver,
} from './drivers/container/container-driver.js'
import {
  createFirecrackerDriver,
  type FirecrackerDriver,
} from './drivers/firecracker/firecracker-driver.js'
import type { MicroVmDriverOptions } from './drivers/microvm/microvm-settings.js'
import { createQemuDriver, type QemuDriver } from './drivers/qemu/qemu-driver.js'
import { createRoutingDriver, type RoutingDriver } from './routing-driver.js'

export const sandboxLimitsSchema = z.object({
  memoryMiB: z
    .number()
    .int()
    .positive()
    .default(512)
    .describe('memory incl. the agent, MiB; SANDCELL_LIMITS_MEMORY_MIB'),
  cpus: z
    .number()
    .positive()
    .default(1)
    .describe('CPU cores (fractions allowed); SANDCELL_LIMITS_CPUS'),
  pids: z
    .number()
    .int()
    .positive()
    .default(512)
    .describe('max processes+threads; SANDCELL_LIMITS_PIDS'),
  diskMiB: z
    .number()
    .int()
    .positive()
    .default(1024)
    .describe('writable disk, MiB; SANDCELL_LIMITS_DISK_MIB'),
})

const driverKindSchema = z.enum(driverKinds)

/** `debian=qemu,base=container` (an environment variable) as a map; YAML gives a map already. */
function parseTemplateDrivers(value: unknown): unknown {
  if (typeof value !== 'string') {
    return value
  }
  const map: Record<string, string> = {}
  for (const pair of value.split(',')) {
    const [template = '', driver = ''] = pair.split('=').map((part) => part.trim())
    if (template.length > 0) {
      map[template] = driver
    }
  }
  return map
}

const templateDriversSchema = z.preprocess(
  parseTemplateDrivers,
  z.record(z.string(), driverKindSchema),
)

export const microvmConfigSchema = z.object({
  accelerator: z
    .enum(['auto', 'kvm', 'tcg'])
    .default('auto')
    .describe(
      'auto: KVM when a test boot under /dev/kvm works, else TCG; SANDCELL_MICROVM_ACCELERATOR',
    ),
  imagesDir: z
    .string()
    .optional()
    .describe(
      'guest kernel, initramfs, images, template snapshots (default <dataDir>/qemu/images); SANDCELL_MICROVM_IMAGES_DIR',
    ),
  qemuBinary: z
    .string()
    .default('qemu-system-x86_64')
    .describe('QEMU binary of the qemu driver; SANDCELL_MICROVM_QEMU_BINARY'),
  firecrackerBinary: z
    .string()
    .optional()
    .describe(
      'Firecracker binary; the firecracker driver exists only when set; SANDCELL_MICROVM_FIRECRACKER_BINARY',
    ),
  vmMemoryMiB: z
    .number()
    .int()
    .min(128)
    .default(1024)
    .describe(
      'guest RAM of every VM, MiB: the largest memory limit a VM sandbox can get; SANDCELL_MICROVM_VM_MEMORY_MIB',
    ),
  vcpus: z
    .number()
    .int()
    .positive()
    .optional()
    .describe("vCPUs of every VM (default the host's cores); SANDCELL_MICROVM_VCPUS"),
})

export const runtimeConfigSchema = z.object({
  dataDir: z
    .string()
    .default('/var/lib/sandcell')
    .describe('templates, disks and sandboxes live here; SANDCELL_DATA_DIR, --data-dir'),
  templatesDir: z
    .string()
    .optional()
    .describe('template root filesystems (default <dataDir>/templates); SANDCELL_TEMPLATES_DIR'),
  cgroupParent: z
    .string()
    .regex(/^[a-zA-Z0-9_.-]+$/)
    .default('sandcell')
    .describe('cgroup all sandboxes go under; SANDCELL_CGROUP_PARENT'),
  uidBase: z
    .number()
    .int()
    .min(1)
    .default(100_000)
    .describe("host uid of a sandbox's root; SANDCELL_UID_BASE"),
  readyTimeoutMs: z
    .number()
    .int()
    .positive()
    .default(10_000)
    .describe('agent start deadline, ms; SANDCELL_READY_TIMEOUT_MS'),
  seccomp: z.boolean().default(true).describe('load the seccomp filter; SANDCELL_SECCOMP'),
  defaultTemplate: z
    .string()
    .default('base')
    .describe('template when none is named; SANDCELL_DEFAULT_TEMPLATE'),
  limits: sandboxLimitsSchema.prefault({}).describe('default limits of a new sandbox'),
  driver: driverKindSchema
    .default('container')
    .describe('driver of sandboxes that name none (container, qemu, firecracker); SANDCELL_DRIVER'),
  templateDrivers: templateDriversSchema
    .default({})
    .describe('per-template default driver, e.g. debian=qemu; SANDCELL_TEMPLATE_DRIVERS'),
  microvm: microvmConfigSchema
    .prefault({})
    .describe('settings of the qemu and firecracker drivers'),
  network: networkConfigSchema
    .prefault({})
    .describe('sandbox networking: NAT, egress rules, DNS, the egress proxy'),
})

export type RuntimeConfig = z.output<typeof runtimeConfigSchema>

/** The sandbox networking the settings ask for, or undefined when it is off. */
export function createNetworkFromConfig(
  config: RuntimeConfig,
  log: Logger,
): SandboxNetwork | undefined {
  return config.network.enabled ? createSandboxNetwork({ config: config.network, log }) : undefined
}

/** The container driver as a program's runtime settings describe it. */
export function createContainerDriverFromConfig(
  config: RuntimeConfig,
  log: Logger,
  network?: SandboxNetwork,
): ContainerDriver {
  return createContainerDriver({
    ...(network === undefined ? {} : { network }),
    dataDir: config.dataDir,
    ...(config.templatesDir === undefined ? {} : { templatesDir: config.templatesDir }),
    log,
    cgroupParent: config.cgroupParent,
    uidBase: config.uidBase,
    readyTimeoutMs: config.readyTimeoutMs,
    seccomp: config.seccomp,
  })
}

/**
 * MicroVM drivers keep their cgroups under `<cgroupParent>-vm`: the container driver's
 * adoption removes every cgroup under its own parent that it does not know.
 */
function vmCgroupParent(config: RuntimeConfig): string {
  return `${config.cgroupParent}-vm`
}

/** What the settings say for both microVM drivers. */
function microVmDriverOptions(
  config: RuntimeConfig,
  log: Logger,
  network: SandboxNetwork | undefined,
): MicroVmDriverOptions {
  const vm = config.microvm
  return {
    ...(network === undefined ? {} : { network }),
    dataDir: config.dataDir,
    ...(config.templatesDir === undefined ? {} : { templatesDir: config.templatesDir }),
    ...(vm.imagesDir === undefined ? {} : { imagesDir: vm.imagesDir }),
    ...(vm.vcpus === undefined ? {} : { vcpus: vm.vcpus }),
    log,
    cgroupParent: vmCgroupParent(config),
    uidBase: config.uidBase,
    vmMemoryMiB: vm.vmMemoryMiB,
  }
}

/** The qemu driver as a program's runtime settings describe it. */
export function createQemuDriverFromConfig(
  config: RuntimeConfig,
  log: Logger,
  network?: SandboxNetwork,
): QemuDriver {
  return createQemuDriver({
    ...microVmDriverOptions(config, log, network),
    accel: config.microvm.accelerator,
    qemuBinary: config.microvm.qemuBinary,
  })
}

/**
 * The firecracker driver as the settings describe it, or undefined when no Firecracker binary
 * is configured.
 */
export function createFirecrackerDriverFromConfig(
  config: RuntimeConfig,
  log: Logger,
  network?: SandboxNetwork,
): FirecrackerDriver | undefined {
  const vm = config.microvm
  if (vm.firecrackerBinary === undefined) {
    return undefined
  }
  return createFirecrackerDriver({
    ...microVmDriverOptions(config, log, network),
    firecrackerBinary: vm.firecrackerBinary,
  })
}

/**
 * Every driver the settings allow (container and qemu always, firecracker when its binary is
 * configured) behind one routing driver: `config.driver` by default, `config.templateDrivers`
 * per template, `SandboxSpec.driver` per sandbox. A driver that cannot run on this host is
 * still listed: its creates fail with the reason its probe gives.
 */
export function createDriversFromConfig(config: RuntimeConfig, log: Logger): RoutingDriver {
  const network = createNetworkFromConfig(config, log)
  const firecracker = createFirecrackerDriverFromConfig(config, log, network)
  const drivers = [
    createContainerDriverFromConfig(config, log, network),
    createQemuDriverFromConfig(config, log, network),
    ...(firecracker === undefined ? [] : [firecracker]),
  ]
  const defaultDriver: DriverKind = config.driver
  return createRoutingDriver({
    drivers,
    defaultDriver,
    templateDrivers: config.templateDrivers,
    ...(network === undefined ? {} : { network }),
    log,
  })
}
