/**
 * Memory of idle sandboxes: PSS (shared pages split between their users) of every process in
 * each sandbox, the agent included, beside an idle bare Node process. Goal ≤ 40 MiB PSS each.
 * Usage: npm run bench -- container-memory [sandboxes=20]
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { delay } from '@sandcell/shared'
import { benchLimits, createBenchDriver } from './lib/setup.js'
import { report, summarize } from './lib/stats.js'

const count = Number(process.argv[2] ?? 20)

function pssKiB(pid: number): number {
  try {
    const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))
    return Number(match?.[1] ?? 0)
  } catch {
    return 0
  }
}

function cgroupPids(cgroupParent: string, id: string): number[] {
  const v2 = `/sys/fs/cgroup/${cgroupParent}/${id}/cgroup.procs`
  const v1 = `/sys/fs/cgroup/pids/${cgroupParent}/${id}/cgroup.procs`
  for (const path of [v2, v1]) {
    try {
      return readFileSync(path, 'utf8').trim().split('\n').map(Number)
    } catch {
      // Try the other layout.
    }
  }
  return []
}

const { driver, dispose } = createBenchDriver()
try {
  const bare = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], {
    stdio: 'ignore',
    env: {},
  })
  await delay(1500)
  const baselineMiB = pssKiB(bare.pid ?? 0) / 1024
  bare.kill()

  const sandboxes = []
  for (let i = 0; i < count; i++) {
    sandboxes.push(await driver.create({ template: 'base', limits: benchLimits }))
  }
  // Let every agent settle into idle (lazy init done, GC run).
  await delay(3000)
  const perSandbox = sandboxes.map(
    (s) => cgroupPids('sandcell-bench', s.id).reduce((sum, pid) => sum + pssKiB(pid), 0) / 1024,
  )
  const cgroupMiB = await Promise.all(
    sandboxes.map(async (s) => (await s.stats()).memoryBytes / 1024 / 1024),
  )
  await Promise.all(sandboxes.map((s) => s.destroy()))
  report(
    'container-memory',
    [
      summarize(`PSS per idle sandbox (${count} running)`, perSandbox, 'MiB'),
      summarize('cgroup memory.current per idle sandbox', cgroupMiB, 'MiB'),
    ],
    summarize('idle bare node process', [baselineMiB], 'MiB'),
    [
      'goal: ≤ 40 MiB PSS per idle sandbox, agent included',
      'PSS splits pages shared between sandboxes (node binary, libraries) among them',
    ],
  )
} finally {
  await dispose()
}
