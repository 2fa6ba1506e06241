import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { parseTemplateRef } from './template-names.js'

describe('parseTemplateRef', () => {
  it('reads alias and tag, defaulting the tag', () => {
    assert.deepEqual(parseTemplateRef('my-app'), {
      alias: 'my-app',
      tag: 'default',
      explicitTag: false,
    })
    assert.deepEqual(parseTemplateRef(' My-App:V1.0 '), {
      alias: 'my-app',
      tag: 'v1.0',
      explicitTag: true,
    })
    assert.deepEqual(parseTemplateRef('team/app:prod'), {
      alias: 'app',
      tag: 'prod',
      explicitTag: true,
    })
  })

  it('refuses bad names and tags', () => {
    for (const bad of [
      '',
      'a b',
      'a:',
      'a:b c',
      '../x',
      'ns!/a',
      'a:0b8e4ac4-5f5d-4a2c-9d1e-7b6f3c2a1e00',
      'é',
    ]) {
      assert.throws(() => parseTemplateRef(bad), InvalidArgumentError, bad)
    }
  })
})
