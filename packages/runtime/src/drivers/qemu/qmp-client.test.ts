import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { DriverError } from '@sandcell/shared'
import { QmpClient, QmpError, withQmp, type QmpEvent } from './qmp-client.js'

const greeting = {
  QMP: {
    version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian' },
    capabilities: ['oob'],
  },
}

/** A QMP server that answers like QEMU: greeting, capabilities, then `handle` per command. */
function fakeQmp(
  path: string,
  handle: (message: { execute: string; arguments?: unknown; id?: string }, socket: Socket) => void,
): Promise<Server> {
  const server = createServer((socket) => {
    socket.write(`${JSON.stringify(greeting)}\r\n`)
    let buffer = ''
    socket.on('data', (chunk) => {
      buffer += chunk.toString()
      for (let i = buffer.indexOf('\n'); i >= 0; i = buffer.indexOf('\n')) {
        const message = JSON.parse(buffer.slice(0, i)) as { execute: string; id?: string }
        buffer = buffer.slice(i + 1)
        if (message.execute === 'qmp_capabilities') {
          socket.write(`${JSON.stringify({ return: {}, id: message.id })}\r\n`)
        } else {
          handle(message, socket)
        }
      }
    })
  })
  return new Promise((resolve) => server.listen(path, () => resolve(server)))
}

describe('QMP client', () => {
  let dir = ''
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sandcell-qmp-'))
  })
  after(() => rmSync(dir, { recursive: true, force: true }))

  it('negotiates, runs commands matched by id, and reports events', async () => {
    const path = join(dir, 'a.sock')
    const server = await fakeQmp(path, (message, socket) => {
      if (message.execute === 'query-status') {
        socket.write(
          `${JSON.stringify({ event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } })}\r\n`,
        )
        socket.write(
          `${JSON.stringify({ return: { status: 'paused', running: false }, id: message.id })}\r\n`,
        )
      } else {
        socket.write(
          `${JSON.stringify({ return: { echoed: message.arguments }, id: message.id })}\r\n`,
        )
      }
    })
    const events: QmpEvent[] = []
    const qmp = await QmpClient.connect(path, { onEvent: (event) => events.push(event) })
    assert.deepEqual(qmp.version, { micro: 22, minor: 2, major: 7 })
    const [status, echoed] = await Promise.all([
      qmp.execute<{ status: string }>('query-status'),
      qmp.execute('balloon', { value: 1 }),
    ])
    assert.equal(status.status, 'paused')
    assert.deepEqual(echoed, { echoed: { value: 1 } })
    assert.deepEqual(
      events.map((e) => e.event),
      ['STOP'],
    )
    qmp.close()
    server.close()
  })

  it('turns a QEMU error into QmpError with its class', async () => {
    const path = join(dir, 'b.sock')
    const server = await fakeQmp(path, (message, socket) => {
      socket.write(
        `${JSON.stringify({ error: { class: 'GenericError', desc: 'Migration is disabled' }, id: message.id })}\r\n`,
      )
    })
    await assert.rejects(
      withQmp(path, (qmp) => qmp.execute('migrate', { uri: 'exec:cat' })),
      (err: unknown) =>
        err instanceof QmpError &&
        err.errorClass === 'GenericError' &&
        /Migration is disabled/.test(err.message),
    )
    server.close()
  })

  it('rejects pending commands when QEMU goes away', async () => {
    const path = join(dir, 'c.sock')
    const server = await fakeQmp(path, (_message, socket) => socket.destroy())
    const qmp = await QmpClient.connect(path)
    await assert.rejects(qmp.execute('quit'), DriverError)
    server.close()
  })

  it('gives up on a monitor that never greets', async () => {
    const path = join(dir, 'd.sock')
    const server = createServer(() => undefined)
    await new Promise<void>((resolve) => server.listen(path, resolve))
    await assert.rejects(QmpClient.connect(path, { timeoutMs: 100 }), /did not answer in time/)
    server.close()
  })

  it('bounds a whole session, not just the connect', async () => {
    const path = join(dir, 'e.sock')
    const server = await fakeQmp(path, () => undefined)
    await assert.rejects(
      withQmp(path, (qmp) => qmp.execute('query-migrate'), { timeoutMs: 150 }),
      /did not finish in time/,
    )
    server.close()
  })
})
