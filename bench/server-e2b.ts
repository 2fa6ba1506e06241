/**
 * The E2B-compatible server through the official `e2b` SDK, against a real `sandcell serve`
 * process: create → first `commands.run('true')` from the warm pool (goal p50 ≤ 60 ms), the
 * `commands.run('true')` round trip through the proxy (goal p50 ≤ 8 ms) beside the same command
 * sent straight to the agent's socket (proxy overhead goal ≤ 1.5 ms), and 100 sandboxes
 * created at once. Usage: npm run bench -- server-e2b [runs=200]
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox } from 'e2b'
import { createAgentConnection, runCommand } from '@sandcell/envd-client'
import { startServeProcess } from '@sandcell/test-utils'
import { waitForPool } from './lib/setup.js'
import { measure, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 200)
const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-server-'))

const server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
const { url, apiKey } = server
const opts = server.connection
try {
  // Create → first command, from the warm pool (the pool refills between runs, untimed).
  const createToRun: number[] = []
  for (let i = 0; i < Math.min(runs, 100); i++) {
    await waitForPool(url)
    const started = performance.now()
    const sandbox = await Sandbox.create(opts)
    await sandbox.commands.run('true')
    createToRun.push(performance.now() - started)
    await sandbox.kill()
  }

  const sandbox = await Sandbox.create({ ...opts, timeoutMs: 600_000 })
  const info = (await (
    await fetch(`${url}/sandboxes/${sandbox.sandboxId}`, { headers: { 'x-api-key': apiKey } })
  ).json()) as { envdAccessToken: string }
  const viaProxy = await measure(runs, async () => {
    await sandbox.commands.run('true')
  })
  const direct = createAgentConnection(
    join(dataDir, 'sandboxes', sandbox.sandboxId, 'run', 'agent.sock'),
  )
  const viaSocket = await measure(runs, async () => {
    await runCommand(direct, {
      cmd: '/bin/bash',
      args: ['-l', '-c', 'true'],
      accessToken: info.envdAccessToken,
    })
  })
  direct.close()
  await sandbox.kill()

  const concurrent = 100
  const started = performance.now()
  const results = await Promise.allSettled(
    Array.from({ length: concurrent }, () => Sandbox.create({ ...opts, timeoutMs: 600_000 })),
  )
  const totalS = (performance.now() - started) / 1000
  const created = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const failures = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []))
  await Promise.allSettled(created.map((s) => s.kill()))

  const socket = summarize('`bash -l -c true` straight to the agent socket (baseline)', viaSocket)
  report(
    'server-e2b',
    [
      summarize('Sandbox.create() → first commands.run("true"), warm pool', createToRun),
      summarize('commands.run("true") through the proxy (SDK)', viaProxy),
    ],
    socket,
    [
      `goals: create→first run p50 ≤ 60 ms; run p50 ≤ 8 ms; proxy overhead ≤ 1.5 ms (measured p50 difference: ${(summarize('', viaProxy).p50 - socket.p50).toFixed(2)} ms, SDK client included)`,
      `${concurrent} concurrent Sandbox.create(): ${created.length} succeeded in ${totalS.toFixed(1)} s${failures.length > 0 ? `; failures: ${failures.slice(0, 3).join(' | ')}` : ''}`,
    ],
  )
} finally {
  // --kill-sandboxes-on-exit: stopping the server removes every sandbox it made.
  await server.stop()
  rmSync(dataDir, { recursive: true, force: true })
}
