/**
 * IPv4 addresses and CIDR blocks as numbers: parsing as E2B's API accepts them (a bare address is
 * a /32), normalising to the network address, and membership tests.
 */

/** A parsed IPv4 block: `address` is the network address (host bits cleared), as an unsigned 32-bit number. */
export interface Cidr {
  address: number
  prefix: number
}

const octetPattern = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/

/** The address as an unsigned 32-bit number, or undefined unless it is a strict dotted quad. */
export function parseIpv4(text: string): number | undefined {
  const parts = text.split('.')
  if (parts.length !== 4 || !parts.every((part) => octetPattern.test(part))) {
    return undefined
  }
  return parts.reduce((value, part) => value * 256 + Number(part), 0)
}

export function formatIpv4(address: number): string {
  return [24, 16, 8, 0].map((shift) => (address >>> shift) & 255).join('.')
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0
}

/** `a.b.c.d` (a /32) or `a.b.c.d/n`, with host bits cleared; undefined when it is neither. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/')
  const address = parseIpv4(slash === -1 ? text : text.slice(0, slash))
  if (address === undefined) {
    return undefined
  }
  let prefix = 32
  if (slash !== -1) {
    const bits = text.slice(slash + 1)
    if (!/^(3[0-2]|[12]?\d)$/.test(bits)) {
      return undefined
    }
    prefix = Number(bits)
  }
  return { address: (address & maskOf(prefix)) >>> 0, prefix }
}

export function formatCidr(cidr: Cidr): string {
  return `${formatIpv4(cidr.address)}/${cidr.prefix}`
}

export function cidrContains(cidr: Cidr, address: number): boolean {
  return (address & maskOf(cidr.prefix)) >>> 0 === cidr.address
}

/** The last address of a block. */
export function cidrEnd(cidr: Cidr): number {
  return (cidr.address | ~maskOf(cidr.prefix)) >>> 0
}

/** Whether two blocks share any address. */
export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.address <= cidrEnd(b) && b.address <= cidrEnd(a)
}

/** Every IPv4 destination: E2B's `ALL_TRAFFIC`. */
export const allTraffic = '0.0.0.0/0'

/**
 * Destinations a sandbox never reaches, whatever its rules say: the host's and its neighbours'
 * private networks, loopback, link-local (cloud metadata at 169.254.169.254), shared address
 * space, "this network", multicast and reserved space. Only the operator can open one of these
 * (the `network.allowPrivate` setting).
 */
export const alwaysDeniedCidrs: readonly string[] = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '224.0.0.0/4',
  '240.0.0.0/4',
]

const alwaysDenied = alwaysDeniedCidrs.map((text) => parseCidr(text) as Cidr)

/** Whether an address lies in {@link alwaysDeniedCidrs}. */
export function isAlwaysDenied(address: number): boolean {
  return alwaysDenied.some((cidr) => cidrContains(cidr, address))
}
