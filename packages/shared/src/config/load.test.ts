import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { z } from 'zod'
import { ConfigError } from '../errors.js'
import { envName, loadConfig } from './load.js'

const schema = z.object({
  dataDir: z.string().default('/var/lib/x'),
  port: z.number().int().default(3000),
  seccomp: z.boolean().default(true),
  apiKeys: z.array(z.string()).default([]),
  limits: z
    .object({ memoryMiB: z.number().default(512), cpus: z.number().default(1) })
    .prefault({}),
})

describe('loadConfig', () => {
  it('names env vars in UPPER_SNAKE from the path', () => {
    assert.equal(envName(['limits', 'memoryMiB']), 'LIMITS_MEMORY_MIB')
    assert.equal(envName(['dataDir']), 'DATA_DIR')
  })

  it('merges defaults < file < env < flags', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    const file = join(dir, 'c.yaml')
    writeFileSync(file, 'port: 4000\ndataDir: /from/file\nlimits:\n  cpus: 2\n')
    const config = loadConfig({
      schema,
      file,
      env: {
        SANDCELL_PORT: '5000',
        SANDCELL_SECCOMP: 'false',
        SANDCELL_API_KEYS: 'a, b',
        SANDCELL_LIMITS_MEMORY_MIB: '256',
      },
      flags: { port: 6000 },
    })
    assert.deepEqual(config, {
      dataDir: '/from/file',
      port: 6000,
      seccomp: false,
      apiKeys: ['a', 'b'],
      limits: { memoryMiB: 256, cpus: 2 },
    })
    assert.ok(Object.isFrozen(config.limits))
  })

  it('rejects bad values with one error naming every path and its env var', () => {
    assert.throws(
      () => loadConfig({ schema, env: { SANDCELL_PORT: 'many', SANDCELL_LIMITS_CPUS: 'x' } }),
      (err: unknown) =>
        err instanceof ConfigError &&
        /port \(SANDCELL_PORT\)/.test(err.message) &&
        /limits\.cpus \(SANDCELL_LIMITS_CPUS\)/.test(err.message),
    )
  })

  it('rejects a file that is not a mapping, or missing', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    writeFileSync(join(dir, 'list.yaml'), '- a\n- b\n')
    assert.throws(() => loadConfig({ schema, file: join(dir, 'list.yaml') }), ConfigError)
    assert.throws(() => loadConfig({ schema, file: join(dir, 'missing.yaml') }), /cannot read/)
  })
})
