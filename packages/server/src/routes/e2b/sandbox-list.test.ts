import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ZodError } from 'zod'
import { InvalidArgumentError } from '@sandcell/shared'
import { sandboxRecord } from '../../services/fake-sandboxes.js'
import type { SandboxRecord } from '../../store/sqlite-store.js'
import { listQuerySchema, listSandboxes, type ListOptions } from './sandbox-list.js'

const options: ListOptions = {
  defaultStates: ['running', 'paused'],
  templateIdOf: () => undefined,
}

/** Sandboxes s0…s(n-1) started one second apart, every third one paused. */
function fleet(count: number): SandboxRecord[] {
  return Array.from({ length: count }, (_, n) =>
    sandboxRecord({
      id: `s${String(n).padStart(2, '0')}` as SandboxRecord['id'],
      startedAt: 1_000 * (n + 1),
      state: n % 3 === 0 ? 'paused' : 'running',
    }),
  )
}

/** Every page the SDK's paginator would fetch, following X-Next-Token. */
function allPages(
  records: () => SandboxRecord[],
  query: Record<string, unknown>,
  listOptions: ListOptions = options,
): string[][] {
  const pages: string[][] = []
  let nextToken: string | undefined
  do {
    const page = listSandboxes(
      records(),
      listQuerySchema.parse({ ...query, ...(nextToken === undefined ? {} : { nextToken }) }),
      listOptions,
    )
    pages.push(page.records.map((r) => r.id))
    nextToken = page.nextToken
  } while (nextToken !== undefined)
  return pages
}

describe('listSandboxes', () => {
  it('pages through running and paused sandboxes newest first, each once', () => {
    const records = fleet(7)
    const pages = allPages(() => records, { limit: '3' })
    assert.deepEqual(pages, [['s06', 's05', 's04'], ['s03', 's02', 's01'], ['s00']])
  })

  it('honours the state filter on every page, as the SDK sends it (one comma-joined value)', () => {
    const records = fleet(10)
    assert.deepEqual(
      allPages(() => records, { state: 'paused', limit: '2' }),
      [
        ['s09', 's06'],
        ['s03', 's00'],
      ],
    )
    assert.deepEqual(allPages(() => records, { state: 'running,paused', limit: '5' }).flat(), [
      's09',
      's08',
      's07',
      's06',
      's05',
      's04',
      's03',
      's02',
      's01',
      's00',
    ])
  })

  it('goes on after the sandbox a cursor names has ended or changed state', () => {
    let records = fleet(6)
    const first = listSandboxes(records, listQuerySchema.parse({ limit: '2' }), options)
    assert.deepEqual(
      first.records.map((r) => r.id),
      ['s05', 's04'],
    )
    // The page's last sandbox is killed, another one paused, and a new one starts.
    records = records
      .filter((r) => r.id !== 's04')
      .map((r) => (r.id === 's02' ? { ...r, state: 'paused' as const } : r))
      .concat(sandboxRecord({ id: 's99' as SandboxRecord['id'], startedAt: 99_000 }))
    const rest = allPages(() => records, { limit: '2', nextToken: first.nextToken })
    assert.deepEqual(rest.flat(), ['s03', 's02', 's01', 's00'])
  })

  it('orders sandboxes started in the same millisecond by id, in both directions', () => {
    const records = ['c', 'a', 'b'].map((id) =>
      sandboxRecord({ id: id as SandboxRecord['id'], startedAt: 5_000 }),
    )
    assert.deepEqual(allPages(() => records, { order: 'asc', limit: '1' }).flat(), ['a', 'b', 'c'])
    assert.deepEqual(allPages(() => records, { order: 'desc', limit: '2' }).flat(), ['c', 'b', 'a'])
  })

  it('selects sandboxes started at or after startedAfter', () => {
    const records = fleet(4)
    const page = listSandboxes(
      records,
      listQuerySchema.parse({ startedAfter: new Date(3_000).toISOString(), order: 'asc' }),
      options,
    )
    assert.deepEqual(
      page.records.map((r) => r.id),
      ['s02', 's03'],
    )
  })

  it('filters by metadata the SDK encoded twice', () => {
    const tagged = sandboxRecord({ metadata: { 'owner tag': 'a&b=c' } })
    const other = sandboxRecord({ metadata: { 'owner tag': 'x' } })
    const form = new URLSearchParams({
      [encodeURIComponent('owner tag')]: encodeURIComponent('a&b=c'),
    }).toString()
    const page = listSandboxes([tagged, other], listQuerySchema.parse({ metadata: form }), options)
    assert.deepEqual(
      page.records.map((r) => r.id),
      [tagged.id],
    )
  })

  it("finds a built template's sandboxes by its id, its alias or a tag", () => {
    const byAlias = sandboxRecord({ templateId: 'my-app' })
    const byTag = sandboxRecord({ templateId: 'my-app:v2' })
    const base = sandboxRecord({ templateId: 'base' })
    const templateIdOf = (reference: string): string | undefined =>
      reference.startsWith('my-app') || reference === 'tpl_1' ? 'tpl_1' : undefined
    for (const template of ['tpl_1', 'my-app', 'my-app:v2']) {
      const page = listSandboxes(
        [byAlias, byTag, base],
        listQuerySchema.parse({ template, order: 'asc' }),
        { ...options, templateIdOf },
      )
      assert.deepEqual(
        page.records.map((r) => r.id).sort(),
        [byAlias.id, byTag.id].sort(),
        template,
      )
    }
    const builtIn = listSandboxes([byAlias, base], listQuerySchema.parse({ template: 'base' }), {
      ...options,
      templateIdOf,
    })
    assert.deepEqual(
      builtIn.records.map((r) => r.id),
      [base.id],
    )
  })

  it('rejects a cursor it did not give out, and bad states, orders and limits', () => {
    assert.throws(
      () => listSandboxes([], listQuerySchema.parse({ nextToken: 'not-a-token' }), options),
      InvalidArgumentError,
    )
    for (const query of [
      { state: 'sleeping' },
      { order: 'sideways' },
      { limit: '0' },
      { limit: '101' },
      { limit: 'many' },
      { startedAfter: 'yesterday' },
    ]) {
      assert.throws(() => listQuerySchema.parse(query), ZodError, JSON.stringify(query))
    }
  })
})
