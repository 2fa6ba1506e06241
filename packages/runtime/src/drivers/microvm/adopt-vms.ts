/**
 * The adoption scan both microVM drivers run at start: every sandbox directory whose VMM still
 * runs becomes a sandbox again (its agent relay restarted when it died); the leftovers of the
 * others are removed, and so are cgroups of ours that hold a VMM but no longer a directory.
 */
import { readFileSync } from 'node:fs'
import type { SandboxNetwork } from '@sandcell/network'
import type { Logger, SandboxId } from '@sandcell/shared'
import type { Sandbox } from '../../driver.js'
import { guardSandbox } from '../../guarded-sandbox.js'
import {
  detectCgroupVersion,
  listCgroups,
  openCgroup,
  type Cgroup,
  type CgroupVersion,
} from '../../os/cgroups.js'
import type { SandboxEvents } from '../../sandbox-events.js'
import { adoptNetwork, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
import { listSandboxDirs, readJsonFile, writeJsonFileAtomic } from '../persisted-sandbox.js'
import { isHostProcessAlive } from './vm-process.js'
import { removeVmLeftovers } from './vm-sandbox.js'
import { startRelay } from './vm-start.js'
import type { Vmm, VmmTypes } from './vmm.js'

export interface AdoptedVm<T extends VmmTypes> {
  id: SandboxId
  paths: T['paths']
  state: T['state']
  cgroup: Cgroup
  log: Logger
  network: SandboxNetworkHandle | undefined
}

export interface AdoptVmsOptions<T extends VmmTypes> {
  sandboxesDir: string
  cgroupParent: string
  log: Logger
  events: SandboxEvents
  /** This process's sandbox networking: adopted VMs' slots are handed back to it. */
  network: SandboxNetwork | undefined
  sandbox: (vm: AdoptedVm<T>) => Sandbox
}

/**
 * Adopts the live VMs of `vmm` under `sandboxesDir` and cleans up after the dead ones.
 * @returns the adopted sandboxes (guarded, `adopted` emitted)
 */
export async function adoptVmSandboxes<T extends VmmTypes>(
  vmm: Vmm<T>,
  options: AdoptVmsOptions<T>,
): Promise<Sandbox[]> {
  const cgroupVersion = detectCgroupVersion()
  const adopted: Sandbox[] = []
  const known = new Set<string>()
  for (const id of listSandboxDirs(options.sandboxesDir)) {
    known.add(id)
    const paths = vmm.paths(options.sandboxesDir, id)
    const state = readJsonFile(paths.state, vmm.stateSchema)
    const cgroup = openCgroup({
      version: state?.cgroupVersion ?? cgroupVersion,
      parent: state?.cgroupParent ?? options.cgroupParent,
      id,
    })
    const log = options.log.child({ sandboxId: id })
    const network = adoptNetwork(options.network, state?.network, id)
    if (state === undefined || !isHostProcessAlive(vmm.process(state))) {
      log.info(`cleaning up the leftovers of a dead ${vmm.name} sandbox`)
      await removeVmLeftovers(paths, cgroup, network).catch((err: unknown) =>
        log.error({ err }, `could not clean up a dead ${vmm.name} sandbox`),
      )
      continue
    }
    if (!isHostProcessAlive(state.relay)) {
      // The relay died (killed by hand): the VM is fine, serve its agent again.
      try {
        await restartRelay(vmm, paths, state, cgroup)
      } catch (err) {
        log.error({ err }, 'could not restart the agent relay of an adopted VM')
      }
    }
    const sandbox = guardSandbox(options.sandbox({ id, paths, state, cgroup, log, network }), {
      log: options.log,
      events: options.events,
    })
    adopted.push(sandbox)
    options.events.emit({ type: 'adopted', sandbox })
  }
  await removeOrphanCgroups(vmm, cgroupVersion, options.cgroupParent, known)
  return adopted
}

/** Starts the agent relay again and persists it. */
async function restartRelay<T extends VmmTypes>(
  vmm: Vmm<T>,
  paths: T['paths'],
  state: T['state'],
  cgroup: Cgroup,
): Promise<void> {
  // A paused VM's cgroup may be frozen (QEMU's are): socat could not start in it.
  const frozen = cgroup.isFrozen()
  if (frozen) {
    await cgroup.thaw()
  }
  state.relay = await startRelay(vmm.process(state).pid, paths, cgroup)
  if (frozen) {
    await cgroup.freeze()
  }
  writeJsonFileAtomic(paths.state, state)
}

/** Cgroups of ours whose sandbox directory is gone (a crash between the two) with a VMM in them. */
async function removeOrphanCgroups<T extends VmmTypes>(
  vmm: Vmm<T>,
  cgroupVersion: CgroupVersion,
  parent: string,
  known: Set<string>,
): Promise<void> {
  for (const id of listCgroups(cgroupVersion, parent)) {
    if (known.has(id) || !id.startsWith('sb')) {
      continue
    }
    const cgroup = openCgroup({ version: cgroupVersion, parent, id })
    if (readFileSafe(`/proc/${cgroup.processes()[0] ?? 0}/cmdline`).includes(vmm.processName)) {
      await cgroup.killAll()
      await cgroup.remove()
    }
  }
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}
