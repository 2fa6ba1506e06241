/**
 * The official e2b SDK's pause, resume, snapshot and fork against a real `sandcell serve`: a
 * paused sandbox comes back with its files and its processes exactly where they were; one paused
 * keeping its files only boots again on them; snapshots and forks start new sandboxes with the
 * files of the original.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import { Sandbox, SandboxError, SandboxNotFoundError, type SandboxOpts } from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
})

after(async () => {
  try {
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** Kills the sandbox when the test ends, whatever happened. */
function killAfter(t: TestContext, sandboxId: string): void {
  t.diagnostic(`sandbox ${sandboxId}`)
  t.after(async () => {
    await Sandbox.kill(sandboxId, server.connection)
  })
}

async function createSandbox(t: TestContext, options: SandboxOpts = {}): Promise<Sandbox> {
  const sandbox = await Sandbox.create({ ...server.connection, ...options })
  killAfter(t, sandbox.sandboxId)
  return sandbox
}

/**
 * A background process that counts the lines it reads and writes `<count> <line>` to
 * `/home/user/progress`: its count lives only in its memory.
 */
const counter = 'n=0; while read line; do n=$((n+1)); echo "$n $line" > /home/user/progress; done'

async function progress(sandbox: Sandbox): Promise<string> {
  return (await sandbox.files.read('/home/user/progress')).trim()
}

describe('pause and resume', { timeout: 60_000 }, () => {
  it('resumes on connect with the files and a running process exactly as left', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.files.write('/home/user/kept.txt', 'still here')
    const handle = await sandbox.commands.run(counter, {
      background: true,
      stdin: true,
      timeoutMs: 0,
    })
    await handle.sendStdin('a\nb\n')
    await waitFor('the counter to read two lines', async () => (await progress(sandbox)) === '2 b')
    await handle.disconnect()

    assert.equal(await sandbox.pause(), true)
    const paused = await sandbox.getInfo()
    assert.equal(paused.state, 'paused')
    assert.equal(await sandbox.isRunning(), false)
    await assert.rejects(sandbox.commands.run('true'), SandboxNotFoundError)
    assert.equal(await Sandbox.pause(sandbox.sandboxId, server.connection), false, 'paused twice')
    const listed = await Sandbox.list({
      ...server.connection,
      query: { state: ['paused'] },
    }).nextItems()
    assert.ok(listed.some((s) => s.sandboxId === sandbox.sandboxId))

    const resumed = await Sandbox.connect(sandbox.sandboxId, server.connection)
    assert.equal((await resumed.getInfo()).state, 'running')
    assert.equal(await resumed.isRunning(), true)
    assert.equal(await resumed.files.read('/home/user/kept.txt'), 'still here')
    assert.equal(await progress(resumed), '2 b')
    const processes = await resumed.commands.list()
    assert.ok(
      processes.some((p) => p.pid === handle.pid),
      `pid ${handle.pid} in ${JSON.stringify(processes)}`,
    )
    // The same process, with its count in memory, goes on from where it was.
    await resumed.commands.sendStdin(handle.pid, 'c\n')
    await waitFor('the counter to go on from 2', async () => (await progress(resumed)) === '3 c')
    await resumed.commands.kill(handle.pid)
  })

  it('pauses by id with Sandbox.pause and gives a new lifetime on resume', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.commands.run('echo before > /tmp/state')
    assert.equal(await Sandbox.pause(sandbox.sandboxId, server.connection), true)
    const resumedAt = Date.now()
    const resumed = await Sandbox.connect(sandbox.sandboxId, {
      ...server.connection,
      timeoutMs: 90_000,
    })
    const info = await resumed.getInfo()
    assert.equal(info.state, 'running')
    assert.ok(Math.abs(info.endAt.getTime() - (resumedAt + 90_000)) < 5_000, String(info.endAt))
    assert.equal((await resumed.commands.run('cat /tmp/state')).stdout, 'before\n')
  })

  it('pauses instead of ending at its timeout with lifecycle onTimeout pause', async (t) => {
    const sandbox = await createSandbox(t, {
      timeoutMs: 1_000,
      lifecycle: { onTimeout: 'pause' },
    })
    await sandbox.files.write('/home/user/at-timeout.txt', 'kept')
    assert.deepEqual((await sandbox.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: false })
    await waitFor(
      'the timeout to pause it',
      async () => (await sandbox.getInfo()).state === 'paused',
      {
        timeoutMs: 15_000,
      },
    )
    const resumed = await Sandbox.connect(sandbox.sandboxId, server.connection)
    assert.equal(await resumed.files.read('/home/user/at-timeout.txt'), 'kept')
  })

  it('resumes a paused sandbox created with autoResume when traffic arrives', async (t) => {
    const sandbox = await createSandbox(t, {
      lifecycle: { onTimeout: 'pause', autoResume: true },
    })
    await sandbox.pause()
    assert.equal((await sandbox.commands.run('echo awake')).stdout, 'awake\n')
    assert.equal((await sandbox.getInfo()).state, 'running')
  })

  it('keeps a paused sandbox paused past its timeout until connect', async (t) => {
    const sandbox = await createSandbox(t, { timeoutMs: 1_000 })
    await sandbox.pause()
    const endAt = (await sandbox.getInfo()).endAt.getTime()
    await waitFor('the old end time to pass', () => Date.now() > endAt + 500)
    assert.equal((await sandbox.getInfo()).state, 'paused')
    const resumed = await Sandbox.connect(sandbox.sandboxId, server.connection)
    assert.equal(await resumed.isRunning(), true)
  })
})

