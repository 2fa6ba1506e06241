/**
 * The frame around starting a VM, the same for both drivers: a create undone as a whole when a
 * step fails, and the short-lived cgroup and size of the template VM that is snapshotted.
 */
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { CleanupStack, DriverError, type Logger } from '@sandcell/shared'
import { createCgroup, type Cgroup, type CgroupVersion } from '../../os/cgroups.js'
import type { SandboxNetworkHandle } from '../../sandbox-network-handle.js'
import { logTail } from './vm-process.js'
import { removeVmLeftovers, vmCgroupLimits } from './vm-sandbox.js'

/** Size of the template VM's disk; clones grow theirs to their own size. */
export const templateDiskMiB = 64
/** Memory the template VM is snapshotted with; clones' balloons move from there. */
export const templateMemoryMiB = 256

/**
 * Runs the steps of one create; when one fails, removes the sandbox's directory and cgroup and
 * rethrows, a DriverError with the end of the VM's log (its last words explain most failures,
 * and they go with the directory otherwise).
 */
export async function undoneOnFailure<T>(
  vm: {
    paths: { dir: string; log: string }
    cgroup: Cgroup
    log: Logger
    /** Filled in by `create` once it holds a network slot, so that a failure gives it back. */
    held?: { network?: SandboxNetworkHandle }
  },
  create: () => Promise<T>,
): Promise<T> {
  const undo = new CleanupStack()
  undo.defer('sandbox leftovers', () => removeVmLeftovers(vm.paths, vm.cgroup, vm.held?.network))
  try {
    const result = await create()
    undo.release()
    return result
  } catch (err) {
    const tail = logTail(vm.paths.log, 15)
    await undo.dispose().catch((cleanupErr: unknown) => {
      vm.log.error({ err: cleanupErr }, 'cleanup after a failed create left something behind')
    })
    if (err instanceof DriverError && tail.length > 0 && !err.message.includes(tail)) {
      throw new DriverError(`${err.message}\n${tail}`, { cause: err })
    }
    throw err
  }
}

/**
 * Runs `boot` with a fresh cgroup sized for a template VM of `memoryMiB`, then kills whatever
 * is left in it and removes it and `dir` (the VM's scratch directory), whatever happened.
 */
export async function withTemplateVmCgroup<T>(
  options: {
    cgroupVersion: CgroupVersion
    cgroupParent: string
    memoryMiB: number
    overheadMiB: number
    dir: string
  },
  boot: (cgroup: Cgroup) => Promise<T>,
): Promise<T> {
  const cgroup = createCgroup({
    version: options.cgroupVersion,
    parent: options.cgroupParent,
    id: `template-${randomBytes(4).toString('hex')}`,
  })
  try {
    cgroup.setLimits(
      vmCgroupLimits(
        { memoryMiB: options.memoryMiB, cpus: availableParallelism(), pids: 1024, diskMiB: 0 },
        options.overheadMiB,
      ),
    )
    return await boot(cgroup)
  } finally {
    await cgroup.killAll().catch(() => undefined)
    if (cgroup.exists()) {
      await cgroup.remove().catch(() => undefined)
    }
    rmSync(options.dir, { recursive: true, force: true })
  }
}
