import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  classifyStage,
  describeStageEnd,
  stageSignal,
  stageSucceeded,
  type StageEnd,
} from './stage-result.js'

const finished = {
  code: null,
  signal: null,
  timedOut: false,
  exceeded: undefined,
  oomKilled: false,
  timeoutMs: 3000,
  memoryMiB: 256,
  outputMaxChars: 65536,
} as const

describe('classifyStage', () => {
  it('reports an exit with its code, and no code nor signal as 0', () => {
    assert.deepEqual(classifyStage({ ...finished, code: 3 }), { kind: 'exited', code: 3 })
    assert.deepEqual(classifyStage(finished), { kind: 'exited', code: 0 })
  })

  it('reports a signal, and the OOM killer only when a signal ended the stage', () => {
    assert.deepEqual(classifyStage({ ...finished, signal: 'SIGSEGV' }), {
      kind: 'signaled',
      signal: 'SIGSEGV',
    })
    assert.deepEqual(classifyStage({ ...finished, signal: 'SIGKILL', oomKilled: true }), {
      kind: 'out-of-memory',
      signal: 'SIGKILL',
      memoryMiB: 256,
    })
    assert.deepEqual(classifyStage({ ...finished, code: 1, oomKilled: true }), {
      kind: 'exited',
      code: 1,
    })
  })

  it('reports a timeout over the signal that ended the stage', () => {
    assert.deepEqual(classifyStage({ ...finished, signal: 'SIGKILL', timedOut: true }), {
      kind: 'timed-out',
      timeoutMs: 3000,
    })
  })

  it('reports a reached output cap over a timeout, naming the stream', () => {
    assert.deepEqual(
      classifyStage({ ...finished, signal: 'SIGKILL', timedOut: true, exceeded: 'stdout' }),
      { kind: 'output-limit', stream: 'stdout', maxChars: 65536 },
    )
    assert.deepEqual(classifyStage({ ...finished, code: 0, exceeded: 'stderr' }), {
      kind: 'output-limit',
      stream: 'stderr',
      maxChars: 65536,
    })
  })
})

describe('a stage end', () => {
  const cases: [StageEnd, NodeJS.Signals | null, string | null][] = [
    [{ kind: 'exited', code: 0 }, null, null],
    [{ kind: 'exited', code: 127 }, null, 'Exited with error status 127'],
    [{ kind: 'signaled', signal: 'SIGTERM' }, 'SIGTERM', 'Caught fatal signal 15'],
    [
      { kind: 'out-of-memory', signal: 'SIGKILL', memoryMiB: 64 },
      'SIGKILL',
      'Out of memory (limit 64 MiB)',
    ],
    [{ kind: 'timed-out', timeoutMs: 500 }, 'SIGKILL', 'Time limit exceeded (500 ms wall clock)'],
    [
      { kind: 'output-limit', stream: 'stderr', maxChars: 10 },
      'SIGKILL',
      'stderr length exceeded (limit 10 characters)',
    ],
  ]

  it('names the signal that ended the process, the engine’s SIGKILL at a limit', () => {
    for (const [end, signal] of cases) {
      assert.equal(stageSignal(end), signal, end.kind)
    }
  })

  it('says why the stage failed, and nothing for an exit with 0', () => {
    for (const [end, , message] of cases) {
      assert.equal(describeStageEnd(end), message, end.kind)
    }
  })

  it('succeeds only for an exit with 0', () => {
    assert.deepEqual(
      cases.map(([end]) => stageSucceeded(end)),
      [true, false, false, false, false, false],
    )
  })
})
