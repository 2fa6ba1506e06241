/**
 * Starting one VM under any VMM: its writable disk, the VMM and the agent relay beside it, then
 * a cold boot or a restore, until the guest's agent answers.
 */
import { statSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import type { SandboxLimits } from '../../driver.js'
import { ensureBlankImage } from '../../disks/blank-image.js'
import type { Cgroup } from '../../os/cgroups.js'
import { sparseCopy } from '../../os/native.js'
import { guestRequest, syncGuest } from './guest-ctl.js'
import { snapshotDiskFile, type VmSandboxFiles } from './persisted-vm.js'
import {
  guestAgentTarget,
  startAgentRelay,
  startVmm,
  waitForAgent,
  type HostProcess,
  type StartedVmm,
} from './vm-process.js'
import type { StartingVm, VmSource, VmStart, Vmm, VmmTypes } from './vmm.js'

/** A VM whose VMM and agent relay run. */
export interface RunningVm {
  vmm: StartedVmm
  relay: HostProcess
}

/**
 * Makes the VM's writable disk at `disk`: a blank one (or a copy of a saved one) to boot with,
 * or a copy of a saved VM's grown to the sandbox's disk size.
 * @returns how the VM starts
 */
export async function prepareVmDisk(
  disk: string,
  source: VmSource,
  limits: SandboxLimits,
  disksDir: string,
): Promise<VmStart> {
  const { pids, memoryMiB } = limits
  if (source.kind === 'boot') {
    sparseCopy(source.disk ?? (await ensureBlankImage(disksDir, limits.diskMiB, 0)), disk)
    return { kind: 'boot', pids, memoryMiB }
  }
  sparseCopy(join(source.dir, snapshotDiskFile), disk)
  const diskBytes = limits.diskMiB * 1024 * 1024
  const grow = statSync(disk).size < diskBytes
  if (grow) {
    truncateSync(disk, diskBytes)
  }
  const growToBytes = grow ? diskBytes : undefined
  return { kind: 'restore', from: source, pids, memoryMiB, growToBytes }
}

/** Starts the agent relay of the VM whose VMM is `vmmPid`. */
export function startRelay(
  vmmPid: number,
  paths: VmSandboxFiles,
  cgroup: Cgroup,
): Promise<HostProcess> {
  return startAgentRelay({
    vmmPid,
    agentSocket: paths.agentSocket,
    cgroup,
    logPath: paths.log,
    target: guestAgentTarget,
  })
}

/** Cold boot: the VMM boots the kernel; the agent gets three times the usual deadline. */
export async function bootVm<T extends VmmTypes>(
  vmm: Vmm<T>,
  vm: StartingVm<T>,
  start: VmStart & { kind: 'boot' },
): Promise<RunningVm> {
  const running = await spawnVm(vmm, vm, start)
  await vmm.start(vm, start)
  await waitForVmAgent(vm, running.vmm, vmm.readyTimeoutMs(vm.shape) * 3)
  return running
}

/**
 * Restore: the VMM loads the saved VM; then the guest gets its pids limit, its disk's new size
 * and the host's clock, and the agent answers. The clock goes last: a restored guest answers
 * its first request slowly, and a sync answered slowly must be sent again.
 */
export async function restoreVm<T extends VmmTypes>(
  vmm: Vmm<T>,
  vm: StartingVm<T>,
  start: VmStart & { kind: 'restore' },
): Promise<RunningVm> {
  const running = await spawnVm(vmm, vm, start)
  vm.step('spawn')
  await vmm.start(vm, start)
  const ctl = vmm.ctl(vm.paths)
  const timeoutMs = vmm.readyTimeoutMs(vm.shape)
  await guestRequest(ctl, `pids ${start.pids}`, { timeoutMs })
  if (start.growToBytes !== undefined) {
    await guestRequest(ctl, `resize-disk ${start.growToBytes}`, { timeoutMs })
  }
  await syncGuest(ctl, { timeoutMs })
  vm.step('guest')
  await waitForVmAgent(vm, running.vmm, timeoutMs)
  vm.step('agent')
  return running
}

/** Starts the VMM and the agent relay beside it. */
async function spawnVm<T extends VmmTypes>(
  vmm: Vmm<T>,
  vm: StartingVm<T>,
  start: VmStart,
): Promise<RunningVm> {
  const started = await startVmm({
    name: vmm.name,
    ...vmm.command(vm, start),
    cgroup: vm.cgroup,
    logPath: vm.paths.log,
    ...(vm.netnsPath === undefined ? {} : { netnsPath: vm.netnsPath }),
    ...(vm.signal === undefined ? {} : { signal: vm.signal }),
  })
  const relay = await startRelay(started.pid, vm.paths, vm.cgroup)
  return { vmm: started, relay }
}

function waitForVmAgent<T extends VmmTypes>(
  vm: StartingVm<T>,
  vmm: StartedVmm,
  timeoutMs: number,
): Promise<void> {
  return waitForAgent({
    agentSocket: vm.paths.agentSocket,
    vmm,
    logPath: vm.paths.log,
    timeoutMs,
    ...(vm.signal === undefined ? {} : { signal: vm.signal }),
  })
}
