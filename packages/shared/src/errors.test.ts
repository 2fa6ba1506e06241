import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { describe, it } from 'node:test'
import {
  BugError,
  SandboxDeadError,
  errorClasses,
  assertNever,
  type SandcellError,
} from './errors.js'

function instance(cls: (typeof errorClasses)[number]): SandcellError {
  // Every class takes a string first; the extra arguments of some are filled with samples.
  const Ctor = cls as unknown as new (a: string, b?: unknown, c?: unknown) => SandcellError
  return new Ctor('x', [], {})
}

describe('error hierarchy', () => {
  const codes = errorClasses.map((cls) => instance(cls).code)

  it('gives every error class its own code', () => {
    const duplicates = codes.filter((code, i) => codes.indexOf(code) !== i)
    assert.deepEqual(duplicates, [])
  })

  it('documents every code in docs/errors.md', () => {
    const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8')
    const missing = codes.filter((code) => !doc.includes(`\`${code}\``))
    assert.deepEqual(missing, [])
  })

  it('keeps the first failure as the cause of a dead sandbox', () => {
    const first = new Error('disk gone')
    const dead = new SandboxDeadError('sb1', 'pause failed', { cause: first })
    assert.equal(dead.cause, first)
    assert.equal(dead.status, 409)
    assert.match(dead.message, /sb1.*pause failed/)
  })

  it('throws a BugError from assertNever', () => {
    assert.throws(() => assertNever('surprise' as never, 'state'), BugError)
  })
})
