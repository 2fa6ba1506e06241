/** Template paths: only safe names make a template directory. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BugError } from '@sandcell/shared'
import { templatePaths } from './template-paths.js'

describe('templatePaths', () => {
  it('rejects a template name that leaves the templates directory', () => {
    for (const bad of ['../etc', 'a/b', '', '.hidden']) {
      assert.throws(() => templatePaths('/var/lib/sandcell/templates', bad), BugError)
    }
  })
})
