/**
 * `sandcell serve` stopped with SIGTERM and started again on the same data dir, driven by the
 * official e2b SDK: sandboxes, their files, their processes and their end times survive (a
 * sandbox paused keeping its files only boots on them after the restart); a sandbox whose time
 * ran out while the server was down is gone after the restart; a background command runs on
 * through a restart and a crash.
 */
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Sandbox, SandboxNotFoundError } from 'e2b'
import {
  assertNoLeaks,
  assertTickerFollows,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  tickerCommand,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
/** Every server this file started, stopped at the end whatever happened. */
const servers: ServeProcess[] = []

before(() => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
})

after(async () => {
  const stops: string[] = []
  try {
    for (const server of servers) {
      const stopped = await server.stop()
      if (stopped.killed) {
        stops.push(`a server needed SIGKILL to stop:\n${server.output()}`)
      }
    }
    // Whatever a broken-off test left running is adopted and killed by one last server.
    const sandboxesDir = join(dataDir, 'sandboxes')
    if (existsSync(sandboxesDir) && readdirSync(sandboxesDir).length > 0) {
      const cleanup = await startServeProcess({ dataDir, killSandboxesOnExit: true })
      await cleanup.stop()
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
  assert.deepEqual(stops, [])
})

/** Counts the lines it reads; the count lives only in the process's memory. */
const counter = 'n=0; while read line; do n=$((n+1)); echo "$n $line" > /home/user/progress; done'

async function progress(sandbox: Sandbox): Promise<string> {
  return (await sandbox.files.read('/home/user/progress')).trim()
}

describe('a server restart', { timeout: 60_000 }, () => {
  it('keeps files, processes and end times, and ends what timed out while it was down', async (t) => {
    // Open streams hold a shutdown up to the drain timeout (10 s by default): 3 s here.
    const first = await startServeProcess({ dataDir, env: { SANDCELL_DRAIN_TIMEOUT_MS: '3000' } })
    servers.push(first)

    const kept = await Sandbox.create({ ...first.connection, timeoutMs: 600_000 })
    t.diagnostic(`kept ${kept.sandboxId}`)
    await kept.files.write('/home/user/survivor.txt', 'written before the restart')
    const handle = await kept.commands.run(counter, { background: true, stdin: true, timeoutMs: 0 })
    // The SDK's stream of this command stays open through the shutdown; it ends with an error.
    const firstStream = handle.wait().then(
      () => 'ended',
      () => 'cut',
    )
    await handle.sendStdin('before\n')
    await waitFor('the counter to count', async () => (await progress(kept)) === '1 before')
    const keptInfo = await kept.getInfo()

    const asleep = await Sandbox.create(first.connection)
    t.diagnostic(`paused ${asleep.sandboxId}`)
    await asleep.files.write('/home/user/asleep.txt', 'paused before the restart')
    await asleep.pause()

    const expiring = await Sandbox.create({ ...first.connection, timeoutMs: 3_000 })
    t.diagnostic(`expiring ${expiring.sandboxId}`)
    const expiringEndAt = (await expiring.getInfo()).endAt.getTime()

    const stopStarted = performance.now()
    const stopped = await first.stop()
    const stopMs = performance.now() - stopStarted
    t.diagnostic(`SIGTERM to exit with a command stream open: ${Math.round(stopMs)} ms`)
    assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, first.output())
    assert.ok(stopMs < 8_000, `${stopMs} ms`)
    assert.equal(await firstStream, 'cut')
    await waitFor(
      'the expiring sandbox to pass its end time',
      () => Date.now() > expiringEndAt + 500,
      {
        timeoutMs: 15_000,
      },
    )

    const second = await startServeProcess({ dataDir, killSandboxesOnExit: true })
    servers.push(second)

    const info = await Sandbox.getInfo(kept.sandboxId, second.connection)
    assert.equal(info.state, 'running')
    assert.equal(info.endAt.getTime(), keptInfo.endAt.getTime(), 'the original end time')
    assert.equal(info.startedAt.getTime(), keptInfo.startedAt.getTime())
    assert.deepEqual(info.metadata, keptInfo.metadata)

    await assert.rejects(
      Sandbox.getInfo(expiring.sandboxId, second.connection),
      SandboxNotFoundError,
    )
    const listed = await Sandbox.list(second.connection).nextItems()
    assert.deepEqual(
      listed.map((s) => [s.sandboxId, s.state]).sort(),
      [
        [asleep.sandboxId, 'paused'],
        [kept.sandboxId, 'running'],
      ].sort(),
    )

    const again = await Sandbox.connect(kept.sandboxId, second.connection)
    assert.equal(await again.files.read('/home/user/survivor.txt'), 'written before the restart')
    const processes = await again.commands.list()
    assert.ok(
      processes.some((p) => p.pid === handle.pid),
      `pid ${handle.pid} in ${JSON.stringify(processes)}`,
    )
    await again.commands.sendStdin(handle.pid, 'after\n')
    await waitFor('the same counter to go on', async () => (await progress(again)) === '2 after')

    const woken = await Sandbox.connect(asleep.sandboxId, second.connection)
    assert.equal((await woken.getInfo()).state, 'running')
    assert.equal(await woken.files.read('/home/user/asleep.txt'), 'paused before the restart')
  })

  it('keeps a background command running through a SIGTERM restart and a crash', async (t) => {
    // One server per data dir at a time: the earlier tests' last servers go first.
    for (const server of servers) {
      await server.stop()
    }
    const first = await startServeProcess({ dataDir, env: { SANDCELL_DRAIN_TIMEOUT_MS: '1000' } })
    servers.push(first)
    const sandbox = await Sandbox.create({ ...first.connection, timeoutMs: 600_000 })
    t.diagnostic(`sandbox ${sandbox.sandboxId}`)
    // No stdin, and the stream left open: what a program does that starts a server and goes on.
    const handle = await sandbox.commands.run(tickerCommand, { background: true, timeoutMs: 0 })
    t.diagnostic(`ticker pid ${handle.pid}`)
    await assertTickerFollows(sandbox, handle.pid)

    assert.deepEqual(await first.stop(), { code: 0, signal: null, killed: false }, first.output())
    const second = await startServeProcess({ dataDir })
    servers.push(second)
    await assertTickerFollows(
      await Sandbox.connect(sandbox.sandboxId, second.connection),
      handle.pid,
    )

    process.kill(second.pid, 'SIGKILL')
    assert.deepEqual(await second.exited, { code: null, signal: 'SIGKILL' })
    const third = await startServeProcess({ dataDir, killSandboxesOnExit: true })
    servers.push(third)
    const again = await Sandbox.connect(sandbox.sandboxId, third.connection)
    await assertTickerFollows(again, handle.pid)
    assert.equal(await again.commands.kill(handle.pid), true)
    await again.kill()
    await third.stop()
  })

  it('adopts its sandboxes after the server was killed hard', async (t) => {
    const first = await startServeProcess({ dataDir })
    servers.push(first)
    const sandbox = await Sandbox.create(first.connection)
    t.diagnostic(`sandbox ${sandbox.sandboxId}`)
    await sandbox.files.write('/home/user/crash.txt', 'written before the crash')
    process.kill(first.pid, 'SIGKILL')
    assert.deepEqual(await first.exited, { code: null, signal: 'SIGKILL' })

    const second = await startServeProcess({ dataDir, killSandboxesOnExit: true })
    servers.push(second)
    const again = await Sandbox.connect(sandbox.sandboxId, second.connection)
    assert.equal(await again.files.read('/home/user/crash.txt'), 'written before the crash')
    assert.equal((await again.commands.run('echo alive')).stdout, 'alive\n')
    // The dead server's idle warm-pool sandboxes are destroyed on adoption, never listed (the
    // leak check at the end proves they are gone).
    const listed = await Sandbox.list(second.connection).nextItems()
    assert.ok(listed.some((s) => s.sandboxId === sandbox.sandboxId))
    assert.ok(listed.every((s) => s.state === 'running'))
  })

  it('keeps a sandbox paused on its files only, and boots it on connect after the restart', async (t) => {
    const first = await startServeProcess({ dataDir })
    servers.push(first)
    const sandbox = await Sandbox.create(first.connection)
    t.diagnostic(`sandbox ${sandbox.sandboxId}`)
    await sandbox.files.write('/home/user/on-disk.txt', 'kept on its disk')
    const bootId = 'cat /proc/sys/kernel/random/boot_id'
    const booted = (await sandbox.commands.run(bootId)).stdout
    assert.equal(await sandbox.pause({ keepMemory: false }), true)
    assert.deepEqual(await first.stop(), { code: 0, signal: null, killed: false }, first.output())

    const second = await startServeProcess({ dataDir, killSandboxesOnExit: true })
    servers.push(second)
    assert.equal((await Sandbox.getInfo(sandbox.sandboxId, second.connection)).state, 'paused')
    const woken = await Sandbox.connect(sandbox.sandboxId, second.connection)
    assert.equal(await woken.files.read('/home/user/on-disk.txt'), 'kept on its disk')
    assert.notEqual((await woken.commands.run(bootId)).stdout, booted)
    assert.equal((await woken.getInfo()).state, 'running')
  })
})
