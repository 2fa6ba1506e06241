/**
 * The egress proxy for domain rules: a sandbox's TCP to ports 80 and 443 is redirected here, the
 * proxy reads the HTTP Host or the TLS SNI, asks the sandbox's policy, dials the name itself and
 * relays bytes both ways without terminating TLS.
 */
import { createServer, type Server, type Socket } from 'node:net'
import {
  InvalidArgumentError,
  UnavailableError,
  errorMessage,
  withTimeout,
  type Logger,
} from '@sandcell/shared'
import { closeTcp, listenTcp } from '../listen-sockets.js'
import { isAlwaysDenied, parseIpv4 } from '../policy/cidr.js'
import { connectTo, rejectOnAbort } from './connect-to.js'
import { normalizeEgressName } from './egress-name.js'
import { maxRequestHeadBytes } from './http-host.js'
import { peekName, type Listener } from './peek-name.js'
import { maxClientHelloBytes } from './tls-client-hello.js'

export interface EgressClient {
  /** Sandbox id, for logs and limits. */
  id: string
  /** Whether this sandbox may reach host name `name` (lowercase ASCII, no port, no trailing dot). */
  allowsDomain(name: string): boolean
}

export interface EgressProxyOptions {
  log: Logger
  /** The sandbox behind a source address; undefined: not a sandbox, reset the connection. */
  lookupClient(address: string): EgressClient | undefined
  /**
   * Resolves a name to IPv4 addresses (the manager gives one backed by the configured DNS
   * servers). `signal` aborts when the sandbox goes away or the connect deadline passes.
   */
  resolve(name: string, options?: { signal?: AbortSignal }): Promise<string[]>
  /** Whether a resolved address must not be dialled (default: isAlwaysDenied from ../policy/cidr.js). */
  isRefused?(address: string): boolean
  /** @default '0.0.0.0' */
  host?: string
  /** Listening port for redirected port-80 traffic. @default 0 (any free port) */
  httpPort?: number
  /** Listening port for redirected port-443 traffic. @default 0 (any free port) */
  tlsPort?: number
  /** Port dialled upstream for HTTP. @default 80 */
  upstreamHttpPort?: number
  /** Port dialled upstream for TLS. @default 443 */
  upstreamTlsPort?: number
  /** Deadline for the Host/SNI to arrive, ms. @default 5000 */
  peekTimeoutMs?: number
  /** Deadline for resolving the name and connecting upstream (all addresses), ms. @default 10000 */
  connectTimeoutMs?: number
  /** Connections one sandbox may have open through the proxy; beyond: reset. @default 256 */
  maxConnectionsPerClient?: number
  /** Connections with no traffic either way are closed after this, ms; 0: never. @default 620000 (E2B's) */
  idleTimeoutMs?: number
}

/**
 * Decisions since start (`allowed`: relayed; `denied`: by policy; `failed`: resolution or
 * connect errors) and sandbox connections open now, relayed or still being decided.
 */
export interface EgressProxyStats {
  allowed: number
  denied: number
  failed: number
  open: number
}

export interface EgressProxy {
  /** The port the listener for redirected port-80 traffic got. */
  readonly httpPort: number
  /** The port the listener for redirected port-443 traffic got. */
  readonly tlsPort: number
  stats(): EgressProxyStats
  /** Stops listening and ends every connection, relayed or not. Idempotent. */
  close(): Promise<void>
}

/** The most first bytes held while waiting for a name; both parsers decide by then. */
const maxPeekBytes = Math.max(maxClientHelloBytes, maxRequestHeadBytes)

/** A connection accepted from a known sandbox, from its first byte until it closes. */
interface Connection {
  readonly socket: Socket
  readonly client: EgressClient
  readonly listener: Listener
  upstream: Socket | undefined
  /** Aborts on close: stops a resolution or a dial in flight. */
  readonly closed: AbortController
}

function defaultIsRefused(address: string): boolean {
  const parsed = parseIpv4(address)
  return parsed === undefined || isAlwaysDenied(parsed)
}

/** The peer's IPv4 address, also when a dual-stack socket reports it IPv4-mapped. */
function peerAddress(socket: Socket): string | undefined {
  const address = socket.remoteAddress
  return address?.startsWith('::ffff:') === true ? address.slice(7) : address
}

