import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { isLoopbackRegistry, parseImageReference, registryApiHost } from './image-reference.js'

const digest = `sha256:${'a'.repeat(64)}`

describe('parseImageReference', () => {
  it('expands Docker Hub short names as Docker does', () => {
    assert.deepEqual(parseImageReference('python:3.12'), {
      registry: 'docker.io',
      repository: 'library/python',
      tag: '3.12',
      name: 'docker.io/library/python:3.12',
    })
    assert.equal(parseImageReference('user/app').name, 'docker.io/user/app:latest')
    assert.equal(
      parseImageReference('index.docker.io/library/busybox').name,
      'docker.io/library/busybox:latest',
    )
  })

  it('takes a first component with a dot, a colon or localhost as the registry', () => {
    assert.deepEqual(parseImageReference(`127.0.0.1:5000/a/b@${digest}`), {
      registry: '127.0.0.1:5000',
      repository: 'a/b',
      digest,
      name: `127.0.0.1:5000/a/b@${digest}`,
    })
    assert.equal(parseImageReference('localhost/x').registry, 'localhost')
    assert.equal(parseImageReference('ghcr.io/org/tool:v1').repository, 'org/tool')
    assert.equal(parseImageReference('org/tool').registry, 'docker.io')
  })

  it('keeps a tag beside a digest, the digest deciding', () => {
    const ref = parseImageReference(`busybox:1@${digest}`)
    assert.equal(ref.tag, '1')
    assert.equal(ref.digest, digest)
  })

  it('applies an exact alias, then a mirror', () => {
    const config = {
      aliases: { 'e2bdev/base': '127.0.0.1:5000/sandcell/base:1', 'debian:stable': 'debian:12' },
      mirrors: { 'docker.io': '127.0.0.1:5000' },
    }
    assert.equal(parseImageReference('e2bdev/base', config).name, '127.0.0.1:5000/sandcell/base:1')
    assert.equal(
      parseImageReference('debian:stable', config).name,
      '127.0.0.1:5000/library/debian:12',
    )
    assert.equal(parseImageReference('e2bdev/base:2', config).name, '127.0.0.1:5000/e2bdev/base:2')
  })

  for (const [text, reason] of [
    ['', /empty/],
    ['Python:3', /must be lowercase/],
    ['a b', /white space/],
    ['busybox:', /the tag ""/],
    ['busybox:-x', /the tag "-x"/],
    ['busybox@sha256:abc', /not sha256:<64 hex digits>/],
    [`busybox@md5:${'a'.repeat(32)}`, /not sha256/],
    ['a//b', /path component ""/],
    ['a/-b', /path component "-b"/],
    ['host:port/x', /registry "host:port"/],
    [`${'a'.repeat(256)}`, /longer than 255/],
  ] as const) {
    it(`rejects ${JSON.stringify(text.slice(0, 20))}`, () => {
      assert.throws(
        () => parseImageReference(text),
        (err: Error) => err instanceof InvalidArgumentError && reason.test(err.message),
      )
    })
  }

  it('names the alias when its target is invalid', () => {
    assert.throws(
      () => parseImageReference('base', { aliases: { base: 'Bad/Name' } }),
      /"base" \(alias of "Bad\/Name"\) is not valid/,
    )
  })
})

describe('registry hosts', () => {
  it("sends Docker Hub's API to registry-1.docker.io", () => {
    assert.equal(registryApiHost('docker.io'), 'registry-1.docker.io')
    assert.equal(registryApiHost('ghcr.io'), 'ghcr.io')
  })

  it('treats loopback hosts on any port as plain http', () => {
    for (const host of ['127.0.0.1:5000', 'localhost', 'localhost:1', '[::1]:5000']) {
      assert.ok(isLoopbackRegistry(host), host)
    }
    for (const host of ['127.0.0.2:5000', 'docker.io', 'localhost.example.com']) {
      assert.ok(!isLoopbackRegistry(host), host)
    }
  })
})
