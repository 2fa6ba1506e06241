/**
 * The E2B-compatible server through the official `e2b` SDK, against a real `sandcell serve`
 * process: create → first `commands.run('true')` from the warm pool (goal p50 ≤ 60 ms), the
 * `commands.run('true')` round trip through the proxy (goal p50 ≤ 8 ms) in the base and debian
 * templates, each beside the same `bash -l -c true` sent straight to the agent's socket (proxy
 * overhead goal ≤ 1.5 ms) and a bare `true` (what the SDK's login shell costs), and 100
 * sandboxes created at once. Usage: npm run bench -- server-e2b [runs=200]
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox } from 'e2b'
import { createAgentConnection, runCommand } from '@sandcell/envd-client'
import { startServeProcess } from '@sandcell/test-utils'
import { waitForPool } from './lib/setup.js'
import { report, summarize, type Summary } from './lib/stats.js'

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

  // commands.run('true') per built-in template, beside the same login shell and a bare `true`
  // sent straight to the agent's socket: their difference is what the login shell costs.
  const perTemplate: Summary[] = []
  for (const template of ['base', 'debian']) {
    const sandbox = await Sandbox.create(template, { ...opts, timeoutMs: 600_000 })
    const info = (await (
      await fetch(`${url}/sandboxes/${sandbox.sandboxId}`, { headers: { 'x-api-key': apiKey } })
    ).json()) as { envdAccessToken: string }
    const direct = createAgentConnection(
      join(dataDir, 'sandboxes', sandbox.sandboxId, 'run', 'agent.sock'),
    )
    const onSocket = (cmd: string, args: string[]) => async () => {
      await runCommand(direct, { cmd, args, accessToken: info.envdAccessToken })
    }
    // Interleaved, so that a busy moment of the machine weighs on all three alike.
    const scenarios = [
      {
        name: `${template}: commands.run("true") through the proxy (SDK)`,
        run: async () => {
          await sandbox.commands.run('true')
        },
      },
      {
        name: `${template}: \`bash -l -c true\` straight to the agent socket`,
        run: onSocket('/bin/bash', ['-l', '-c', 'true']),
      },
      {
        name: `${template}: \`/bin/true\` straight to the agent socket`,
        run: onSocket('/bin/true', []),
      },
    ]
    const samples = scenarios.map(() => [] as number[])
    const warmup = 3
    for (let i = 0; i < warmup + runs; i++) {
      for (const [index, scenario] of scenarios.entries()) {
        const started = performance.now()
        await scenario.run()
        if (i >= warmup) {
          samples[index]?.push(performance.now() - started)
        }
      }
    }
    direct.close()
    await sandbox.kill()
    perTemplate.push(...scenarios.map((scenario, i) => summarize(scenario.name, samples[i] ?? [])))
  }

  const concurrent = 100
  const started = performance.now()
  const results = await Promise.allSettled(
    Array.from({ length: concurrent }, () => Sandbox.create({ ...opts, timeoutMs: 600_000 })),
  )
  const totalS = (performance.now() - started) / 1000
  const created = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const failures = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []))
  await Promise.allSettled(created.map((s) => s.kill()))

  const [baseRun, baseLogin] = perTemplate
  report(
    'server-e2b',
    [
      summarize('Sandbox.create() → first commands.run("true"), warm pool', createToRun),
      ...perTemplate,
    ],
    undefined,
    [
      `goals: create→first run p50 ≤ 60 ms; run p50 ≤ 8 ms; proxy overhead ≤ 1.5 ms (measured p50 difference in base: ${((baseRun?.p50 ?? NaN) - (baseLogin?.p50 ?? NaN)).toFixed(2)} ms, SDK client included)`,
      `${concurrent} concurrent Sandbox.create(): ${created.length} succeeded in ${totalS.toFixed(1)} s${failures.length > 0 ? `; failures: ${failures.slice(0, 3).join(' | ')}` : ''}`,
    ],
  )
} finally {
  // --kill-sandboxes-on-exit: stopping the server removes every sandbox it made.
  await server.stop()
  rmSync(dataDir, { recursive: true, force: true })
}
