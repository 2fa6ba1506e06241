/**
 * Per-sandbox control groups on cgroup v1 (one directory per controller) and v2 (one unified
 * directory): limits for memory without swap, CPU quota and pids, freezing, killing every
 * member, and usage statistics.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DriverError, delay, withTimeout } from '@sandcell/shared'

export type CgroupVersion = 1 | 2

export interface CgroupLimits {
  memoryBytes: number
  /** CPU time as a number of cores, e.g. 0.5 or 2. */
  cpus: number
  pidsMax: number
  /** Background groups get a small CPU share: they yield to every normal one under contention. */
  background?: boolean
}

export interface CgroupStats {
  memoryBytes: number
  memoryPeakBytes: number
  memoryLimitBytes: number
  cpuUsageUs: number
  pids: number
  /** Processes the kernel killed for hitting the memory limit. */
  oomKills: number
}

const cgroupRoot = '/sys/fs/cgroup'
const cpuPeriodUs = 100_000
const v1Controllers = ['memory', 'cpu', 'cpuacct', 'pids', 'freezer'] as const
type V1Controller = (typeof v1Controllers)[number]

/** Which cgroup layout this host has: v2 when the root is the unified hierarchy. */
export function detectCgroupVersion(): CgroupVersion {
  if (existsSync(join(cgroupRoot, 'cgroup.controllers'))) {
    return 2
  }
  for (const controller of ['memory', 'pids', 'freezer']) {
    if (!existsSync(join(cgroupRoot, controller, 'cgroup.procs'))) {
      throw new DriverError(
        `cgroup v1 controller "${controller}" is not mounted at ${cgroupRoot}/${controller}; ` +
          'mount it or boot with the unified (v2) hierarchy',
      )
    }
  }
  return 1
}

function readText(path: string): string {
  return readFileSync(path, 'utf8').trim()
}

function readNumber(path: string, fallback = 0): number {
  try {
    const value = Number(readText(path))
    return Number.isFinite(value) ? value : fallback
  } catch {
    return fallback
  }
}

function readKeyed(path: string, key: string): number {
  try {
    for (const line of readText(path).split('\n')) {
      const [name, value] = line.split(/\s+/)
      if (name === key) {
        return Number(value)
      }
    }
  } catch {
    // A missing stat file means the counter does not exist on this kernel.
  }
  return 0
}

function parsePids(text: string): number[] {
  return text
    .split('\n')
    .filter((line) => line.length > 0)
    .map(Number)
}

/** One sandbox's cgroup, on whichever version the host runs. */
export interface Cgroup {
  readonly version: CgroupVersion
  /** Path relative to the hierarchy root, e.g. `sandcell/abc`. */
  readonly name: string
  /** Moves a host process (and so its future children) into the group. */
  addProcess(pid: number): void
  setLimits(limits: CgroupLimits): void
  processes(): number[]
  freeze(options?: { signal?: AbortSignal }): Promise<void>
  thaw(options?: { signal?: AbortSignal }): Promise<void>
  isFrozen(): boolean
  /** SIGKILLs every member, including ones forked meanwhile, until the group is empty. */
  killAll(options?: { signal?: AbortSignal }): Promise<void>
  stats(): CgroupStats
  /** Removes the group's directories; members must be gone (call killAll first). */
  remove(options?: { signal?: AbortSignal }): Promise<void>
  exists(): boolean
}

export interface CgroupOptions {
  version: CgroupVersion
  /** Parent group shared by every sandbox, e.g. `sandcell`. */
  parent: string
  id: string
}

export function openCgroup(options: CgroupOptions): Cgroup {
  return options.version === 2 ? new CgroupV2(options) : new CgroupV1(options)
}

/** Creates the group (and the parent, with controllers delegated on v2). */
export function createCgroup(options: CgroupOptions): Cgroup {
  const cgroup = openCgroup(options)
  if (options.version === 2) {
    enableV2Controllers(options.parent)
    mkdirSync(join(cgroupRoot, options.parent, options.id), { recursive: true })
  } else {
    for (const controller of v1Controllers) {
      mkdirSync(join(cgroupRoot, controller, options.parent, options.id), { recursive: true })
    }
  }
  return cgroup
}

/** Lists the sandbox groups under `parent`, for cleanup of groups nobody owns. */
export function listCgroups(version: CgroupVersion, parent: string): string[] {
  const dir = version === 2 ? join(cgroupRoot, parent) : join(cgroupRoot, 'memory', parent)
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name)
  } catch {
    return []
  }
}

/** Removes the shared parent group if it is empty; a parent still in use stays (EBUSY). */
export function removeCgroupParent(version: CgroupVersion, parent: string): void {
  const dirs =
    version === 2
      ? [join(cgroupRoot, parent)]
      : v1Controllers.map((controller) => join(cgroupRoot, controller, parent))
  for (const dir of dirs) {
    try {
      rmdirSync(dir)
    } catch {
      // Busy (sandboxes remain) or already gone: both fine.
    }
  }
}

