/**
 * runCommand against a fake envd process service: a process that prints, reads its stdin and
 * ends when told to or when it gets SIGKILL, so the event handling is checked without an agent.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Code, ConnectError } from '@connectrpc/connect'
import { Signal } from '@sandcell/protocol'
import { NotFoundError } from '@sandcell/shared'
import { runCommand, type ProcessConnection } from './run-command.js'

interface Call {
  method: string
  request: unknown
  headers: Record<string, string>
}

interface FakeProcess {
  /** Output events sent after the start event. */
  stdout?: string
  stderr?: string
  /** The end status; without it the process runs until SIGKILL. */
  exit?: number
  /** Ends only once stdin is closed, echoing it to stdout. */
  cat?: boolean
}

const event = (value: unknown) => ({ event: { event: value } })

/** A fake process client, recording each call with its headers. */
function fakeConnection(fake: FakeProcess): { connection: ProcessConnection; calls: Call[] } {
  const calls: Call[] = []
  let killed: () => void = () => undefined
  let stdinClosed: () => void = () => undefined
  let stdin = ''
  const record = (
    method: string,
    request: unknown,
    options?: { headers?: Record<string, string> },
  ) =>
    calls.push({
      method,
      request,
      headers: options?.headers ?? {},
    })
  const fakeProcess = {
    async *start(request: unknown, options?: { headers?: Record<string, string> }) {
      record('start', request, options)
      const ended = new Promise<string>((resolve) => {
        killed = () => resolve('signal: killed')
        stdinClosed = () => resolve('cat')
      })
      yield event({ case: 'start', value: { pid: 42 } })
      if (fake.stdout !== undefined) {
        yield event({
          case: 'data',
          value: { output: { case: 'stdout', value: enc(fake.stdout) } },
        })
      }
      if (fake.stderr !== undefined) {
        yield event({
          case: 'data',
          value: { output: { case: 'stderr', value: enc(fake.stderr) } },
        })
      }
      const status = fake.exit === undefined ? await ended : `exit status ${fake.exit}`
      if (status === 'cat') {
        yield event({ case: 'data', value: { output: { case: 'stdout', value: enc(stdin) } } })
        yield event({ case: 'end', value: { status: 'exit status 0', exitCode: 0 } })
        return
      }
      yield event({ case: 'end', value: { status, exitCode: fake.exit ?? -1 } })
    },
    sendSignal(request: { signal: Signal }, options?: { headers?: Record<string, string> }) {
      record('sendSignal', request, options)
      if (request.signal === Signal.SIGKILL) {
        killed()
      }
      return Promise.resolve({})
    },
    sendInput(
      request: { input: { input: { value: Uint8Array } } },
      options?: { headers?: Record<string, string> },
    ) {
      record('sendInput', request, options)
      stdin += Buffer.from(request.input.input.value).toString('utf8')
      return Promise.resolve({})
    },
    closeStdin(request: unknown, options?: { headers?: Record<string, string> }) {
      record('closeStdin', request, options)
      stdinClosed()
      return Promise.resolve({})
    },
  }
  return { connection: { process: fakeProcess } as unknown as ProcessConnection, calls }
}

const enc = (text: string): Uint8Array => new TextEncoder().encode(text)
const dec = (chunks: Uint8Array[]): string => Buffer.concat(chunks).toString('utf8')

describe('runCommand', () => {
  it('streams output and returns the exit code, as the named user', async () => {
    const { connection, calls } = fakeConnection({ stdout: 'out', stderr: 'err', exit: 3 })
    const stdout: Uint8Array[] = []
    const stderr: Uint8Array[] = []
    let started: number | undefined
    const result = await runCommand(connection, {
      cmd: '/bin/sh',
      args: ['-c', 'exit 3'],
      user: 'root',
      accessToken: 'token',
      onStdout: (chunk) => stdout.push(chunk),
      onStderr: (chunk) => stderr.push(chunk),
      onStart: (pid) => (started = pid),
    })
    assert.deepEqual(result, {
      pid: 42,
      outcome: { code: 3, signal: null },
      exitCode: 3,
      status: 'exit status 3',
      timedOut: false,
    })
    assert.equal(started, 42)
    assert.equal(dec(stdout), 'out')
    assert.equal(dec(stderr), 'err')
    const [start] = calls
    assert.equal(start?.headers.authorization, `Basic ${Buffer.from('root:').toString('base64')}`)
    assert.equal(start?.headers['x-access-token'], 'token')
  })

  it('acts as the default user when none is named', async () => {
    const { connection, calls } = fakeConnection({ exit: 0 })
    await runCommand(connection, { cmd: 'true' })
    assert.equal(
      calls[0]?.headers.authorization,
      `Basic ${Buffer.from('user:').toString('base64')}`,
    )
  })

  it('kills the process at its deadline and reports 128 + SIGKILL', async () => {
    const { connection, calls } = fakeConnection({})
    const result = await runCommand(connection, { cmd: 'sleep', args: ['60'], timeoutMs: 20 })
    assert.equal(result.timedOut, true)
    assert.equal(result.exitCode, 137)
    assert.deepEqual(result.outcome, { code: null, signal: 'SIGKILL' })
    assert.ok(calls.some((call) => call.method === 'sendSignal'))
  })

  it('kills the process when `kill` aborts and still returns its result', async () => {
    const { connection } = fakeConnection({})
    const kill = new AbortController()
    const result = await runCommand(connection, {
      cmd: 'sleep',
      kill: kill.signal,
      onStart: () => kill.abort(),
    })
    assert.equal(result.exitCode, 137)
    assert.equal(result.timedOut, false)
  })

  it('feeds stdin bytes, then closes stdin', async () => {
    const { connection, calls } = fakeConnection({ cat: true })
    const stdout: Uint8Array[] = []
    const result = await runCommand(connection, {
      cmd: 'cat',
      stdin: enc('hello\n'),
      onStdout: (chunk) => stdout.push(chunk),
    })
    assert.equal(result.exitCode, 0)
    assert.equal(dec(stdout), 'hello\n')
    assert.deepEqual(
      calls.map((call) => call.method),
      ['start', 'sendInput', 'closeStdin'],
    )
  })

  it('throws NotFoundError for a command that does not exist', async () => {
    const connection = {
      process: {
        start: () => ({
          [Symbol.asyncIterator]: () => ({
            next: () =>
              Promise.reject(new ConnectError('executable file not found: nope', Code.NotFound)),
          }),
        }),
      },
    } as unknown as ProcessConnection
    await assert.rejects(runCommand(connection, { cmd: 'nope' }), (err: unknown) => {
      assert.ok(err instanceof NotFoundError)
      assert.equal(err.message, 'executable file not found: nope')
      return true
    })
  })
})
