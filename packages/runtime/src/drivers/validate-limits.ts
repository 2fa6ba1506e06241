/** Validation of a sandbox's limits against what this host can give, the same for every driver. */
import { availableParallelism, totalmem } from 'node:os'
import { InvalidArgumentError } from '@sandcell/shared'
import type { SandboxLimits } from '../driver.js'

/**
 * The agent (Node) itself needs ~30 MiB; below this a sandbox cannot start reliably.
 */
export const minMemoryMiB = 64
export const minPids = 16
export const minDiskMiB = 64
export const maxDiskMiB = 1024 * 1024

/** Throws one InvalidArgumentError naming every limit out of range and the allowed range. */
export function validateLimits(limits: SandboxLimits): void {
  const hostMemoryMiB = Math.floor(totalmem() / 1024 / 1024)
  const hostCpus = availableParallelism()
  const problems: string[] = []
  const check = (name: string, value: number, min: number, max: number, unit: string): void => {
    if (!Number.isFinite(value) || value < min || value > max) {
      problems.push(`${name} must be between ${min} and ${max}${unit} (got ${value})`)
    }
  }
  check('memoryMiB', limits.memoryMiB, minMemoryMiB, hostMemoryMiB, ' MiB')
  check('cpus', limits.cpus, 0.01, hostCpus, '')
  check('pids', limits.pids, minPids, 4_194_304, '')
  check('diskMiB', limits.diskMiB, minDiskMiB, maxDiskMiB, ' MiB')
  if (
    !Number.isInteger(limits.pids) ||
    !Number.isInteger(limits.diskMiB) ||
    !Number.isInteger(limits.memoryMiB)
  ) {
    problems.push('memoryMiB, pids and diskMiB must be whole numbers')
  }
  if (problems.length > 0) {
    throw new InvalidArgumentError(`impossible limits: ${problems.join('; ')}`, {
      details: { limits },
    })
  }
}
