/**
 * QEMU microVMs: boot to agent ready (cold boot of the kernel), restore of the template
 * snapshot to agent ready (what a create is), the exec round trip of `true`, and host memory
 * (PSS) per idle VM, beside a bare QEMU microvm start to its QMP socket (no guest) in the same
 * run. Prints the accelerator: runs unchanged on a KVM host.
 * Usage: npm run bench -- qemu [runs=5] [template=debian]
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCommand } from '@sandcell/envd-client'
import { createQemuDriver, type QemuDriver, type Sandbox } from '@sandcell/runtime'
import { createLogger, delay } from '@sandcell/shared'
import { benchLimits } from './lib/setup.js'
import { measure, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 5)
const template = process.argv[3] ?? 'debian'
const cgroupParent = 'sandcell-bench-vm'
const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-'))

function openDriver(templateSnapshots: boolean): QemuDriver {
  return createQemuDriver({
    dataDir,
    templatesDir: process.env.SANDCELL_TEMPLATES_DIR ?? '/var/tmp/sandcell-test-templates',
    // The test suite's images: a bench never rebuilds the kernel or the template snapshot.
    imagesDir: process.env.SANDCELL_TEST_VM_IMAGES_DIR ?? '/var/tmp/sandcell-test-vm-images',
    cgroupParent,
    templateSnapshots,
    log: createLogger({ level: process.env.SANDCELL_LOG_LEVEL ?? 'warn' }),
  })
}

function pssKiB(pid: number): number {
  try {
    const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))
    return Number(match?.[1] ?? 0)
  } catch {
    return 0
  }
}

/** Every process of a VM (QEMU and its relay) from its cgroup, v2 or v1. */
function cgroupPids(id: string): number[] {
  for (const path of [
    `/sys/fs/cgroup/${cgroupParent}/${id}/cgroup.procs`,
    `/sys/fs/cgroup/pids/${cgroupParent}/${id}/cgroup.procs`,
  ]) {
    if (existsSync(path)) {
      return readFileSync(path, 'utf8').trim().split('\n').filter(Boolean).map(Number)
    }
  }
  return []
}

/** QEMU's microvm with every device off, from spawn to its QMP socket: the floor of a VM start. */
async function bareQemuStart(accel: string): Promise<void> {
  const socket = join(dataDir, 'bare-qmp.sock')
  rmSync(socket, { force: true })
  const child = spawn(
    'qemu-system-x86_64',
    [
      ...['-M', 'microvm,x-option-roms=off,isa-serial=off,rtc=off,pit=off,pic=off'],
      ...['-accel', accel, '-m', '128M', '-nodefaults', '-no-user-config', '-display', 'none'],
      ...['-S', '-qmp', `unix:${socket},server=on,wait=off`],
    ],
    { stdio: 'ignore' },
  )
  const exited = new Promise((resolve) => child.once('exit', resolve))
  while (!existsSync(socket)) {
    await delay(1)
  }
  child.kill('SIGKILL')
  await exited
}

const live = new Set<Sandbox>()
const driver = openDriver(true)
const coldDriver = openDriver(false)
try {
  const accel = await driver.accelerator()
  await driver.prepareTemplate(template)
  const baseline = summarize('bare QEMU microvm start to QMP (no guest)', [
    ...(await measure(Math.max(runs, 10), () => bareQemuStart(accel))),
  ])

  const create = async (from: QemuDriver): Promise<Sandbox> => {
    const sandbox = await from.create({ template, limits: benchLimits })
    live.add(sandbox)
    return sandbox
  }
  const timed = async (from: QemuDriver, count: number): Promise<number[]> => {
    const samples: number[] = []
    for (let i = 0; i < count; i++) {
      const started = performance.now()
      const sandbox = await create(from)
      samples.push(performance.now() - started)
      await sandbox.destroy()
      live.delete(sandbox)
    }
    return samples
  }

  // Cold boots are slow under TCG: fewer of them.
  const boot = await timed(coldDriver, Math.max(1, Math.ceil(runs / 2)))
  const restore = await timed(driver, runs)

  const sandbox = await create(driver)
  const connection = sandbox.connect()
  const exec = await measure(runs * 4, async () => {
    const result = await runCommand(connection, { cmd: '/bin/true' })
    if (result.exitCode !== 0) {
      throw new Error(`true exited ${result.exitCode}`)
    }
  })

  const idle = [sandbox, await create(driver), await create(driver)]
  // Let the guests settle into idle (the agent's lazy init done, page cache quiet).
  await delay(5000)
  const pssMiB = idle.map((s) => cgroupPids(s.id).reduce((sum, pid) => sum + pssKiB(pid), 0) / 1024)

  report(
    'qemu',
    [
      summarize(`boot → agent ready (${accel}, ${template})`, boot),
      summarize(`restore template snapshot → agent ready (${accel}, ${template})`, restore),
      summarize(`exec round trip of true (${accel})`, exec),
      summarize(`host memory per idle VM, PSS (${accel})`, pssMiB, 'MiB'),
    ],
    baseline,
    [
      `accelerator: ${accel}`,
      `limits: ${JSON.stringify(benchLimits)}; VM RAM 1024 MiB, balloon to the memory limit`,
      'the ratio column compares each time with a bare QEMU start; it means nothing for MiB',
    ],
  )
} finally {
  await Promise.allSettled([...live].map((s) => s.destroy()))
  for (const d of [driver, coldDriver]) {
    const left = await d.adopt()
    await Promise.allSettled(left.map((s) => s.destroy()))
    await d.close()
  }
  rmSync(dataDir, { recursive: true, force: true })
}
