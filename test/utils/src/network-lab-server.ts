/**
 * The network lab's "internet": one program, run inside the lab's outside netns, serving HTTP,
 * HTTPS, echo, a banner and DNS on every lab address, reporting each connection, datagram and
 * query as a JSON line on stdout and taking DNS changes as JSON lines on stdin.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram'
import { readFileSync } from 'node:fs'
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { createServer as createTcpServer, isIP, type Server, type Socket } from 'node:net'
import { createInterface } from 'node:readline'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { TLSSocket } from 'node:tls'
import dnsPacket from 'dns-packet'
import type { DecodedPacket, Packet, StringAnswer } from 'dns-packet'
import type { LabDnsEvent, LabEvent, LabServerConfig } from './network-lab.js'

type DnsRcode = LabDnsEvent['rcode']
type DnsRecords = Map<string, readonly string[]>

const rcodeValues: Record<DnsRcode, number> = { NOERROR: 0, FORMERR: 1, NXDOMAIN: 3 }

/** Past this a UDP answer is truncated and the client retries over TCP (RFC 1035 without EDNS). */
const maxUdpAnswerBytes = 512

/** How long the banner server keeps a silent connection. */
const bannerIdleMs = 10_000

/** What `/bytes/<n>` sends, a chunk at a time. */
const zeroChunk = Buffer.alloc(64 * 1024)

function emit(
  line: LabEvent | { ready: true } | { ok: boolean; id?: number; error?: string },
): void {
  // Writes to a pipe are synchronous on Linux, so a line is out before the client's answer is.
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

function isStringArrayRecord(value: unknown): value is Record<string, string[]> {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    Object.values(value).every(
      (v) => Array.isArray(v) && v.every((item) => typeof item === 'string'),
    )
  )
}

function isConfig(value: unknown): value is LabServerConfig {
  if (typeof value !== 'object' || value === null) {
    return false
  }
  const v = value as Record<string, unknown>
  return (
    typeof v.certFile === 'string' &&
    typeof v.keyFile === 'string' &&
    typeof v.ttlSeconds === 'number' &&
    Array.isArray(v.udpAddresses) &&
    v.udpAddresses.every((a) => typeof a === 'string') &&
    isStringArrayRecord(v.records)
  )
}

function normalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '')
}

/** @throws Error naming the first name or address that is not one */
function toRecords(table: Record<string, string[]>): DnsRecords {
  const records: DnsRecords = new Map()
  for (const [name, addresses] of Object.entries(table)) {
    const bad = addresses.find((address) => isIP(address) === 0)
    if (bad !== undefined) {
      throw new Error(`${name}: ${bad} is not an IP address`)
    }
    records.set(normalName(name), addresses)
  }
  return records
}

const configArg = process.argv[2]
const parsed: unknown = configArg === undefined ? undefined : JSON.parse(configArg)
if (!isConfig(parsed)) {
  throw new Error(`usage: network-lab-server.ts '<LabServerConfig as JSON>', got ${configArg}`)
}
const config = parsed
const defaultRecords = toRecords(config.records)
let records: DnsRecords = new Map(defaultRecords)

/** The names a query can match: itself, then `*.parent` for each parent (one label per `*`). */
function lookup(name: string): readonly string[] | undefined {
  const exact = records.get(name)
  if (exact !== undefined) {
    return exact
  }
  const dot = name.indexOf('.')
  return dot === -1 ? undefined : records.get(`*${name.slice(dot)}`)
}

interface DnsPeer {
  transport: 'udp' | 'tcp'
  server: string
  port: number
  client: string
  clientPort: number
}

