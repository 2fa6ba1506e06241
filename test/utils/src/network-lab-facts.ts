/** The network lab's fixed facts: its servers' addresses, the host's uplink, DNS records, names. */

/** The internet's servers: each address answers every service (HTTP, HTTPS, echo, banner, DNS). */
export const labServers = Object.freeze({
  primary: '203.0.113.10',
  secondary: '203.0.113.11',
  evil: '203.0.113.12',
  other: '198.51.100.10',
} as const)

/** The internet's resolver, answering from the lab's DNS table. */
export const labDnsServer = '203.0.113.53'

/** The host's uplink: its address, the internet's end (the default gateway) and the interface. */
export const labUplink = Object.freeze({
  interface: 'uplink0',
  address: '192.0.2.2',
  gateway: '192.0.2.1',
  prefixLength: 24,
} as const)

/** The A records the lab's DNS starts with (and returns to on `resetDnsRecords()`). */
export const defaultLabDnsRecords: Readonly<Record<string, readonly string[]>> = Object.freeze({
  'example.com': [labServers.primary],
  'www.example.com': [labServers.secondary],
  'evilexample.com': [labServers.evil],
  'allowed.test': [labServers.primary],
  'other.test': [labServers.other],
  // A private answer for a public name: what a DNS rebinding attack returns.
  'rebind.test': ['10.0.0.1'],
})

/** TTL of every DNS answer, seconds: short, so a changed record is seen past any cache soon. */
export const labDnsTtlSeconds = 1

/** The names the lab's TLS certificate is valid for. */
export const labCertificateNames: readonly string[] = Object.freeze([
  'example.com',
  '*.example.com',
  'evilexample.com',
  'allowed.test',
  '*.allowed.test',
  'rebind.test',
])
