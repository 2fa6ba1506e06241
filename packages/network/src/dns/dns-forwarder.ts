/**
 * The resolver sandboxes see: nftables DNATs their port-53 traffic here, and each query is
 * judged by its sandbox's policy, then relayed unchanged to the host's resolvers, which the
 * sandboxes themselves may never reach. It answers sandboxes only: never an open resolver.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram'
import { createServer, isIPv6, type Server, type Socket } from 'node:net'
import { DriverError, InvalidArgumentError, type Logger } from '@sandcell/shared'
import { buildReply, inspectQuery, rcodes, type DnsQuestion } from './dns-message.js'
import { bindUdp, closeTcp, closeUdp, isAddressInUse, listenTcp } from '../listen-sockets.js'
import { parseUpstreams } from './parse-upstream.js'
import { serveTcpConnection, type Judgement } from './tcp-connection.js'
import { UpstreamHealth } from './upstream-health.js'
import { askTcp, askUdp } from './upstream-query.js'

export interface DnsClient {
  /** Sandbox id, for logs and per-client limits. */
  id: string
  /** Whether this sandbox may resolve `name` (lowercase, no trailing dot). */
  allows(name: string): boolean
}

export interface DnsForwarderOptions {
  log: Logger
  /** Upstream resolvers: 'a.b.c.d' (port 53) or 'a.b.c.d:port'. At least one. */
  upstreams: readonly string[]
  /**
   * The sandbox behind a source address (IPv4-mapped IPv6 addresses arrive as plain IPv4);
   * undefined = not a sandbox: ignore the query (UDP) / close the connection (TCP). Never
   * answer strangers: this must not be an open resolver.
   */
  lookupClient(address: string): DnsClient | undefined
  /** @default '0.0.0.0' */
  host?: string
  /** @default 0 (any free port; UDP and TCP get the same port number) */
  port?: number
  /** One attempt at one upstream. @default 2000 */
  upstreamTimeoutMs?: number
  /** Queries one client may have outstanding; beyond: REFUSED. @default 64 */
  maxInFlightPerClient?: number
  /**
   * Queries all clients together may have outstanding; beyond: REFUSED. Each holds a socket,
   * so this keeps a crowd of sandboxes from exhausting the server's file descriptors.
   * @default 1024
   */
  maxInFlight?: number
  /** TCP connections one client may hold. @default 16 */
  maxTcpConnectionsPerClient?: number
  /** Idle TCP connections close after this. @default 10000 */
  tcpIdleTimeoutMs?: number
}

export interface DnsForwarderStats {
  /** Upstream replies relayed. */
  forwarded: number
  /** Queries answered without asking an upstream: REFUSED (policy, limits), NOTIMP, FORMERR. */
  refused: number
  /** Queries no upstream answered: SERVFAIL. */
  failed: number
  /**
   * Left unanswered: undecodable or oversized messages, anything from an address that is no
   * sandbox, connections beyond the per-client limit, replies the client could not take.
   */
  dropped: number
}

export interface DnsForwarder {
  readonly port: number
  stats(): DnsForwarderStats
  /** Replaces the upstream list (config reload, tests). @throws InvalidArgumentError */
  setUpstreams(upstreams: readonly string[]): void
  close(): Promise<void>
}

type Transport = 'udp' | 'tcp'