const v2Controllers = ['memory', 'cpu', 'pids']

function enableV2Controllers(parent: string): void {
  const available = readText(join(cgroupRoot, 'cgroup.controllers')).split(' ')
  const missing = v2Controllers.filter((c) => !available.includes(c))
  if (missing.length > 0) {
    throw new DriverError(`cgroup v2 controllers not available on this host: ${missing.join(', ')}`)
  }
  // Each level must delegate the controllers to the next one down.
  let dir = cgroupRoot
  for (const part of parent.split('/')) {
    const enabled = readText(join(dir, 'cgroup.subtree_control')).split(' ')
    const wanted = v2Controllers.filter((c) => !enabled.includes(c))
    if (wanted.length > 0) {
      writeFileSync(join(dir, 'cgroup.subtree_control'), wanted.map((c) => `+${c}`).join(' '))
    }
    dir = join(dir, part)
    mkdirSync(dir, { recursive: true })
  }
  const enabled = readText(join(dir, 'cgroup.subtree_control')).split(' ')
  const wanted = v2Controllers.filter((c) => !enabled.includes(c))
  if (wanted.length > 0) {
    writeFileSync(join(dir, 'cgroup.subtree_control'), wanted.map((c) => `+${c}`).join(' '))
  }
}

async function pollUntil(
  what: string,
  done: () => boolean,
  signal: AbortSignal | undefined,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = withTimeout(timeoutMs, signal)
  let wait = 1
  while (!done()) {
    if (deadline.aborted) {
      throw new DriverError(`timed out waiting for ${what}`, { cause: deadline.reason })
    }
    await delay(wait).catch(() => undefined)
    wait = Math.min(wait * 2, 50)
  }
}

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
}

async function removeDir(path: string, signal: AbortSignal | undefined): Promise<void> {
  // rmdir fails with EBUSY while the kernel still tears down the last member: retry briefly.
  await pollUntil(
    `cgroup ${path} to be removable`,
    () => {
      try {
        rmdirSync(path)
        return true
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        return code === 'ENOENT'
      }
    },
    signal,
  )
}

class CgroupV2 implements Cgroup {
  readonly version = 2 as const
  readonly name: string
  readonly #dir: string

  constructor(options: CgroupOptions) {
    this.name = `${options.parent}/${options.id}`
    this.#dir = join(cgroupRoot, options.parent, options.id)
  }

  #file(name: string): string {
    return join(this.#dir, name)
  }

