import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { TemplateSummary } from '@sandcell/sdk'
import {
  createBuildTracker,
  describeBuildFailure,
  formatLogLine,
  formatTemplateTable,
  templateNameFromDir,
  type TemplateRow,
} from './template-format.js'

const info = (message: string, step?: string) => ({
  level: 'info' as const,
  message,
  ...(step === undefined ? {} : { step }),
})

describe('formatLogLine', () => {
  it('puts the step in a column of its own, blank for lines of the whole build', () => {
    assert.equal(formatLogLine(info('hello', '3')), '       3 | hello\n')
    assert.equal(formatLogLine(info('x', 'finalize')), 'finalize | x\n')
    assert.equal(formatLogLine(info('Starting building...')), '         | Starting building...\n')
  })

  it('marks warnings and errors, strips terminal escapes and leaves debug lines out', () => {
    assert.equal(
      formatLogLine({ level: 'error', message: 'Build failed: no', step: '2' }),
      '       2 | error: Build failed: no\n',
    )
    assert.equal(formatLogLine(info('\x1b[31mred\x1b[0m', '1')), '       1 | red\n')
    assert.equal(formatLogLine({ level: 'debug', message: 'noise', step: '1' }), '')
  })
})

describe('createBuildTracker', () => {
  it('follows the step headers: base, step k of n (cached or not), finalize', () => {
    const tracker = createBuildTracker()
    assert.deepEqual(tracker.position(), { phase: 'starting', fraction: 0, text: '' })
    tracker.observe(info('[base] FROM template debian', 'base'))
    assert.deepEqual(tracker.position(), {
      phase: 'base',
      fraction: 0,
      text: 'FROM template debian',
    })
    tracker.observe(info('CACHED [builder 1/4] USER root', '1'))
    tracker.observe(info('[builder 2/4] RUN make', '2'))
    assert.deepEqual(tracker.position(), { phase: 'step 2/4', fraction: 0.25, text: 'RUN make' })
    tracker.observe(info('[builder 2/4] is only output', '2'))
    tracker.observe(info('make: done', '2'))
    assert.equal(tracker.position().text, 'is only output')
    tracker.observe(info('[finalize] configuring the template', 'finalize'))
    assert.deepEqual(tracker.position(), {
      phase: 'finalize',
      fraction: 1,
      text: 'configuring the template',
    })
  })

  it('names a step with what it did, as far as the log told', () => {
    const tracker = createBuildTracker()
    assert.equal(tracker.describeStep('3'), 'step 3')
    tracker.observe(info('[builder 3/5] RUN exit 3', '3'))
    assert.equal(tracker.describeStep('3'), 'step 3/5 (RUN exit 3)')
    assert.equal(tracker.describeStep('4'), 'step 4/5')
    assert.equal(tracker.describeStep('base'), 'base')
  })
})

describe('describeBuildFailure', () => {
  it('gives the failed step and the server message', () => {
    const tracker = createBuildTracker()
    tracker.observe(info('[builder 2/3] RUN exit 3', '2'))
    assert.equal(
      describeBuildFailure(
        'app',
        { message: 'the command exited with code 3', step: '2' },
        tracker,
      ),
      'build of app failed at step 2/3 (RUN exit 3): the command exited with code 3',
    )
    assert.equal(
      describeBuildFailure('app', { message: 'no space' }, tracker),
      'build of app failed: no space',
    )
    assert.equal(
      describeBuildFailure('app', undefined, tracker),
      'build of app failed: unknown error',
    )
  })
})

describe('templateNameFromDir', () => {
  it("makes a valid template name from the directory's base name", () => {
    assert.equal(templateNameFromDir('/src/My App.v2'), 'my-app-v2')
    assert.equal(templateNameFromDir('/src/web_api/'), 'web_api')
    assert.equal(templateNameFromDir('/src/--Über--'), 'ber')
    assert.equal(templateNameFromDir('relative/Thing'), 'thing')
  })

  it('asks for --name when nothing usable is left', () => {
    assert.throws(() => templateNameFromDir('/'), /cannot make a template name .* pass --name/)
    assert.throws(() => templateNameFromDir('/src/+++'), /pass --name/)
  })
})

describe('formatTemplateTable', () => {
  const summary: TemplateSummary = {
    templateId: 'abcdefghij0123456789',
    buildId: 'b1',
    names: ['app'],
    aliases: ['app'],
    public: false,
    buildStatus: 'ready',
    buildCount: 2,
    spawnCount: 0,
    cpuCount: 2,
    memoryMiB: 512,
    createdAt: new Date('2025-01-01T00:00:00Z'),
    updatedAt: new Date('2025-01-01T00:00:00Z'),
  }

  it('shows the current build and, when another is newer, how that one is', () => {
    const now = new Date('2025-01-01T00:10:00Z')
    const rows: TemplateRow[] = [
      {
        ...summary,
        builtAt: new Date('2025-01-01T00:07:00Z'),
        latestBuild: { buildId: 'b2', status: 'error' },
      },
      { ...summary, names: ['new'], buildStatus: 'building', buildCount: 1 },
    ]
    assert.equal(
      formatTemplateTable(rows, now),
      [
        'NAME   TEMPLATE ID            STATUS                  BUILDS   BUILT',
        'app    abcdefghij0123456789   ready (newest: error)        2   3m ago',
        'new    abcdefghij0123456789   building                     1   -',
        '',
      ].join('\n'),
    )
  })
})
