/**
 * What a sandbox may reach, in E2B's terms: `allowOut` (addresses, blocks and domains) always
 * wins over `denyOut` (addresses and blocks only), and a destination on neither list is allowed.
 * Parsed and validated here with E2B's rules and messages, so every front end (the E2B API, the
 * CLI) accepts and refuses the same input.
 */
import { domainToASCII } from 'node:url'
import { InvalidArgumentError } from '@sandcell/shared'
import { allTraffic, cidrContains, formatCidr, parseCidr, type Cidr } from './cidr.js'

/** A sandbox's egress rules, normalised: blocks as `a.b.c.d/n`, domains lowercase ASCII. */
export interface EgressPolicy {
  /** Blocks always reachable (E2B's allowed CIDRs). */
  readonly allowCidrs: readonly string[]
  /** Blocks refused unless allowed (E2B's denied CIDRs); `0.0.0.0/0` refuses all the rest. */
  readonly denyCidrs: readonly string[]
  /**
   * Names reachable on ports 80 and 443 through the egress proxy, by HTTP Host or TLS SNI:
   * `example.com` exactly, `*.example.com` any name below it (not the apex).
   */
  readonly allowDomains: readonly string[]
}

/** Everything public is reachable: E2B's default. */
export const openPolicy: EgressPolicy = Object.freeze({
  allowCidrs: [],
  denyCidrs: [],
  allowDomains: [],
})

/** Nothing is reachable: `allowInternetAccess: false`. */
export const closedPolicy: EgressPolicy = Object.freeze({
  allowCidrs: [],
  denyCidrs: [allTraffic],
  allowDomains: [],
})

/** E2B's egress fields, as its create and update bodies carry them. */
export interface E2bEgressInput {
  allowOut?: readonly string[] | undefined
  denyOut?: readonly string[] | undefined
  /** `false` replaces the deny list with all traffic, keeping `allowOut` (E2B's semantics). */
  allowInternetAccess?: boolean | undefined
}

/** The most entries one list may hold: beyond, a 400 rather than a slow rule load. */
export const maxRuleEntries = 1000

export const domainsRequireDenyAllMessage =
  "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out to block all other traffic."

/** `host:port` or `cidr:port`: E2B refuses port-specific egress rules with its own message. */
function hasPort(entry: string): boolean {
  const colon = entry.lastIndexOf(':')
  return colon > 0 && parseCidr(entry.slice(0, colon)) !== undefined
}

/** Looks like an address or a block (digits, dots, a slash): then it must parse as one. */
function looksNumeric(entry: string): boolean {
  return /^[\d./]+$/.test(entry)
}

/**
 * A domain as the egress proxy matches it: lowercase ASCII (IDNA for unicode names), an optional
 * leading `*.`, at least two labels, each 1-63 letters, digits or hyphens.
 */
export function normalizeDomain(entry: string): string | undefined {
  const wildcard = entry.startsWith('*.')
  const name = wildcard ? entry.slice(2) : entry
  if (name.length === 0 || name.length > 253 || name.includes('*')) {
    return undefined
  }
  const ascii = domainToASCII(name.replace(/\.$/, ''))
  const labels = ascii.split('.')
  if (
    ascii === '' ||
    labels.length < 2 ||
    !labels.every((label) => /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(label))
  ) {
    return undefined
  }
  return wildcard ? `*.${ascii}` : ascii
}

function checkLength(name: string, entries: readonly string[]): void {
  if (entries.length > maxRuleEntries) {
    throw new InvalidArgumentError(
      `${name} holds ${entries.length} entries; at most ${maxRuleEntries} are accepted`,
    )
  }
}

/** A denied or allowed block: any valid block but the unspecified address (`0.0.0.0/0` aside). */
function usableCidr(entry: string): Cidr | undefined {
  const cidr = parseCidr(entry)
  if (cidr === undefined) {
    return undefined
  }
  if (cidr.address === 0 && cidr.prefix !== 0) {
    return undefined
  }
  return cidr
}

/**
 * Validates and normalises E2B's egress fields.
 * @throws InvalidArgumentError with E2B's message for the first bad entry
 */
