import assert from 'node:assert/strict'
import { PassThrough } from 'node:stream'
import { describe, it } from 'node:test'
import { NotFoundError, SandboxNotFoundError, UnavailableError } from '@sandcell/shared'
import { commandExitCode, failureExitCode, killReason } from './command-exit.js'

function capture(): PassThrough & { text(): string } {
  const stream = new PassThrough()
  let text = ''
  stream.on('data', (chunk: Buffer) => (text += chunk.toString()))
  return Object.assign(stream, { text: () => text })
}

const quiet = { timedOut: false, interrupted: false }

describe('command exit', () => {
  it("passes the command's own exit code through, silently", () => {
    const stderr = capture()
    assert.equal(commandExitCode('sh', { outcome: { code: 7, signal: null } }, quiet, stderr), 7)
    assert.equal(stderr.text(), '')
  })

  it('exits 128 + signal with one line saying why', () => {
    const stderr = capture()
    const code = commandExitCode(
      'sleep',
      { outcome: { code: null, signal: 'SIGKILL' } },
      { timedOut: true, timeoutMs: 500, interrupted: false },
      stderr,
    )
    assert.equal(code, 137)
    assert.equal(stderr.text(), 'sandcell: sleep killed: timed out after 500 ms\n')
  })

  it('names the most specific reason: timeout, then memory, then interrupt, then the signal', () => {
    assert.equal(
      killReason('SIGKILL', { ...quiet, oomKilled: true, memoryMiB: 96 }),
      'out of memory (limit 96 MiB)',
    )
    assert.equal(killReason('SIGKILL', { ...quiet, interrupted: true }), 'interrupted')
    assert.equal(killReason('SIGTERM', quiet), 'SIGTERM (signal 15)')
  })

  it('exits 127 for a missing command, 125 for sandcell failures', () => {
    const stderr = capture()
    assert.equal(failureExitCode(new NotFoundError('no such file'), 'nope', true, stderr), 127)
    assert.equal(failureExitCode(new NotFoundError('no template'), 'nope', false, stderr), 125)
    assert.equal(failureExitCode(new SandboxNotFoundError('sb1'), 'ls', false, stderr), 125)
    assert.equal(failureExitCode(new UnavailableError('server down'), 'ls', true, stderr), 125)
    assert.equal(
      stderr.text(),
      [
        'sandcell: nope: command not found (no such file)',
        'sandcell: no template',
        'sandcell: sandbox sb1 does not exist or was killed',
        'sandcell: server down',
        '',
      ].join('\n'),
    )
  })
})
