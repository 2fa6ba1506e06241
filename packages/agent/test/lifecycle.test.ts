// The agent's process contract with the runtime: command line, ready line, socket, startup
// failures, SIGTERM shutdown, and surviving hostile input.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { cpSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { Code, ConnectError } from '@connectrpc/connect'
import { Filesystem, Process } from '@sandcell/protocol'
import {
  agentBundle,
  createTestRoot,
  markedProcesses,
  startAgentFor,
  waitFor,
} from './helpers/agent.js'
import { collectRun, follow } from './helpers/process-events.js'

/** Runs the bundle to completion with `args`; returns its exit code and stderr. */
async function runAgent(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const env = { ...process.env }
  delete env.NODE_EXTRA_CA_CERTS
  const child = spawn(process.execPath, [agentBundle, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env,
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8')
  })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  return { code, stderr }
}

function assertOneLineFailure(
  result: { code: number | null; stderr: string },
  pattern: RegExp,
): void {
  assert.equal(result.code, 2, result.stderr)
  const lines = result.stderr.trim().split('\n')
  assert.equal(lines.length, 1, result.stderr)
  assert.match(lines[0] ?? '', /^sandcell-agent: startup failed: /)
  assert.match(lines[0] ?? '', pattern)
}

describe('agent lifecycle', () => {
  it('writes a ready line with its pid and bound listeners, and makes the socket 0600', async (t) => {
    const agent = await startAgentFor(t)
    assert.ok(agent.pid > 0)
    assert.ok(agent.port > 0)
    const stats = statSync(agent.socketPath)
    assert.ok(stats.isSocket())
    assert.equal(stats.mode & 0o777, 0o600)
    const health = await agent.http('GET', '/health', { tcp: true })
    assert.equal(health.status, 204)
  })

  it('replaces a stale socket file', async (t) => {
    const first = await startAgentFor(t)
    const path = first.socketPath
    // Kill hard so the socket file stays behind, then start another agent on the same path.
    await first.kill()
    assert.ok(statSync(path).isSocket())
    const env = { ...process.env }
    delete env.NODE_EXTRA_CA_CERTS
    const child = spawn(
      process.execPath,
      [agentBundle, '--listen', `unix:${path}`, '--root', first.root, '--ready-fd', '3'],
      {
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
        env,
      },
    )
    const exited = new Promise((resolve) => child.once('exit', resolve))
    t.after(async () => {
      child.kill('SIGKILL')
      await exited
    })
    const ready = await new Promise<string>((resolve) =>
      child.stdio[3]?.once('data', (chunk: Buffer) => resolve(chunk.toString())),
    )
    assert.match(ready, /^ready \{/)
    await new Promise<void>((resolve, reject) => {
      const socket = connect(path, () => {
        socket.destroy()
        resolve()
      })
      socket.once('error', reject)
    })
  })

  it('fails startup with one clear stderr line: bad flags, missing root, unusable socket path', async () => {
    const root = createTestRoot()
    try {
      assertOneLineFailure(await runAgent([]), /at least one --listen/)
      assertOneLineFailure(await runAgent(['--listen', 'unix:/tmp/x.sock', '--what']), /what/)
      assertOneLineFailure(
        await runAgent(['--listen', `unix:${root}/a.sock`, '--root', '/does/not/exist']),
        /does not exist/,
      )
      assertOneLineFailure(
        await runAgent(['--listen', `unix:${root}/missing-dir/a.sock`, '--root', root]),
        /cannot listen on unix:/,
      )
      const notSocket = join(root, 'plain-file')
      writeFileSync(notSocket, 'x')
      assertOneLineFailure(
        await runAgent(['--listen', `unix:${notSocket}`, '--root', root]),
        /not a socket/,
      )
      const tokenFile = join(root, 'empty-token')
      writeFileSync(tokenFile, '')
      assertOneLineFailure(
        await runAgent([
          '--listen',
          `unix:${root}/b.sock`,
          '--root',
          root,
          '--access-token-file',
          tokenFile,
        ]),
        /empty/,
      )
    } finally {
      rmSync(join(root, '..'), { recursive: true, force: true })
    }
  })

  it('exits 0 on SIGTERM after killing every process group it started', async (t) => {
    const agent = await startAgentFor(t)
    const client = agent.client(Process, { user: 'root' })
    const stream = follow(
      client.start({
        process: { cmd: '/bin/sh', args: ['-c', 'trap "" TERM; sleep 60 & echo started; wait'] },
      }),
    )
    await stream.until('started', (r) => r.stdout === 'started\n')
    assert.ok(markedProcesses(agent.marker).length >= 2)
    assert.equal(await agent.stop(), 0)
    await assert.rejects(stream.done)
    await waitFor('the process group to be gone', () =>
      markedProcesses(agent.marker).length === 0 ? true : undefined,
    )
    assert.throws(() => statSync(agent.socketPath), /ENOENT/, 'the socket file is removed')
  })

  it('survives hostile and broken requests and keeps serving', async (t) => {
    const agent = await startAgentFor(t)
    const json = { 'content-type': 'application/json' }
    const cases: [string, string, Record<string, string>, string | Buffer][] = [
      ['POST', '/process.Process/Start', json, '{not json'],
      ['POST', '/process.Process/Start', json, JSON.stringify({ process: { cmd: 42 } })],
      [
        'POST',
        '/process.Process/Start',
        { 'content-type': 'application/connect+proto' },
        Buffer.from([0, 0, 0, 0, 9, 255, 255, 255, 255, 255, 255, 255, 255, 255]),
      ],
      ['POST', '/process.Process/Nope', json, '{}'],
      ['POST', '/filesystem.Filesystem/Stat', json, JSON.stringify({ path: 'x'.repeat(100_000) })],
      ['POST', '/filesystem.Filesystem/ListDir', json, JSON.stringify({ path: '/', depth: -1 })],
      [
        'POST',
        '/filesystem.Filesystem/Stat',
        { ...json, authorization: 'Basic %%%' },
        '{"path":"/"}',
      ],
      [
        'POST',
        '/files?path=/tmp/x',
        { 'content-type': 'multipart/form-data; boundary=zzz' },
        '--zzz\r\ngarbage',
      ],
      ['POST', '/files?path=/tmp/x', { 'content-type': 'multipart/form-data' }, 'no boundary'],
      ['GET', '/files?path=%00', {}, ''],
      ['POST', '/init', json, 'null'],
      ['PUT', '/health', {}, ''],
    ]
    for (const [method, path, headers, body] of cases) {
      const res = await agent.http(method, path, { headers, body })
      // Streaming Connect RPCs answer 200 with the error in the end-of-stream message.
      const rejected =
        (res.status >= 400 && res.status < 500) ||
        (res.status === 200 && /"error"/.test(res.text()))
      assert.ok(rejected, `${method} ${path} answered ${res.status}: ${res.text()}`)
    }
    // A client that disappears in the middle of an upload and of a stream.
    await new Promise<void>((resolve) => {
      const socket = connect(agent.socketPath, () => {
        socket.write(
          'POST /files?path=/tmp/partial HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\npartial',
        )
        setImmediate(() => {
          socket.destroy()
          resolve()
        })
      })
    })
    const controller = new AbortController()
    const stream = follow(
      agent
        .client(Process, { user: 'root' })
        .start({ process: { cmd: '/bin/sh', args: ['-c', 'yes'] } }, { signal: controller.signal }),
    )
    const { pid } = await stream.until('output', (r) => r.stdout.length > 0)
    controller.abort()
    await assert.rejects(stream.done)
    await agent
      .client(Process, { user: 'root' })
      .sendSignal({ process: { selector: { case: 'pid', value: pid } }, signal: 9 })
    // Still serving, and nothing crashed.
    assert.equal((await agent.http('GET', '/health')).status, 204)
    const run = await collectRun(
      agent
        .client(Process, { user: 'root' })
        .start({ process: { cmd: '/bin/echo', args: ['alive'] } }),
    )
    assert.equal(run.stdout, 'alive\n')
    await assert.rejects(
      agent.client(Filesystem).listDir({ path: '/', depth: 2000 }),
      (err: unknown) => err instanceof ConnectError && err.code === Code.InvalidArgument,
    )
    assert.doesNotMatch(agent.logs(), /uncaught exception|unhandled rejection/)
  })

  it('runs from a copy of its dist files alone, PTY addon included', async (t) => {
    const copy = mkdtempSync(join(tmpdir(), 'sandcell-agent-dist-'))
    t.after(() => rmSync(copy, { recursive: true, force: true }))
    cpSync(new URL('../bundle/', import.meta.url).pathname, copy, { recursive: true })
    const agent = await startAgentFor(t, { bundle: join(copy, 'agent.mjs') })
    const client = agent.client(Process, { user: 'root' })
    const stream = follow(
      client.start({
        process: { cmd: '/bin/sh', args: ['-c', 'echo on-a-tty; tty'] },
        pty: { size: { cols: 80, rows: 24 } },
      }),
    )
    const run = await stream.done
    assert.match(run.pty.toString(), /on-a-tty\r\n\/dev\/pts\/\d+/)
    assert.equal(run.end?.exitCode, 0)
  })
})
