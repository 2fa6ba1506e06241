/**
 * A sandbox's hold on its network slot, the same for every driver: taken at create, re-taken at
 * adoption, its rules changed while it lives, given back once no process of it is left.
 */
import {
  removeSlot,
  type EgressPolicy,
  type NetworkSlot,
  type PersistedSlot,
  type SandboxNetwork,
  type SlotKind,
} from '@sandcell/network'
import { FailedPreconditionError } from '@sandcell/shared'
import type { SandboxNetworkInfo, SandboxSpec } from './driver.js'

/** A sandbox's network slot and the service that holds it (absent in a process without one). */
export interface SandboxNetworkHandle {
  slot: NetworkSlot
  manager: SandboxNetwork | undefined
}

/** A slot for a new sandbox, or undefined when it gets loopback only. */
export async function acquireNetwork(
  manager: SandboxNetwork | undefined,
  kind: SlotKind,
  spec: SandboxSpec,
  sandboxId: string,
): Promise<SandboxNetworkHandle | undefined> {
  if (manager === undefined || spec.network === false) {
    return undefined
  }
  const slot = await manager.acquire(kind, {
    sandboxId,
    ...(spec.egress === undefined ? {} : { policy: spec.egress }),
  })
  return { slot, manager }
}

/** The slot of an adopted sandbox, known to this process's networking when it runs one. */
export function adoptNetwork(
  manager: SandboxNetwork | undefined,
  persisted: PersistedSlot | undefined,
  sandboxId: string,
): SandboxNetworkHandle | undefined {
  if (persisted === undefined) {
    return undefined
  }
  return {
    slot: manager?.adopt(persisted, sandboxId) ?? { ...persisted, sandboxId },
    manager,
  }
}

/** What `SandboxInfo.network` says of a slot. */
export function networkInfo(handle: SandboxNetworkHandle): SandboxNetworkInfo {
  return { address: handle.slot.addresses.address, egress: handle.slot.policy }
}

/**
 * Replaces the slot's rules. @throws FailedPreconditionError without a slot, or in a process
 * that runs no networking
 */
export async function changeNetwork(
  handle: SandboxNetworkHandle | undefined,
  sandboxId: string,
  egress: EgressPolicy,
): Promise<SandboxNetworkInfo> {
  if (handle === undefined) {
    throw new FailedPreconditionError(
      `sandbox ${sandboxId} has no network of its own (loopback only): its rules cannot change`,
    )
  }
  if (handle.manager === undefined) {
    throw new FailedPreconditionError(
      `this process runs no sandbox networking, so it cannot change ${sandboxId}'s rules`,
    )
  }
  await handle.manager.setPolicy(handle.slot, egress)
  return networkInfo(handle)
}

/** Gives a slot back: to its manager, or removed directly by a process that runs none. */
export async function releaseNetwork(handle: SandboxNetworkHandle | undefined): Promise<void> {
  if (handle === undefined) {
    return
  }
  if (handle.manager === undefined) {
    await removeSlot(handle.slot.addresses, { kind: handle.slot.kind })
  } else {
    handle.manager.release(handle.slot)
  }
}
