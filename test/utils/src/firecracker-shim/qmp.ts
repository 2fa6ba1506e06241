/**
 * The shim's one long-lived session on its QEMU's monitor (QMP): commands answered in order,
 * events ignored (the shim watches the QEMU process itself).
 */
import { createConnection, type Socket } from 'node:net'

interface Waiting {
  command: string
  resolve: (value: unknown) => void
  reject: (err: Error) => void
}

export class Qmp {
  readonly #socket: Socket
  readonly #waiting: Waiting[] = []
  #buffer = ''
  #closed: Error | undefined

  private constructor(socket: Socket) {
    this.#socket = socket
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => this.#receive(chunk))
    socket.on('error', (err) => this.#close(err))
    socket.on('close', () => this.#close(new Error('QMP connection closed')))
  }

  /** Connects (retrying while QEMU starts), skips the greeting and negotiates. */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const socket = createConnection(path)
          socket.once('connect', () => resolve(socket))
          socket.once('error', reject)
        })
        const qmp = new Qmp(socket)
        // The greeting is the first line; it is taken for the answer to this first command.
        qmp.#waiting.push({
          command: 'greeting',
          resolve: () => undefined,
          reject: () => undefined,
        })
        await qmp.execute('qmp_capabilities')
        return qmp
      } catch (err) {
        if (Date.now() > deadline) {
          throw new Error(`QEMU's monitor did not answer: ${(err as Error).message}`, {
            cause: err,
          })
        }
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }
  }

  #receive(chunk: string): void {
    this.#buffer += chunk
    for (let newline = this.#buffer.indexOf('\n'); newline >= 0;) {
      const line = this.#buffer.slice(0, newline).trim()
      this.#buffer = this.#buffer.slice(newline + 1)
      newline = this.#buffer.indexOf('\n')
      if (line.length === 0) {
        continue
      }
      const message = JSON.parse(line) as {
        event?: string
        return?: unknown
        error?: { desc?: string }
      }
      if (message.event !== undefined) {
        continue
      }
      const waiting = this.#waiting.shift()
      if (message.error !== undefined) {
        waiting?.reject(new Error(`QMP ${waiting.command}: ${message.error.desc ?? 'failed'}`))
      } else {
        waiting?.resolve(message.return)
      }
    }
  }

  #close(err: Error): void {
    this.#closed ??= err
    for (const waiting of this.#waiting.splice(0)) {
      waiting.reject(err)
    }
    this.#socket.destroy()
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed !== undefined) {
      return Promise.reject(this.#closed)
    }
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({ command, resolve: resolve as (value: unknown) => void, reject })
      this.#socket.write(
        `${JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args })}\n`,
      )
    })
  }

  close(): void {
    this.#close(new Error('QMP connection closed by the shim'))
  }
}