/** A RST, not a FIN: the sandbox's client fails at once instead of waiting for an answer. */
function reset(socket: Socket): void {
  if (!socket.destroyed) {
    socket.resetAndDestroy()
  }
}

/** At most 253 characters of what the sandbox sent as a name, for logs. */
function loggable(raw: string): string {
  return raw.length > 253 ? `${raw.slice(0, 253)}…` : raw
}

function checkPositive(name: string, value: number, zeroAllowed = false): void {
  if (!Number.isFinite(value) || value < 0 || (value === 0 && !zeroAllowed)) {
    const expected = zeroAllowed ? 'zero or a positive number' : 'a positive number'
    throw new InvalidArgumentError(`egress proxy option ${name} must be ${expected}, not ${value}`)
  }
}

/**
 * Starts the proxy's two listeners (`httpPort` for redirected port-80 traffic, `tlsPort` for
 * port 443). Every refusal is a TCP reset.
 * @throws InvalidArgumentError for a non-positive timeout or limit
 * @throws UnavailableError when a port cannot be listened on
 */
export async function startEgressProxy(options: EgressProxyOptions): Promise<EgressProxy> {
  const log = options.log.child({ component: 'network.egress-proxy' })
  const host = options.host ?? '0.0.0.0'
  const upstreamPorts: Record<Listener, number> = {
    http: options.upstreamHttpPort ?? 80,
    tls: options.upstreamTlsPort ?? 443,
  }
  const peekTimeoutMs = options.peekTimeoutMs ?? 5000
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000
  const maxConnectionsPerClient = options.maxConnectionsPerClient ?? 256
  const idleTimeoutMs = options.idleTimeoutMs ?? 620_000
  const isRefused = (address: string): boolean =>
    options.isRefused === undefined ? defaultIsRefused(address) : options.isRefused(address)
  checkPositive('peekTimeoutMs', peekTimeoutMs)
  checkPositive('connectTimeoutMs', connectTimeoutMs)
  checkPositive('maxConnectionsPerClient', maxConnectionsPerClient)
  checkPositive('idleTimeoutMs', idleTimeoutMs, true)

  const counts = { allowed: 0, denied: 0, failed: 0 }
  const connections = new Set<Connection>()
  const openByClient = new Map<string, number>()

  function refuse(
    socket: Socket,
    decision: 'denied' | 'failed',
    fields: Record<string, unknown>,
  ): void {
    counts[decision] += 1
    log.debug({ ...fields, decision }, 'egress decision')
    reset(socket)
  }

  function release(clientId: string): void {
    const open = (openByClient.get(clientId) ?? 0) - 1
    if (open > 0) {
      openByClient.set(clientId, open)
    } else {
      openByClient.delete(clientId)
    }
  }

  function accept(listener: Listener, socket: Socket): void {
    // Errors end the socket and its 'close' cleans up; a sandbox resetting is routine.
    socket.on('error', () => {})
    const address = peerAddress(socket)
    let client: EgressClient | undefined
    try {
      client = address === undefined ? undefined : options.lookupClient(address)
    } catch (err) {
      log.warn({ err, address }, 'egress client lookup failed')
      refuse(socket, 'failed', { address, reason: 'client lookup failed' })
      return
    }
    if (client === undefined) {
      refuse(socket, 'denied', { address, reason: 'not a sandbox' })
      return
    }
    const open = openByClient.get(client.id) ?? 0
    if (open >= maxConnectionsPerClient) {
      refuse(socket, 'denied', { sandboxId: client.id, reason: 'too many connections' })
      return
    }
    openByClient.set(client.id, open + 1)
    const connection: Connection = {
      socket,
      client,
      listener,
      upstream: undefined,
      closed: new AbortController(),
    }
    connections.add(connection)
    const clientId = client.id
    socket.once('close', () => {
      connections.delete(connection)
      release(clientId)
      connection.closed.abort()
    })
    peek(connection)
  }

  /** Buffers the first bytes until they name a host, are refused, or the deadline passes. */
  function peek(connection: Connection): void {
    const { socket, client } = connection
    let bytes: Buffer = Buffer.alloc(0)
    // One buffer grown in place: many tiny reads must not cost a copy of everything each.
    let store: Buffer | undefined
    const stop = () => {
      // Paused before the listener goes: bytes arriving from now wait for the relay.
      socket.pause()
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('close', stop)
    }
    const timer = setTimeout(() => {
      stop()
      refuse(socket, 'denied', { sandboxId: client.id, reason: 'no host name in time' })
    }, peekTimeoutMs)
    const onData = (chunk: Buffer) => {
      if (bytes.length === 0) {
        bytes = chunk
      } else if (bytes.length + chunk.length <= maxPeekBytes) {
        if (store === undefined) {
          store = Buffer.allocUnsafe(maxPeekBytes)
          bytes.copy(store)
        }
        chunk.copy(store, bytes.length)
        bytes = store.subarray(0, bytes.length + chunk.length)
      } else {
        // Past the cap the parsers decide on this very call: one last copy.
        bytes = Buffer.concat([bytes, chunk])
      }
      const result = peekName(connection.listener, bytes)
      switch (result.kind) {
        case 'need-more':
          return
        case 'refuse':
          stop()
          refuse(socket, 'denied', { sandboxId: client.id, reason: result.reason })
          return
        case 'name':
          stop()
          decide(connection, result.raw, bytes)
          return
      }
    }
    const onEnd = () => {
      stop()
      refuse(socket, 'denied', { sandboxId: client.id, reason: 'closed before naming a host' })
    }
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('close', stop)
  }

  function decide(connection: Connection, raw: string, firstBytes: Buffer): void {
    const { socket, client } = connection
    const name = normalizeEgressName(raw)
    if (name === undefined) {
      refuse(socket, 'denied', {
        sandboxId: client.id,
        name: loggable(raw),
        reason: 'not a host name',
      })
      return
    }
    let allowed: boolean
    try {
      allowed = client.allowsDomain(name)
    } catch (err) {
      log.warn({ err, sandboxId: client.id, name }, 'egress policy check failed')
      refuse(socket, 'failed', { sandboxId: client.id, name, reason: 'policy check failed' })
      return
    }
    if (!allowed) {
      refuse(socket, 'denied', { sandboxId: client.id, name, reason: 'name not allowed' })
      return
    }
    // Not awaited: the connection lives on in its sockets' events. dial() handles its expected
    // failures itself; what reaches here is a callback throwing (isRefused), so log and reset.
    dial(connection, name, firstBytes).catch((err: unknown) => {
      log.warn({ err, sandboxId: client.id, name }, 'egress dial failed unexpectedly')
      refuse(socket, 'failed', { sandboxId: client.id, name, reason: errorMessage(err) })
    })
  }

  /** Resolves `name`, drops refused addresses and connects to the first that answers. */
  async function dial(connection: Connection, name: string, firstBytes: Buffer): Promise<void> {
    const { socket, client, closed } = connection
    const fields = { sandboxId: client.id, name }
    const deadline = Date.now() + connectTimeoutMs
    const signal = withTimeout(connectTimeoutMs, closed.signal)
    let answers: string[]
    try {
      answers = await rejectOnAbort(options.resolve(name, { signal }), signal)
    } catch (err) {
      if (!closed.signal.aborted) {
        refuse(socket, 'failed', { ...fields, reason: `resolution failed: ${errorMessage(err)}` })
      }
      return
    }
    if (closed.signal.aborted) {
      return
    }
    const addresses = [...new Set(answers)].filter(
      (address) => parseIpv4(address) !== undefined && !isRefused(address),
    )
    if (answers.length === 0) {
      refuse(socket, 'failed', { ...fields, reason: 'name has no address' })
      return
    }
    if (addresses.length === 0) {
      // A name pointing into refused ranges is DNS rebinding or a misconfiguration: policy either way.
      refuse(socket, 'denied', { ...fields, answers, reason: 'every address is refused' })
      return
    }
    const port = upstreamPorts[connection.listener]
    let lastError: unknown
    for (const [index, address] of addresses.entries()) {
      // Each address gets a fair share of what is left, so one that drops SYNs cannot use up
      // the whole deadline of the others.
      const shareMs = Math.max(1, (deadline - Date.now()) / (addresses.length - index))
      let upstream: Socket
      try {
        upstream = await connectTo(
          address,
          port,
          AbortSignal.any([signal, AbortSignal.timeout(shareMs)]),
        )
      } catch (err) {
        lastError = err
        if (signal.aborted) {
          break
        }
        continue
      }
      if (closed.signal.aborted) {
        upstream.destroy()
        return
      }
      relay(connection, upstream, firstBytes, { ...fields, address, port })
      return
    }
    if (!closed.signal.aborted) {
      refuse(socket, 'failed', {
        ...fields,
        addresses,
        port,
        reason: `connect failed: ${errorMessage(lastError)}`,
      })
    }
  }

  function relay(
    connection: Connection,
    upstream: Socket,
    firstBytes: Buffer,
    fields: Record<string, unknown>,
  ): void {
    const { socket } = connection
    connection.upstream = upstream
    counts.allowed += 1
    log.debug({ ...fields, decision: 'allowed' }, 'egress decision')
    socket.setNoDelay(true)
    upstream.setNoDelay(true)
    // An error on one side is passed on as a reset of the other, as a router would.
    upstream.on('error', () => reset(socket))
    socket.on('error', () => reset(upstream))
    // Once one side is gone, what the other sends has nowhere to go: flush what it is owed, then
    // let it go too.
    upstream.once('close', () => {
      if (!socket.destroyed) {
        socket.end(() => socket.destroy())
      }
    })
    socket.once('close', () => {
      if (!upstream.destroyed) {
        upstream.end(() => upstream.destroy())
      }
    })
    if (idleTimeoutMs > 0) {
      // Every relayed byte is read from or written to the sandbox's socket, so its timer sees
      // traffic both ways.
      socket.setTimeout(idleTimeoutMs, () => {
        log.debug({ ...fields }, 'egress connection idle')
        socket.destroy()
        upstream.destroy()
      })
    }
    upstream.write(firstBytes)
    // pipe() keeps backpressure and ends the other side on end: half-closes go through.
    socket.pipe(upstream)
    upstream.pipe(socket)
  }

  const servers: Record<Listener, Server> = {
    http: createServer({ allowHalfOpen: true }, (socket) => accept('http', socket)),
    tls: createServer({ allowHalfOpen: true }, (socket) => accept('tls', socket)),
  }
  const ports: Partial<Record<Listener, number>> = {}
  for (const listener of ['http', 'tls'] as const) {
    const port = listener === 'http' ? (options.httpPort ?? 0) : (options.tlsPort ?? 0)
    try {
      ports[listener] = await listenTcp(servers[listener], host, port)
    } catch (err) {
      if (ports.http !== undefined) {
        await closeTcp(servers.http)
      }
      throw new UnavailableError(
        `egress proxy cannot listen on ${host}:${port} for ${listener}: ${errorMessage(err)}; free the port or choose another`,
        { cause: err },
      )
    }
    servers[listener].on('error', (err) => {
      // After listen, errors are failed accepts (EMFILE): the listener stays up.
      log.warn({ err, listener }, 'egress proxy accept failed')
    })
  }
  const httpPort = ports.http ?? 0
  const tlsPort = ports.tls ?? 0
  log.info({ host, httpPort, tlsPort }, 'egress proxy listening')

  let closing: Promise<void> | undefined
  return {
    httpPort,
    tlsPort,
    stats: () => ({ ...counts, open: connections.size }),
    close() {
      closing ??= (async () => {
        const serversClosed = Promise.all([closeTcp(servers.http), closeTcp(servers.tls)])
        // A server reports closed before its sockets do: wait for each, so that nothing the
        // proxy opened outlives close().
        const socketsClosed: Promise<void>[] = []
        for (const connection of connections) {
          for (const socket of [connection.socket, connection.upstream]) {
            if (socket !== undefined && !socket.closed) {
              socketsClosed.push(new Promise((resolve) => socket.once('close', () => resolve())))
            }
          }
          connection.closed.abort()
          connection.upstream?.destroy()
          connection.socket.destroy()
        }
        await Promise.all([serversClosed, ...socketsClosed])
        log.info({ host, httpPort, tlsPort }, 'egress proxy closed')
      })()
      return closing
    },
  }
}
