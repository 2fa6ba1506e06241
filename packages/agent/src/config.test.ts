import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ConfigError } from '@sandcell/shared'
import { parseAgentArgv } from './config.js'

describe('parseAgentArgv', () => {
  it('parses the runtime contract with defaults', () => {
    const config = parseAgentArgv(['--listen', 'unix:/.sandcell/run/agent.sock', '--ready-fd', '3'])
    assert.deepEqual(config, {
      listen: [{ kind: 'unix', path: '/.sandcell/run/agent.sock' }],
      readyFd: 3,
      root: '/',
      logLevel: 'info',
      accessTokenFile: undefined,
      subscriberStallMs: 10_000,
    })
    assert.ok(Object.isFrozen(config))
  })

  it('takes repeated listeners, tcp with port 0 and IPv6 hosts', () => {
    const config = parseAgentArgv([
      '--listen',
      'unix:/a.sock',
      '--listen',
      'tcp:127.0.0.1:0',
      '--listen',
      'tcp:[::1]:49983',
      '--root',
      '/tmp/root',
      '--log-level',
      'debug',
      '--access-token-file',
      '/run/token',
      '--subscriber-stall-ms',
      '250',
    ])
    assert.deepEqual(config.listen, [
      { kind: 'unix', path: '/a.sock' },
      { kind: 'tcp', host: '127.0.0.1', port: 0 },
      { kind: 'tcp', host: '::1', port: 49983 },
    ])
    assert.equal(config.root, '/tmp/root')
    assert.equal(config.logLevel, 'debug')
    assert.equal(config.accessTokenFile, '/run/token')
    assert.equal(config.subscriberStallMs, 250)
  })

  it('rejects a missing listener, bad values and unknown flags with one ConfigError each', () => {
    assert.throws(
      () => parseAgentArgv([]),
      (err: unknown) => err instanceof ConfigError && /at least one --listen/.test(err.message),
    )
    assert.throws(() => parseAgentArgv(['--listen', 'unix:relative.sock']), /absolute/)
    assert.throws(() => parseAgentArgv(['--listen', 'tcp:host:99999']), /tcp:HOST:PORT/)
    assert.throws(() => parseAgentArgv(['--listen', 'unix:/a', '--ready-fd', 'x']), /--ready-fd/)
    assert.throws(() => parseAgentArgv(['--listen', 'unix:/a', '--root', 'relative']), /absolute/)
    assert.throws(() => parseAgentArgv(['--listen', 'unix:/a', '--log-level', 'loud']), /logLevel/)
    assert.throws(
      () => parseAgentArgv(['--listen', 'unix:/a', '--bogus']),
      (err: unknown) => err instanceof ConfigError && /bogus/.test(err.message),
    )
  })

  it('lists every bad field at once', () => {
    assert.throws(
      () => parseAgentArgv(['--ready-fd', 'x', '--root', 'rel']),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError)
        assert.match(err.message, /listen/)
        assert.match(err.message, /ready-fd/)
        assert.match(err.message, /absolute/)
        return true
      },
    )
  })
})
