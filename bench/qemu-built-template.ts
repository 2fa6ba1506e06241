/**
 * QEMU microVMs from a built template: a create (restore of the template snapshot to agent
 * ready) of a template built on `base` whose start command runs in its snapshot, beside a
 * create of `base` itself in the same run, alternating so that both see the same host load.
 * The built template's snapshot is made once at the start (one boot), outside the timings.
 * Usage: npm run bench -- qemu-built-template [runs=5]
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createQemuDriver, type Sandbox } from '@sandcell/runtime'
import { createLogger } from '@sandcell/shared'
import { writeTestBuiltTemplate } from '@sandcell/test-utils'
import { benchLimits } from './lib/setup.js'
import { report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 5)
const cgroupParent = 'sandcell-bench-vm'
const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-'))
const buildsDir = join(dataDir, 'builds')

const driver = createQemuDriver({
  dataDir,
  buildsDir,
  templatesDir: process.env.SANDCELL_TEMPLATES_DIR ?? '/var/tmp/sandcell-test-templates',
  // The test suite's images: the kernel, the sandcell image and `base`'s snapshot are reused.
  imagesDir: process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images',
  cgroupParent,
  log: createLogger({ level: process.env.SANDCELL_LOG_LEVEL ?? 'warn' }),
})

const live = new Set<Sandbox>()
try {
  const accel = await driver.accelerator()
  const built = await writeTestBuiltTemplate({
    buildsDir,
    files: { '/opt/app/server.sh': 'exec sleep 100000\n' },
    defaults: {
      env: { MODE: 'bench' },
      user: 'user',
      workdir: '/opt/app',
      startCmd: 'touch /tmp/ready; exec sh /opt/app/server.sh',
      readyCmd: 'test -f /tmp/ready',
    },
  })
  await driver.prepareTemplate('base')
  await driver.prepareTemplate(built)

  const createMs = async (template: string): Promise<number> => {
    const started = performance.now()
    const sandbox = await driver.create({ template, limits: benchLimits })
    const elapsed = performance.now() - started
    live.add(sandbox)
    await sandbox.destroy()
    live.delete(sandbox)
    return elapsed
  }
  const base: number[] = []
  const fromBuilt: number[] = []
  // One untimed create of each first: the first restore after a snapshot pages its files in.
  await createMs('base')
  await createMs(built)
  for (let i = 0; i < runs; i++) {
    base.push(await createMs('base'))
    fromBuilt.push(await createMs(built))
  }

  report(
    'qemu-built-template',
    [
      summarize(
        `create from a built template on base, start command running (${accel})`,
        fromBuilt,
      ),
    ],
    summarize(`create from base (${accel})`, base),
    [
      `accelerator: ${accel}`,
      `limits: ${JSON.stringify(benchLimits)}; VM RAM 1024 MiB, balloon to the memory limit`,
      'a create is a restore of the template snapshot to agent ready, taken after the start command was ready',
    ],
  )
} finally {
  await Promise.allSettled([...live].map((s) => s.destroy()))
  const left = await driver.adopt()
  await Promise.allSettled(left.map((s) => s.destroy()))
  await driver.close()
  rmSync(dataDir, { recursive: true, force: true })
}
