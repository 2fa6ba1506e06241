/**
 * Settings of the sandbox runtime, shared by every program that runs sandboxes (the CLI's local
 * mode, the server). Programs embed this schema in their own and pass the parsed values in.
 * Programs that only read settings import it as `@sandcell/runtime/config`, without the drivers.
 */
import { z } from 'zod'
import { networkConfigSchema } from '@sandcell/network/config'
import { driverKinds } from './driver.js'

// A settings reader (the CLI's `--driver` choices) gets the kinds without the drivers.
export { driverKinds, type DriverKind } from './driver.js'

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
