/**
 * The DNS forwarder on real UDP and TCP sockets on 127.0.0.1, in front of fake upstream
 * resolvers written here: relaying, policy, strangers, failover, hostile clients and limits.
 */
import assert from 'node:assert/strict'
import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { once } from 'node:events'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { after, describe, it, type TestContext } from 'node:test'
import { decode, encode, RECURSION_DESIRED, type Packet, type RecordType } from 'dns-packet'
import { DriverError } from '@sandcell/shared'
import { createTestLogger, waitFor } from '@sandcell/test-utils'
import {
  startDnsForwarder,
  type DnsClient,
  type DnsForwarder,
  type DnsForwarderOptions,
} from '../src/index.js'

const loopback = '127.0.0.1'
const sandbox: DnsClient = {
  id: 'sb_dns_test',
  allows: (name) => name !== 'blocked.example' && !name.endsWith('.blocked.example'),
}

type Transport = 'udp' | 'tcp'

interface FakeUpstream {
  /** `127.0.0.1:port`, as the forwarder's options take it. */
  address: string
  /** Every query that arrived, as it arrived. */
  received: { transport: Transport; bytes: Buffer }[]
  /** Every reply sent, as sent. */
  sent: Buffer[]
}

function framed(message: Buffer): Buffer {
  const length = Buffer.alloc(2)
  length.writeUInt16BE(message.length)
  return Buffer.concat([length, message])
}

/** Calls `onMessage` for each complete length-prefixed message arriving on `socket`. */
function readFrames(socket: Socket, onMessage: (message: Buffer) => void): void {
  let buffered = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) {
      const end = 2 + buffered.readUInt16BE(0)
      onMessage(buffered.subarray(2, end))
      buffered = buffered.subarray(end)
    }
  })
}

/** An answer a forwarder re-encoding anything would change: AA set, odd TTLs, two records. */
function answerTo(query: Buffer): Buffer {
  const packet = decode(query)
  const question = packet.questions?.[0]
  const data =
    question?.type === 'AAAA' ? ['2001:db8::1', '2001:db8::2'] : ['192.0.2.1', '192.0.2.2']
  const answers: Packet['answers'] =
    question === undefined
      ? []
      : data.map((address, index) => ({
          type: question.type as 'A' | 'AAAA',
          name: question.name,
          ttl: 3001 + index,
          data: address,
        }))
  return encode({
    type: 'response',
    id: packet.id ?? 0,
    flags: (packet.flags ?? 0) | (1 << 10) | (1 << 7),
    questions: packet.questions ?? [],
    answers,
  })
}

/** Binds UDP, then TCP on the same port, retrying when another program took that port. */
async function bindPair(udp: UdpSocket, tcp: Server): Promise<number> {
  udp.bind(0, loopback)
  await once(udp, 'listening')
  const port = udp.address().port
  tcp.listen(port, loopback)
  await once(tcp, 'listening')
  return port
}

/** A resolver on UDP and TCP that answers every query (`silent`: never answers). */
async function startFakeUpstream(t: TestContext, silent = false): Promise<FakeUpstream> {
  const received: FakeUpstream['received'] = []
  const sent: Buffer[] = []
  const udp = createSocket('udp4')
  udp.on('message', (message, remote) => {
    received.push({ transport: 'udp', bytes: message })
    if (!silent) {
      const reply = answerTo(message)
      sent.push(reply)
      udp.send(reply, remote.port, remote.address)
    }
  })
  const connections = new Set<Socket>()
  const tcp = createServer((socket) => {
    connections.add(socket)
    socket.on('close', () => connections.delete(socket))
    socket.on('error', () => socket.destroy())
    readFrames(socket, (message) => {
      received.push({ transport: 'tcp', bytes: Buffer.from(message) })
      if (!silent) {
        const reply = answerTo(message)
        sent.push(reply)
        socket.write(framed(reply))
      }
    })
  })
  const port = await bindPair(udp, tcp)
  t.after(async () => {
    for (const socket of connections) {
      socket.destroy()
    }
    await Promise.all([
      new Promise<void>((resolve) => udp.close(() => resolve())),
      new Promise<void>((resolve) => tcp.close(() => resolve())),
    ])
  })
  return { address: `${loopback}:${port}`, received, sent }
}

