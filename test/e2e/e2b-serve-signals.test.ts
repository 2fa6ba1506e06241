/**
 * `sandcell serve` and the signals a supervisor sends it: a SIGTERM at any moment after the
 * server says it is listening stops it cleanly, and leaves no sandbox of its warm pool behind.
 */
import assert from 'node:assert/strict'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  type LeakSnapshot,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let root: string

before(() => {
  baseline = snapshotLeaks()
  root = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  // The data dirs below must be reachable by the sandboxes' uid, as /var/lib is.
  chmodSync(root, 0o711)
})

after(async () => {
  try {
    // A server killed by a signal leaves its warm pool running: one more start adopts and ends it.
    for (const name of readdirSync(root)) {
      const sandboxes = join(root, name, 'sandboxes')
      if (existsSync(sandboxes) && readdirSync(sandboxes).length > 0) {
        const cleanup = await startServeProcess({
          dataDir: join(root, name),
          killSandboxesOnExit: true,
        })
        await cleanup.stop()
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [root, testCgroupParent] })
})

/** A fresh data dir under this file's root. */
function newDataDir(name: string): string {
  const dir = join(root, name)
  mkdirSync(dir)
  return dir
}

describe('signals', { timeout: 60_000 }, () => {
  it('stops cleanly on a SIGTERM once it has answered a request', async () => {
    const dataDir = newDataDir('answered')
    const server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
    const stopped = await server.stop()
    assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    assert.deepEqual(readdirSync(join(dataDir, 'sandboxes')), [], 'the warm pool is gone')
  })

  it('stops cleanly on a SIGTERM sent the moment it says it is listening', async () => {
    // Three at once: the race is between the child's next instruction and this process's
    // reaction to the line, so a busy machine shows it more often.
    const outcomes = await Promise.all(
      [1, 2, 3].map(async (attempt) => {
        const dataDir = newDataDir(`attempt-${attempt}`)
        const server = await startServeProcess({
          dataDir,
          // Each server adopts (and cleans) everything under its cgroup parent: one each.
          env: { SANDCELL_CGROUP_PARENT: `${testCgroupParent}-${attempt}` },
          killSandboxesOnExit: true,
          waitForHealth: false,
        })
        const stopped = await server.stop()
        return { attempt, ...stopped, left: readdirSync(join(dataDir, 'sandboxes')).length }
      }),
    )
    assert.deepEqual(
      outcomes,
      [1, 2, 3].map((attempt) => ({ attempt, code: 0, signal: null, killed: false, left: 0 })),
    )
  })
})
