import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { basicAuthorization, usernameFromAuthorization } from './basic-authorization.js'

const basic = (value: string) => `Basic ${Buffer.from(value).toString('base64')}`

describe('basicAuthorization', () => {
  it('names the user with an empty password, as the e2b SDK does', () => {
    assert.equal(basicAuthorization('user'), 'Basic dXNlcjo=')
    assert.equal(usernameFromAuthorization(basicAuthorization('root')), 'root')
  })
})

describe('usernameFromAuthorization', () => {
  it('reads the user of Basic credentials, as the e2b SDK sends them', () => {
    assert.equal(usernameFromAuthorization(basic('user:')), 'user')
    assert.equal(usernameFromAuthorization(basic('root:ignored-password')), 'root')
    assert.equal(usernameFromAuthorization(basic('noColon')), 'noColon')
  })

  it('treats no header or an empty name as no user', () => {
    assert.equal(usernameFromAuthorization(undefined), undefined)
    assert.equal(usernameFromAuthorization(null), undefined)
    assert.equal(usernameFromAuthorization(basic(':')), undefined)
  })

  it('rejects other schemes', () => {
    assert.throws(() => usernameFromAuthorization('Bearer abc'), InvalidArgumentError)
  })
})
