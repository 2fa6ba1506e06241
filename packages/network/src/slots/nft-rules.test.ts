import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { egressPolicyFromE2b, openPolicy } from '../policy/egress-policy.js'
import { foreignForwardDrops, parseResolvConf } from '../sandbox-network.js'
import { renderHostTable, renderSlotTable, type SlotServices } from './nft-rules.js'
import { parseSlotNetns, parseSlotSubnet, slotAddresses, slotCapacity } from './slot-addressing.js'
import { buildSlotScript, removeSlotScript } from './slot-commands.js'

const subnet = parseSlotSubnet('10.200.0.0/16')
const slot = slotAddresses(subnet, 5)
const services: SlotServices = { dnsPort: 40053, httpProxyPort: 40080, tlsProxyPort: 40443 }

describe('slot addressing', () => {
  it('cuts a /30 per slot: the gateway is the host end', () => {
    assert.equal(slotCapacity(subnet), 16384)
    assert.deepEqual(slot, {
      index: 5,
      netns: 'sandcell-5',
      netnsPath: '/run/netns/sandcell-5',
      hostInterface: 'scv5',
      gateway: '10.200.0.21',
      address: '10.200.0.22',
    })
    assert.equal(slotAddresses(subnet, 16383).address, '10.200.255.254')
    assert.throws(() => slotAddresses(subnet, 16384))
    assert.throws(() => parseSlotSubnet('10.0.0.0/31'))
  })

  it('recognises only its own namespace names', () => {
    assert.equal(parseSlotNetns('sandcell-12'), 12)
    for (const name of ['sandcell-', 'sandcell-01', 'sandcell-1x', 'other-1', 'sandcell-1234567']) {
      assert.equal(parseSlotNetns(name), undefined, name)
    }
  })
})

