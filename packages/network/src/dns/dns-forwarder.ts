/**
 * The resolver sandboxes see: nftables DNATs their port-53 traffic here, and each query is
 * judged by its sandbox's policy, then relayed unchanged to the host's resolvers, which the
 * sandboxes themselves may never reach. It answers sandboxes only: never an open resolver.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram'
import { createConnection, createServer, isIPv6, type Server, type Socket } from 'node:net'
import {
  DriverError,
  InvalidArgumentError,
  TimeoutError,
  UnavailableError,
  type Logger,
} from '@sandcell/shared'
import {
  buildReply,
  frame,
  inspectQuery,
  isReplyTo,
  maxQueryBytes,
  rcodes,
  takeFrame,
  type DnsQuestion,
} from './dns-message.js'
import { parseUpstreams, type Upstream } from './parse-upstream.js'

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
/** An upstream that keeps coming and going is reported at most this often. */
const upstreamWarnIntervalMs = 60_000
/** Replies libuv may queue in memory while the UDP send buffer is full; beyond, dropped. */
const maxPendingUdpSends = 1024

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be a positive integer (got ${value})`)
  }
  return value
}

/** Rejections from the attempt helpers must be Errors; an abort's reason may be anything. */
function abandoned(signal: AbortSignal): UnavailableError {
  return new UnavailableError('the DNS query was abandoned', { cause: signal.reason })
}

type Settle = (error: Error | undefined, reply?: Buffer) => void

/**
 * One attempt at one upstream: `start` opens a socket, sends the query and settles with the
 * reply or an error; this frame settles it once, on the deadline or the caller's abort too,
 * and closes what `start` opened.
 */
function attempt(
  upstream: Upstream,
  timeoutMs: number,
  signal: AbortSignal,
  start: (settle: Settle) => () => void,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let settled = false
    // Set once `start` returns; a settle during `start` closes right after.
    const opened: { close?: () => void } = {}
    const settle: Settle = (error, reply) => {
      if (settled) {
        return
      }
      settled = true
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      opened.close?.()
      if (reply === undefined) {
        reject(error ?? new UnavailableError(`${upstream.label} gave no reply`))
      } else {
        resolve(reply)
      }
    }
    const onAbort = (): void => settle(abandoned(signal))
    const timer = setTimeout(() => {
      settle(new TimeoutError(`${upstream.label} did not answer within ${timeoutMs} ms`))
    }, timeoutMs)
    signal.addEventListener('abort', onAbort, { once: true })
    opened.close = start(settle)
    if (settled) {
      opened.close()
    }
  })
}

/** One query to one upstream over UDP, from a fresh socket connected to it. */
function askUdp(
  upstream: Upstream,
  query: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Buffer> {
  return attempt(upstream, timeoutMs, signal, (settle) => {
    const socket = createSocket('udp4')
    // A connected socket also makes the kernel report ICMP port-unreachable as ECONNREFUSED,
    // so a resolver that is down fails over at once instead of after the timeout.
    socket.on('error', (err) => settle(err))
    socket.on('message', (reply: Buffer, remote: RemoteInfo) => {
      if (
        remote.address === upstream.host &&
        remote.port === upstream.port &&
        isReplyTo(reply, query)
      ) {
        settle(undefined, reply)
      }
    })
    socket.connect(upstream.port, upstream.host, () => {
      socket.send(query, (err) => {
        if (err !== null) {
          settle(err)
        }
      })
    })
    return () => socket.close()
  })
}

/** One query to one upstream over TCP, on a connection of its own. */
function askTcp(
  upstream: Upstream,
  query: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Buffer> {
  return attempt(upstream, timeoutMs, signal, (settle) => {
    const socket = createConnection({ host: upstream.host, port: upstream.port })
    let received: Buffer = Buffer.alloc(0)
    socket.on('error', (err) => settle(err))
    socket.on('close', () => {
      settle(new UnavailableError(`${upstream.label} closed the connection before answering`))
    })
    socket.on('data', (chunk: Buffer) => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk])
      const next = takeFrame(received, 0xffff)
      if (next.kind !== 'message') {
        return
      }
      if (isReplyTo(next.message, query)) {
        settle(undefined, next.message)
      } else {
        settle(new UnavailableError(`${upstream.label} answered another query over TCP`))
      }
    })
    socket.write(frame(query))
    return () => socket.destroy()
  })
}

function isAddressInUse(err: unknown): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
}

function bindUdp(socket: UdpSocket, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind({ address: host, port }, () => {
      socket.off('error', reject)
      resolve()
    })
  })
}

function listenTcp(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

function closeUdp(socket: UdpSocket): Promise<void> {
  return new Promise((resolve) => {
    try {
      socket.close(() => resolve())
    } catch {
      // Never bound, or closed already: nothing to wait for.
      resolve()
    }
  })
}

function closeTcp(server: Server): Promise<void> {
  // The callback's error only says the server was not listening, which is the goal anyway.
  return new Promise((resolve) => server.close(() => resolve()))
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
  /** Per upstream label, while it is failing: whether this outage was reported. */
  const failingUpstreams = new Map<string, { warned: boolean }>()
  const lastWarnedAtMs = new Map<string, number>()
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

  function markAnswered(upstream: Upstream): void {
    const failing = failingUpstreams.get(upstream.label)
    if (failing === undefined) {
      return
    }
    failingUpstreams.delete(upstream.label)
    log[failing.warned ? 'info' : 'debug']({ upstream: upstream.label }, 'dns upstream answering')
  }

  function markFailed(upstream: Upstream, err: unknown): void {
    if (
      failingUpstreams.has(upstream.label) ||
      !upstreams.some((u) => u.label === upstream.label)
    ) {
      return
    }
    // A sandbox can make an upstream look flaky (queries it ignores between ones it answers):
    // the warning is rate-limited so that cannot flood the log.
    const nowMs = performance.now()
    const warned =
      nowMs - (lastWarnedAtMs.get(upstream.label) ?? -Infinity) >= upstreamWarnIntervalMs
    failingUpstreams.set(upstream.label, { warned })
    if (warned) {
      lastWarnedAtMs.set(upstream.label, nowMs)
      log.warn({ upstream: upstream.label, err }, 'dns upstream stopped answering')
    } else {
      log.debug({ upstream: upstream.label, err }, 'dns upstream stopped answering')
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
        markAnswered(upstream)
        return reply
      } catch (err) {
        if (signal.aborted) {
          return undefined
        }
        markFailed(upstream, err)
      }
    }
    return undefined
  }

  type Judgement =
    { kind: 'drop' } | { kind: 'reply'; reply: Buffer } | { kind: 'forward'; question: DnsQuestion }

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

  /** What becomes of one message, decided at once: only forwarding has to wait. */
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
    const queries = new Set<AbortController>()
    let received: Buffer = Buffer.alloc(0)
    let ended = false
    let congested = false

    // Not socket.setTimeout: a connection waiting on a slow upstream is not idle.
    const idleTimer = setTimeout(function onIdle() {
      if (queries.size > 0) {
        idleTimer.refresh()
        return
      }
      log.debug({ sandboxId: client.id }, 'dns tcp connection idle; closing')
      socket.destroy()
    }, tcpIdleTimeoutMs)

    const write = (reply: Buffer): void => {
      if (!socket.writable) {
        return
      }
      idleTimer.refresh()
      // A client that sends without reading would otherwise pile replies up in memory.
      if (!socket.write(frame(reply))) {
        congested = true
        socket.pause()
      }
    }

    const endIfDone = (): void => {
      // A client may half-close after its last query: it still gets every answer first.
      if (ended && !congested && queries.size === 0 && socket.writable) {
        socket.end()
      }
    }

    const pump = (): void => {
      while (!congested && !socket.destroyed) {
        const next = takeFrame(received, maxQueryBytes)
        if (next.kind === 'incomplete') {
          break
        }
        if (next.kind === 'oversized') {
          stats.dropped += 1
          log.debug(
            { sandboxId: client.id, sizeBytes: next.sizeBytes },
            'dns tcp message oversized; closing',
          )
          socket.destroy()
          return
        }
        received = next.rest
        const judgement = judge(next.message, client)
        switch (judgement.kind) {
          case 'drop':
            socket.destroy()
            return
          case 'reply':
            write(judgement.reply)
            break
          case 'forward':
            // Not awaited: answers may go out in any order (RFC 7766 pipelining); relay() ends
            // by itself, and the connection's close abandons it.
            relay(next.message, client, judgement.question, 'tcp', queries).then(
              (reply) => {
                if (reply !== undefined) {
                  write(reply)
                }
                endIfDone()
              },
              (err: unknown) => log.error({ err, sandboxId: client.id }, 'dns relay failed'),
            )
            break
        }
      }
      endIfDone()
    }

    socket.on('data', (chunk: Buffer) => {
      idleTimer.refresh()
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk])
      pump()
    })
    socket.on('end', () => {
      ended = true
      endIfDone()
    })
    socket.on('drain', () => {
      congested = false
      socket.resume()
      pump()
    })
    socket.on('close', () => {
      clearTimeout(idleTimer)
      connections.delete(socket)
      adjust(tcpConnectionsByClient, client.id, -1)
      for (const query of queries) {
        query.abort()
      }
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
      for (const label of [...failingUpstreams.keys(), ...lastWarnedAtMs.keys()]) {
        if (!upstreams.some((u) => u.label === label)) {
          failingUpstreams.delete(label)
          lastWarnedAtMs.delete(label)
        }
      }
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
