/**
 * How many idle sandboxes this machine holds at once, every one still answering: creates them
 * until the target (or a failure), then runs a command in each. Goal ≥ 200.
 * Usage: npm run bench -- container-density [target=200]
 */
import { freemem } from 'node:os'
import { runCommand } from '@sandcell/envd-client'
import type { Sandbox } from '@sandcell/runtime'
import { errorMessage } from '@sandcell/shared'
import { benchLimits, createBenchDriver } from './lib/setup.js'
import { report, summarize } from './lib/stats.js'

const target = Number(process.argv[2] ?? 200)
const { driver, dispose } = createBenchDriver()
const sandboxes: Sandbox[] = []
try {
  const freeBefore = freemem()
  const started = performance.now()
  let failure = ''
  for (let i = 0; i < target; i++) {
    try {
      sandboxes.push(await driver.create({ template: 'base', limits: benchLimits }))
    } catch (err) {
      failure = `create #${i + 1} failed: ${errorMessage(err)}`
      break
    }
  }
  const createSeconds = (performance.now() - started) / 1000
  const pings: number[] = []
  let unresponsive = 0
  for (const sandbox of sandboxes) {
    const t = performance.now()
    const result = await runCommand(sandbox.connect(), {
      cmd: '/usr/bin/true',
      timeoutMs: 10_000,
    }).catch(() => undefined)
    if (result?.exitCode === 0) {
      pings.push(performance.now() - t)
    } else {
      unresponsive += 1
    }
  }
  const usedMiB = (freeBefore - freemem()) / 1024 / 1024
  report(
    'container-density',
    [summarize(`exec \`true\` with ${sandboxes.length} sandboxes running`, pings)],
    undefined,
    [
      `${sandboxes.length} concurrent idle sandboxes created in ${createSeconds.toFixed(1)} s, ${unresponsive} unresponsive (goal ≥ ${target}, all responsive)`,
      `host memory used by them: ${usedMiB.toFixed(0)} MiB (${(usedMiB / Math.max(1, sandboxes.length)).toFixed(1)} MiB each)`,
      ...(failure === '' ? [] : [failure]),
    ],
  )
} finally {
  await Promise.allSettled(sandboxes.map((s) => s.destroy()))
  await dispose()
}
