/**
 * The nftables rules of sandbox networking, as text for `nft -f`. Pure: rendering only.
 *
 * Two tables, both named `inet sandcell`:
 * - the host table, in the namespace the server runs in: the same for every sandcell process
 *   (it matches slot interfaces by name prefix and holds nothing per slot or per process), so
 *   any of them may load it at any time without disturbing the others;
 * - a slot table inside each slot's namespace, owned by the process that made the slot: the
 *   sandbox's egress rules, its DNS and egress-proxy redirects, and port exposure. A sandbox
 *   cannot change it: the namespace belongs to the host's user namespace, not the sandbox's.
 *
 * Each load replaces the whole table in one transaction, so a failed load leaves the old rules
 * and no packet ever sees half of them.
 */
import { alwaysDeniedCidrs } from '../policy/cidr.js'
import type { EgressPolicy } from '../policy/egress-policy.js'
import {
  hostInterfacePrefix,
  slotInterfaceName,
  vmGuestAddress,
  vmTapAddress,
  vmTapName,
  type SlotAddresses,
  type SlotKind,
} from './slot-addressing.js'

export const tableName = 'sandcell'

/** The host ports a slot may reach at its gateway: the process's DNS forwarder and proxy. */
export interface SlotServices {
  dnsPort: number
  httpProxyPort: number
  tlsProxyPort: number
}

export interface SlotRulesInput {
  kind: SlotKind
  slot: SlotAddresses
  policy: EgressPolicy
  services: SlotServices
  /** Private blocks the operator opened to sandboxes (`network.allowPrivate`). */
  permitCidrs: readonly string[]
}

function elements(cidrs: readonly string[]): string {
  return cidrs.length === 0 ? '' : ` elements = { ${cidrs.join(', ')} };`
}

/** Replaces `table inet sandcell` atomically: created if missing, then dropped and written anew. */
function replaceTable(body: string): string {
  return `add table inet ${tableName}\ndelete table inet ${tableName}\ntable inet ${tableName} {\n${body}}\n`
}

/** The host table: slots reach the host only at their own gateway, never each other, and leave NATed. */
export function renderHostTable(): string {
  const slots = `"${hostInterfacePrefix}*"`
  return replaceTable(`  chain refuse {
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }
  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname ${slots} ct state established,related accept
    iifname ${slots} fib daddr . iif type != local goto refuse
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname ${slots} oifname ${slots} goto refuse
    iifname ${slots} meta nfproto ipv6 drop
    iifname ${slots} fib saddr . iif oif missing drop
    oifname ${slots} ct state established,related accept
    oifname ${slots} drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname ${slots} oifname != ${slots} masquerade
  }
`)
}

/**
 * A slot's table. The egress chain decides every new outgoing connection in E2B's order:
 * the slot's own services, then the operator's private exceptions, then the always-denied
 * ranges, then allow (which beats deny), then deny; everything else passes. A refusal is a TCP
 * reset or an ICMP error, so a denied connection fails at once instead of timing out.
 */
export function renderSlotTable(input: SlotRulesInput): string {
  const { slot, policy, services, kind } = input
  const gw = slot.gateway
  const domainMode = policy.allowDomains.length > 0
  // The sandbox's resolv.conf names its gateway; a VM's names the TAP's host end.
  const nameserver = kind === 'vm' ? vmTapAddress : gw
  const redirects = (iif: string) =>
    [
      `${iif}ip daddr ${nameserver} udp dport 53 dnat ip to ${gw}:${services.dnsPort}`,
      `${iif}ip daddr ${nameserver} tcp dport 53 dnat ip to ${gw}:${services.dnsPort}`,
      ...(domainMode
        ? [
            `${iif}ip daddr @allow4 return`,
            `${iif}tcp dport 80 dnat ip to ${gw}:${services.httpProxyPort}`,
            `${iif}tcp dport 443 dnat ip to ${gw}:${services.tlsProxyPort}`,
          ]
        : []),
    ]
      .map((rule) => `    ${rule}\n`)
      .join('')
  const common = `  set allow4 { type ipv4_addr; flags interval;${elements(policy.allowCidrs)} }
  set deny4 { type ipv4_addr; flags interval;${elements(policy.denyCidrs)} }
  set private4 { type ipv4_addr; flags interval;${elements(alwaysDeniedCidrs)} }
  set permit4 { type ipv4_addr; flags interval;${elements(input.permitCidrs)} }
  chain refuse {
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }
  chain egress {
    ct state established,related accept
    ip daddr ${gw} udp dport ${services.dnsPort} accept
    ip daddr ${gw} tcp dport { ${services.dnsPort}, ${services.httpProxyPort}, ${services.tlsProxyPort} } accept
    ip daddr ${gw} goto refuse
    ip daddr @permit4 accept
    ip daddr @private4 goto refuse
    ip daddr @allow4 accept
    ip daddr @deny4 goto refuse
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iif "lo" accept
    iif "${slotInterfaceName}" ip saddr ${gw} meta l4proto tcp accept
${
  kind === 'vm'
    ? `    iif "${vmTapName}" goto refuse
`
    : ''
}  }
`
  if (kind === 'container') {
    return replaceTable(`${common}  chain output {
    type filter hook output priority filter; policy accept;
    oif "lo" accept
    meta nfproto ipv6 drop
    jump egress
  }
  chain nat_output {
    type nat hook output priority -100; policy accept;
    oif "lo" return
${redirects('')}  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    iif "${slotInterfaceName}" ip saddr ${gw} ip daddr ${slot.address} meta l4proto tcp dnat ip to 127.0.0.1
  }
`)
  }
  const tap = `iif "${vmTapName}" `
  return replaceTable(`${common}  chain forward {
    type filter hook forward priority filter; policy drop;
    ${tap}ip saddr != ${vmGuestAddress} drop
    ${tap}meta nfproto ipv6 drop
    ${tap}oif "${slotInterfaceName}" jump egress
    ${tap}oif "${slotInterfaceName}" accept
    iif "${slotInterfaceName}" oif "${vmTapName}" ct state established,related accept
    iif "${slotInterfaceName}" oif "${vmTapName}" ip saddr ${gw} ct status dnat meta l4proto tcp accept
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
${redirects(tap)}    iif "${slotInterfaceName}" ip saddr ${gw} ip daddr ${slot.address} meta l4proto tcp dnat ip to ${vmGuestAddress}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oif "${slotInterfaceName}" ip saddr ${vmGuestAddress} masquerade
  }
`)
}
