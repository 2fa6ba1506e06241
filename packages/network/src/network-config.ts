/** Settings of sandbox networking; programs embed this schema in their runtime settings. */
import { z } from 'zod'
import { parseUpstream } from './dns/parse-upstream.js'
import { isAlwaysDenied, parseCidr } from './policy/cidr.js'

const ipv4Block = z
  .string()
  .refine((text) => parseCidr(text) !== undefined, 'an IPv4 address or block, such as 10.1.0.0/16')

/** Checked as the DNS forwarder will read it. */
const resolverAddress = z.string().refine((text) => {
  try {
    parseUpstream(text)
    return true
  } catch {
    return false
  }
}, 'an IPv4 address, optionally with :port (1-65535)')

export const networkConfigSchema = z.object({
  enabled: z
    .boolean()
    .default(true)
    .describe(
      'give every sandbox its own network namespace with NAT to the host (false: loopback only); SANDCELL_NETWORK_ENABLED',
    ),
  internet: z
    .boolean()
    .default(true)
    .describe(
      "whether a sandbox that does not say otherwise reaches the internet (E2B's default: on); SANDCELL_NETWORK_INTERNET",
    ),
  subnet: z
    .string()
    .default('10.200.0.0/16')
    .refine((text) => {
      const cidr = parseCidr(text)
      return cidr !== undefined && cidr.prefix <= 30 && isAlwaysDenied(cidr.address)
    }, 'a private IPv4 block of /30 or larger (each sandbox takes a /30)')
    .describe(
      'private block the sandboxes\u2019 /30 links are cut from (default 10.200.0.0/16: 16384 sandboxes); SANDCELL_NETWORK_SUBNET',
    ),
  poolSize: z
    .number()
    .int()
    .min(0)
    .max(1000)
    .default(8)
    .describe('container network slots kept ready (default 8); SANDCELL_NETWORK_POOL_SIZE'),
  dnsServers: z
    .array(resolverAddress)
    .default([])
    .describe(
      "resolvers the sandboxes' DNS is forwarded to (default: the host's /etc/resolv.conf); SANDCELL_NETWORK_DNS_SERVERS (comma-separated)",
    ),
  allowPrivate: z
    .array(ipv4Block)
    .default([])
    .describe(
      'private blocks sandboxes may reach despite the always-denied ranges (an internal mirror, say); SANDCELL_NETWORK_ALLOW_PRIVATE (comma-separated)',
    ),
  ipForward: z
    .enum(['report', 'enable'])
    .default('report')
    .describe(
      'net.ipv4.ip_forward off: report it (sandboxes then have no internet) or enable it (default report); SANDCELL_NETWORK_IP_FORWARD',
    ),
  maxConnectionsPerSandbox: z
    .number()
    .int()
    .positive()
    .default(256)
    .describe(
      'connections one sandbox may hold through the egress proxy, and queries in flight through DNS (default 256); SANDCELL_NETWORK_MAX_CONNECTIONS_PER_SANDBOX',
    ),
})

export type NetworkConfig = z.output<typeof networkConfigSchema>
