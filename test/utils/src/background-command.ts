/** A background command that shows it still runs, and the SDK checks that find and follow it. */
import assert from 'node:assert/strict'
import type { Sandbox } from 'e2b'
import { waitFor } from './wait.js'

/** Prints a numbered tick every 50 ms, for ever: output that shows the command still runs. */
export const tickerCommand = 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'

/**
 * Asserts that the {@link tickerCommand} with `pid` runs in `sandbox` and can be followed through
 * the SDK: `kill -0` finds it, `commands.list()` lists it with its command line, and
 * `commands.connect()` streams its further output, tick after tick.
 */
export async function assertTickerFollows(sandbox: Sandbox, pid: number): Promise<void> {
  assert.equal((await sandbox.commands.run(`kill -0 ${pid} && echo alive`)).stdout, 'alive\n')
  const listed = (await sandbox.commands.list()).find((p) => p.pid === pid)
  assert.ok(listed, `pid ${pid} is listed`)
  assert.deepEqual([listed.cmd, ...listed.args], ['/bin/bash', '-l', '-c', tickerCommand])
  let stdout = ''
  const follower = await sandbox.commands.connect(pid, {
    onStdout: (data) => {
      stdout += data
    },
  })
  try {
    const ticks = (): number[] => [...stdout.matchAll(/tick (\d+)\n/g)].map((m) => Number(m[1]))
    await waitFor(`three ticks of pid ${pid}`, () => ticks().length >= 3)
    const [first = 0, ...later] = ticks()
    assert.deepEqual(
      later,
      later.map((_, i) => first + i + 1),
      `consecutive ticks in ${JSON.stringify(stdout)}`,
    )
  } finally {
    await follower.disconnect()
  }
}
