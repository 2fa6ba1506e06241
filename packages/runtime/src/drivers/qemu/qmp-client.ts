/**
 * A client of QEMU's machine protocol (QMP) over a Unix socket: the greeting, capability
 * negotiation, commands matched to their answers by id, and asynchronous events.
 */
import { createConnection, type Socket } from 'node:net'
import { DriverError, withTimeout } from '@sandcell/shared'

export interface QmpEvent {
  event: string
  data?: Record<string, unknown>
  timestamp?: { seconds: number; microseconds: number }
}

/** A command QEMU refused: its error class (`GenericError`, `CommandNotFound`…) and text. */
export class QmpError extends DriverError {
  readonly errorClass: string
  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${desc} (${errorClass})`, { details: { command, errorClass } })
    this.errorClass = errorClass
  }
}

interface Pending {
  command: string
  resolve: (value: unknown) => void
  reject: (err: Error) => void
}

export interface QmpConnectOptions {
  /** Connect, greeting and negotiation deadline. @default 5000 */
  timeoutMs?: number
  signal?: AbortSignal
  onEvent?: (event: QmpEvent) => void
}

/** One negotiated QMP session. Close it when done: QEMU serves one client per monitor socket. */
export class QmpClient {
  readonly #socket: Socket
  readonly #pending = new Map<string, Pending>()
  readonly #onEvent: ((event: QmpEvent) => void) | undefined
  #buffer = ''
  #nextId = 1
  #closed: Error | undefined
  /** The greeting's QEMU version, e.g. `{ major: 7, minor: 2, micro: 22 }`. */
  version: { major: number; minor: number; micro: number } | undefined
  #greeting: { resolve: () => void; reject: (err: Error) => void } | undefined

  private constructor(socket: Socket, onEvent: ((event: QmpEvent) => void) | undefined) {
    this.#socket = socket
    this.#onEvent = onEvent
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => this.#receive(chunk))
    socket.on('error', (err) =>
      this.#fail(new DriverError(`QMP socket error: ${err.message}`, { cause: err })),
    )
    socket.on('close', () => this.#fail(new DriverError('QMP connection closed')))
  }

  /**
   * Connects to a QMP socket and negotiates capabilities.
   * @throws DriverError when QEMU does not answer in time or the socket is gone
   */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const signal = withTimeout(options.timeoutMs ?? 5000, options.signal)
    const socket = createConnection(path)
    const client = new QmpClient(socket, options.onEvent)
    const onAbort = (): void => {
      client.#fail(
        new DriverError(`QMP at ${path} did not answer in time`, { cause: signal.reason }),
      )
    }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      await new Promise<void>((resolve, reject) => {
        client.#greeting = { resolve, reject }
      })
      await client.execute('qmp_capabilities')
      return client
    } catch (err) {
      client.close()
      throw err
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  #fail(err: Error): void {
    if (this.#closed !== undefined) {
      return
    }
    this.#closed = err
    this.#greeting?.reject(err)
    this.#greeting = undefined
    for (const pending of this.#pending.values()) {
      pending.reject(err)
    }
    this.#pending.clear()
    this.#socket.destroy()
  }

  #receive(chunk: string): void {
    this.#buffer += chunk
    let newline: number
    while ((newline = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, newline).trim()
      this.#buffer = this.#buffer.slice(newline + 1)
      if (line.length > 0) {
        this.#handle(line)
      }
    }
    if (this.#buffer.length > 16 * 1024 * 1024) {
      this.#fail(new DriverError('QMP sent a line longer than 16 MiB'))
    }
  }

  #handle(line: string): void {
    let message: Record<string, unknown>
    try {
      message = JSON.parse(line) as Record<string, unknown>
    } catch {
      this.#fail(new DriverError(`QMP sent invalid JSON: ${line.slice(0, 200)}`))
      return
    }
    if (typeof message.QMP === 'object' && message.QMP !== null) {
      const qemu = (message.QMP as { version?: { qemu?: QmpClient['version'] } }).version?.qemu
      this.version = qemu
      this.#greeting?.resolve()
      this.#greeting = undefined
      return
    }
    if (typeof message.event === 'string') {
      this.#onEvent?.(message as unknown as QmpEvent)
      return
    }
    const id = typeof message.id === 'string' ? message.id : undefined
    const pending = id === undefined ? undefined : this.#pending.get(id)
    if (id === undefined || pending === undefined) {
      return // An answer to nobody (a command sent before a reconnect): nothing waits for it.
    }
    this.#pending.delete(id)
    const error = message.error as { class?: string; desc?: string } | undefined
    if (error !== undefined) {
      pending.reject(
        new QmpError(pending.command, error.class ?? 'GenericError', error.desc ?? 'unknown error'),
      )
    } else {
      pending.resolve(message.return)
    }
  }

  /**
   * Runs a command and resolves with its `return` value.
   * @throws QmpError when QEMU refuses it, DriverError when the connection is lost
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed !== undefined) {
      return Promise.reject(this.#closed)
    }
    const id = `sandcell-${this.#nextId++}`
    const message =
      args === undefined ? { execute: command, id } : { execute: command, arguments: args, id }
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject })
      this.#socket.write(`${JSON.stringify(message)}\n`)
    })
  }

  close(): void {
    this.#fail(new DriverError('QMP connection closed by us'))
  }
}

/**
 * Opens a session, runs `use`, and closes it (QEMU serves one client per monitor socket). The
 * whole session, not just the connect, must end within `timeoutMs`.
 */
export async function withQmp<T>(
  path: string,
  use: (qmp: QmpClient) => Promise<T>,
  options: QmpConnectOptions = {},
): Promise<T> {
  const signal = withTimeout(options.timeoutMs ?? 5000, options.signal)
  const qmp = await QmpClient.connect(path, { ...options, signal })
  const onAbort = (): void => qmp.close()
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    return await use(qmp)
  } catch (err) {
    if (signal.aborted && !(options.signal?.aborted ?? false)) {
      throw new DriverError(`QMP session on ${path} did not finish in time`, { cause: err })
    }
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
    qmp.close()
  }
}
