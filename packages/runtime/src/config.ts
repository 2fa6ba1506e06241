/**
 * Settings of the sandbox runtime, shared by every program that runs sandboxes (the CLI's local
 * mode, the server). Programs embed this schema in their own and pass the parsed values in.
 */
import { z } from 'zod'
import type { Logger } from '@sandcell/shared'
import {
  createContainerDriver,
  type ContainerDriver,
} from './drivers/container/container-driver.js'

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
})

export type RuntimeConfig = z.output<typeof runtimeConfigSchema>

/** The container driver as a program's runtime settings describe it. */
export function createContainerDriverFromConfig(
  config: RuntimeConfig,
  log: Logger,
): ContainerDriver {
  return createContainerDriver({
    dataDir: config.dataDir,
    ...(config.templatesDir === undefined ? {} : { templatesDir: config.templatesDir }),
    log,
    cgroupParent: config.cgroupParent,
    uidBase: config.uidBase,
    readyTimeoutMs: config.readyTimeoutMs,
    seccomp: config.seccomp,
  })
}
