/** The build lock: waiting, stale holders, take-overs and aborts. */
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import { DriverError, createSilentLogger } from '@sandcell/shared'
import { acquireBuildLock, readLockOwner, type BuildLockOwner } from './build-lock.js'

const log = createSilentLogger()

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-lock-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** The pid of a process that has exited: what a crashed builder leaves in its lock file. */
function deadPid(): number {
  const child = spawnSync('true')
  assert.equal(child.status, 0)
  return child.pid ?? assert.fail('no pid')
}

describe('acquireBuildLock', () => {
  it('records its holder and removes the file on release', async (t) => {
    const lockPath = join(tempDir(t), 'debian', '.lock')
    const lock = await acquireBuildLock(lockPath, { log })
    assert.equal(readLockOwner(lockPath)?.pid, process.pid)
    assert.equal(readLockOwner(lockPath)?.token, lock.owner.token)
    await lock.assertHeld()
    await lock.release()
    assert.equal(existsSync(lockPath), false)
    await lock.release()
    await assert.rejects(lock.assertHeld(), DriverError)
  })

  it('makes a second caller wait until the first releases', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    const first = await acquireBuildLock(lockPath, { log })
    const waitedFor: (BuildLockOwner | undefined)[] = []
    let secondHeld = false
    const second = acquireBuildLock(lockPath, { log, onWait: (o) => waitedFor.push(o) }).then(
      (lock) => {
        secondHeld = true
        return lock
      },
    )
    // Give the waiter several polls: it must still be waiting.
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.equal(secondHeld, false)
    assert.deepEqual(
      waitedFor.map((o) => o?.pid),
      [process.pid],
    )
    await first.release()
    const lock = await second
    assert.equal(readLockOwner(lockPath)?.token, lock.owner.token)
    await lock.release()
  })

  it('takes over a lock file whose holder died', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    const stale: BuildLockOwner = {
      pid: deadPid(),
      hostname: hostname(),
      acquiredAt: new Date(0).toISOString(),
      token: 'crashed',
    }
    writeFileSync(lockPath, `${JSON.stringify(stale)}\n`)
    let waited = false
    const lock = await acquireBuildLock(lockPath, { log, onWait: () => (waited = true) })
    assert.equal(waited, false)
    assert.equal(readLockOwner(lockPath)?.pid, process.pid)
    await lock.release()
    // Nothing is left beside it: no moved-aside or temporary files.
    assert.deepEqual(readdirSync(join(lockPath, '..')), [])
  })

  it('takes over a lock whose pid was recycled by another process', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    // This very pid is alive, but with another start time it names a process that is gone.
    const recycled: BuildLockOwner = {
      pid: process.pid,
      startTime: 1,
      hostname: hostname(),
      acquiredAt: new Date(0).toISOString(),
      token: 'old',
    }
    writeFileSync(lockPath, JSON.stringify(recycled))
    const lock = await acquireBuildLock(lockPath, { log, signal: AbortSignal.timeout(2000) })
    await lock.release()
  })

  it('takes over a lock file it cannot read', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    writeFileSync(lockPath, 'not json')
    const lock = await acquireBuildLock(lockPath, { log, signal: AbortSignal.timeout(2000) })
    await lock.release()
  })

  it('waits for a live holder in another process, then takes over when it is killed', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    // A stand-in builder: a live process named in the lock file.
    const holder = spawn('sleep', ['60'], { stdio: 'ignore' })
    t.after(() => holder.kill('SIGKILL'))
    await once(holder, 'spawn')
    const live: BuildLockOwner = {
      pid: holder.pid ?? assert.fail('no pid'),
      hostname: hostname(),
      acquiredAt: new Date().toISOString(),
      token: 'holder',
    }
    writeFileSync(lockPath, JSON.stringify(live))
    let onWait: (owner: BuildLockOwner | undefined) => void = () => undefined
    const waited = new Promise<BuildLockOwner | undefined>((resolve) => (onWait = resolve))
    const acquiring = acquireBuildLock(lockPath, {
      log,
      onWait,
      signal: AbortSignal.timeout(10_000),
    })
    assert.equal((await waited)?.pid, holder.pid)
    holder.kill('SIGKILL')
    await once(holder, 'exit')
    const lock = await acquiring
    assert.equal(readLockOwner(lockPath)?.pid, process.pid)
    await lock.release()
  })

  it('lets one holder at a time in across processes', async (t) => {
    const dir = tempDir(t)
    const lockPath = join(dir, '.lock')
    const counter = join(dir, 'counter')
    writeFileSync(counter, '0')
    // Each worker does a read-modify-write that loses updates unless the lock serialises it.
    const worker = join(dir, 'worker.mjs')
    writeFileSync(
      worker,
      `import { readFileSync, writeFileSync } from 'node:fs'
const [moduleUrl, lockPath, counter] = process.argv.slice(2)
const { acquireBuildLock } = await import(moduleUrl)
const log = { info() {}, warn() {}, error() {}, debug() {} }
for (let i = 0; i < 5; i++) {
  const lock = await acquireBuildLock(lockPath, { log })
  const n = Number(readFileSync(counter, 'utf8'))
  await new Promise((resolve) => setTimeout(resolve, 5))
  writeFileSync(counter, String(n + 1))
  await lock.release()
}
`,
    )
    const moduleUrl = new URL('./build-lock.ts', import.meta.url).href
    const workers = Array.from({ length: 4 }, () => {
      const child = spawn(
        process.execPath,
        ['--conditions=sandcell-source', '--import', 'tsx', worker, moduleUrl, lockPath, counter],
        { stdio: ['ignore', 'ignore', 'inherit'] },
      )
      t.after(() => child.kill('SIGKILL'))
      return once(child, 'exit')
    })
    for (const [code] of await Promise.all(workers)) {
      assert.equal(code, 0)
    }
    assert.equal(readFileSync(counter, 'utf8'), '20')
    assert.equal(existsSync(lockPath), false)
  })

  it('stops waiting when aborted and leaves the holder its lock', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    const first = await acquireBuildLock(lockPath, { log })
    const controller = new AbortController()
    const second = acquireBuildLock(lockPath, {
      log,
      signal: controller.signal,
      onWait: () => controller.abort(new Error('user gave up')),
    })
    await assert.rejects(second, /user gave up/)
    await first.assertHeld()
    await first.release()
  })

  it('notices when another builder took the lock over', async (t) => {
    const lockPath = join(tempDir(t), '.lock')
    const lock = await acquireBuildLock(lockPath, { log })
    writeFileSync(lockPath, JSON.stringify({ ...lock.owner, token: 'someone else' }))
    await assert.rejects(lock.assertHeld(), /lost the template build lock/)
    // Release leaves the other builder's file alone.
    await lock.release()
    assert.equal(readLockOwner(lockPath)?.token, 'someone else')
  })
})
