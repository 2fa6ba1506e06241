import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { WebHeaders } from './web-headers.js'

// Node's own Headers (undici) is the reference behaviour; loading it here costs nothing at run time.
const NodeHeaders = globalThis.Headers

function same(build: (h: Headers) => void): void {
  const ours = new WebHeaders()
  const theirs = new NodeHeaders()
  build(ours)
  build(theirs)
  assert.deepEqual([...ours.entries()], [...theirs.entries()])
}

describe('WebHeaders', () => {
  it('matches Node for case, combining, order and deletes', () => {
    same((h) => {
      h.append('X-B', '1')
      h.append('x-b', ' 2 ')
      h.set('Content-Type', 'application/json')
      h.append('a-first', 'z')
      h.set('x-gone', 'v')
      h.delete('X-Gone')
    })
  })

  it('keeps each set-cookie apart as Node does', () => {
    same((h) => {
      h.append('Set-Cookie', 'a=1')
      h.append('set-cookie', 'b=2')
    })
    const h = new WebHeaders([
      ['set-cookie', 'a=1'],
      ['set-cookie', 'b=2'],
    ])
    assert.deepEqual(h.getSetCookie(), ['a=1', 'b=2'])
    assert.equal(h.get('set-cookie'), 'a=1, b=2')
  })

  it('reads every init form', () => {
    const fromRecord = new WebHeaders({ A: '1' })
    const fromPairs = new WebHeaders([['a', '1']])
    const fromHeaders = new WebHeaders(fromRecord)
    for (const h of [fromRecord, fromPairs, fromHeaders]) {
      assert.equal(h.get('a'), '1')
      assert.equal(h.has('A'), true)
    }
    assert.equal(new WebHeaders().get('missing'), null)
  })

  it('rejects names and values Node rejects', () => {
    for (const bad of ['bad name', 'x:y', '']) {
      assert.throws(() => new NodeHeaders().set(bad, 'v'), TypeError)
      assert.throws(() => new WebHeaders().set(bad, 'v'), TypeError)
    }
    assert.throws(() => new NodeHeaders().set('x', 'a\nb'), TypeError)
    assert.throws(() => new WebHeaders().set('x', 'a\nb'), TypeError)
  })

  it('iterates with forEach, keys and values in the same order', () => {
    const h = new WebHeaders({ b: '2', a: '1' })
    const seen: string[] = []
    h.forEach((value, key) => seen.push(`${key}=${value}`))
    assert.deepEqual(seen, ['a=1', 'b=2'])
    assert.deepEqual([...h.keys()], ['a', 'b'])
    assert.deepEqual([...h.values()], ['1', '2'])
  })
})