/** A port nothing listens on: the kernel refuses it at once. */
async function closedPort(): Promise<number> {
  const udp = createSocket('udp4')
  udp.bind(0, loopback)
  await once(udp, 'listening')
  const { port } = udp.address()
  await new Promise<void>((resolve) => udp.close(() => resolve()))
  return port
}

const log = createTestLogger()

async function startForwarder(
  t: TestContext,
  options: Partial<DnsForwarderOptions> & Pick<DnsForwarderOptions, 'upstreams'>,
): Promise<DnsForwarder> {
  const forwarder = await startDnsForwarder({
    log,
    host: loopback,
    lookupClient: (address) => (address === loopback ? sandbox : undefined),
    ...options,
  })
  t.after(() => forwarder.close())
  return forwarder
}

let nextId = 1

function query(name: string, type: RecordType = 'A', id = nextId++): Buffer {
  return encode({ type: 'query', id, flags: RECURSION_DESIRED, questions: [{ type, name }] })
}

const byBytes = (a: Buffer, b: Buffer): number => Buffer.compare(a, b)

function rcodeOf(reply: Buffer): number {
  return reply.readUInt16BE(2) & 0xf
}

/** A UDP client socket on loopback, closed when the test ends. */
async function udpClient(t: TestContext): Promise<{ socket: UdpSocket; replies: Buffer[] }> {
  const socket = createSocket('udp4')
  const replies: Buffer[] = []
  socket.on('message', (reply) => replies.push(reply))
  socket.bind(0, loopback)
  await once(socket, 'listening')
  t.after(() => new Promise<void>((resolve) => socket.close(() => resolve())))
  return { socket, replies }
}

/** Sends one datagram; the first reply, or undefined when none comes within `waitMs`. */
async function askUdp(
  t: TestContext,
  port: number,
  message: Buffer,
  waitMs = 3000,
): Promise<Buffer | undefined> {
  const { socket, replies } = await udpClient(t)
  socket.send(message, port, loopback)
  try {
    await waitFor('a UDP reply', () => replies.length > 0, { timeoutMs: waitMs })
  } catch {
    return undefined
  }
  return replies[0]
}

interface TcpClient {
  socket: Socket
  replies: Buffer[]
  /** Resolves when the connection is closed, by either side. */
  closed: Promise<void>
  send(message: Buffer): void
  /** Waits until `count` replies arrived in all. */
  waitReplies(count: number, timeoutMs?: number): Promise<Buffer[]>
}

async function tcpClient(t: TestContext, port: number): Promise<TcpClient> {
  const socket = createConnection({ host: loopback, port })
  const replies: Buffer[] = []
  socket.on('error', () => socket.destroy())
  const closed = once(socket, 'close').then(() => undefined)
  readFrames(socket, (message) => replies.push(Buffer.from(message)))
  t.after(() => {
    socket.destroy()
    return closed
  })
  await once(socket, 'connect')
  return {
    socket,
    replies,
    closed,
    send: (message) => socket.write(framed(message)),
    async waitReplies(count, timeoutMs = 3000) {
      await waitFor(`${count} TCP replies`, () => replies.length >= count, { timeoutMs })
      return replies
    },
  }
}

async function assertClosedSoon(client: TcpClient, timeoutMs = 3000): Promise<void> {
  await waitFor('the connection to close', () => client.socket.closed, { timeoutMs })
}

function logLines(
  testLog: ReturnType<typeof createTestLogger>,
): { level: number; msg: string; [key: string]: unknown }[] {
  return testLog.lines.map((line) => JSON.parse(line) as { level: number; msg: string })
}

