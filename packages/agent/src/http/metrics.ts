/**
 * `GET /metrics`: the sandbox's CPU, memory and disk use in envd's JSON shape. Prefers the cgroup
 * v2 files of the sandbox's own cgroup (what its limits apply to) and falls back to /proc.
 */
import { readFileSync, statfsSync } from 'node:fs'
import { availableParallelism } from 'node:os'

/** envd's Metrics schema (all optional there; all filled here). */
export interface SandboxMetrics {
  ts: number
  cpu_count: number
  cpu_used_pct: number
  mem_total: number
  mem_used: number
  mem_cache: number
  mem_total_mib: number
  mem_used_mib: number
  disk_total: number
  disk_used: number
}

interface CpuSample {
  /** CPU time used, microseconds. */
  usageUs: number
  /** Wall clock, microseconds. */
  atUs: number
}

/** Where the files are; overridable for tests. */
export interface MetricsSourceOptions {
  cgroupDir?: string
  procDir?: string
  /** Path whose file system is reported as the disk (the sandbox root). */
  diskPath: string
}

const readText = (path: string): string | undefined => {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
}

/** A metrics reader; CPU use is measured between consecutive calls (since start for the first). */
export function createMetricsSource(options: MetricsSourceOptions): () => SandboxMetrics {
  const cgroupDir = options.cgroupDir ?? '/sys/fs/cgroup'
  const procDir = options.procDir ?? '/proc'
  const useCgroup = readText(`${cgroupDir}/cpu.stat`) !== undefined

  const cpuCount = (): number => {
    const max = useCgroup ? readText(`${cgroupDir}/cpu.max`)?.trim().split(/\s+/) : undefined
    if (max !== undefined && max[0] !== 'max' && max.length === 2) {
      const quota = Number(max[0])
      const period = Number(max[1])
      if (quota > 0 && period > 0) {
        return Math.max(1, Math.ceil(quota / period))
      }
    }
    return availableParallelism()
  }

  const cpuSample = (): CpuSample => {
    const atUs = Number(process.hrtime.bigint() / 1000n)
    if (useCgroup) {
      const usage = /usage_usec (\d+)/.exec(readText(`${cgroupDir}/cpu.stat`) ?? '')
      if (usage !== null) {
        return { usageUs: Number(usage[1]), atUs }
      }
    }
    // /proc/stat "cpu" line: user nice system idle iowait irq softirq steal, in USER_HZ (100/s).
    const fields =
      (readText(`${procDir}/stat`) ?? '')
        .split('\n')[0]
        ?.trim()
        .split(/\s+/)
        .slice(1)
        .map(Number) ?? []
    const busy = fields.reduce(
      (sum, value, index) => (index === 3 || index === 4 ? sum : sum + (value || 0)),
      0,
    )
    return { usageUs: (busy * 1_000_000) / 100, atUs }
  }

  const memory = (): { total: number; used: number; cache: number } => {
    const meminfo = readText(`${procDir}/meminfo`) ?? ''
    const kib = (key: string): number =>
      Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0) * 1024
    const hostTotal = kib('MemTotal')
    if (useCgroup) {
      const current = Number(readText(`${cgroupDir}/memory.current`)?.trim() ?? NaN)
      const maxText = readText(`${cgroupDir}/memory.max`)?.trim()
      const file = Number(/^file (\d+)/m.exec(readText(`${cgroupDir}/memory.stat`) ?? '')?.[1] ?? 0)
      if (Number.isFinite(current)) {
        const limit = maxText === undefined || maxText === 'max' ? hostTotal : Number(maxText)
        return { total: Math.min(limit, hostTotal || limit), used: current - file, cache: file }
      }
    }
    return { total: hostTotal, used: hostTotal - kib('MemAvailable'), cache: kib('Cached') }
  }

  let previous = cpuSample()
  return () => {
    const count = cpuCount()
    const sample = cpuSample()
    const elapsedUs = sample.atUs - previous.atUs
    const usedUs = sample.usageUs - previous.usageUs
    previous = sample
    const pct = elapsedUs > 0 ? Math.min(100, Math.max(0, (usedUs / elapsedUs / count) * 100)) : 0
    const mem = memory()
    let diskTotal = 0
    let diskUsed = 0
    try {
      const fs = statfsSync(options.diskPath)
      diskTotal = fs.blocks * fs.bsize
      diskUsed = (fs.blocks - fs.bfree) * fs.bsize
    } catch {
      // No disk figures rather than no metrics.
    }
    return {
      ts: Math.floor(Date.now() / 1000),
      cpu_count: count,
      cpu_used_pct: Math.round(pct * 100) / 100,
      mem_total: mem.total,
      mem_used: mem.used,
      mem_cache: mem.cache,
      mem_total_mib: Math.floor(mem.total / 1024 / 1024),
      mem_used_mib: Math.floor(mem.used / 1024 / 1024),
      disk_total: diskTotal,
      disk_used: diskUsed,
    }
  }
}
