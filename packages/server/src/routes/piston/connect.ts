/**
 * Piston's interactive execution: a WebSocket at `/api/v2/connect`. The client sends `init`
 * (the execute fields; stdin is discarded, as Piston does), then `data` for stdin and `signal`;
 * the server sends `runtime`, `stage`, `data` (stdout/stderr as they come), `exit` per stage,
 * and `error` before closing. Close codes are Piston's: 4000 already initialized, 4001 no init
 * within a second, 4002 error notified, 4003 not initialized, 4004 stdin only, 4005 bad signal,
 * 4999 job completed. sandcell adds `{ "type": "eof" }`, which closes the program's stdin.
 */
import type { FastifyInstance } from 'fastify'
import type { WebSocket } from 'ws'
import { errorMessage } from '@sandcell/shared'
import { RunControl, pistonOutcome, type RunService } from '@sandcell/runs'
import { parsePistonJob } from './piston-job.js'

/** Piston's signal names (its globals.SIGNALS); only SIGTERM and SIGKILL reach a process. */
const pistonSignals = new Set([
  'SIGHUP',
  'SIGINT',
  'SIGQUIT',
  'SIGILL',
  'SIGTRAP',
  'SIGABRT',
  'SIGBUS',
  'SIGFPE',
  'SIGKILL',
  'SIGUSR1',
  'SIGSEGV',
  'SIGUSR2',
  'SIGPIPE',
  'SIGALRM',
  'SIGTERM',
  'SIGSTKFLT',
  'SIGCHLD',
  'SIGCONT',
  'SIGSTOP',
  'SIGTSTP',
  'SIGTTIN',
  'SIGTTOU',
  'SIGURG',
  'SIGXCPU',
  'SIGXFSZ',
  'SIGVTALRM',
  'SIGPROF',
  'SIGWINCH',
  'SIGIO',
  'SIGPWR',
  'SIGSYS',
])

const initTimeoutMs = 1000

/** Chunks pushed by one side, read by an async iterator; ends on close(). */
export class ChunkQueue implements AsyncIterable<Uint8Array> {
  readonly #chunks: Uint8Array[] = []
  #waiting: ((result: IteratorResult<Uint8Array>) => void) | undefined
  #closed = false

  push(chunk: Uint8Array): void {
    if (this.#closed) {
      return
    }
    if (this.#waiting !== undefined) {
      const wake = this.#waiting
      this.#waiting = undefined
      wake({ value: chunk, done: false })
    } else {
      this.#chunks.push(chunk)
    }
  }

  close(): void {
    this.#closed = true
    this.#waiting?.({ value: undefined, done: true })
    this.#waiting = undefined
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => {
        const chunk = this.#chunks.shift()
        if (chunk !== undefined) {
          return Promise.resolve({ value: chunk, done: false })
        }
        if (this.#closed) {
          return Promise.resolve({ value: undefined, done: true })
        }
        return new Promise((resolve) => {
          this.#waiting = resolve
        })
      },
      return: () => {
        this.close()
        return Promise.resolve({ value: undefined, done: true })
      },
    }
  }
}

interface ClientMessage {
  type?: unknown
  stream?: unknown
  data?: unknown
  signal?: unknown
}

export function connectRoute(app: FastifyInstance, options: { runs: RunService }): void {
  const { runs } = options
  app.get('/connect', { websocket: true }, (socket: WebSocket, request) => {
    const log = request.log
    let started = false
    const stdin = new ChunkQueue()
    const control = new RunControl()
    const abort = new AbortController()
    const send = (message: Record<string, unknown>): void => {
      if (socket.readyState === socket.OPEN) {
        socket.send(JSON.stringify(message))
      }
    }
    const fail = (message: string): void => {
      // A close reason holds at most 123 bytes: the message goes first, then the close.
      send({ type: 'error', message })
      socket.close(4002, 'Notified Error')
    }
    const initTimer = setTimeout(() => {
      if (!started) {
        socket.close(4001, 'Initialization Timeout')
      }
    }, initTimeoutMs)
    socket.on('close', () => {
      clearTimeout(initTimer)
      stdin.close()
      abort.abort(new Error('the client closed the connection'))
    })

    const init = async (message: ClientMessage): Promise<void> => {
      const job = await parsePistonJob(message, runs)
      await runs.execute({
        language: job.language,
        files: job.files,
        stdin,
        args: job.args,
        compile: job.compile,
        run: job.run,
        control,
        signal: abort.signal,
        hooks: {
          onRuntime: (language) =>
            send({ type: 'runtime', language: language.config.name, version: language.version }),
          onStage: (stage) => send({ type: 'stage', stage }),
          onOutput: (_stage, stream, data) => send({ type: 'data', stream, data }),
          onStageEnd: (stage, result) =>
            send({ type: 'exit', stage, ...pistonOutcome(result.end) }),
        },
      })
      socket.close(4999, 'Job Completed')
    }

    socket.on('message', (raw: Buffer) => {
      let message: ClientMessage
      try {
        const parsed: unknown = JSON.parse(raw.toString('utf8'))
        message = typeof parsed === 'object' && parsed !== null ? parsed : {}
      } catch (err) {
        fail(errorMessage(err))
        return
      }
      switch (message.type) {
        case 'init':
          if (started) {
            socket.close(4000, 'Already Initialized')
            return
          }
          started = true
          init(message).catch((err: unknown) => {
            if (!abort.signal.aborted) {
              log.debug({ err: errorMessage(err) }, 'interactive run failed')
              fail(errorMessage(err))
            }
          })
          return
        case 'data':
          if (!started) {
            socket.close(4003, 'Not yet initialized')
          } else if (message.stream !== 'stdin') {
            socket.close(4004, 'Can only write to stdin')
          } else if (typeof message.data === 'string') {
            stdin.push(Buffer.from(message.data, 'utf8'))
          }
          return
        case 'eof':
          if (!started) {
            socket.close(4003, 'Not yet initialized')
          } else {
            stdin.close()
          }
          return
        case 'signal':
          if (!started) {
            socket.close(4003, 'Not yet initialized')
          } else if (typeof message.signal !== 'string' || !pistonSignals.has(message.signal)) {
            socket.close(4005, 'Invalid signal')
          } else if (message.signal === 'SIGTERM' || message.signal === 'SIGKILL') {
            control.signal(message.signal).catch((err: unknown) => fail(errorMessage(err)))
          } else {
            fail(`${message.signal} cannot be sent here; SIGTERM and SIGKILL can`)
          }
          return
        default:
          // Piston ignores messages of other types.
          return
      }
    })
  })
}