function openSockets(): string[] {
  return process.getActiveResourcesInfo().filter((name) => /TCP|UDP/.test(name))
}

after(async () => {
  await waitFor('every socket to close', () => openSockets().length === 0, {
    timeoutMs: 3000,
  }).catch(() => undefined)
  assert.deepEqual(openSockets(), [], 'sockets left open')
})

describe('DNS forwarder', () => {
  it('forwards A and AAAA queries over UDP and TCP and returns the upstream answer unchanged', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, { upstreams: [upstream.address] })

    for (const type of ['A', 'AAAA'] as const) {
      const message = query('www.example.com', type)
      const reply = await askUdp(t, forwarder.port, message)
      assert.ok(reply, `no UDP reply for ${type}`)
      assert.deepEqual(reply, upstream.sent.at(-1))
      assert.deepEqual(upstream.received.at(-1), { transport: 'udp', bytes: message })
    }

    // Both on one connection before reading: the answers may come back in either order.
    const client = await tcpClient(t, forwarder.port)
    const messages = [query('www.example.com', 'A'), query('www.example.com', 'AAAA')]
    for (const message of messages) {
      client.send(message)
    }
    const replies = await client.waitReplies(2)
    const tcpReceived = upstream.received.filter((r) => r.transport === 'tcp')
    assert.deepEqual(tcpReceived.map((r) => r.bytes).sort(byBytes), [...messages].sort(byBytes))
    assert.deepEqual([...replies].sort(byBytes), upstream.sent.slice(2).sort(byBytes))
    assert.deepEqual(
      replies.map((reply) => decode(reply).answers?.length),
      [2, 2],
    )
    assert.deepEqual(forwarder.stats(), { forwarded: 4, refused: 0, failed: 0, dropped: 0 })
  })

  it('answers REFUSED for a name the client may not resolve, without asking the upstream', async (t) => {
    const upstream = await startFakeUpstream(t)
    const testLog = createTestLogger()
    const forwarder = await startForwarder(t, { upstreams: [upstream.address], log: testLog })
    const message = query('Secret.Blocked.Example.', 'TXT')

    const udpReply = await askUdp(t, forwarder.port, message)
    const client = await tcpClient(t, forwarder.port)
    client.send(message)
    const [tcpReply] = await client.waitReplies(1)

    for (const reply of [udpReply, tcpReply]) {
      assert.ok(reply)
      const decoded = decode(reply)
      assert.equal(rcodeOf(reply), 5)
      assert.equal(decoded.id, message.readUInt16BE(0))
      assert.equal(decoded.type, 'response')
      assert.equal(decoded.flag_ra, true)
      assert.equal(decoded.flag_rd, true)
      assert.deepEqual(decoded.questions, [
        { name: 'Secret.Blocked.Example', type: 'TXT', class: 'IN' },
      ])
    }
    assert.deepEqual(upstream.received, [])
    assert.equal(forwarder.stats().refused, 2)
    const refused = logLines(testLog).filter((line) => line.msg === 'dns query refused')
    assert.ok(
      refused.some(
        (line) =>
          line.sandboxId === sandbox.id &&
          line.name === 'secret.blocked.example' &&
          line.type === 'TXT',
      ),
    )
  })

  it('ignores queries from an address that is no sandbox', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, {
      upstreams: [upstream.address],
      lookupClient: () => undefined,
    })

    assert.equal(await askUdp(t, forwarder.port, query('www.example.com'), 300), undefined)

    const client = await tcpClient(t, forwarder.port)
    client.send(query('www.example.com'))
    await assertClosedSoon(client)
    assert.deepEqual(client.replies, [])
    assert.deepEqual(upstream.received, [])
  })

  it('falls back to the next upstream when one does not answer; SERVFAIL when none does', async (t) => {
    const refusing = `${loopback}:${await closedPort()}`
    const silent = await startFakeUpstream(t, true)
    const good = await startFakeUpstream(t)
    const testLog = createTestLogger()
    const forwarder = await startForwarder(t, {
      upstreams: [refusing, silent.address, good.address],
      upstreamTimeoutMs: 200,
      log: testLog,
    })

    for (let round = 0; round < 2; round += 1) {
      const message = query('www.example.com')
      const reply = await askUdp(t, forwarder.port, message)
      assert.ok(reply)
      assert.deepEqual(reply, good.sent.at(-1))
      const client = await tcpClient(t, forwarder.port)
      client.send(message)
      const [tcpReply] = await client.waitReplies(1)
      assert.deepEqual(tcpReply, good.sent.at(-1))
    }
    assert.deepEqual(
      silent.received.map((r) => r.transport),
      ['udp', 'tcp', 'udp', 'tcp'],
    )
    const warnings = logLines(testLog).filter(
      (line) => line.msg === 'dns upstream stopped answering',
    )
    assert.deepEqual(
      warnings.map((line) => line.upstream).sort(),
      [refusing, silent.address].sort(),
      'one warning per upstream, however often it fails',
    )
    assert.ok(warnings.every((line) => line.level === 40))

    forwarder.setUpstreams([refusing, silent.address])
    const message = query('www.example.com')
    const reply = await askUdp(t, forwarder.port, message)
    assert.ok(reply)
    assert.equal(rcodeOf(reply), 2)
    assert.equal(reply.readUInt16BE(0), message.readUInt16BE(0))
    const client = await tcpClient(t, forwarder.port)
    client.send(message)
    const [tcpReply] = await client.waitReplies(1)
    assert.ok(tcpReply)
    assert.equal(rcodeOf(tcpReply), 2)
    assert.deepEqual(forwarder.stats(), { forwarded: 4, refused: 0, failed: 2, dropped: 0 })
  })

  it('rejects malformed packets and oversized TCP messages without crashing and keeps serving', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, { upstreams: [upstream.address] })
    const response = Buffer.from(query('www.example.com'))
    response.writeUInt16BE(0x8180, 2)
    const truncated = query('www.example.com').subarray(0, 20)
    const garbage = Buffer.from('not a dns message at all, just bytes')

    const { socket, replies } = await udpClient(t)
    for (const bytes of [Buffer.alloc(0), Buffer.from([1, 2, 3]), response, truncated, garbage]) {
      socket.send(bytes, forwarder.port, loopback)
    }
    const valid = query('www.example.com')
    socket.send(valid, forwarder.port, loopback)
    await waitFor('the valid query to be answered', () => replies.length > 0)
    await waitFor('every bad datagram to be dropped', () => forwarder.stats().dropped >= 5)
    assert.deepEqual(replies, [upstream.sent.at(-1)])

    for (const bytes of [
      Buffer.from([0x40, 0x01]), // 16 KiB + 1: refused from the prefix alone
      Buffer.from([0xff, 0xff, 0, 0, 0]),
      framed(garbage),
      framed(Buffer.alloc(0)),
    ]) {
      const client = await tcpClient(t, forwarder.port)
      client.socket.write(bytes)
      await assertClosedSoon(client)
      assert.deepEqual(client.replies, [])
    }
    // A bad message closes the connection even behind a valid one in the same read.
    const client = await tcpClient(t, forwarder.port)
    client.socket.write(
      Buffer.concat([framed(query('www.example.com')), Buffer.from([0xff, 0xff])]),
    )
    await assertClosedSoon(client)

    const after = await tcpClient(t, forwarder.port)
    after.send(query('www.example.com', 'AAAA'))
    const [reply] = await after.waitReplies(1)
    assert.deepEqual(reply, upstream.sent.at(-1))
    assert.equal(forwarder.stats().dropped, 10)
  })

  it('answers NOTIMP to other opcodes and FORMERR to two questions, echoing the id', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, { upstreams: [upstream.address] })
    const notify = Buffer.from(query('example.com', 'SOA'))
    notify.writeUInt16BE(4 << 11, 2)
    const two = encode({
      type: 'query',
      id: 77,
      questions: [
        { type: 'A', name: 'example.com' },
        { type: 'A', name: 'example.org' },
      ],
    })
    const notifyReply = await askUdp(t, forwarder.port, notify)
    const twoReply = await askUdp(t, forwarder.port, two)
    assert.ok(notifyReply && twoReply)
    assert.equal(rcodeOf(notifyReply), 4)
    assert.equal(notifyReply.readUInt16BE(0), notify.readUInt16BE(0))
    assert.equal(rcodeOf(twoReply), 1)
    assert.equal(twoReply.readUInt16BE(0), 77)
    assert.deepEqual(upstream.received, [])
  })

  it('enforces the in-flight limit per sandbox over UDP and TCP together', async (t) => {
    const silent = await startFakeUpstream(t, true)
    const good = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, {
      upstreams: [silent.address],
      upstreamTimeoutMs: 1500,
      maxInFlightPerClient: 4,
    })

    const { socket, replies } = await udpClient(t)
    const ids = Array.from({ length: 10 }, () => nextId++)
    for (const id of ids) {
      socket.send(query('www.example.com', 'A', id), forwarder.port, loopback)
    }
    await waitFor('six REFUSED replies', () => replies.length >= 6)
    assert.deepEqual(
      replies.map((reply) => [reply.readUInt16BE(0), rcodeOf(reply)]),
      ids.slice(4).map((id) => [id, 5]),
    )
    const client = await tcpClient(t, forwarder.port)
    client.send(query('www.example.com'))
    const [tcpReply] = await client.waitReplies(1)
    assert.ok(tcpReply)
    assert.equal(rcodeOf(tcpReply), 5, 'the TCP query shares the UDP queries limit')

    await waitFor('the held queries to fail', () => replies.length >= 10)
    assert.deepEqual(
      replies.slice(6).map((reply) => [reply.readUInt16BE(0), rcodeOf(reply)]),
      ids.slice(0, 4).map((id) => [id, 2]),
    )
    assert.equal(silent.received.length, 4)

    forwarder.setUpstreams([good.address])
    const reply = await askUdp(t, forwarder.port, query('www.example.com'))
    assert.ok(reply)
    assert.equal(rcodeOf(reply), 0, 'the limit is freed once the queries end')
  })

  it('rejects TCP connections beyond the per-sandbox limit', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, {
      upstreams: [upstream.address],
      maxTcpConnectionsPerClient: 2,
    })
    const held: TcpClient[] = []
    for (let i = 0; i < 2; i += 1) {
      const client = await tcpClient(t, forwarder.port)
      client.send(query('www.example.com'))
      await client.waitReplies(1)
      held.push(client)
    }
    const extra = await tcpClient(t, forwarder.port)
    extra.send(query('www.example.com'))
    await assertClosedSoon(extra)
    assert.deepEqual(extra.replies, [])

    held[0]?.socket.destroy()
    await held[0]?.closed
    await waitFor('a connection slot to be free', async () => {
      const client = await tcpClient(t, forwarder.port)
      client.send(query('www.example.com'))
      try {
        await client.waitReplies(1, 500)
        return true
      } finally {
        client.socket.destroy()
      }
    })
  })

  it('cannot hold a TCP connection open with a half-sent message', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, {
      upstreams: [upstream.address],
      tcpIdleTimeoutMs: 200,
    })
    const client = await tcpClient(t, forwarder.port)
    client.socket.write(Buffer.from([0x00]))
    await assertClosedSoon(client)

    const partial = await tcpClient(t, forwarder.port)
    partial.socket.write(framed(query('www.example.com')).subarray(0, 10))
    await assertClosedSoon(partial)
  })

  it('cannot hold a connection by flooding queries and never reading the answers', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, {
      upstreams: [upstream.address],
      maxTcpConnectionsPerClient: 1,
      tcpIdleTimeoutMs: 300,
    })
    const flood = await tcpClient(t, forwarder.port)
    flood.socket.pause()
    const blocked = framed(query('flood.blocked.example'))
    flood.socket.write(Buffer.concat(Array.from({ length: 50_000 }, () => blocked)))

    // The only slot frees once the forwarder gives up on the flooding connection.
    await waitFor(
      'the flooding connection to be closed',
      async () => {
        const client = await tcpClient(t, forwarder.port)
        client.send(query('www.example.com'))
        try {
          await client.waitReplies(1, 500)
          return true
        } finally {
          client.socket.destroy()
        }
      },
      { timeoutMs: 15_000 },
    )
  })

  it('answers a client that half-closes after its queries, then closes', async (t) => {
    const upstream = await startFakeUpstream(t)
    const forwarder = await startForwarder(t, { upstreams: [upstream.address] })
    const client = await tcpClient(t, forwarder.port)
    client.send(query('www.example.com'))
    client.send(query('blocked.example'))
    client.socket.end()
    await client.closed
    assert.equal(client.replies.length, 2)
    assert.deepEqual(client.replies.map(rcodeOf).sort(), [0, 5])
  })

  it(
    'close() leaves no listening sockets: a second forwarder binds the same port',
    { timeout: 10_000 },
    async (t) => {
      const upstream = await startFakeUpstream(t)
      const silent = await startFakeUpstream(t, true)
      // Nothing would end the connection or the upstream attempt for a minute but close().
      const first = await startDnsForwarder({
        log,
        host: loopback,
        upstreams: [silent.address],
        upstreamTimeoutMs: 60_000,
        tcpIdleTimeoutMs: 60_000,
        lookupClient: () => sandbox,
      })
      t.after(() => first.close())
      const idle = await tcpClient(t, first.port)
      const waiting = await tcpClient(t, first.port)
      waiting.send(query('www.example.com'))
      const { socket } = await udpClient(t)
      socket.send(query('www.example.com'), first.port, loopback)
      await waitFor('both queries to reach the upstream', () => silent.received.length === 2)

      const startedMs = performance.now()
      await first.close()
      assert.ok(performance.now() - startedMs < 1000, 'close() does not wait for clients')
      await assertClosedSoon(idle)
      await assertClosedSoon(waiting)
      assert.deepEqual(waiting.replies, [])

      const second = await startForwarder(t, { upstreams: [upstream.address], port: first.port })
      assert.equal(second.port, first.port)
      const reply = await askUdp(t, second.port, query('www.example.com'))
      assert.deepEqual(reply, upstream.sent.at(-1))
      const tcp = await tcpClient(t, second.port)
      tcp.send(query('www.example.com'))
      const [tcpReply] = await tcp.waitReplies(1)
      assert.deepEqual(tcpReply, upstream.sent.at(-1))
    },
  )

  it('cannot start on a port already taken, and leaves nothing bound', async (t) => {
    const upstream = await startFakeUpstream(t)
    const first = await startForwarder(t, { upstreams: [upstream.address] })
    await assert.rejects(
      startDnsForwarder({
        log,
        host: loopback,
        port: first.port,
        upstreams: [upstream.address],
        lookupClient: () => sandbox,
      }),
      (err) => err instanceof DriverError && /cannot listen/.test(err.message),
    )
    const reply = await askUdp(t, first.port, query('www.example.com'))
    assert.deepEqual(reply, upstream.sent.at(-1))
  })

  it('rejects an empty or invalid upstream list', async () => {
    await assert.rejects(
      startDnsForwarder({ log, upstreams: [], lookupClient: () => undefined }),
      /at least one upstream/,
    )
    await assert.rejects(
      startDnsForwarder({ log, upstreams: ['dns.google'], lookupClient: () => undefined }),
      /invalid DNS upstream/,
    )
  })
})