  exists(): boolean {
    return existsSync(this.#dir)
  }

  addProcess(pid: number): void {
    writeFileSync(this.#file('cgroup.procs'), String(pid))
  }

  setLimits(limits: CgroupLimits): void {
    writeFileSync(this.#file('memory.max'), String(limits.memoryBytes))
    if (existsSync(this.#file('memory.swap.max'))) {
      writeFileSync(this.#file('memory.swap.max'), '0')
    }
    const quota = Math.max(1000, Math.round(limits.cpus * cpuPeriodUs))
    writeFileSync(this.#file('cpu.max'), `${quota} ${cpuPeriodUs}`)
    // cpu.weight: 100 is everyone's default; 10 yields to them.
    writeFileSync(this.#file('cpu.weight'), limits.background === true ? '10' : '100')
    writeFileSync(this.#file('pids.max'), String(limits.pidsMax))
  }

  processes(): number[] {
    try {
      return parsePids(readFileSync(this.#file('cgroup.procs'), 'utf8'))
    } catch {
      return []
    }
  }

  isFrozen(): boolean {
    return readKeyed(this.#file('cgroup.events'), 'frozen') === 1
  }

  async freeze({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    writeFileSync(this.#file('cgroup.freeze'), '1')
    await pollUntil(`${this.name} to freeze`, () => this.isFrozen(), signal)
  }

  async thaw({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    writeFileSync(this.#file('cgroup.freeze'), '0')
    await pollUntil(`${this.name} to thaw`, () => !this.isFrozen(), signal)
  }

  async killAll({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    if (!this.exists()) {
      return
    }
    if (existsSync(this.#file('cgroup.kill'))) {
      writeFileSync(this.#file('cgroup.kill'), '1')
    } else {
      writeFileSync(this.#file('cgroup.freeze'), '1')
      killPids(this.processes())
      writeFileSync(this.#file('cgroup.freeze'), '0')
    }
    await pollUntil(
      `${this.name} to empty`,
      () => {
        const left = this.processes()
        killPids(left)
        return left.length === 0
      },
      signal,
    )
  }

  stats(): CgroupStats {
    const max = readText(this.#file('memory.max'))
    return {
      memoryBytes: readNumber(this.#file('memory.current')),
      memoryPeakBytes: readNumber(this.#file('memory.peak')),
      memoryLimitBytes: max === 'max' ? Number.MAX_SAFE_INTEGER : Number(max),
      cpuUsageUs: readKeyed(this.#file('cpu.stat'), 'usage_usec'),
      pids: readNumber(this.#file('pids.current')),
      oomKills: readKeyed(this.#file('memory.events'), 'oom_kill'),
    }
  }

  async remove({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    await removeDir(this.#dir, signal)
  }
}

class CgroupV1 implements Cgroup {
  readonly version = 1 as const
  readonly name: string

  constructor(options: CgroupOptions) {
    this.name = `${options.parent}/${options.id}`
  }

  #file(controller: V1Controller, name: string): string {
    return join(cgroupRoot, controller, this.name, name)
  }

  exists(): boolean {
    return v1Controllers.some((c) => existsSync(join(cgroupRoot, c, this.name)))
  }

  addProcess(pid: number): void {
    for (const controller of v1Controllers) {
      writeFileSync(this.#file(controller, 'cgroup.procs'), String(pid))
    }
  }

  setLimits(limits: CgroupLimits): void {
    const memsw = this.#file('memory', 'memory.memsw.limit_in_bytes')
    const hasMemsw = existsSync(memsw)
    // memsw must stay >= the memory limit, so the order of the two writes depends on direction.
    const current = readNumber(this.#file('memory', 'memory.limit_in_bytes'))
    if (hasMemsw && limits.memoryBytes > current) {
      writeFileSync(memsw, String(limits.memoryBytes))
    }
    writeFileSync(this.#file('memory', 'memory.limit_in_bytes'), String(limits.memoryBytes))
    if (hasMemsw) {
      writeFileSync(memsw, String(limits.memoryBytes))
    }
    try {
      writeFileSync(this.#file('memory', 'memory.swappiness'), '0')
    } catch {
      // Not writable on every kernel; without swap accounting the host's swap policy applies.
    }
    const quota = Math.max(1000, Math.round(limits.cpus * cpuPeriodUs))
    writeFileSync(this.#file('cpu', 'cpu.cfs_period_us'), String(cpuPeriodUs))
    writeFileSync(this.#file('cpu', 'cpu.cfs_quota_us'), String(quota))
    // cpu.shares: 1024 is everyone's default; 102 yields to them.
    writeFileSync(this.#file('cpu', 'cpu.shares'), limits.background === true ? '102' : '1024')
    writeFileSync(this.#file('pids', 'pids.max'), String(limits.pidsMax))
  }

  processes(): number[] {
    try {
      return parsePids(readFileSync(this.#file('pids', 'cgroup.procs'), 'utf8'))
    } catch {
      return []
    }
  }

  isFrozen(): boolean {
    try {
      return readText(this.#file('freezer', 'freezer.state')) === 'FROZEN'
    } catch {
      return false
    }
  }

  async freeze({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    writeFileSync(this.#file('freezer', 'freezer.state'), 'FROZEN')
    await pollUntil(`${this.name} to freeze`, () => this.isFrozen(), signal)
  }

  async thaw({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    writeFileSync(this.#file('freezer', 'freezer.state'), 'THAWED')
    await pollUntil(`${this.name} to thaw`, () => !this.isFrozen(), signal)
  }

  async killAll({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    if (!this.exists()) {
      return
    }
    // Frozen members cannot fork while we kill them; SIGKILL is delivered on thaw.
    await pollUntil(
      `${this.name} to empty`,
      () => {
        const left = this.processes()
        if (left.length === 0) {
          return true
        }
        try {
          writeFileSync(this.#file('freezer', 'freezer.state'), 'FROZEN')
          killPids(left)
          writeFileSync(this.#file('freezer', 'freezer.state'), 'THAWED')
        } catch (err) {
          // Another cleanup of the same sandbox emptied and removed the cgroup meanwhile.
          if (!this.exists()) {
            return true
          }
          writeFileSync(this.#file('freezer', 'freezer.state'), 'THAWED')
          throw err
        }
        return false
      },
      signal,
    )
  }

  stats(): CgroupStats {
    return {
      memoryBytes: readNumber(this.#file('memory', 'memory.usage_in_bytes')),
      memoryPeakBytes: readNumber(this.#file('memory', 'memory.max_usage_in_bytes')),
      memoryLimitBytes: readNumber(this.#file('memory', 'memory.limit_in_bytes')),
      cpuUsageUs: Math.round(readNumber(this.#file('cpuacct', 'cpuacct.usage')) / 1000),
      pids: readNumber(this.#file('pids', 'pids.current')),
      oomKills: readKeyed(this.#file('memory', 'memory.oom_control'), 'oom_kill'),
    }
  }

  async remove({ signal }: { signal?: AbortSignal } = {}): Promise<void> {
    for (const controller of v1Controllers) {
      await removeDir(join(cgroupRoot, controller, this.name), signal)
    }
  }
}
