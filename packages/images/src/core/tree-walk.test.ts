/** Counting a tree's paths the way find does. */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import { countFiles } from './tree-walk.js'

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-walk-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

describe('countFiles', () => {
  it('counts every path like find, without following symlinks', async (t) => {
    const base = tempDir(t)
    const root = join(base, 'tree')
    mkdirSync(join(root, 'a/b'), { recursive: true })
    writeFileSync(join(root, 'a/b/file'), '')
    linkSync(join(root, 'a/b/file'), join(root, 'a/hardlink'))
    symlinkSync('/usr', join(root, 'usr-link'))
    const found = execFileSync('find', [root], { encoding: 'utf8' }).trim().split('\n').length
    assert.equal(await countFiles(root), found)
    assert.equal(await countFiles(root), 6)
  })
})
