/**
 * Exec round trip of `true` through the agent of a running sandbox (Connect over its Unix
 * socket: start, exit, end event), beside a bare `bwrap … true`. Goal p50 ≤ 10 ms.
 * Usage: npm run bench -- container-exec [runs=200]
 */
import { runCommand } from '@sandcell/envd-client'
import { benchLimits, createBenchDriver, runBareBwrap } from './lib/setup.js'
import { measure, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 200)
const { driver, dispose } = createBenchDriver()
try {
  const baseline = summarize(
    'bare bwrap … true',
    await measure(runs, () => runBareBwrap(['/usr/bin/true'])),
  )
  const sandbox = await driver.create({ template: 'base', limits: benchLimits })
  const connection = sandbox.connect()
  const exec = await measure(runs, async () => {
    const result = await runCommand(connection, { cmd: '/usr/bin/true' })
    if (result.exitCode !== 0) {
      throw new Error(`true exited ${result.exitCode}`)
    }
  })
  const shell = await measure(runs, async () => {
    await runCommand(connection, { cmd: '/bin/sh', args: ['-c', 'echo hi'] })
  })
  await sandbox.destroy()
  report(
    'container-exec',
    [
      summarize('exec `true` via agent', exec),
      summarize('exec `sh -c "echo hi"` via agent', shell),
    ],
    baseline,
    ['goal: exec `true` p50 ≤ 10 ms'],
  )
} finally {
  await dispose()
}
