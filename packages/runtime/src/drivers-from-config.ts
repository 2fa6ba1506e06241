/** The drivers and networking a program's runtime settings describe. */
import { createSandboxNetwork, type SandboxNetwork } from '@sandcell/network'
import type { Logger } from '@sandcell/shared'
import type { RuntimeConfig } from './config.js'
import type { DriverKind } from './driver.js'
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
