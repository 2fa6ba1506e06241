/** The host side of the guest control channel against a fake guest, plain and over vsock. */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { DriverError } from '@sandcell/shared'
import {
  guestRequest,
  isSilentGuest,
  parseGuestFields,
  syncGuest,
  toGuestStats,
} from './guest-ctl.js'

/** Plays sandcell-init's side of the control port: `reply(line)` answers a request line. */
function fakeGuest(
  path: string,
  reply: (line: string, socket: Socket, connection: number) => void,
): Promise<Server> {
  let connections = 0
  const server = createServer((socket) => {
    const connection = ++connections
    let buffer = ''
    socket.on('data', (chunk) => {
      buffer += chunk.toString()
      for (let i = buffer.indexOf('\n'); i >= 0; i = buffer.indexOf('\n')) {
        reply(buffer.slice(0, i), socket, connection)
        buffer = buffer.slice(i + 1)
      }
    })
  })
  return new Promise((resolve) => server.listen(path, () => resolve(server)))
}

describe('guest control channel', () => {
  let dir = ''
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-ctl-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('parses stats as numbers only, ignoring anything else the guest says', () => {
    const fields = parseGuestFields(
      'pids=9 mem_total=215121920 mem_available=55566336 oom_kills=1 evil=$(rm) disk_total=10 disk_free=4 ready=1',
    )
    assert.equal(fields.has('evil'), false)
    assert.deepEqual(toGuestStats(fields), {
      pids: 9,
      memTotalBytes: 215121920,
      memAvailableBytes: 55566336,
      oomKills: 1,
      diskTotalBytes: 10,
      diskFreeBytes: 4,
      agentReady: true,
    })
  })

  it('matches the answer to its request id and skips stale lines', async () => {
    const path = join(dir, 'a.sock')
    const server = await fakeGuest(path, (line, socket) => {
      const [id] = line.split(' ')
      socket.write(`0 ok stale\n${id} ok pids=3\n`)
    })
    assert.equal(await guestRequest(path, 'stats'), 'pids=3')
    server.close()
  })

  it("raises the guest's refusal without retrying", async () => {
    const path = join(dir, 'b.sock')
    let calls = 0
    const server = await fakeGuest(path, (line, socket) => {
      calls++
      socket.write(`${line.split(' ')[0]} err unknown command nope\n`)
    })
    await assert.rejects(
      guestRequest(path, 'nope'),
      (err: unknown) =>
        err instanceof DriverError && /refused "nope": err unknown command/.test(err.message),
    )
    assert.equal(calls, 1)
    server.close()
  })

  it('sends a request again when the first one got no answer', async () => {
    const path = join(dir, 'c.sock')
    const server = await fakeGuest(path, (line, socket, connection) => {
      if (connection > 1) {
        socket.write(`${line.split(' ')[0]} ok\n`)
      }
    })
    const started = Date.now()
    assert.equal(await guestRequest(path, 'ping', { timeoutMs: 5000 }), '')
    assert.ok(Date.now() - started >= 200, 'the first attempt waited for its own deadline')
    server.close()
  })

  it('sends the time again when the guest answered a sync late, the seed once', async (t) => {
    const path = join(dir, 'sync.sock')
    const syncs: string[][] = []
    const server = await fakeGuest(path, (line, socket) => {
      const [id, , ...args] = line.split(' ')
      syncs.push(args)
      // A freshly restored guest answers its first request slowly (yet within the deadline of
      // a first attempt); then it is warm.
      setTimeout(() => socket.write(`${id} ok\n`), syncs.length === 1 ? 150 : 0)
    })
    t.after(() => server.close())
    const before = Date.now()
    await syncGuest(path, { timeoutMs: 5000 })
    assert.equal(syncs.length, 2)
    const [first, second] = syncs
    assert.equal(first?.length, 2, 'the first sync carries the entropy seed')
    assert.equal(second?.length, 1, 'the second carries the time only')
    const sentMs = Number(BigInt(second?.[0] ?? '0') / 1_000_000n)
    assert.ok(sentMs >= before + 150, `the second sync's time is fresh: ${sentMs - before} ms`)
  })

  it('tells a silent guest from a refusing one, through wrapping errors too', async () => {
    const path = join(dir, 'silent.sock')
    const server = await fakeGuest(path, () => undefined)
    const silent = await guestRequest(path, 'sync 1 ab', { timeoutMs: 1500 }).then(
      () => assert.fail('a silent guest answered'),
      (err: unknown) => err,
    )
    assert.ok(isSilentGuest(silent))
    assert.ok(isSilentGuest(new DriverError('create failed', { cause: silent })))
    assert.equal(isSilentGuest(new DriverError('refused "nope": err unknown command')), false)
    server.close()
  })

  it("speaks Firecracker's vsock handshake before the request", async () => {
    const path = join(dir, 'v.sock')
    const lines: string[] = []
    let refusals = 0
    const server = await fakeGuest(path, (line, socket) => {
      lines.push(line)
      if (line === 'CONNECT 1024') {
        // The first connection finds the guest not listening yet, as during a boot.
        if (refusals++ === 0) {
          socket.end('FAILURE\n')
          return
        }
        socket.write('OK 1073741824\n')
        return
      }
      socket.write(`${line.split(' ')[0]} ok ready=1\n`)
    })
    const answer = await guestRequest({ socketPath: path, vsockPort: 1024 }, 'ping', {
      timeoutMs: 5000,
    })
    assert.equal(answer, 'ready=1')
    assert.equal(lines[0], 'CONNECT 1024')
    assert.equal(lines[1], 'CONNECT 1024')
    assert.match(lines[2] ?? '', /^\d+ ping$/)
    server.close()
  })

  it('fails at once when nothing listens (the VM is gone)', async () => {
    await assert.rejects(
      guestRequest(join(dir, 'missing.sock'), 'ping', { timeoutMs: 5000 }),
      /ENOENT/,
    )
  })
})
