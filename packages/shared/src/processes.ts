/** Host process facts from /proc: liveness with pid-reuse protection, and process trees. */
import { readFileSync, readdirSync } from 'node:fs'

/**
 * A process's start time in clock ticks since boot (field 22 of /proc/PID/stat). Together with
 * the pid it names one process for good: a recycled pid has a different start time.
 */
export function processStartTime(pid: number): number | undefined {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const startTime = Number(fields[19])
  return Number.isFinite(startTime) ? startTime : undefined
}

/** Whether the process `pid` that started at `startTime` still exists (zombies count as gone). */
export function isProcessAlive(pid: number, startTime: number): boolean {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return false
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return fields[0] !== 'Z' && Number(fields[19]) === startTime
}

/** Every pid on the host whose command line contains `needle`, for leak checks and cleanup. */
export function findProcesses(needle: string): number[] {
  const found: number[] = []
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry)
    if (!Number.isInteger(pid) || pid === process.pid) {
      continue
    }
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      if (cmdline.includes(needle)) {
        found.push(pid)
      }
    } catch {
      // The process ended while we looked.
    }
  }
  return found
}

/** The direct children of `pid` (from each of its tasks' `children` file); none when it is gone. */
export function childProcesses(pid: number): number[] {
  const children: number[] = []
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const listed = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8')
      for (const child of listed.split(' ')) {
        if (child.length > 0) {
          children.push(Number(child))
        }
      }
    }
  } catch {
    // Gone, or gone while we looked.
  }
  return children
}

/**
 * The PATH of the host tools sandcell runs (ip, nft, nsenter, bwrap, QEMU, socat), and of a
 * sandbox's processes: the standard one, so that neither depends on the caller's environment.
 */
export const standardPath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