/** The sandbox's boot id: a container's is its own per start, as a VM's is per boot. */
async function bootId(sandbox: Sandbox): Promise<string> {
  return (await sandbox.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim()
}

/** Starts `sleep` in the background; returns its pid. */
async function sleeper(sandbox: Sandbox): Promise<number> {
  const handle = await sandbox.commands.run('sleep 1000', { background: true, timeoutMs: 0 })
  await handle.disconnect()
  return handle.pid
}

async function isListed(sandbox: Sandbox, pid: number): Promise<boolean> {
  return (await sandbox.commands.list()).some((p) => p.pid === pid)
}

describe('filesystem-only pause', { timeout: 60_000 }, () => {
  it('pauses keeping the files only: connect reboots it, files kept, processes gone', async (t) => {
    const sandbox = await createSandbox(t, { metadata: { kind: 'fs-pause' } })
    await sandbox.files.write('/home/user/kept.txt', 'on the disk')
    await sandbox.commands.run('mkdir -p /home/user/tree/a && echo deep > /home/user/tree/a/b')
    const pid = await sleeper(sandbox)
    const booted = await bootId(sandbox)

    assert.equal(await sandbox.pause({ keepMemory: false }), true)
    const paused = await sandbox.getInfo()
    assert.equal(paused.state, 'paused')
    assert.equal(await sandbox.isRunning(), false)
    assert.equal(await sandbox.pause({ keepMemory: false }), false, 'paused twice')
    assert.equal(await sandbox.pause(), false, 'paused twice, in memory this time')
    const listed = await Sandbox.list({
      ...server.connection,
      query: { state: ['paused'], metadata: { kind: 'fs-pause' } },
    }).nextItems()
    assert.deepEqual(
      listed.map((s) => [s.sandboxId, s.state]),
      [[sandbox.sandboxId, 'paused']],
    )

    const resumed = await Sandbox.connect(sandbox.sandboxId, server.connection)
    assert.equal(resumed.sandboxId, sandbox.sandboxId)
    assert.equal((await resumed.getInfo()).state, 'running')
    assert.equal(await resumed.files.read('/home/user/kept.txt'), 'on the disk')
    assert.equal(await resumed.files.read('/home/user/tree/a/b'), 'deep\n')
    assert.equal(await isListed(resumed, pid), false, `pid ${pid} is gone`)
    assert.notEqual(await bootId(resumed), booted, 'a new boot')
    // The first handle goes on working: same id, same access token.
    assert.equal((await sandbox.commands.run('echo same')).stdout, 'same\n')
    const info = await sandbox.getInfo()
    assert.equal(info.startedAt.getTime(), paused.startedAt.getTime())
  })

  it('pauses at its timeout keeping the files only (onTimeout keepMemory false)', async (t) => {
    const sandbox = await createSandbox(t, {
      timeoutMs: 4_000,
      lifecycle: { onTimeout: { action: 'pause', keepMemory: false } },
    })
    assert.deepEqual((await sandbox.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: false })
    await sandbox.files.write('/home/user/at-timeout.txt', 'kept')
    const pid = await sleeper(sandbox)
    const booted = await bootId(sandbox)
    await waitFor(
      'the timeout to pause it',
      async () => (await sandbox.getInfo()).state === 'paused',
      { timeoutMs: 20_000 },
    )
    const resumed = await Sandbox.connect(sandbox.sandboxId, {
      ...server.connection,
      timeoutMs: 60_000,
    })
    assert.equal(await resumed.files.read('/home/user/at-timeout.txt'), 'kept')
    assert.equal(await isListed(resumed, pid), false)
    assert.notEqual(await bootId(resumed), booted)
  })

  it('reboots a sandbox paused in memory when connect asks for onResume reboot', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.files.write('/home/user/before.txt', 'written before')
    const pid = await sleeper(sandbox)
    const booted = await bootId(sandbox)
    assert.equal(await sandbox.pause(), true)
    const resumed = await Sandbox.connect(sandbox.sandboxId, {
      ...server.connection,
      onResume: 'reboot',
    })
    assert.equal(await resumed.files.read('/home/user/before.txt'), 'written before')
    assert.equal(await isListed(resumed, pid), false)
    assert.notEqual(await bootId(resumed), booted)
    // Running already: onResume changes nothing.
    const again = await Sandbox.connect(sandbox.sandboxId, {
      ...server.connection,
      onResume: 'reboot',
    })
    assert.equal(await bootId(again), await bootId(resumed))
  })

  it('boots a sandbox paused on its files when traffic arrives, with autoResume', async (t) => {
    const sandbox = await createSandbox(t, {
      lifecycle: { onTimeout: 'pause', autoResume: true },
    })
    await sandbox.files.write('/home/user/awake.txt', 'yes')
    const booted = await bootId(sandbox)
    await sandbox.pause({ keepMemory: false })
    assert.equal(await sandbox.files.read('/home/user/awake.txt'), 'yes')
    assert.equal((await sandbox.getInfo()).state, 'running')
    assert.notEqual(await bootId(sandbox), booted)
  })

  it('refuses a snapshot or fork of a sandbox paused on its files with a 409 that says why', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.pause({ keepMemory: false })
    for (const call of [sandbox.createSnapshot(), sandbox.fork()]) {
      const error = await call.then(
        () => assert.fail('expected a 409'),
        (err: unknown) => err,
      )
      assert.ok(error instanceof SandboxError, String(error))
      assert.equal(error.statusCode, 409)
      assert.match(error.message, /paused keeping its filesystem only; connect to it/)
    }
    assert.equal((await sandbox.getInfo()).state, 'paused')
  })

  it('kills a sandbox paused on its files, disk and all', async (t) => {
    const sandbox = await createSandbox(t)
    await sandbox.pause({ keepMemory: false })
    assert.deepEqual(readdirSync(join(dataDir, 'paused')), [sandbox.sandboxId])
    assert.equal(await sandbox.kill(), true)
    assert.deepEqual(readdirSync(join(dataDir, 'paused')), [])
    await assert.rejects(sandbox.getInfo(), SandboxNotFoundError)
  })
})

