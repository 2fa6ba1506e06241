export * from './policy/cidr.js'
export * from './policy/egress-policy.js'
export * from './network-config.js'
export * from './sandbox-network.js'
export {
  persistSlot,
  persistedSlotSchema,
  removeSlot,
  type NetworkSlot,
  type PersistedSlot,
} from './slots/network-slots.js'
export * from './slots/slot-addressing.js'
export {
  startDnsForwarder,
  type DnsClient,
  type DnsForwarder,
  type DnsForwarderOptions,
  type DnsForwarderStats,
} from './dns/dns-forwarder.js'
export {
  startEgressProxy,
  type EgressClient,
  type EgressProxy,
  type EgressProxyOptions,
  type EgressProxyStats,
} from './egress-proxy/egress-proxy.js'
