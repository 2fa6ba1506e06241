import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { formatExitStatus, parseExitStatus, shellExitCode } from './exit-status.js'

describe('exit status', () => {
  it('formats a normal exit as envd does', () => {
    assert.deepEqual(formatExitStatus({ code: 3, signal: null }), {
      exitCode: 3,
      exited: true,
      status: 'exit status 3',
    })
  })

  it('formats a signal as Go names it, with exit code -1', () => {
    assert.deepEqual(formatExitStatus({ code: null, signal: 'SIGKILL' }), {
      exitCode: -1,
      exited: false,
      status: 'signal: killed',
    })
  })

  it('round-trips every common signal to a shell exit code of 128 + n', () => {
    for (const [signal, expected] of [
      ['SIGKILL', 137],
      ['SIGTERM', 143],
      ['SIGSEGV', 139],
      ['SIGINT', 130],
    ] as const) {
      const wire = formatExitStatus({ code: null, signal })
      const outcome = parseExitStatus(wire.status, wire.exitCode)
      assert.equal(outcome.signal, signal)
      assert.equal(shellExitCode(outcome), expected)
    }
  })

  it('reads a signal without a Go name by number', () => {
    const wire = formatExitStatus({ code: null, signal: 'SIGWINCH' })
    assert.equal(wire.status, 'signal 28'.replace('signal', 'signal:').replace(': ', ': signal '))
    assert.equal(parseExitStatus(wire.status, -1).signal, 'SIGWINCH')
  })

  it('keeps the code for text it does not know', () => {
    assert.deepEqual(parseExitStatus('something else', 5), { code: 5, signal: null })
  })
})
