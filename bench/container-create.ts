/**
 * Create-to-ready of a container sandbox, cold and from the warm pool, beside a bare
 * `bwrap … true` in the same run. Goals: cold p50 ≤ 150 ms, pool p50 ≤ 10 ms.
 * Usage: npm run bench -- container-create [runs=200]
 */
import { WarmPool } from '@sandcell/runtime'
import { createLogger } from '@sandcell/shared'
import { benchLimits, createBenchDriver, runBareBwrap } from './lib/setup.js'
import { measure, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 200)
const { driver, dispose } = createBenchDriver()
try {
  const baseline = summarize(
    'bare bwrap … true',
    await measure(runs, () => runBareBwrap(['/usr/bin/true'])),
  )

  const cold: number[] = []
  for (let i = 0; i < runs + 3; i++) {
    const started = performance.now()
    const sandbox = await driver.create({ template: 'base', limits: benchLimits })
    const elapsed = performance.now() - started
    // The first runs warm up caches (template, blank disk image); destroy is not timed.
    if (i >= 3) {
      cold.push(elapsed)
    }
    await sandbox.destroy()
  }

  const pool = new WarmPool({
    driver,
    log: createLogger({ level: 'warn' }),
    sizes: { base: 2 },
    limits: benchLimits,
  })
  pool.start()
  const pooled: number[] = []
  for (let i = 0; i < runs; i++) {
    // Measure the hand-over itself: wait (untimed) until the pool has refilled.
    await pool.waitFull()
    const started = performance.now()
    const { sandbox, pooled: wasPooled } = await pool.acquire({
      template: 'base',
      limits: benchLimits,
    })
    pooled.push(performance.now() - started)
    if (!wasPooled) {
      throw new Error('the pool handed out a cold sandbox')
    }
    await sandbox.destroy()
  }
  await pool.close()

  report(
    'container-create',
    [
      summarize('create → ready, cold (base)', cold),
      summarize('create → ready, warm pool (base)', pooled),
    ],
    baseline,
    ['goals: cold p50 ≤ 150 ms, warm pool p50 ≤ 10 ms', `limits: ${JSON.stringify(benchLimits)}`],
  )
} finally {
  await dispose()
}