describe('nft rules', () => {
  it('keeps the host table free of anything per slot or per process', () => {
    const host = renderHostTable()
    assert.match(
      host,
      /^add table inet sandcell\ndelete table inet sandcell\ntable inet sandcell \{/,
    )
    assert.doesNotMatch(host, /\d+\.\d+\.\d+\.\d+/, 'no address')
    assert.match(host, /iifname "scv\*" oifname "scv\*" goto refuse/)
    assert.match(host, /fib daddr \. iif type != local goto refuse/)
    assert.match(host, /masquerade/)
  })

  it('orders a container slot: services, operator exceptions, private ranges, allow, deny', () => {
    const rules = renderSlotTable({
      kind: 'container',
      slot,
      policy: egressPolicyFromE2b({ allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'] }),
      services,
      permitCidrs: ['10.9.0.0/16'],
    })
    const order = [
      'ip daddr 10.200.0.21 udp dport 40053 accept',
      'ip daddr 10.200.0.21 goto refuse',
      'ip daddr @permit4 accept',
      'ip daddr @private4 goto refuse',
      'ip daddr @allow4 accept',
      'ip daddr @deny4 goto refuse',
    ].map((rule) => rules.indexOf(rule))
    assert.ok(
      order.every((at) => at > 0),
      rules,
    )
    assert.deepEqual(
      [...order].sort((a, b) => a - b),
      order,
    )
    assert.match(
      rules,
      /set allow4 \{ type ipv4_addr; flags interval; elements = \{ 1\.1\.1\.1\/32 \}; \}/,
    )
    assert.match(rules, /elements = \{ 10\.9\.0\.0\/16 \}/)
    assert.match(rules, /ip daddr 10\.200\.0\.21 udp dport 53 dnat ip to 10\.200\.0\.21:40053/)
    assert.doesNotMatch(rules, /40080;|dport 80 dnat/, 'no proxy redirect without domains')
    assert.match(
      rules,
      /ip saddr 10\.200\.0\.21 ip daddr 10\.200\.0\.22 meta l4proto tcp dnat ip to 127\.0\.0\.1/,
    )
  })

  it('redirects ports 80 and 443 to the proxy in domain mode, allowed addresses excepted', () => {
    const rules = renderSlotTable({
      kind: 'container',
      slot,
      policy: egressPolicyFromE2b({ allowOut: ['example.com'], denyOut: ['0.0.0.0/0'] }),
      services,
      permitCidrs: [],
    })
    const except = rules.indexOf('ip daddr @allow4 return')
    const http = rules.indexOf('tcp dport 80 dnat ip to 10.200.0.21:40080')
    const tls = rules.indexOf('tcp dport 443 dnat ip to 10.200.0.21:40443')
    assert.ok(except > 0 && http > except && tls > except, rules)
  })

  it('gives a microVM slot a forward path from its TAP with the guest address pinned', () => {
    const rules = renderSlotTable({
      kind: 'vm',
      slot,
      policy: openPolicy,
      services,
      permitCidrs: [],
    })
    assert.match(rules, /iif "tap0" ip saddr != 10\.0\.2\.15 drop/)
    assert.match(
      rules,
      /iif "tap0" ip daddr 10\.0\.2\.2 udp dport 53 dnat ip to 10\.200\.0\.21:40053/,
    )
    assert.match(rules, /oif "eth0" ip saddr 10\.0\.2\.15 masquerade/)
    assert.match(rules, /dnat ip to 10\.0\.2\.15/)
    assert.doesNotMatch(rules, /hook output/)
    assert.match(rules, /iif "tap0" goto refuse/, 'the guest gets a fast refusal from its gateway')
  })
})

describe('slot scripts', () => {
  it('claims the namespace first and builds inside it without ip netns exec', () => {
    const script = buildSlotScript('container', slot, 'RULES\n')
    assert.ok(script.startsWith("ip -batch - <<'HOST'\nnetns add sandcell-5\n"), script)
    assert.doesNotMatch(script, /netns exec/, 'ip netns exec remounts /sys')
    assert.match(script, /nsenter --net=\/run\/netns\/sandcell-5 sh -e <<'SLOT'\n/)
    assert.match(script, /nft -f - <<'NFT'\nRULES\nNFT\n/)
    assert.match(script, /echo '1' > \/proc\/sys\/net\/ipv4\/conf\/eth0\/route_localnet/)
    assert.doesNotMatch(script, /tuntap/)
    assert.match(buildSlotScript('vm', slot, 'R'), /tuntap add dev tap0 mode tap/)
  })

  it('removes the namespace and the host-side flows of the address, tolerating repeats', () => {
    const script = removeSlotScript(slot)
    assert.match(script, /netns del sandcell-5\n/)
    assert.doesNotMatch(script, /link del/, 'a container slot leaves its link to the kernel')
    assert.match(removeSlotScript(slot, 'vm'), /netns del sandcell-5\nlink del scv5\n/)
    assert.match(script, /conntrack -D -s 10\.200\.0\.22/)
    assert.match(script, /conntrack -D -d 10\.200\.0\.22/)
  })
})

describe('resolv.conf', () => {
  it('takes IPv4 nameservers only', () => {
    assert.deepEqual(
      parseResolvConf(
        '# comment\nnameserver 10.255.255.53\nnameserver ::1\n  nameserver 1.1.1.1 \nsearch x\n',
      ),
      ['10.255.255.53', '1.1.1.1'],
    )
  })
})

describe('foreign firewalls', () => {
  it("finds another table's forward chain that drops by default, not ours", () => {
    const listed = JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6' } },
        {
          chain: {
            family: 'ip',
            table: 'filter',
            name: 'FORWARD',
            hook: 'forward',
            policy: 'drop',
          },
        },
        { chain: { family: 'ip', table: 'filter', name: 'INPUT', hook: 'input', policy: 'drop' } },
        {
          chain: {
            family: 'inet',
            table: 'sandcell',
            name: 'forward',
            hook: 'forward',
            policy: 'drop',
          },
        },
        {
          chain: { family: 'inet', table: 'podman', name: 'fw', hook: 'forward', policy: 'accept' },
        },
      ],
    })
    assert.deepEqual(foreignForwardDrops(listed), ['ip filter FORWARD'])
    assert.deepEqual(foreignForwardDrops('not json'), [])
  })
})
