/**
 * Where slot N lives: its network namespace, its host-side interface, and its /30 out of the
 * configured subnet (the host end is the sandbox's gateway, the other end its address).
 */
import { InvalidArgumentError } from '@sandcell/shared'
import { formatIpv4, parseCidr, type Cidr } from '../policy/cidr.js'

/** Every slot's namespace is `/run/netns/<prefix><index>`; the leak checks look for it. */
export const netnsPrefix = 'sandcell-'
/** Host-side veth names; the host table matches them by this prefix, whoever made them. */
export const hostInterfacePrefix = 'scv'
export const netnsDir = '/run/netns'

/** What a slot is for: a container joins the namespace; a microVM sits behind a TAP in it. */
export type SlotKind = 'container' | 'vm'

/** A microVM guest's fixed address behind its TAP, and the TAP's (the guest's gateway and DNS). */
export const vmGuestAddress = '10.0.2.15'
export const vmTapAddress = '10.0.2.2'
export const vmTapPrefix = 24
export const vmTapName = 'tap0'
/** The interface a slot's namespace reaches the host through. */
export const slotInterfaceName = 'eth0'

export interface SlotAddresses {
  index: number
  /** Namespace name under /run/netns. */
  netns: string
  netnsPath: string
  /** The veth end on the host. */
  hostInterface: string
  /** The host end's address: the sandbox's gateway, DNS server and egress proxy. */
  gateway: string
  /** The namespace end's address: where the host reaches the sandbox's ports. */
  address: string
}

/** Parses the configured slot subnet: an IPv4 block of at least 4 addresses. */
export function parseSlotSubnet(text: string): Cidr {
  const cidr = parseCidr(text)
  if (cidr === undefined || cidr.prefix > 30) {
    throw new InvalidArgumentError(
      `network.subnet must be an IPv4 block of /30 or larger, such as 10.200.0.0/16 (got ${JSON.stringify(text)})`,
    )
  }
  return cidr
}

/** How many /30 slots the subnet holds. */
export function slotCapacity(subnet: Cidr): number {
  return 2 ** (30 - subnet.prefix)
}

export function slotAddresses(subnet: Cidr, index: number): SlotAddresses {
  if (!Number.isInteger(index) || index < 0 || index >= slotCapacity(subnet)) {
    throw new InvalidArgumentError(`slot ${index} is outside the subnet's ${slotCapacity(subnet)}`)
  }
  const base = subnet.address + index * 4
  const netns = `${netnsPrefix}${index}`
  return {
    index,
    netns,
    netnsPath: `${netnsDir}/${netns}`,
    hostInterface: `${hostInterfacePrefix}${index}`,
    gateway: formatIpv4(base + 1),
    address: formatIpv4(base + 2),
  }
}

/** The slot index a namespace name stands for, or undefined when it is none of ours. */
export function parseSlotNetns(name: string): number | undefined {
  if (!name.startsWith(netnsPrefix)) {
    return undefined
  }
  const rest = name.slice(netnsPrefix.length)
  return /^(0|[1-9]\d{0,5})$/.test(rest) ? Number(rest) : undefined
}
