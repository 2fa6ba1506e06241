/** A container sandbox's limits in their cgroup form. */
import type { SandboxLimits } from '../../driver.js'
import type { CgroupLimits } from '../../os/cgroups.js'

export function toCgroupLimits(limits: SandboxLimits, background = false): CgroupLimits {
  return {
    memoryBytes: limits.memoryMiB * 1024 * 1024,
    cpus: limits.cpus,
    pidsMax: limits.pids,
    background,
  }
}
