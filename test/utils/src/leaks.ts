/**
 * Snapshots of every kind of OS resource a sandbox can leak (processes, mounts, cgroups, loop
 * devices, temp dirs, network namespaces), and an assertion that a test left none behind.
 */
import assert from 'node:assert/strict'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface LeakSnapshot {
  processes: string[]
  mounts: string[]
  cgroups: string[]
  loopDevices: string[]
  tempDirs: string[]
  networkNamespaces: string[]
}

function sandboxProcesses(): string[] {
  const found: string[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) {
      continue
    }
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ').trim()
      if (/(^|\/)bwrap |\/\.sandcell\/|agent\.mjs|qemu-system/.test(cmdline)) {
        found.push(`${entry} ${cmdline.slice(0, 160)}`)
      }
    } catch {
      // Gone while we looked.
    }
  }
  return found
}

function sandboxMounts(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => /sandcell|\/sandboxes\/| - overlay /.test(line))
    .map((line) => line.split(' ')[4] ?? line)
}

function sandboxCgroups(): string[] {
  const found: string[] = []
  const roots = existsSync('/sys/fs/cgroup/cgroup.controllers')
    ? ['/sys/fs/cgroup']
    : ['memory', 'pids', 'cpu', 'cpuacct', 'freezer'].map((c) => join('/sys/fs/cgroup', c))
  for (const root of roots) {
    let parents: string[]
    try {
      parents = readdirSync(root).filter((name) => name.startsWith('sandcell'))
    } catch {
      continue
    }
    for (const parent of parents) {
      for (const entry of readdirSync(join(root, parent), { withFileTypes: true })) {
        if (entry.isDirectory()) {
          found.push(join(root, parent, entry.name))
        }
      }
    }
  }
  return found
}

function loopDevices(): string[] {
  const found: string[] = []
  for (const name of readdirSync('/sys/block').filter((n) => n.startsWith('loop'))) {
    try {
      found.push(`${name} ${readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim()}`)
    } catch {
      // Not bound to a file.
    }
  }
  return found
}

function sandcellTempDirs(): string[] {
  return readdirSync(tmpdir()).filter((name) => name.startsWith('sandcell-'))
}

function networkNamespaces(): string[] {
  try {
    return readdirSync('/run/netns').filter((name) => name.startsWith('sandcell'))
  } catch {
    return []
  }
}

export function snapshotLeaks(): LeakSnapshot {
  return {
    processes: sandboxProcesses(),
    mounts: sandboxMounts(),
    cgroups: sandboxCgroups(),
    loopDevices: loopDevices(),
    tempDirs: sandcellTempDirs(),
    networkNamespaces: networkNamespaces(),
  }
}

/** Whether a resource belongs to the run `scope` names (see {@link LeakCheckOptions.scope}). */
function inScope(kind: keyof LeakSnapshot, item: string, scope: readonly string[]): boolean {
  if (scope.some((s) => item.includes(s))) {
    return true
  }
  switch (kind) {
    case 'processes': {
      // A sandbox's processes live in our cgroups, or (a launch cut short, before its cgroup)
      // name our paths further along the command line than the item shows.
      const pid = item.split(' ')[0] ?? ''
      try {
        const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
        return scope.some((s) => cgroups.includes(s) || cmdline.includes(s))
      } catch {
        return false
      }
    }
    case 'tempDirs':
      return scope.some(
        (s) => s === join(tmpdir(), item) || s.startsWith(`${join(tmpdir(), item)}/`),
      )
    case 'mounts':
    case 'cgroups':
    case 'loopDevices':
    case 'networkNamespaces':
      return false
  }
}

function newSince(
  baseline: LeakSnapshot,
  now: LeakSnapshot,
  scope: readonly string[] | undefined,
): Partial<LeakSnapshot> {
  const leaks: Partial<LeakSnapshot> = {}
  for (const key of Object.keys(now) as (keyof LeakSnapshot)[]) {
    const extra = now[key].filter(
      (item) => !baseline[key].includes(item) && (scope === undefined || inScope(key, item, scope)),
    )
    if (extra.length > 0) {
      leaks[key] = extra
    }
  }
  return leaks
}

export interface LeakCheckOptions {
  /** How long leftovers may take to go, ms. @default 5000 */
  timeoutMs?: number
  /**
   * Count only this run's resources: those whose name holds one of these strings (a data dir,
   * a cgroup parent), and processes in a cgroup whose path holds one. Without it, anything new
   * on the machine counts, including what other test runs on a shared host create meanwhile.
   */
  scope?: readonly string[]
}

/**
 * Fails when anything appeared since `baseline` and is still there after `timeoutMs` (teardown
 * in the kernel is asynchronous: reaping, lazy unmounts and cgroup removal take a moment).
 */
export async function assertNoLeaks(
  baseline: LeakSnapshot,
  { timeoutMs = 5000, scope }: LeakCheckOptions = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let leaks = newSince(baseline, snapshotLeaks(), scope)
  while (Object.keys(leaks).length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    leaks = newSince(baseline, snapshotLeaks(), scope)
  }
  assert.deepEqual(leaks, {}, `resources leaked: ${JSON.stringify(leaks, null, 2)}`)
}
