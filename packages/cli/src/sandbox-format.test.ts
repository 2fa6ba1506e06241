import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { ListedSandbox, SandboxDetail } from '@sandcell/sdk'
import {
  formatDuration,
  formatSandboxDetail,
  formatSandboxTable,
  formatTable,
  sandboxJson,
} from './sandbox-format.js'

const now = new Date('2025-01-01T12:00:00Z')

function listed(overrides: Partial<ListedSandbox> = {}): ListedSandbox {
  return {
    sandboxId: 'i7x2kq0p9w3m5n8r1t4a',
    templateId: 'base',
    state: 'running',
    startedAt: new Date('2025-01-01T11:57:00Z'),
    endAt: new Date('2025-01-01T12:02:30Z'),
    cpuCount: 1,
    memoryMiB: 512,
    diskSizeMiB: 1024,
    metadata: { app: 'web', user: 'ana' },
    envdVersion: '0.5.7',
    volumeMounts: [],
    ...overrides,
  }
}

describe('tables', () => {
  it('aligns columns to the widest cell, numbers to the right, no trailing blanks', () => {
    const text = formatTable<[string, number]>(
      [
        { header: 'NAME', value: (r) => r[0] },
        { header: 'N', value: (r) => String(r[1]), align: 'right' },
        { header: 'END', value: () => '' },
      ],
      [
        ['a', 1],
        ['longer', 100],
      ],
    )
    assert.equal(text, 'NAME       N   END\na          1\nlonger   100\n')
  })

  it('shows sandboxes with age, time left, resources and metadata', () => {
    const text = formatSandboxTable(
      [
        listed(),
        listed({
          sandboxId: 'p0aused00000000000000',
          templateId: 'debian',
          state: 'paused',
          cpuCount: 2,
          memoryMiB: 2048,
          metadata: {},
        }),
      ],
      now,
    )
    assert.equal(
      text,
      [
        'SANDBOX ID              TEMPLATE   STATE     STARTED   ENDS IN   CPU     MEMORY   METADATA',
        'i7x2kq0p9w3m5n8r1t4a    base       running   3m ago    2m30s       1    512 MiB   app=web,user=ana',
        'p0aused00000000000000   debian     paused    3m ago    -           2   2048 MiB   -',
        '',
      ].join('\n'),
    )
  })

  it('prints only the header when there is no sandbox', () => {
    assert.equal(formatSandboxTable([], now).split('\n').length, 2)
  })

  it('shows one sandbox as aligned name/value lines', () => {
    const detail: SandboxDetail = { ...listed(), envdAccessToken: 'secret' }
    const text = formatSandboxDetail(detail, now)
    assert.match(text, /^sandbox id {3}i7x2kq0p9w3m5n8r1t4a\n/)
    assert.match(text, /\nends {9}2025-01-01T12:02:30\.000Z \(in 2m30s\)\n/)
    assert.match(text, /\nmemory {7}512 MiB\n/)
    assert.doesNotMatch(text, /secret/)
  })
})

describe('durations', () => {
  it('uses the two largest units and drops a zero second one', () => {
    assert.equal(formatDuration(0), '0s')
    assert.equal(formatDuration(45_000), '45s')
    assert.equal(formatDuration(299_000), '4m59s')
    assert.equal(formatDuration(300_000), '5m')
    assert.equal(formatDuration(3_660_000), '1h1m')
    assert.equal(formatDuration(90_061_000), '1d1h')
    assert.equal(formatDuration(-5), '0s')
  })
})

describe('JSON output', () => {
  it('leaves the access tokens out and keeps dates as ISO strings', () => {
    const json = JSON.parse(
      JSON.stringify(sandboxJson({ ...listed(), envdAccessToken: 't', trafficAccessToken: 'u' })),
    ) as Record<string, unknown>
    assert.equal(json.envdAccessToken, undefined)
    assert.equal(json.trafficAccessToken, undefined)
    assert.equal(json.startedAt, '2025-01-01T11:57:00.000Z')
    assert.equal(json.sandboxId, 'i7x2kq0p9w3m5n8r1t4a')
  })
})
