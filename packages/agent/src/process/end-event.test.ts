import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { endEventOf } from './end-event.js'

describe('endEventOf', () => {
  it('reports a clean exit without an error', () => {
    assert.deepEqual(endEventOf({ code: 0, signal: null }), {
      exitCode: 0,
      exited: true,
      status: 'exit status 0',
    })
  })

  it('repeats the status as error for a non-zero exit', () => {
    assert.deepEqual(endEventOf({ code: 127, signal: null }), {
      exitCode: 127,
      exited: true,
      status: 'exit status 127',
      error: 'exit status 127',
    })
  })

  it('reports a signal death as envd does: -1, not exited, Go signal name', () => {
    assert.deepEqual(endEventOf({ code: null, signal: 'SIGKILL' }), {
      exitCode: -1,
      exited: false,
      status: 'signal: killed',
      error: 'signal: killed',
    })
    assert.equal(endEventOf({ code: null, signal: 'SIGTERM' }).status, 'signal: terminated')
  })
})
