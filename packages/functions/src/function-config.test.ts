import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { assertFunctionName } from './function-name.js'
import { allowedMethods, parseFunctionConfig } from './function-config.js'

describe('function names', () => {
  it('takes OpenLambda names and refuses the rest', () => {
    for (const good of ['echo', 'pip-compile', 'a.b_c', 'A1', '_x']) {
      assertFunctionName(good)
    }
    for (const bad of ['', '.', '..', '../x', 'a/b', 'é', 'a b', '.hidden', 'x'.repeat(129)]) {
      assert.throws(() => assertFunctionName(bad), InvalidArgumentError, bad)
    }
  })
})

describe('ol.yaml', () => {
  it('reads triggers, environment and limits, keeping unknown keys', () => {
    const config = parseFunctionConfig(
      [
        'triggers:',
        '  http: [{ method: get }, { method: POST }]',
        '  cron: [{ schedule: "*/5 * * * *" }]',
        'environment: { MODE: prod, RETRIES: 3 }',
        'limits: { memory_mb: 128, timeout_ms: 2000, procs: 16 }',
        'something-new: true',
      ].join('\n'),
    )
    assert.deepEqual(allowedMethods(config), ['GET', 'POST'])
    assert.deepEqual(config.environment, { MODE: 'prod', RETRIES: '3' })
    assert.equal(config.limits?.memory_mb, 128)
    assert.equal(config.triggers?.cron?.[0]?.schedule, '*/5 * * * *')
    assert.equal(allowedMethods(parseFunctionConfig(undefined)), 'any')
  })

  it('refuses bad methods, schedules, names, limits and non-YAML, listing each', () => {
    assert.throws(
      () =>
        parseFunctionConfig(
          'triggers: { http: [{ method: FETCH }], cron: [{ schedule: "often" }] }\nlimits: { memory_mb: 1 }',
        ),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        /triggers\.http\.0\.method/.test(err.message) &&
        /triggers\.cron\.0\.schedule/.test(err.message) &&
        /limits\.memory_mb/.test(err.message),
    )
    assert.throws(() => parseFunctionConfig('environment: { "1BAD": x }'), InvalidArgumentError)
    assert.throws(() => parseFunctionConfig('a: [b'), /not YAML/)
    assert.throws(() => parseFunctionConfig('x: 1\n'.repeat(20000)), /larger than/)
  })
})
