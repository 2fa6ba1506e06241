import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { pistonOutcome, toPistonResult } from './piston-result.js'
import type { RunResult } from './run-request.js'
import type { StageEnd, StageResult } from './stage-result.js'

function stage(end: StageEnd): StageResult {
  return {
    stdout: 'out',
    stderr: 'err',
    output: 'outerr',
    end,
    wallTimeMs: 12.5,
    cpuTimeMs: 3.25,
    memoryBytes: null,
  }
}

const run: Omit<RunResult, 'compile' | 'run'> = {
  language: 'c',
  version: '12.2.0',
  template: 'debian',
  timingsMs: { queue: 0.1 },
}

describe("Piston's view of a stage end", () => {
  it('gives every kind its status, code, signal and message', () => {
    const cases: [StageEnd, string][] = [
      [{ kind: 'exited', code: 0 }, '{"code":0,"signal":null,"status":null,"message":null}'],
      [
        { kind: 'exited', code: 3 },
        '{"code":3,"signal":null,"status":"RE","message":"Exited with error status 3"}',
      ],
      [
        { kind: 'signaled', signal: 'SIGSEGV' },
        '{"code":null,"signal":"SIGSEGV","status":"SG","message":"Caught fatal signal 11"}',
      ],
      [
        { kind: 'out-of-memory', signal: 'SIGKILL', memoryMiB: 256 },
        '{"code":null,"signal":"SIGKILL","status":"SG","message":"Out of memory (limit 256 MiB)"}',
      ],
      [
        { kind: 'timed-out', timeoutMs: 3000 },
        '{"code":null,"signal":"SIGKILL","status":"TO","message":"Time limit exceeded (3000 ms wall clock)"}',
      ],
      [
        { kind: 'output-limit', stream: 'stdout', maxChars: 65536 },
        '{"code":null,"signal":"SIGKILL","status":"OL","message":"stdout length exceeded (limit 65536 characters)"}',
      ],
      [
        { kind: 'output-limit', stream: 'stderr', maxChars: 65536 },
        '{"code":null,"signal":"SIGKILL","status":"EL","message":"stderr length exceeded (limit 65536 characters)"}',
      ],
    ]
    for (const [end, wire] of cases) {
      assert.equal(JSON.stringify(pistonOutcome(end)), wire, JSON.stringify(end))
    }
  })
})

describe("Piston's view of a run", () => {
  it("has Piston's fields in Piston's order, without the engine's template and timings", () => {
    assert.equal(
      JSON.stringify(toPistonResult({ ...run, run: stage({ kind: 'exited', code: 0 }) })),
      '{"run":{"stdout":"out","stderr":"err","output":"outerr","code":0,"signal":null,"message":null,"status":null,"cpu_time":3.25,"wall_time":12.5,"memory":null},"language":"c","version":"12.2.0"}',
    )
  })

  it('reports a failed compile stage as the run stage too, as Piston does', () => {
    const failed = toPistonResult({ ...run, compile: stage({ kind: 'exited', code: 1 }) })
    assert.equal(failed.compile?.status, 'RE')
    assert.deepEqual(failed.run, failed.compile)
    const both = toPistonResult({
      ...run,
      compile: stage({ kind: 'exited', code: 0 }),
      run: stage({ kind: 'timed-out', timeoutMs: 100 }),
    })
    assert.deepEqual(
      [both.compile?.status, both.run?.status, both.run?.signal],
      [null, 'TO', 'SIGKILL'],
    )
  })
})