export function egressPolicyFromE2b(input: E2bEgressInput): EgressPolicy {
  const allowOut = input.allowOut ?? []
  const denyOut = input.denyOut ?? []
  checkLength('allowOut', allowOut)
  checkLength('denyOut', denyOut)
  const denyCidrs = new Set<string>()
  for (const entry of denyOut) {
    if (hasPort(entry)) {
      throw new InvalidArgumentError(
        `invalid deny out entry ${JSON.stringify(entry)}: port-specific rules are not supported for egress`,
      )
    }
    const cidr = usableCidr(entry)
    if (cidr === undefined) {
      throw new InvalidArgumentError(`invalid denied CIDR ${entry}`)
    }
    denyCidrs.add(formatCidr(cidr))
  }
  const allowCidrs = new Set<string>()
  const allowDomains = new Set<string>()
  for (const entry of allowOut) {
    if (hasPort(entry)) {
      throw new InvalidArgumentError(
        `invalid allow out entry ${JSON.stringify(entry)}: port-specific rules are not supported for egress`,
      )
    }
    if (looksNumeric(entry)) {
      const cidr = usableCidr(entry)
      if (cidr === undefined) {
        throw new InvalidArgumentError(`invalid allowed address ${entry}`)
      }
      allowCidrs.add(formatCidr(cidr))
      continue
    }
    const domain = normalizeDomain(entry)
    if (domain === undefined) {
      throw new InvalidArgumentError(
        `invalid allowed domain ${JSON.stringify(entry)}: expected a host name such as example.com or *.example.com`,
      )
    }
    allowDomains.add(domain)
  }
  if (input.allowInternetAccess === false) {
    denyCidrs.clear()
    denyCidrs.add(allTraffic)
  }
  if (allowDomains.size > 0 && !denyCidrs.has(allTraffic)) {
    throw new InvalidArgumentError(domainsRequireDenyAllMessage)
  }
  return {
    allowCidrs: [...allowCidrs],
    denyCidrs: [...denyCidrs],
    allowDomains: [...allowDomains],
  }
}

/** Whether `host` (a TLS SNI or HTTP Host name, port stripped) matches one allowed domain. */
export function isDomainAllowed(policy: EgressPolicy, host: string): boolean {
  const name = normalizeDomain(host)
  if (name === undefined || name.startsWith('*.')) {
    return false
  }
  return policy.allowDomains.some((pattern) =>
    pattern.startsWith('*.') ? name.endsWith(pattern.slice(1)) : name === pattern,
  )
}

/** The decision for a destination address by the CIDR rules alone (allow beats deny). */
export function isAddressAllowed(policy: EgressPolicy, address: number): boolean {
  const inList = (list: readonly string[]) =>
    list.some((text) => {
      const cidr = parseCidr(text)
      return cidr !== undefined && cidrContains(cidr, address)
    })
  return inList(policy.allowCidrs) || !inList(policy.denyCidrs)
}

/** True when no rule limits the sandbox. */
export function isOpenPolicy(policy: EgressPolicy): boolean {
  return (
    policy.allowCidrs.length === 0 &&
    policy.denyCidrs.length === 0 &&
    policy.allowDomains.length === 0
  )
}

/**
 * Whether the sandbox's resolver answers a query for `name`. Where all traffic is denied, DNS
 * would be a way out of its own: names are answered only when allowed as domains (E2B lets DNS
 * through only then), and not at all when only addresses are allowed.
 */
export function isDnsQueryAllowed(policy: EgressPolicy, name: string): boolean {
  if (!policy.denyCidrs.includes(allTraffic)) {
    return true
  }
  return isDomainAllowed(policy, name)
}

/** Whether two policies say the same (order of entries aside). */
export function samePolicy(a: EgressPolicy, b: EgressPolicy): boolean {
  const same = (x: readonly string[], y: readonly string[]) =>
    x.length === y.length && [...x].sort().join() === [...y].sort().join()
  return (
    same(a.allowCidrs, b.allowCidrs) &&
    same(a.denyCidrs, b.denyCidrs) &&
    same(a.allowDomains, b.allowDomains)
  )
}
