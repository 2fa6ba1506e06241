/** The host name a sandbox asked for by TLS SNI or HTTP Host, in the one form policies decide on. */
import { parseIpv4 } from '../policy/cidr.js'
import { normalizeDomain } from '../policy/egress-policy.js'

/**
 * Resolvers built on getaddrinfo, and URL parsers, read a name whose last label is numeric
 * (`127.1`, `0x7f.1`, `2130706433`) as an IPv4 address: such a name is never a domain.
 */
function looksLikeIpv4(name: string): boolean {
  return parseIpv4(name) !== undefined || /(?:^|\.)(?:\d+|0x[0-9a-f]*)$/.test(name)
}

/**
 * `raw` lowercased with one trailing dot dropped, or undefined when it is no host name: a
 * character outside letters, digits, dots and hyphens, an IP literal, an empty or malformed
 * label, a single label, more than 253 characters.
 */
export function normalizeEgressName(raw: string): string | undefined {
  // Checked before lowercasing: toLowerCase maps some non-ASCII letters onto ASCII ones (the
  // Kelvin sign becomes `k`), which would decide on a name the upstream never sees.
  if (!/^[A-Za-z0-9.-]{1,254}$/.test(raw)) {
    return undefined
  }
  const name = raw.toLowerCase().replace(/\.$/, '')
  if (looksLikeIpv4(name)) {
    return undefined
  }
  return normalizeDomain(name) === name ? name : undefined
}