/** Answers one query; `undefined` when it cannot even be parsed (nothing to reply to). */
function answerQuery(message: Buffer, peer: DnsPeer): Buffer | undefined {
  let query: DecodedPacket
  try {
    query = dnsPacket.decode(message)
  } catch {
    emit({
      event: 'dns',
      at: Date.now(),
      ...peer,
      name: '',
      type: '',
      rcode: 'FORMERR',
      answers: [],
    })
    return undefined
  }
  const question = query.questions?.[0]
  let rcode: DnsRcode = 'FORMERR'
  let answers: StringAnswer[] = []
  if (question !== undefined) {
    const name = normalName(question.name)
    const found = lookup(name)
    rcode = found === undefined ? 'NXDOMAIN' : 'NOERROR'
    const family = question.type === 'A' ? 4 : question.type === 'AAAA' ? 6 : 0
    // A known name without addresses of the asked family is NODATA: NOERROR, no answers.
    answers = (found ?? [])
      .filter((address) => isIP(address) === family)
      .map((address) => ({
        type: family === 4 ? 'A' : 'AAAA',
        class: 'IN',
        name: question.name,
        ttl: config.ttlSeconds,
        data: address,
      }))
  }
  emit({
    event: 'dns',
    at: Date.now(),
    ...peer,
    name: question === undefined ? '' : normalName(question.name),
    type: question?.type ?? '',
    rcode,
    answers: answers.map((a) => a.data),
  })
  const flags =
    dnsPacket.AUTHORITATIVE_ANSWER |
    (query.flag_rd ? dnsPacket.RECURSION_DESIRED : 0) |
    dnsPacket.RECURSION_AVAILABLE |
    rcodeValues[rcode]
  const response: Packet = {
    type: 'response',
    id: query.id ?? 0,
    flags,
    questions: query.questions ?? [],
    answers,
  }
  const encoded = dnsPacket.encode(response)
  if (peer.transport === 'udp' && encoded.length > maxUdpAnswerBytes) {
    return dnsPacket.encode({
      ...response,
      flags: flags | dnsPacket.TRUNCATED_RESPONSE,
      answers: [],
    })
  }
  return encoded
}

function tcpPeer(socket: Socket): Omit<DnsPeer, 'transport'> {
  return {
    server: socket.localAddress ?? '',
    port: socket.localPort ?? 0,
    client: socket.remoteAddress ?? '',
    clientPort: socket.remotePort ?? 0,
  }
}

/** Every TCP server reports its connections the same way, before any byte is read. */
function reportConnections(server: Server): void {
  server.on('connection', (socket: Socket) => {
    emit({ event: 'tcp', at: Date.now(), ...tcpPeer(socket) })
    // A client that resets mid-answer is normal for a test (curl --max-time, refused TLS).
    socket.on('error', () => undefined)
  })
}

function handleHttp(
  scheme: 'http' | 'https',
  request: IncomingMessage,
  response: ServerResponse,
): void {
  const socket = request.socket
  const peer = tcpPeer(socket)
  const path = request.url ?? '/'
  const sni =
    socket instanceof TLSSocket && typeof socket.servername === 'string' ? socket.servername : null
  const bytes = /^\/bytes\/(\d+)$/.exec(path)
  const status = /^\/status\/(\d+)$/.exec(path)
  let code = 200
  if (status?.[1] !== undefined) {
    code = Number(status[1])
  }
  if (
    code < 200 ||
    code > 599 ||
    (bytes?.[1] !== undefined && !Number.isSafeInteger(Number(bytes[1])))
  ) {
    code = 400
  }
  emit({
    event: scheme,
    at: Date.now(),
    ...peer,
    method: request.method ?? '',
    host: request.headers.host ?? null,
    path,
    status: code,
    sni,
  })
  let bodyBytes = 0
  request.on('data', (chunk: Buffer) => {
    bodyBytes += chunk.length
  })
  request.on('end', () => {
    if (code === 200 && bytes?.[1] !== undefined) {
      const sizeBytes = Number(bytes[1])
      response.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(sizeBytes),
      })
      // A client that hangs up mid-download ends the pipeline with an error nobody needs.
      pipeline(Readable.from(zeros(sizeBytes)), response).catch(() => undefined)
      return
    }
    const body = JSON.stringify({
      server: peer.server,
      host: request.headers.host ?? null,
      path,
      client: peer.client,
      method: request.method,
      bodyBytes,
      ...(scheme === 'https' ? { sni } : {}),
    })
    if (code === 204 || code === 304) {
      response.writeHead(code).end()
      return
    }
    response.writeHead(code, { 'content-type': 'application/json' }).end(body)
  })
}

function* zeros(sizeBytes: number): Generator<Buffer> {
  for (let left = sizeBytes; left > 0; left -= zeroChunk.length) {
    yield left >= zeroChunk.length ? zeroChunk : zeroChunk.subarray(0, left)
  }
}