describe('snapshots and forks', { timeout: 60_000 }, () => {
  it('starts a new sandbox from a snapshot with the files of the original', async (t) => {
    const original = await createSandbox(t)
    await original.files.write('/home/user/snap/data.txt', 'snapshotted')
    await original.commands.run('echo from-a-command > /home/user/snap/cmd.txt')
    const snapshot = await original.createSnapshot()
    t.diagnostic(`snapshot ${snapshot.snapshotId} of ${original.sandboxId}`)
    assert.equal((await original.getInfo()).state, 'running', 'the original runs on')

    const listed = await original.listSnapshots().nextItems()
    assert.ok(listed.some((s) => s.snapshotId === snapshot.snapshotId))

    const copy = await createSandbox(t, { template: snapshot.snapshotId })
    assert.notEqual(copy.sandboxId, original.sandboxId)
    assert.equal(await copy.files.read('/home/user/snap/data.txt'), 'snapshotted')
    assert.equal(await copy.files.read('/home/user/snap/cmd.txt'), 'from-a-command\n')
    // The copy is its own: writing there changes nothing in the original.
    await copy.files.write('/home/user/snap/data.txt', 'changed in the copy')
    assert.equal(await original.files.read('/home/user/snap/data.txt'), 'snapshotted')
  })

  it('names a snapshot and finds it by that name', async (t) => {
    const original = await createSandbox(t)
    const name = `snap-${original.sandboxId}`
    const snapshot = await original.createSnapshot({ name })
    assert.deepEqual(snapshot.names, [name])
    const found = await Sandbox.listSnapshots({ ...server.connection, name }).nextItems()
    assert.deepEqual(
      found.map((s) => s.snapshotId),
      [snapshot.snapshotId],
    )
  })

  it('deletes a snapshot with Sandbox.deleteSnapshot', async (t) => {
    const original = await createSandbox(t)
    const snapshot = await original.createSnapshot()
    assert.equal(await Sandbox.deleteSnapshot(snapshot.snapshotId, server.connection), true)
    const left = await Sandbox.listSnapshots({
      ...server.connection,
      sandboxId: original.sandboxId,
    }).nextItems()
    assert.deepEqual(left, [])
  })

  it('forks a running sandbox into two with its files, leaving it untouched', async (t) => {
    const original = await createSandbox(t)
    await original.files.write('/home/user/fork/data.txt', 'forked')
    const endAt = (await original.getInfo()).endAt.getTime()
    const forks = await original.fork({ count: 2 })
    assert.equal(forks.length, 2)
    for (const fork of forks) {
      if (fork instanceof Error) {
        assert.fail(`a fork failed: ${fork.message}`)
      }
      killAfter(t, fork.sandboxId)
      assert.notEqual(fork.sandboxId, original.sandboxId)
      assert.equal(await fork.files.read('/home/user/fork/data.txt'), 'forked')
    }
    const info = await original.getInfo()
    assert.equal(info.state, 'running')
    assert.equal(info.endAt.getTime(), endAt)
  })
})
