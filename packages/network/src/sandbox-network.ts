/**
 * Sandbox networking as one service for the drivers: network slots, the DNS forwarder the
 * sandboxes resolve through, and the egress proxy that enforces domain rules. Started lazily by
 * the first sandbox that needs it; it runs in the process that owns the sandboxes.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { Resolver } from 'node:dns/promises'
import { DriverError, errorMessage, type Logger } from '@sandcell/shared'
import {
  startDnsForwarder,
  type DnsForwarder,
  type DnsForwarderStats,
} from './dns/dns-forwarder.js'
import {
  startEgressProxy,
  type EgressProxy,
  type EgressProxyStats,
} from './egress-proxy/egress-proxy.js'
import type { NetworkConfig } from './network-config.js'
import { cidrContains, isAlwaysDenied, parseCidr, parseIpv4, type Cidr } from './policy/cidr.js'
import {
  closedPolicy,
  isDnsQueryAllowed,
  isDomainAllowed,
  openPolicy,
  type EgressPolicy,
} from './policy/egress-policy.js'
import { NetworkSlots, type NetworkSlot, type PersistedSlot } from './slots/network-slots.js'
import { tableName } from './slots/nft-rules.js'
import { parseSlotSubnet, vmTapAddress, type SlotKind } from './slots/slot-addressing.js'

export interface SandboxNetworkOptions {
  config: NetworkConfig
  log: Logger
  /** Where the host's resolvers are read from when `config.dnsServers` is empty. */
  resolvConfPath?: string
}

export interface NetworkStatus {
  started: boolean
  /** Whether the host forwards packets; without it sandboxes reach nothing outside. */
  ipForward: boolean
  dnsServers: readonly string[]
  slots: number
  readySlots: number
  dns?: DnsForwarderStats
  proxy?: EgressProxyStats
}

const requiredTools = [
  ['ip', 'iproute2'],
  ['nft', 'nftables'],
  ['nsenter', 'util-linux'],
  ['conntrack', 'conntrack'],
  ['sysctl', 'procps'],
] as const

/** The IPv4 nameservers of a resolv.conf. */
export function parseResolvConf(text: string): string[] {
  return text
    .split('\n')
    .map((line) => /^\s*nameserver\s+(\S+)/.exec(line)?.[1])
    .filter(
      (address): address is string => address !== undefined && parseIpv4(address) !== undefined,
    )
}

/** `family table chain` of every base forward chain with policy drop in a table not ours. */
export function foreignForwardDrops(nftJson: string): string[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(nftJson)
  } catch {
    return []
  }
  const items =
    typeof parsed === 'object' &&
    parsed !== null &&
    'nftables' in parsed &&
    Array.isArray(parsed.nftables)
      ? (parsed.nftables as unknown[])
      : []
  const found: string[] = []
  for (const item of items) {
    if (typeof item !== 'object' || item === null || !('chain' in item)) {
      continue
    }
    const chain = item.chain as Record<string, unknown>
    if (chain.hook === 'forward' && chain.policy === 'drop' && chain.table !== tableName) {
      found.push(`${String(chain.family)} ${String(chain.table)} ${String(chain.name)}`)
    }
  }
  return found
}

/** How the DNS forwarder and the proxy name a slot's sandbox in logs and limits. */
function clientId(slot: NetworkSlot): string {
  return slot.sandboxId ?? slot.addresses.netns
}

function readIpForward(): boolean {
  try {
    return readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim() === '1'
  } catch {
    return false
  }
}

export class SandboxNetwork {
  readonly defaultPolicy: EgressPolicy
  readonly #config: NetworkConfig
  readonly #log: Logger
  /** The caller's logger: each part narrows it to a component of its own. */
  readonly #baseLog: Logger
  readonly #slots: NetworkSlots
  readonly #permit: Cidr[]
  readonly #dnsServers: readonly string[]
  #started: Promise<void> | undefined
  #dns: DnsForwarder | undefined
  #proxy: EgressProxy | undefined
  #ipForward = false