/** Answers DNS over TCP: each message framed by a two-byte length, several per connection. */
function handleDnsTcp(socket: Socket): void {
  let pending = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk])
    while (pending.length >= 2) {
      const length = pending.readUInt16BE(0)
      if (pending.length < 2 + length) {
        return
      }
      const message = pending.subarray(2, 2 + length)
      pending = pending.subarray(2 + length)
      const answer = answerQuery(message, { transport: 'tcp', ...tcpPeer(socket) })
      if (answer === undefined) {
        socket.destroy()
        return
      }
      const frame = Buffer.alloc(2)
      frame.writeUInt16BE(answer.length)
      socket.write(Buffer.concat([frame, answer]))
    }
  })
}

function listenTcp(server: Server, port: number): Promise<void> {
  reportConnections(server)
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '0.0.0.0', () => resolve())
  })
}

/**
 * One UDP socket per address, not one on 0.0.0.0: an answer must leave from the address the
 * query went to, and Node cannot choose the source of a reply from a wildcard socket.
 */
function listenUdp(
  address: string,
  port: number,
  answer: (message: Buffer, rinfo: RemoteInfo) => Buffer | undefined,
): Promise<UdpSocket> {
  const socket = createSocket('udp4')
  socket.on('message', (message, rinfo) => {
    emit({
      event: 'udp',
      at: Date.now(),
      server: address,
      port,
      client: rinfo.address,
      clientPort: rinfo.port,
      sizeBytes: message.length,
    })
    const reply = answer(message, rinfo)
    if (reply !== undefined) {
      socket.send(reply, rinfo.port, rinfo.address)
    }
  })
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(port, address, () => resolve(socket))
  })
}

function handleCommand(line: string): void {
  let id: number | undefined
  try {
    const command: unknown = JSON.parse(line)
    if (typeof command !== 'object' || command === null) {
      throw new Error('a command is a JSON object')
    }
    const c = command as Record<string, unknown>
    id = typeof c.id === 'number' ? c.id : undefined
    if (c.resetRecords === true) {
      records = new Map(defaultRecords)
    } else if (isStringArrayRecord(c.setRecords)) {
      for (const [name, addresses] of toRecords(c.setRecords)) {
        // An empty list removes the name, so it answers NXDOMAIN again.
        if (addresses.length === 0) {
          records.delete(name)
        } else {
          records.set(name, addresses)
        }
      }
    } else {
      throw new Error(`unknown command: ${line}`)
    }
    emit({ ok: true, ...(id === undefined ? {} : { id }) })
  } catch (err) {
    emit({ ok: false, ...(id === undefined ? {} : { id }), error: String(err) })
  }
}

const tls = { cert: readFileSync(config.certFile), key: readFileSync(config.keyFile) }
const dnsTcp = createTcpServer(handleDnsTcp)
await Promise.all([
  listenTcp(
    createHttpServer((request, response) => handleHttp('http', request, response)),
    80,
  ),
  listenTcp(
    createHttpsServer(tls, (request, response) => handleHttp('https', request, response)),
    443,
  ),
  listenTcp(
    createTcpServer((socket) => socket.pipe(socket)),
    7,
  ),
  listenTcp(
    createTcpServer((socket) => {
      // Server-first, as SSH is: the client reads before it writes. The connection stays open
      // (what the client sends is dropped) until it hangs up or idles, as a real server's would.
      socket.write('SSH-2.0-lab\r\n')
      socket.resume()
      socket.setTimeout(bannerIdleMs, () => socket.destroy())
    }),
    22,
  ),
  listenTcp(dnsTcp, 53),
  ...config.udpAddresses.flatMap((address) => [
    listenUdp(address, 7, (message) => message),
    listenUdp(address, 53, (message, rinfo) =>
      answerQuery(message, {
        transport: 'udp',
        server: address,
        port: 53,
        client: rinfo.address,
        clientPort: rinfo.port,
      }),
    ),
  ]),
])

// The harness holds stdin; when it goes (closed the lab or crashed), so does the lab.
createInterface({ input: process.stdin })
  .on('line', handleCommand)
  .on('close', () => process.exit(0))
emit({ ready: true })