/** Binding UDP, then TCP on its port, races other programs for that port: this many tries. */
const bindAttempts = 5
/** Replies libuv may queue in memory while the UDP send buffer is full; beyond, dropped. */
const maxPendingUdpSends = 1024

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be a positive integer (got ${value})`)
  }
  return value
}

function adjust(counts: Map<string, number>, id: string, delta: number): void {
  const count = (counts.get(id) ?? 0) + delta
  // Entries go at zero, so the maps hold only clients with something open.
  if (count <= 0) {
    counts.delete(id)
  } else {
    counts.set(id, count)
  }
}

/**
 * Starts the forwarder on UDP and TCP (the same port number).
 * @throws InvalidArgumentError for a bad upstream, an empty upstream list or a bad limit
 * @throws DriverError when the port cannot be bound
 */
export async function startDnsForwarder(options: DnsForwarderOptions): Promise<DnsForwarder> {
  const log = options.log.child({ component: 'network.dns' })
  const host = options.host ?? '0.0.0.0'
  const requestedPort = options.port ?? 0
  if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
    throw new InvalidArgumentError(`port must be an integer 0-65535 (got ${requestedPort})`)
  }
  const upstreamTimeoutMs = positiveInteger('upstreamTimeoutMs', options.upstreamTimeoutMs ?? 2000)
  const maxInFlightPerClient = positiveInteger(
    'maxInFlightPerClient',
    options.maxInFlightPerClient ?? 64,
  )
  const maxInFlight = positiveInteger('maxInFlight', options.maxInFlight ?? 1024)
  const maxTcpConnectionsPerClient = positiveInteger(
    'maxTcpConnectionsPerClient',
    options.maxTcpConnectionsPerClient ?? 16,
  )
  const tcpIdleTimeoutMs = positiveInteger('tcpIdleTimeoutMs', options.tcpIdleTimeoutMs ?? 10_000)
  let upstreams = parseUpstreams(options.upstreams)

  const stats: DnsForwarderStats = { forwarded: 0, refused: 0, failed: 0, dropped: 0 }
  const health = new UpstreamHealth(log)
  const inFlightByClient = new Map<string, number>()
  let inFlight = 0
  const tcpConnectionsByClient = new Map<string, number>()
  const activeQueries = new Set<AbortController>()
  const connections = new Set<Socket>()
  let pendingUdpSends = 0
  let closing: Promise<void> | undefined

  function findClient(address: string): DnsClient | undefined {
    const plain = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address
    try {
      return options.lookupClient(plain)
    } catch (err) {
      // A caller's bug must not take the resolver down for every sandbox; unknown = ignored.
      log.error({ err, address: plain }, 'dns client lookup failed')
      return undefined
    }
  }

  function isAllowed(client: DnsClient, name: string): boolean {
    try {
      return client.allows(name)
    } catch (err) {
      log.error({ err, sandboxId: client.id, name }, 'dns policy check failed')
      return false
    }
  }

  /** Each upstream in order until one answers; undefined when none does or the query is abandoned. */
  async function forward(
    query: Buffer,
    transport: Transport,
    signal: AbortSignal,
  ): Promise<Buffer | undefined> {
    for (const upstream of upstreams) {
      if (signal.aborted) {
        return undefined
      }
      try {
        const ask = transport === 'udp' ? askUdp : askTcp
        const reply = await ask(upstream, query, upstreamTimeoutMs, signal)
        health.answered(upstream)
        return reply
      } catch (err) {
        if (signal.aborted) {
          return undefined
        }
        health.failed(upstream, err, upstreams)
      }
    }
    return undefined
  }

  function refuse(
    query: Buffer,
    client: DnsClient,
    question: DnsQuestion,
    reason: string,
  ): Judgement {
    stats.refused += 1
    log.debug({ sandboxId: client.id, ...question, reason }, 'dns query refused')
    return { kind: 'reply', reply: buildReply(query, rcodes.refused) }
  }

  function judge(message: Buffer, client: DnsClient): Judgement {
    const verdict = inspectQuery(message)
    switch (verdict.action) {
      case 'drop':
        stats.dropped += 1
        log.debug(
          { sandboxId: client.id, reason: verdict.reason, sizeBytes: message.length },
          'dns message dropped',
        )
        return { kind: 'drop' }
      case 'reply':
        stats.refused += 1
        log.debug(
          { sandboxId: client.id, ...verdict.question, reason: verdict.reason },
          'dns query rejected',
        )
        return { kind: 'reply', reply: buildReply(message, verdict.rcode) }
      case 'forward':
        break
    }
    const { question } = verdict
    if (!isAllowed(client, question.name)) {
      return refuse(message, client, question, 'policy')
    }
    if ((inFlightByClient.get(client.id) ?? 0) >= maxInFlightPerClient) {
      return refuse(message, client, question, 'too many queries in flight for this sandbox')
    }
    if (inFlight >= maxInFlight) {
      return refuse(message, client, question, 'too many queries in flight')
    }
    return { kind: 'forward', question }
  }

  /** Relays a judged query; the reply to send, or undefined when the query was abandoned. */
  async function relay(
    query: Buffer,
    client: DnsClient,
    question: DnsQuestion,
    transport: Transport,
    owner: Set<AbortController> | undefined,
  ): Promise<Buffer | undefined> {
    const controller = new AbortController()
    activeQueries.add(controller)
    owner?.add(controller)
    adjust(inFlightByClient, client.id, 1)
    inFlight += 1
    try {
      const reply = await forward(query, transport, controller.signal)
      if (controller.signal.aborted) {
        return undefined
      }
      if (reply === undefined) {
        stats.failed += 1
        log.debug({ sandboxId: client.id, ...question }, 'dns query failed')
        return buildReply(query, rcodes.servFail)
      }
      stats.forwarded += 1
      return reply
    } finally {
      activeQueries.delete(controller)
      owner?.delete(controller)
      adjust(inFlightByClient, client.id, -1)
      inFlight -= 1
    }
  }

  function sendUdp(reply: Buffer, remote: RemoteInfo): void {
    if (closing !== undefined) {
      return
    }
    if (pendingUdpSends >= maxPendingUdpSends) {
      stats.dropped += 1
      return
    }
    pendingUdpSends += 1
    udp.send(reply, remote.port, remote.address, (err) => {
      pendingUdpSends -= 1
      if (err !== null) {
        log.debug({ err, address: remote.address }, 'dns reply not sent')
      }
    })
  }

  function onUdpMessage(message: Buffer, remote: RemoteInfo): void {
    if (closing !== undefined) {
      return
    }
    const client = findClient(remote.address)
    if (client === undefined) {
      stats.dropped += 1
      return
    }
    const judgement = judge(message, client)
    switch (judgement.kind) {
      case 'drop':
        return
      case 'reply':
        sendUdp(judgement.reply, remote)
        return
      case 'forward':
        // Not awaited: datagrams are independent, and relay() ends by itself (timeouts, close).
        relay(message, client, judgement.question, 'udp', undefined).then(
          (reply) => {
            if (reply !== undefined) {
              sendUdp(reply, remote)
            }
          },
          (err: unknown) => log.error({ err, sandboxId: client.id }, 'dns relay failed'),
        )
        return
    }
  }

  function onTcpConnection(socket: Socket): void {
    socket.on('error', (err) => log.debug({ err }, 'dns tcp connection failed'))
    const client =
      closing === undefined && socket.remoteAddress !== undefined
        ? findClient(socket.remoteAddress)
        : undefined
    if (client === undefined) {
      stats.dropped += 1
      socket.destroy()
      return
    }
    if ((tcpConnectionsByClient.get(client.id) ?? 0) >= maxTcpConnectionsPerClient) {
      stats.dropped += 1
      log.debug({ sandboxId: client.id }, 'dns tcp connection refused: too many')
      socket.destroy()
      return
    }
    adjust(tcpConnectionsByClient, client.id, 1)
    connections.add(socket)
    serveTcpConnection(socket, {
      log,
      sandboxId: client.id,
      idleTimeoutMs: tcpIdleTimeoutMs,
      judge: (message) => judge(message, client),
      relay: (message, question, owner) => relay(message, client, question, 'tcp', owner),
      dropped: () => (stats.dropped += 1),
      onClose: () => {
        connections.delete(socket)
        adjust(tcpConnectionsByClient, client.id, -1)
      },
    })
  }

  let udp: UdpSocket
  let tcp: Server
  let port = requestedPort
  for (let attempt = 1; ; attempt += 1) {
    port = requestedPort
    udp = createSocket(isIPv6(host) ? 'udp6' : 'udp4')
    tcp = createServer({ allowHalfOpen: true }, onTcpConnection)
    udp.on('message', onUdpMessage)
    try {
      await bindUdp(udp, host, port)
      // Attached as soon as each bind resolves, so no later error goes unhandled.
      udp.on('error', (err) => log.warn({ err }, 'dns udp socket failed'))
      port = udp.address().port
      await listenTcp(tcp, host, port)
      tcp.on('error', (err) => log.warn({ err }, 'dns tcp server failed'))
      break
    } catch (err) {
      await Promise.all([closeUdp(udp), closeTcp(tcp)])
      if (requestedPort === 0 && isAddressInUse(err) && attempt < bindAttempts) {
        log.debug({ port, attempt }, 'dns tcp port taken; binding again')
        continue
      }
      throw new DriverError(`the DNS forwarder cannot listen on ${host}:${port}`, { cause: err })
    }
  }
  log.info({ host, port, upstreams: upstreams.map((u) => u.label) }, 'dns forwarder listening')

  return {
    port,
    stats: () => ({ ...stats }),
    setUpstreams(texts) {
      upstreams = parseUpstreams(texts)
      health.retain(upstreams)
      log.info({ upstreams: upstreams.map((u) => u.label) }, 'dns upstreams replaced')
    },
    close() {
      closing ??= (async () => {
        for (const query of activeQueries) {
          query.abort()
        }
        for (const socket of connections) {
          socket.destroy()
        }
        await Promise.all([closeUdp(udp), closeTcp(tcp)])
        log.info({ port }, 'dns forwarder closed')
      })()
      return closing
    },
  }
}
