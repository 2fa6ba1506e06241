import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { SandboxNotFoundError, UnauthenticatedError, UnavailableError } from '@sandcell/shared'
import { describeFailure } from './remote.js'

describe('describeFailure', () => {
  it('says where the API key comes from on a 401', () => {
    const err = new UnauthenticatedError('unauthorized (401) by http://h: bad key')
    assert.equal(
      describeFailure(err, true),
      'unauthorized (401) by http://h: bad key; check the key given by SANDCELL_API_KEY or --api-key',
    )
    assert.match(describeFailure(err, false), /no API key was given: set SANDCELL_API_KEY/)
  })

  it('says how to point at the server when it cannot be reached', () => {
    const down = new UnavailableError('cannot reach the sandcell server at http://h (ECONNREFUSED)')
    assert.match(
      describeFailure(down, true),
      /\(ECONNREFUSED\); is the server running\? .*--server$/,
    )
    const notRunning = new UnavailableError('sandbox x is not running', {
      details: { status: 502 },
    })
    assert.equal(describeFailure(notRunning, true), 'sandbox x is not running')
  })

  it('passes other messages through', () => {
    assert.equal(
      describeFailure(new SandboxNotFoundError('sb1'), true),
      'sandbox sb1 does not exist or was killed',
    )
  })
})
