/**
 * The adoption scan both microVM drivers run at start: every sandbox directory whose VMM still
 * runs becomes a sandbox again (its agent relay restarted when it died); the leftovers of the
 * others are removed.
 */
import type { Logger, SandboxId } from '@sandcell/shared'
import type { Sandbox } from '../../driver.js'
import type { SandboxNetwork } from '@sandcell/network'
import { guardSandbox } from '../../guarded-sandbox.js'
import { adoptNetwork, type SandboxNetworkHandle } from '../../sandbox-network-handle.js'
import { detectCgroupVersion, openCgroup, type Cgroup } from '../../os/cgroups.js'
import type { SandboxEvents } from '../../sandbox-events.js'
import { listVmSandboxDirs, type PersistedVmBase, type VmSandboxFiles } from './persisted-vm.js'
import type { HostProcess } from './vm-process.js'
import { removeVmLeftovers } from './vm-sandbox.js'
import { isProcessAlive } from '@sandcell/shared'

export interface AdoptedVm<Paths, State> {
  id: SandboxId
  paths: Paths
  state: State
  cgroup: Cgroup
  log: Logger
  network: SandboxNetworkHandle | undefined
}

export interface AdoptVmsOptions<Paths extends VmSandboxFiles, State extends PersistedVmBase> {
  sandboxesDir: string
  cgroupParent: string
  log: Logger
  events: SandboxEvents
  /** This process's sandbox networking: adopted VMs' slots are handed back to it. */
  network: SandboxNetwork | undefined
  /** Names a dead one in log messages: `VM`, `Firecracker`. */
  what: string
  paths: (sandboxesDir: string, id: SandboxId) => Paths
  readState: (paths: Paths) => State | undefined
  vmmProcess: (state: State) => HostProcess
  /** Starts the agent relay again, updating `state.relay` and the persisted state. */
  restartRelay: (vm: AdoptedVm<Paths, State>) => Promise<void>
  sandbox: (vm: AdoptedVm<Paths, State>) => Sandbox
}

/**
 * Adopts the live VMs under `sandboxesDir` and cleans up after the dead ones.
 * @returns the adopted sandboxes (guarded, `adopted` emitted) and every id that had a directory
 */
export async function adoptVmSandboxes<Paths extends VmSandboxFiles, State extends PersistedVmBase>(
  options: AdoptVmsOptions<Paths, State>,
): Promise<{ adopted: Sandbox[]; known: Set<string> }> {
  const cgroupVersion = detectCgroupVersion()
  const adopted: Sandbox[] = []
  const known = new Set<string>()
  for (const id of listVmSandboxDirs(options.sandboxesDir)) {
    known.add(id)
    const paths = options.paths(options.sandboxesDir, id)
    const state = options.readState(paths)
    const cgroup = openCgroup({
      version: state?.cgroupVersion ?? cgroupVersion,
      parent: state?.cgroupParent ?? options.cgroupParent,
      id,
    })
    const log = options.log.child({ sandboxId: id })
    const network = adoptNetwork(options.network, state?.network, id)
    if (state === undefined || !isAlive(options.vmmProcess(state))) {
      log.info(`cleaning up the leftovers of a dead ${options.what} sandbox`)
      await removeVmLeftovers(paths, cgroup, network).catch((err: unknown) =>
        log.error({ err }, `could not clean up a dead ${options.what} sandbox`),
      )
      continue
    }
    const vm = { id, paths, state, cgroup, log, network }
    if (!isAlive(state.relay)) {
      // The relay died (killed by hand): the VM is fine, serve its agent again.
      try {
        await options.restartRelay(vm)
      } catch (err) {
        log.error({ err }, 'could not restart the agent relay of an adopted VM')
      }
    }
    const sandbox = guardSandbox(options.sandbox(vm), {
      log: options.log,
      events: options.events,
    })
    adopted.push(sandbox)
    options.events.emit({ type: 'adopted', sandbox })
  }
  return { adopted, known }
}

function isAlive(process: HostProcess): boolean {
  return isProcessAlive(process.pid, process.startTime)
}
