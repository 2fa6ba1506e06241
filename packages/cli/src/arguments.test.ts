import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Command, InvalidArgumentError as CommanderArgumentError } from 'commander'
import { pairsToRecord, parseEnv, parseMetadata, parsePositive, parseState } from './arguments.js'

describe('argument parsers', () => {
  it('accepts positive numbers and rejects the rest with the flag name', () => {
    assert.equal(parsePositive('--timeout', true)('30'), 30)
    assert.equal(parsePositive('--cpus', false)('0.5'), 0.5)
    assert.throws(
      () => parsePositive('--timeout', true)('1.5'),
      /--timeout must be a positive integer/,
    )
    assert.throws(() => parsePositive('--cpus', false)('0'), CommanderArgumentError)
    assert.throws(() => parsePositive('--cpus', false)('lots'), /positive number/)
  })

  it('collects KEY=VALUE pairs, keeping = in values', () => {
    const env = parseEnv('B=x=y', parseEnv('A=1', []))
    assert.deepEqual(pairsToRecord(env), { A: '1', B: 'x=y' })
    assert.deepEqual(pairsToRecord(parseMetadata('user id=a b', [])), { 'user id': 'a b' })
    assert.deepEqual(pairsToRecord(['A=1', 'A=2']), { A: '2' })
  })

  it('rejects pairs without a usable key', () => {
    assert.throws(() => parseEnv('1A=x', []), /--env takes KEY=VALUE, got "1A=x"/)
    assert.throws(() => parseEnv('NOVALUE', []), CommanderArgumentError)
    assert.throws(() => parseMetadata('=v', []), /--metadata takes KEY=VALUE/)
  })

  it('takes states repeated or comma-separated, once each', () => {
    assert.deepEqual(parseState('paused', parseState('running', [])), ['running', 'paused'])
    assert.deepEqual(parseState('running,paused,running', []), ['running', 'paused'])
    assert.throws(() => parseState('stopped', []), /--state takes running or paused, got "stopped"/)
  })

  it('parses repeatable flags through commander', () => {
    const command = new Command('x')
      .exitOverride()
      .option('--metadata <KEY=VALUE>', '', parseMetadata, [])
      .option('--state <state>', '', parseState, [])
    command.parse(['--metadata', 'a=1', '--metadata', 'b=2', '--state', 'paused'], {
      from: 'user',
    })
    assert.deepEqual(command.opts(), { metadata: ['a=1', 'b=2'], state: ['paused'] })
  })
})
