/** The progress tracker: closed phases, bounded counts and a fraction that reaches 1. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BuildProgressTracker, type TemplateBuildProgress } from './build-progress.js'

describe('BuildProgressTracker', () => {
  it('closes a countable phase at done === total before the next one starts', () => {
    const reports: TemplateBuildProgress[] = []
    const tracker = new BuildProgressTracker((p) => reports.push(p))
    tracker.enter('baseDownload', 10, 'packages')
    tracker.advance(4)
    tracker.enter('extract')
    assert.deepEqual(
      reports.map((r) => [r.phase, r.done, r.total]),
      [
        ['downloading', 0, 10],
        ['downloading', 4, 10],
        ['downloading', 10, 10],
        ['extracting', 0, 0],
      ],
    )
  })

  it('never lets done pass the total or go back', () => {
    const reports: TemplateBuildProgress[] = []
    const tracker = new BuildProgressTracker((p) => reports.push(p))
    tracker.enter('shifting', 5, 'files')
    tracker.advance(3)
    tracker.advance(2)
    tracker.advance(9)
    assert.deepEqual(
      reports.map((r) => r.done),
      [0, 3, 5],
    )
  })

  it('reaches a fraction of 1 when the last phase completes', () => {
    const reports: TemplateBuildProgress[] = []
    const tracker = new BuildProgressTracker((p) => reports.push(p))
    tracker.enter('finishing', 1, 'steps')
    tracker.complete()
    assert.equal(reports.at(-1)?.fraction, 1)
  })
})
