import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { parseWwwAuthenticate } from './www-authenticate.js'

describe('parseWwwAuthenticate', () => {
  it("reads Docker Hub's bearer challenge", () => {
    assert.deepEqual(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull"',
      ),
      [
        {
          scheme: 'bearer',
          params: {
            realm: 'https://auth.docker.io/token',
            service: 'registry.docker.io',
            scope: 'repository:library/python:pull',
          },
        },
      ],
    )
  })

  it('reads Basic, bare tokens, escapes and several challenges', () => {
    assert.deepEqual(
      parseWwwAuthenticate('Basic realm="a \\"b\\" c", Bearer realm=x , error=invalid_token'),
      [
        { scheme: 'basic', params: { realm: 'a "b" c' } },
        { scheme: 'bearer', params: { realm: 'x', error: 'invalid_token' } },
      ],
    )
  })

  it('keeps a token68 value and skips garbage', () => {
    assert.deepEqual(parseWwwAuthenticate('Negotiate abc123==, Basic'), [
      { scheme: 'negotiate', params: { token68: 'abc123==' } },
      { scheme: 'basic', params: {} },
    ])
    assert.deepEqual(parseWwwAuthenticate(''), [])
    assert.deepEqual(parseWwwAuthenticate(',,,'), [])
  })
})
