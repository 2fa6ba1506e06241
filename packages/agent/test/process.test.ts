// Process service against the real agent bundle: start/stream/exit, users, env, input, signals,
// process groups, re-attach, flooding, slow subscribers, keepalives and PTYs.
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { create } from '@bufbuild/protobuf'
import { Code, ConnectError } from '@connectrpc/connect'
import { createAsyncIterable } from '@connectrpc/connect/protocol'
import { Process, Signal, StreamInputRequestSchema } from '@sandcell/protocol'
import { startAgent, testUserId, waitFor, type TestAgent } from './helpers/agent.js'
import { collectRun, follow } from './helpers/process-events.js'

const sh = (script: string, extra: Record<string, unknown> = {}) => ({
  process: { cmd: '/bin/sh', args: ['-c', script], envs: {} },
  ...extra,
})

async function expectCode(
  promise: Promise<unknown>,
  code: Code,
  pattern?: RegExp,
): Promise<ConnectError> {
  try {
    await promise
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`)
    assert.equal(Code[err.code], Code[code], err.message)
    if (pattern !== undefined) {
      assert.match(err.rawMessage, pattern)
    }
    return err
  }
  return assert.fail(`expected ${Code[code]}, but the call succeeded`)
}

/** A stream's first message, to make the RPC fail or start. */
async function firstEvent(stream: AsyncIterable<unknown>): Promise<unknown> {
  for await (const event of stream) {
    return event
  }
  return undefined
}

/** The agent's peak resident memory so far (VmHWM), KiB. */
function peakRssKiB(pid: number): number {
  return Number(/^VmHWM:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
}

function isGone(pid: number): boolean {
  try {
    return /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))
  } catch {
    return true
  }
}

describe('process service', () => {
  let agent: TestAgent
  const root = () => agent.client(Process, { user: 'root' })

  before(async () => {
    agent = await startAgent({ args: ['--subscriber-stall-ms', '300'] })
  })
  after(() => agent.dispose())

  it('streams start, stdout and stderr chunks and an end event with exit code 0', async () => {
    const run = await collectRun(root().start(sh('echo out; echo err >&2')))
    assert.ok(run.pid > 0)
    assert.equal(run.kinds[0], 'start')
    assert.equal(run.kinds.at(-1), 'end')
    assert.equal(run.stdout, 'out\n')
    assert.equal(run.stderr, 'err\n')
    assert.equal(run.end?.exitCode, 0)
    assert.equal(run.end?.exited, true)
    assert.equal(run.end?.status, 'exit status 0')
    assert.equal(run.end?.error, undefined)
  })

  it('reports a non-zero exit code with error set (the SDK throws CommandExitError from it)', async () => {
    const run = await collectRun(root().start(sh('exit 3')))
    assert.equal(run.end?.exitCode, 3)
    assert.equal(run.end?.exited, true)
    assert.equal(run.end?.status, 'exit status 3')
    assert.equal(run.end?.error, 'exit status 3')
  })

  it('execs cmd with args directly, without a shell', async () => {
    const run = await collectRun(
      root().start({ process: { cmd: '/bin/echo', args: ['$HOME', 'a b'] } }),
    )
    assert.equal(run.stdout, '$HOME a b\n')
  })

  it('finds a bare command name in PATH', async () => {
    const run = await collectRun(root().start({ process: { cmd: 'echo', args: ['found'] } }))
    assert.equal(run.stdout, 'found\n')
  })

  it('rejects a command that does not exist with not_found before any event', async () => {
    await expectCode(
      firstEvent(root().start({ process: { cmd: '/no/such/binary' } })),
      Code.NotFound,
      /\/no\/such\/binary/,
    )
    await expectCode(
      firstEvent(root().start({ process: { cmd: 'no-such-command-xyz' } })),
      Code.NotFound,
      /no-such-command-xyz/,
    )
  })

  it('rejects a command that is not executable with permission_denied', async () => {
    const plain = agent.host('/tmp/not-executable')
    writeFileSync(plain, 'echo hi\n', { mode: 0o644 })
    const rootOnly = agent.host('/tmp/root-only')
    writeFileSync(rootOnly, '#!/bin/sh\necho hi\n', { mode: 0o700 })
    await expectCode(
      firstEvent(root().start({ process: { cmd: plain } })),
      Code.PermissionDenied,
      /not executable/,
    )
    await expectCode(firstEvent(root().start({ process: { cmd: '/tmp' } })), Code.PermissionDenied)
    await expectCode(
      firstEvent(agent.client(Process, { user: 'user' }).start({ process: { cmd: rootOnly } })),
      Code.PermissionDenied,
    )
    const run = await collectRun(root().start({ process: { cmd: rootOnly } }))
    assert.equal(run.stdout, 'hi\n')
  })

  it('rejects an empty cmd, an unknown user and a missing cwd with invalid_argument', async () => {
    await expectCode(
      firstEvent(root().start({ process: { cmd: '' } })),
      Code.InvalidArgument,
      /cmd is required/,
    )
    await expectCode(
      firstEvent(agent.client(Process, { user: 'mallory' }).start(sh('true'))),
      Code.InvalidArgument,
      /mallory/,
    )
    await expectCode(
      firstEvent(root().start({ process: { cmd: '/bin/true', cwd: '/does/not/exist' } })),
      Code.InvalidArgument,
      /cwd .*does not exist/,
    )
  })

  it('rejects a malformed Authorization header with invalid_argument', async () => {
    const client = agent.client(Process, { headers: { authorization: 'Bearer nope' } })
    await expectCode(firstEvent(client.start(sh('true'))), Code.InvalidArgument, /Basic/)
  })

  it('runs as the requested user with their ids, home, env and default cwd', async () => {
    const script = 'id -u; id -g; echo $HOME $USER $LOGNAME $SHELL; pwd; echo $PATH'
    const user = await collectRun(agent.client(Process, { user: 'user' }).start(sh(script)))
    const lines = user.stdout.trim().split('\n')
    assert.equal(lines[0], String(testUserId))
    assert.equal(lines[1], String(testUserId))
    assert.equal(lines[2], '/home/user user user /bin/bash')
    assert.equal(lines[3], agent.host('/home/user'))
    assert.match(lines[4] ?? '', /\/usr\/bin/)
    const asRoot = await collectRun(root().start(sh('id -u')))
    assert.equal(asRoot.stdout, '0\n')
  })

  it('uses the default user `user` when the request names none', async () => {
    const run = await collectRun(agent.client(Process).start(sh('id -u')))
    assert.equal(run.stdout, `${testUserId}\n`)
  })

  it('gives a process /init env vars and lets the request envs win', async () => {
    const run = await collectRun(
      root().start({
        process: {
          cmd: '/bin/sh',
          args: ['-c', 'echo $A $B $' + agent.marker.name],
          envs: { A: 'request', B: 'b' },
        },
      }),
    )
    assert.equal(run.stdout, `request b ${agent.marker.value}\n`)
  })

  it('runs in the requested cwd, relative to the home', async () => {
    const run = await collectRun(
      agent.client(Process, { user: 'user' }).start({ process: { cmd: '/bin/pwd', cwd: '.' } }),
    )
    assert.equal(run.stdout.trim(), agent.host('/home/user'))
  })

  it('closes stdin unless asked to keep it open', async () => {
    const run = await collectRun(root().start(sh('cat; echo done')))
    assert.equal(run.stdout, 'done\n')
  })

  it('sends stdin with SendInput and CloseStdin ends it', async () => {
    const client = root()
    const stream = follow(client.start(sh('cat', { stdin: true })))
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    await client.sendInput({
      process: { selector: { case: 'pid', value: pid } },
      input: { input: { case: 'stdin', value: Buffer.from('hello\n') } },
    })
    await stream.until('echo', (r) => r.stdout === 'hello\n')
    await client.closeStdin({ process: { selector: { case: 'pid', value: pid } } })
    const run = await stream.done
    assert.equal(run.end?.exitCode, 0)
  })

  it('streams stdin with StreamInput (first message selects the process)', async () => {
    const client = root()
    const stream = follow(client.start(sh('cat', { stdin: true, tag: 'stream-input' })))
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    const inputs = [
      create(StreamInputRequestSchema, {
        event: {
          case: 'start',
          value: { process: { selector: { case: 'tag', value: 'stream-input' } } },
        },
      }),
      create(StreamInputRequestSchema, { event: { case: 'keepalive', value: {} } }),
      ...['one ', 'two ', 'three\n'].map((word) =>
        create(StreamInputRequestSchema, {
          event: {
            case: 'data',
            value: { input: { input: { case: 'stdin', value: Buffer.from(word) } } },
          },
        }),
      ),
    ]
    await client.streamInput(createAsyncIterable(inputs))
    await stream.until('echo', (r) => r.stdout === 'one two three\n')
    await client.closeStdin({ process: { selector: { case: 'pid', value: pid } } })
    await stream.done
  })

  it('rejects StreamInput data before start, and input of the wrong kind', async () => {
    const client = root()
    const dataFirst = [
      create(StreamInputRequestSchema, {
        event: {
          case: 'data',
          value: { input: { input: { case: 'stdin', value: Buffer.from('x') } } },
        },
      }),
    ]
    await expectCode(
      client.streamInput(createAsyncIterable(dataFirst)),
      Code.InvalidArgument,
      /first StreamInput message must be start/,
    )
    const stream = follow(client.start(sh('cat', { stdin: true })))
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    const selector = { selector: { case: 'pid' as const, value: pid } }
    await expectCode(
      client.sendInput({
        process: selector,
        input: { input: { case: 'pty', value: Buffer.from('x') } },
      }),
      Code.FailedPrecondition,
    )
    await expectCode(client.sendInput({ process: selector, input: {} }), Code.InvalidArgument)
    await expectCode(
      client.update({ process: selector, pty: { size: { cols: 10, rows: 10 } } }),
      Code.FailedPrecondition,
    )
    await client.closeStdin({ process: selector })
    await stream.done
    const noStdin = follow(client.start(sh('sleep 5')))
    const other = await noStdin.until('start', (r) => r.pid > 0)
    await expectCode(
      client.sendInput({
        process: { selector: { case: 'pid', value: other.pid } },
        input: { input: { case: 'stdin', value: Buffer.from('x') } },
      }),
      Code.FailedPrecondition,
      /without stdin/,
    )
    await client.sendSignal({
      process: { selector: { case: 'pid', value: other.pid } },
      signal: Signal.SIGKILL,
    })
    await noStdin.done
  })

  it('answers not_found for an unknown pid or tag and invalid_argument for no selector', async () => {
    const client = root()
    await expectCode(
      client.sendSignal({
        process: { selector: { case: 'pid', value: 999_999 } },
        signal: Signal.SIGKILL,
      }),
      Code.NotFound,
    )
    await expectCode(
      firstEvent(client.connect({ process: { selector: { case: 'tag', value: 'nope' } } })),
      Code.NotFound,
    )
    await expectCode(client.closeStdin({}), Code.InvalidArgument)
  })

  it('lists running processes with config and tag, and forgets them when they end', async () => {
    const client = root()
    const stream = follow(
      client.start({
        process: { cmd: '/bin/sleep', args: ['30'], envs: { K: 'v' }, cwd: '/tmp' },
        tag: 'sleeper',
      }),
    )
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    const { processes } = await client.list({})
    const listed = processes.find((p) => p.pid === pid)
    assert.equal(listed?.tag, 'sleeper')
    assert.equal(listed?.config?.cmd, '/bin/sleep')
    assert.deepEqual(listed?.config?.args, ['30'])
    assert.deepEqual(listed?.config?.envs, { K: 'v' })
    assert.equal(listed?.config?.cwd, '/tmp')
    await client.sendSignal({
      process: { selector: { case: 'tag', value: 'sleeper' } },
      signal: Signal.SIGTERM,
    })
    const run = await stream.done
    assert.deepEqual(
      { exitCode: run.end?.exitCode, exited: run.end?.exited, status: run.end?.status },
      { exitCode: -1, exited: false, status: 'signal: terminated' },
    )
    const after = await client.list({})
    assert.equal(
      after.processes.find((p) => p.pid === pid),
      undefined,
    )
  })

  it('kills a process that ignores SIGTERM with SIGKILL', async () => {
    const client = root()
    const stream = follow(
      client.start(sh('trap "" TERM; echo ready; while :; do sleep 0.05; done')),
    )
    const { pid } = await stream.until('ready', (r) => r.stdout === 'ready\n')
    await client.sendSignal({
      process: { selector: { case: 'pid', value: pid } },
      signal: Signal.SIGTERM,
    })
    await assert.rejects(stream.until('an end after SIGTERM', (r) => r.end !== undefined, 300))
    await client.sendSignal({
      process: { selector: { case: 'pid', value: pid } },
      signal: Signal.SIGKILL,
    })
    const run = await stream.done
    assert.equal(run.end?.status, 'signal: killed')
    assert.equal(run.end?.exitCode, -1)
  })

  it('signals the whole process group, so children die with the process', async () => {
    const client = root()
    const stream = follow(client.start(sh('sleep 60 & echo $!; wait')))
    const first = await stream.until('child pid', (r) => /^\d+\n$/.test(r.stdout))
    const childPid = Number(first.stdout.trim())
    assert.equal(isGone(childPid), false)
    await client.sendSignal({
      process: { selector: { case: 'pid', value: first.pid } },
      signal: Signal.SIGKILL,
    })
    await stream.done
    await waitFor('the child to be gone', () => (isGone(childPid) ? true : undefined))
  })

  it('ends the stream when the process exits even if a background child holds its output', async () => {
    const client = root()
    const started = Date.now()
    const run = await collectRun(client.start(sh('sleep 30 & echo $!; echo bye')))
    assert.equal(run.end?.exitCode, 0)
    assert.match(run.stdout, /bye\n$/)
    assert.ok(Date.now() - started < 5000)
    const childPid = Number(run.stdout.split('\n')[0])
    process.kill(-run.pid, 'SIGKILL')
    await waitFor('the orphan to be gone', () => (isGone(childPid) ? true : undefined))
  })

  it('delivers every byte of a command flooding its output, with bounded agent memory', async () => {
    const bytes = 48 * 1024 * 1024
    const peakBefore = peakRssKiB(agent.pid)
    let received = 0
    let end
    for await (const response of root().start(sh(`head -c ${bytes} /dev/zero`))) {
      const event = response.event?.event
      if (event?.case === 'data') {
        received += event.value.output.value?.byteLength ?? 0
      } else if (event?.case === 'end') {
        end = event.value
      }
    }
    assert.equal(received, bytes)
    assert.equal(end?.exitCode, 0)
    // V8's young generation grows to ~50 MiB under this allocation rate whatever the output size
    // (192 MiB peaks the same): bounded, unlike buffering the output would be.
    const growthMiB = (peakRssKiB(agent.pid) - peakBefore) / 1024
    assert.ok(growthMiB < 80, `agent peak RSS grew by ${growthMiB.toFixed(1)} MiB`)
  })

  it('drops a subscriber that stops reading, while the others get everything', async () => {
    const client = root()
    // The starter reads everything; a second, raw HTTP subscriber never reads its response.
    const stream = follow(
      client.start(sh('echo go; read x; head -c 33554432 /dev/zero; echo tail', { stdin: true })),
    )
    const { pid } = await stream.until('go', (r) => r.stdout === 'go\n')
    const stuck = await openStuckConnect(agent, pid)
    await client.sendInput({
      process: { selector: { case: 'pid', value: pid } },
      input: { input: { case: 'stdin', value: Buffer.from('\n') } },
    })
    const run = await stream.done
    assert.equal(run.end?.exitCode, 0)
    assert.match(run.stdout, /tail\n$/)
    assert.equal(run.stdout.length, 'go\n'.length + 33554432 + 'tail\n'.length)
    stuck.destroy()
    await waitFor('the drop to be logged', () =>
      /dropped a slow output subscriber/.test(agent.logs()) ? true : undefined,
    )
  })

  it('keeps a process running when its Start stream disconnects, and Connect re-attaches', async () => {
    const client = root()
    const controller = new AbortController()
    const stream = follow(
      client.start(sh('read line; echo got $line', { stdin: true, tag: 'detach' }), {
        signal: controller.signal,
      }),
    )
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    controller.abort()
    await assert.rejects(stream.done)
    const reattached = follow(
      client.connect({ process: { selector: { case: 'tag', value: 'detach' } } }),
    )
    await reattached.until('start', (r) => r.pid === pid)
    await client.sendInput({
      process: { selector: { case: 'pid', value: pid } },
      input: { input: { case: 'stdin', value: Buffer.from('it\n') } },
    })
    const run = await reattached.done
    assert.equal(run.stdout, 'got it\n')
    assert.equal(run.end?.exitCode, 0)
    assert.equal(run.kinds[0], 'start')
  })

  it('gives every subscriber every event from its attach time', async () => {
    const client = root()
    const stream = follow(
      client.start(sh('read a; echo first; read b; echo second', { stdin: true })),
    )
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    const selector = { selector: { case: 'pid' as const, value: pid } }
    await client.sendInput({
      process: selector,
      input: { input: { case: 'stdin', value: Buffer.from('\n') } },
    })
    await stream.until('first', (r) => r.stdout === 'first\n')
    const late = follow(client.connect({ process: selector }))
    await late.until('start', (r) => r.pid === pid)
    await client.sendInput({
      process: selector,
      input: { input: { case: 'stdin', value: Buffer.from('\n') } },
    })
    const [a, b] = await Promise.all([stream.done, late.done])
    assert.equal(a.stdout, 'first\nsecond\n')
    assert.equal(b.stdout, 'second\n')
    assert.equal(b.end?.exitCode, 0)
  })

  it('sends keepalive events when the request asks for them', async () => {
    const client = agent.client(Process, {
      user: 'root',
      headers: { 'keepalive-ping-interval': '1' },
    })
    const run = await collectRun(client.start(sh('sleep 2.3')))
    assert.ok(run.keepalives >= 2, `keepalives: ${run.keepalives}`)
    assert.equal(run.end?.exitCode, 0)
  })

  it('kills the process when the Start deadline passes, like envd', async () => {
    const client = root()
    const stream = follow(client.start(sh('echo up; sleep 30'), { timeoutMs: 700 }))
    const { pid } = await stream.until('up', (r) => r.stdout === 'up\n')
    await assert.rejects(
      stream.done,
      (err: unknown) => err instanceof ConnectError && err.code === Code.DeadlineExceeded,
    )
    await waitFor('the process to be killed', () => (isGone(pid) ? true : undefined))
  })

  it('runs a shell on a PTY: output, input, resize and stty size', async () => {
    const client = agent.client(Process, { user: 'user' })
    const stream = follow(
      client.start({
        process: { cmd: '/bin/sh', args: [], envs: { PS1: '$ ' } },
        pty: { size: { cols: 100, rows: 30 } },
      }),
    )
    const { pid } = await stream.until('start', (r) => r.pid > 0)
    const selector = { selector: { case: 'pid' as const, value: pid } }
    const type = (text: string) =>
      client.sendInput({
        process: selector,
        input: { input: { case: 'pty', value: Buffer.from(text) } },
      })
    await type('stty size; echo $TERM; id -u\n')
    await stream.until(
      'size',
      (r) =>
        /30 100/.test(r.pty.toString()) &&
        /xterm-256color/.test(r.pty.toString()) &&
        new RegExp(`\\b${testUserId}\\b`).test(r.pty.toString()),
    )
    await client.update({ process: selector, pty: { size: { cols: 120, rows: 40 } } })
    await type('stty size\n')
    await stream.until('resized', (r) => /40 120/.test(r.pty.toString()))
    await expectCode(client.closeStdin({ process: selector }), Code.FailedPrecondition, /Ctrl-D/)
    await expectCode(
      client.sendInput({
        process: selector,
        input: { input: { case: 'stdin', value: Buffer.from('x') } },
      }),
      Code.FailedPrecondition,
    )
    await type('exit 7\n')
    const run = await stream.done
    assert.equal(run.end?.exitCode, 7)
    assert.ok(run.kinds.includes('pty'))
  })

  it('rejects a PTY command that does not exist before any event', async () => {
    await expectCode(
      firstEvent(
        root().start({ process: { cmd: '/no/such/shell' }, pty: { size: { cols: 80, rows: 24 } } }),
      ),
      Code.NotFound,
    )
  })

  it('works over gRPC-web and with the binary Connect format', async () => {
    for (const options of [
      { protocol: 'grpc-web' as const },
      { binary: true },
      { protocol: 'grpc-web' as const, binary: true, tcp: true },
    ]) {
      const client = agent.client(Process, { user: 'root', ...options })
      const run = await collectRun(client.start(sh('printf "\\001\\002\\377"; exit 2')))
      assert.deepEqual([...Buffer.from(run.stdout, 'latin1')].length > 0, true)
      assert.equal(run.end?.exitCode, 2, JSON.stringify(options))
      await expectCode(firstEvent(client.start({ process: { cmd: '/nope' } })), Code.NotFound)
    }
  })
})

/** Opens a Connect stream over raw HTTP and never reads the response (a stuck consumer). */
async function openStuckConnect(agent: TestAgent, pid: number): Promise<{ destroy(): void }> {
  const { connect } = await import('node:net')
  const socket = connect(agent.socketPath)
  await new Promise((resolve) => socket.once('connect', resolve))
  const body = JSON.stringify({ process: { pid } })
  const framed = Buffer.alloc(5 + Buffer.byteLength(body))
  framed.writeUInt32BE(Buffer.byteLength(body), 1)
  framed.write(body, 5)
  socket.write(
    'POST /process.Process/Connect HTTP/1.1\r\nHost: agent\r\nContent-Type: application/connect+json\r\n' +
      `Authorization: Basic cm9vdDo=\r\nContent-Length: ${framed.length}\r\n\r\n`,
  )
  socket.write(framed)
  socket.pause()
  // Wait until the agent has the subscriber (the start event is in flight to us).
  await new Promise((resolve) => setTimeout(resolve, 100))
  return { destroy: () => socket.destroy() }
}