  constructor(options: SandboxNetworkOptions) {
    this.#config = options.config
    this.#log = options.log.child({ component: 'network' })
    this.#baseLog = options.log
    this.defaultPolicy = options.config.internet ? openPolicy : closedPolicy
    this.#permit = options.config.allowPrivate.map((text) => parseCidr(text) as Cidr)
    this.#dnsServers =
      options.config.dnsServers.length > 0
        ? options.config.dnsServers
        : parseResolvConf(readTextOrEmpty(options.resolvConfPath ?? '/etc/resolv.conf'))
    this.#slots = new NetworkSlots({
      log: this.#baseLog,
      subnet: parseSlotSubnet(options.config.subnet),
      poolSize: options.config.poolSize,
      defaultPolicy: this.defaultPolicy,
      permitCidrs: options.config.allowPrivate,
    })
  }

  /** Why this host cannot give sandboxes a network, or undefined when it can. */
  problem(): string | undefined {
    if (process.getuid?.() !== 0) {
      return 'sandbox networking must run as root'
    }
    const missing = requiredTools
      .filter(([tool]) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      .map(([, pkg]) => pkg)
    if (missing.length > 0) {
      return `sandbox networking needs ${missing.join(', ')}: apt-get install ${missing.join(' ')}`
    }
    return undefined
  }

  /** Starts the DNS forwarder, the egress proxy and the slots; idempotent. */
  start(): Promise<void> {
    this.#started ??= this.#start()
    this.#started.catch(() => {
      this.#started = undefined
    })
    return this.#started
  }

  async #start(): Promise<void> {
    const problem = this.problem()
    if (problem !== undefined) {
      throw new DriverError(problem)
    }
    this.#checkIpForward()
    this.#checkForeignForwardPolicy()
    if (this.#dnsServers.length === 0) {
      this.#log.warn(
        'no IPv4 resolver in /etc/resolv.conf: sandboxes cannot resolve names; set network.dnsServers',
      )
    }
    const isRefused = (address: string): boolean => {
      const value = parseIpv4(address)
      return (
        value === undefined ||
        (isAlwaysDenied(value) && !this.#permit.some((cidr) => cidrContains(cidr, value)))
      )
    }
    const resolver = new Resolver({ timeout: 3000, tries: 2 })
    if (this.#dnsServers.length > 0) {
      resolver.setServers([...this.#dnsServers])
    }
    const max = this.#config.maxConnectionsPerSandbox
    try {
      this.#dns = await startDnsForwarder({
        log: this.#baseLog,
        upstreams: this.#dnsServers,
        maxInFlightPerClient: max,
        // Decisions read the slot's rules at each query, so an update applies at once.
        lookupClient: (address) => {
          const slot = this.#slots.lookup(address)
          return slot === undefined
            ? undefined
            : { id: clientId(slot), allows: (name) => isDnsQueryAllowed(slot.policy, name) }
        },
      })
      this.#proxy = await startEgressProxy({
        log: this.#baseLog,
        maxConnectionsPerClient: max,
        resolve: (name) => resolver.resolve4(name),
        isRefused,
        lookupClient: (address) => {
          const slot = this.#slots.lookup(address)
          return slot === undefined
            ? undefined
            : { id: clientId(slot), allowsDomain: (name) => isDomainAllowed(slot.policy, name) }
        },
      })
      await this.#slots.start({
        dnsPort: this.#dns.port,
        httpProxyPort: this.#proxy.httpPort,
        tlsProxyPort: this.#proxy.tlsPort,
      })
    } catch (err) {
      await this.#closeServices()
      throw err
    }
    this.#log.info(
      { dnsPort: this.#dns.port, dnsServers: this.#dnsServers, ipForward: this.#ipForward },
      'sandbox networking started',
    )
  }

  #checkIpForward(): void {
    this.#ipForward = readIpForward()
    if (this.#ipForward) {
      return
    }
    if (this.#config.ipForward === 'enable') {
      writeFileSync('/proc/sys/net/ipv4/ip_forward', '1')
      this.#ipForward = readIpForward()
      this.#log.info('enabled net.ipv4.ip_forward (network.ipForward: enable)')
      return
    }
    this.#log.warn(
      'net.ipv4.ip_forward is 0: sandboxes reach nothing outside this host; run sysctl -w net.ipv4.ip_forward=1 or set network.ipForward: enable',
    )
  }

  /**
   * Another firewall whose forward chain drops by default (docker's `FORWARD` policy) drops
   * the sandboxes' traffic too, whatever our table accepts: say so and how to let it through.
   */
  #checkForeignForwardPolicy(): void {
    const listed = spawnSync('nft', ['-j', 'list', 'chains'], { encoding: 'utf8' })
    if (listed.status !== 0) {
      return
    }
    const dropping = foreignForwardDrops(listed.stdout)
    if (dropping.length > 0) {
      this.#log.warn(
        { chains: dropping },
        'a forward chain of another firewall drops by default: sandboxes reach nothing outside unless it accepts interfaces scv+ (docker: iptables -I DOCKER-USER -i scv+ -j ACCEPT; iptables -I DOCKER-USER -o scv+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT)',
      )
    }
  }

  /** A slot for a new sandbox, with `policy` (default: the configured one) in force. */
  async acquire(
    kind: SlotKind,
    options: { sandboxId: string; policy?: EgressPolicy },
  ): Promise<NetworkSlot> {
    await this.start()
    return this.#slots.acquire(kind, options)
  }

  /** Takes over an adopted sandbox's slot; its owner then loads its rules anew with setPolicy. */
  adopt(persisted: PersistedSlot, sandboxId: string): NetworkSlot {
    return this.#slots.adopt(persisted, sandboxId)
  }

  /** Loads a slot's rules (they name this process's DNS and proxy ports). */
  async setPolicy(slot: NetworkSlot, policy: EgressPolicy): Promise<void> {
    await this.start()
    await this.#slots.setPolicy(slot, policy)
  }

  /** Removes the slot in the background. */
  release(slot: NetworkSlot): void {
    this.#slots.release(slot)
  }

  /** Resolves once the slot pool is full. */
  async waitReady(): Promise<void> {
    await this.start()
    await this.#slots.waitFull()
  }

  status(): NetworkStatus {
    const counts = this.#slots.counts()
    return {
      started: this.#dns !== undefined,
      ipForward: this.#dns === undefined ? readIpForward() : this.#ipForward,
      dnsServers: this.#dnsServers,
      slots: counts.slots,
      readySlots: counts.ready,
      ...(this.#dns === undefined ? {} : { dns: this.#dns.stats() }),
      ...(this.#proxy === undefined ? {} : { proxy: this.#proxy.stats() }),
    }
  }

  async #closeServices(): Promise<void> {
    const results = await Promise.allSettled([this.#dns?.close(), this.#proxy?.close()])
    for (const result of results) {
      if (result.status === 'rejected') {
        this.#log.warn({ err: errorMessage(result.reason) }, 'cannot close a network service')
      }
    }
    this.#dns = undefined
    this.#proxy = undefined
  }

  /** Removes the idle pool slots and stops DNS and the proxy (slots in use stay with their sandboxes). */
  async close(): Promise<void> {
    await this.#started?.catch(() => undefined)
    await this.#slots.close()
    await this.#closeServices()
  }
}

function readTextOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/** The `/etc/resolv.conf` of a sandbox on `slot`: its gateway (a microVM's TAP) resolves. */
export function resolvConfFor(slot: Pick<NetworkSlot, 'kind' | 'addresses'>): string {
  const server = slot.kind === 'vm' ? vmTapAddress : slot.addresses.gateway
  return `nameserver ${server}\noptions timeout:2 attempts:2\n`
}

export function createSandboxNetwork(options: SandboxNetworkOptions): SandboxNetwork {
  return new SandboxNetwork(options)
}
