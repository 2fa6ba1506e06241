/** Build directories: stale ones removed, a commit by one rename, no delete through a mount. */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import { BugError, createSilentLogger } from '@sandcell/shared'
import {
  commitBuild,
  createBuildDir,
  mountsUnder,
  removeBuildDir,
  removeStaleBuilds,
  withBuildDir,
} from './build-dir.js'

const log = createSilentLogger()

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-build-dir-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

describe('build directories', () => {
  it('removes only stale .build-* directories', async (t) => {
    const templateDir = join(tempDir(t), 'debian')
    const stale = await createBuildDir(templateDir)
    writeFileSync(join(stale, 'half-written'), '')
    mkdirSync(join(templateDir, 'rootfs'))
    writeFileSync(join(templateDir, 'template.json'), '{}')
    const removed = await removeStaleBuilds(templateDir, log)
    assert.deepEqual(removed, [stale])
    assert.deepEqual(readdirSync(templateDir).sort(), ['rootfs', 'template.json'])
  })

  it('commits a build by renaming it, once', async (t) => {
    const templateDir = join(tempDir(t), 'base')
    const rootfsDir = join(templateDir, 'rootfs')
    const first = await createBuildDir(templateDir)
    await commitBuild(first, rootfsDir)
    assert.equal(existsSync(rootfsDir), true)
    assert.equal(existsSync(first), false)
    const second = await createBuildDir(templateDir)
    await assert.rejects(commitBuild(second, rootfsDir), BugError)
  })

  it('removes the build directory of a failed build', async (t) => {
    const templateDir = join(tempDir(t), 'debian')
    let seen = ''
    await assert.rejects(
      withBuildDir(templateDir, log, (buildDir) => {
        seen = buildDir
        writeFileSync(join(buildDir, 'half-written'), '')
        return Promise.reject(new Error('mmdebstrap failed'))
      }),
      /mmdebstrap failed/,
    )
    assert.equal(existsSync(seen), false)
    assert.deepEqual(readdirSync(templateDir), [])
  })

  it('finds no mounts under an ordinary directory', (t) => {
    assert.deepEqual(mountsUnder(tempDir(t)), [])
    assert.ok(mountsUnder('/').includes('/'))
  })

  it(
    'refuses to delete a build directory with a mount inside',
    { skip: process.getuid?.() === 0 ? false : 'needs root: mount' },
    async (t) => {
      const dir = join(tempDir(t), '.build-x')
      mkdirSync(join(dir, 'proc'), { recursive: true })
      const mounted = spawnSync('mount', ['-t', 'tmpfs', 'tmpfs', join(dir, 'proc')])
      assert.equal(mounted.status, 0, mounted.stderr.toString())
      try {
        await assert.rejects(removeBuildDir(dir), /still mounted/)
        assert.equal(existsSync(dir), true)
      } finally {
        spawnSync('umount', [join(dir, 'proc')])
      }
    },
  )
})
