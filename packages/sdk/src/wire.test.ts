import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  listedSandboxesSchema,
  sandboxDetailSchema,
  sandboxMetricsSchema,
  sandboxSchema,
  toNewSandboxBody,
  toWireSeconds,
} from './wire.js'

const listedWire = {
  sandboxID: 'sb1',
  templateID: 'base',
  clientID: 'sandcell',
  state: 'running',
  startedAt: '2025-01-02T03:04:05.123456789Z',
  endAt: '2025-01-02T03:09:05Z',
  cpuCount: 2,
  memoryMB: 512,
  diskSizeMB: 1024,
  metadata: { app: 'x' },
  envdVersion: '0.5.7',
  volumeMounts: [],
}

describe('response mapping', () => {
  it('maps a created sandbox to domain names, leaving nulls out', () => {
    const sandbox = sandboxSchema.parse({
      sandboxID: 'sb1',
      templateID: 'base',
      clientID: 'sandcell',
      envdVersion: '0.5.7',
      envdAccessToken: 'secret',
      trafficAccessToken: null,
      domain: 'sandcell.local',
    })
    assert.deepEqual(sandbox, {
      sandboxId: 'sb1',
      templateId: 'base',
      envdVersion: '0.5.7',
      envdAccessToken: 'secret',
      domain: 'sandcell.local',
    })
  })

  it('maps a listed sandbox: dates, MiB, and defaults for missing metadata', () => {
    const [listed] = listedSandboxesSchema.parse([
      { ...listedWire, metadata: undefined, volumeMounts: null },
    ])
    assert.deepEqual(listed, {
      sandboxId: 'sb1',
      templateId: 'base',
      state: 'running',
      startedAt: new Date('2025-01-02T03:04:05.123Z'),
      endAt: new Date('2025-01-02T03:09:05Z'),
      cpuCount: 2,
      memoryMiB: 512,
      diskSizeMiB: 1024,
      metadata: {},
      envdVersion: '0.5.7',
      volumeMounts: [],
    })
  })

  it('maps a sandbox detail with its lifecycle and network', () => {
    const detail = sandboxDetailSchema.parse({
      ...listedWire,
      alias: 'py',
      envdAccessToken: 'secret',
      allowInternetAccess: null,
      network: { allowOut: ['1.1.1.1'], unknownField: 1 },
      lifecycle: { autoResume: false, onTimeout: 'pause' },
    })
    assert.equal(detail.alias, 'py')
    assert.equal(detail.envdAccessToken, 'secret')
    assert.equal('allowInternetAccess' in detail, false)
    assert.deepEqual(detail.network, { allowOut: ['1.1.1.1'] })
    assert.deepEqual(detail.lifecycle, { autoResume: false, onTimeout: 'pause' })
    assert.deepEqual(detail.metadata, { app: 'x' })
  })

  it('rejects a body with a missing or mistyped field, naming it', () => {
    const missing = sandboxDetailSchema.safeParse({ ...listedWire, sandboxID: undefined })
    assert.equal(missing.success, false)
    assert.deepEqual(missing.error?.issues[0]?.path, ['sandboxID'])
    const badState = listedSandboxesSchema.safeParse([{ ...listedWire, state: 'zombie' }])
    assert.deepEqual(badState.error?.issues[0]?.path, [0, 'state'])
    const badDate = listedSandboxesSchema.safeParse([{ ...listedWire, endAt: 'tomorrow' }])
    assert.deepEqual(badDate.error?.issues[0]?.path, [0, 'endAt'])
  })

  it('maps metrics to bytes and dates from unix seconds', () => {
    const [metric] = sandboxMetricsSchema.parse([
      {
        timestamp: '2025-01-02T03:04:05Z',
        timestampUnix: 1735787045,
        cpuCount: 1,
        cpuUsedPct: 12.5,
        memUsed: 1000,
        memTotal: 2000,
        memCache: 10,
        diskUsed: 3000,
        diskTotal: 4000,
      },
    ])
    assert.deepEqual(metric, {
      timestamp: new Date('2025-01-02T03:04:05Z'),
      cpuCount: 1,
      cpuUsedPct: 12.5,
      memUsedBytes: 1000,
      memTotalBytes: 2000,
      memCacheBytes: 10,
      diskUsedBytes: 3000,
      diskTotalBytes: 4000,
    })
  })
})

describe('request mapping', () => {
  it('builds E2B names and whole seconds, rounded up, leaving unset options out', () => {
    assert.deepEqual(
      toNewSandboxBody({
        templateId: 'debian',
        timeoutMs: 1500,
        metadata: { a: '1' },
        envVars: { B: '2' },
        allowInternetAccess: false,
      }),
      {
        templateID: 'debian',
        timeout: 2,
        metadata: { a: '1' },
        envVars: { B: '2' },
        allow_internet_access: false,
      },
    )
    assert.deepEqual(toNewSandboxBody({}), { templateID: 'base' })
    assert.equal(toWireSeconds(1), 1)
    assert.equal(toWireSeconds(60_000), 60)
  })
})
