/**
 * Firecracker's API transport: HTTP/1.1 on a Unix socket, bodies sized by Content-Length, each
 * connection kept open and served in order (as micro_http does). Written on `net` rather than
 * `node:http`, whose server runs timers of its own: a paused VM's VMM must not wake up.
 */
import { existsSync, renameSync } from 'node:fs'
import { createServer, type Server, type Socket } from 'node:net'
import type { ApiReply } from './api-controller.js'

/** micro_http's default limit of a request's payload, bytes. */
const maxPayloadBytes = 51_200
const reasons: Record<number, string> = { 200: 'OK', 204: 'No Content', 400: 'Bad Request' }

export type ApiHandler = (method: string, url: string, body: string) => Promise<ApiReply>

function reply(socket: Socket, { status, body }: ApiReply, then?: () => void): void {
  const text = body === undefined ? '' : JSON.stringify(body)
  const head = [
    `HTTP/1.1 ${status} ${reasons[status] ?? ''}`,
    'Server: Firecracker API',
    'Connection: keep-alive',
    ...(body === undefined ? [] : ['Content-Type: application/json']),
    `Content-Length: ${Buffer.byteLength(text)}`,
  ]
  socket.write(`${head.join('\r\n')}\r\n\r\n${text}`, then)
}

function fault(message: string): ApiReply {
  return { status: 400, body: { fault_message: message } }
}

function serve(socket: Socket, handle: ApiHandler, afterReply: () => void): void {
  let buffer = Buffer.alloc(0)
  let busy = false
  const next = (): void => {
    if (busy) {
      return
    }
    const end = buffer.indexOf('\r\n\r\n')
    if (end < 0) {
      return
    }
    const lines = buffer.subarray(0, end).toString('latin1').split('\r\n')
    const [method = '', url = '/'] = (lines[0] ?? '').split(' ')
    const length = Number(
      /^content-length:\s*(\d+)\s*$/im.exec(lines.slice(1).join('\n'))?.[1] ?? '0',
    )
    if (length > maxPayloadBytes) {
      reply(
        socket,
        fault(
          `Request payload with size ${length} is larger than the limit of ${maxPayloadBytes} allowed by server.`,
        ),
        () => socket.destroy(),
      )
      return
    }
    if (buffer.length < end + 4 + length) {
      return
    }
    const body = buffer.subarray(end + 4, end + 4 + length).toString('utf8')
    buffer = buffer.subarray(end + 4 + length)
    busy = true
    handle(method, url, body).then(
      (answer) =>
        reply(socket, answer, () => {
          busy = false
          afterReply()
          next()
        }),
      (err: unknown) => {
        socket.destroy()
        throw err
      },
    )
  }
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk])
    next()
  })
  socket.on('error', () => socket.destroy())
}

/**
 * Serves `handle` on the Unix socket `path`; `afterReply` runs once each answer is written.
 * @throws the listen error (the path exists, say) through the returned promise
 */
export async function serveApi(
  path: string,
  handle: ApiHandler,
  afterReply: () => void,
): Promise<Server> {
  const server = createServer((socket) => serve(socket, handle, afterReply))
  // Listening under another name first: whoever waits for `path` to appear finds it listening.
  const binding = `${path}.${process.pid}.bind`
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(binding, () => resolve())
  })
  if (existsSync(path)) {
    server.close()
    throw new Error(`Failed to open the API socket at: ${path}. Check that it is not already used.`)
  }
  renameSync(binding, path)
  return server
}
