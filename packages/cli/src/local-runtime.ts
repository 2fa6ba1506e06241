/**
 * The runtime as the CLI uses it without a server: a container driver (or every configured
 * driver behind a routing one) over the configured data dir, with sandboxes labelled by the CLI
 * process that owns them so that leftovers of a CLI killed hard are found and removed by the
 * next one.
 */
import {
  createContainerDriverFromConfig,
  createDriversFromConfig,
  type ContainerDriver,
  type Driver,
  type RoutingDriver,
  type Sandbox,
} from '@sandcell/runtime'
import { errorMessage, type Logger } from '@sandcell/shared'
import { readFileSync } from 'node:fs'
import type { CliConfig } from './config.js'

const ownerLabel = 'sandcell.owner'

function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

/** The owner label value naming this very process (pid + start time, safe against reuse). */
export function cliOwner(): string {
  return `cli:${process.pid}:${processStartTime(process.pid) ?? '0'}`
}

function isDeadCliOwner(owner: string | undefined): boolean {
  const match = /^cli:(\d+):(\d+)$/.exec(owner ?? '')
  if (match === null) {
    return false
  }
  return processStartTime(Number(match[1])) !== match[2]
}

export function createLocalDriver(config: CliConfig, log: Logger): ContainerDriver {
  return createContainerDriverFromConfig(config, log)
}

/**
 * Every driver the configuration allows (container, qemu, firecracker when its binary is set),
 * one chosen per sandbox by `SandboxSpec.driver`, else per template, else `config.driver`.
 */
export function createLocalDrivers(config: CliConfig, log: Logger): RoutingDriver {
  return createDriversFromConfig(config, log)
}

/** Destroys sandboxes whose owning CLI process is gone; sandboxes of servers are left alone. */
export async function reapOrphans(driver: Driver, log: Logger): Promise<void> {
  let sandboxes: Sandbox[]
  try {
    sandboxes = await driver.adopt()
  } catch (err) {
    log.warn({ err: errorMessage(err) }, 'could not look for orphaned sandboxes')
    return
  }
  await Promise.allSettled(
    sandboxes
      .filter((sandbox) => isDeadCliOwner(sandbox.info.labels[ownerLabel]))
      .map((sandbox) => sandbox.destroy({ reason: 'its CLI process is gone' })),
  )
}

export function ownerLabels(): Record<string, string> {
  return { [ownerLabel]: cliOwner() }
}
