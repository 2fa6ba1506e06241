/**
 * The network lab's namespaces and links: building the host and internet netns with their
 * uplink and the veth from the test process, and removing them (or a crashed lab's leftovers).
 */
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { CleanupStack } from '@sandcell/shared'
import { labDnsServer, labServers, labUplink } from './network-lab-facts.js'
import { waitFor } from './wait.js'

/** What the lab's temp dirs are named after, followed by the prefix. */
export const tempDirPrefix = 'network-lab-'

const execFileAsync = promisify(execFile)

export async function run(file: string, args: readonly string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args, { encoding: 'utf8' })
    return stdout
  } catch (err) {
    const stderr =
      typeof err === 'object' && err !== null && 'stderr' in err ? String(err.stderr).trim() : ''
    throw new Error(`${[file, ...args].join(' ')} failed: ${stderr || String(err)}`, { cause: err })
  }
}

/**
 * Runs `ip` with `command` split at spaces: everything put into one is a validated prefix-based
 * name or a fixed address, none holds a space.
 */
const ip = (command: string): Promise<string> => run('ip', command.split(' '))

/** Pids of the processes in the netns mounted at `path` (zombies have none and do not count). */
function netnsProcesses(path: string): number[] {
  const link = `net:[${statSync(path).ino}]`
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) {
      continue
    }
    try {
      if (readlinkSync(`/proc/${entry}/ns/net`) === link) {
        pids.push(Number(entry))
      }
    } catch {
      // Gone, or a zombie, while we looked.
    }
  }
  return pids
}

/** The test process that started the lab program `pid`, if it is one. */
function labOwner(pid: number): number | undefined {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
    if (!args.some((arg) => arg.endsWith('network-lab-server.ts'))) {
      return undefined
    }
    const config: unknown = JSON.parse(args.at(-1) ?? '')
    return typeof config === 'object' && config !== null && 'ownerPid' in config
      ? Number(config.ownerPid)
      : undefined
  } catch {
    return undefined
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Kills whatever still runs in the netns and deletes it. A process left in it would keep it
 * (and its veths) alive after `ip netns del`, unnamed and out of the leak checker's sight.
 */
export async function removeNetns(path: string): Promise<void> {
  if (!existsSync(path)) {
    return
  }
  for (const pid of netnsProcesses(path)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
  await waitFor(`processes in ${path} to exit`, () => netnsProcesses(path).length === 0, {
    timeoutMs: 5000,
  })
  await ip(`netns del ${path.slice('/run/netns/'.length)}`)
}

async function deleteLink(name: string): Promise<void> {
  await ip(`link del ${name}`).catch((err: unknown) => {
    // Deleting either end of a veth deletes both, and a netns takes its own with it.
    if (!String(err).includes('Cannot find device')) {
      throw err
    }
  })
}

/**
 * Removes what a crashed lab with this prefix left: its netns, its processes, its veth into
 * this netns and its temp dirs.
 * @throws Error when a live lab of another test process holds the prefix
 */
export async function removeLeftovers(names: LabNames): Promise<void> {
  for (const path of [names.hostNetns, names.outNetns]) {
    if (!existsSync(path)) {
      continue
    }
    const owner = netnsProcesses(path)
      .map(labOwner)
      .find((pid) => pid !== undefined && pid !== process.pid && isAlive(pid))
    if (owner !== undefined) {
      throw new Error(
        `network lab prefix ${names.prefix} is in use by process ${owner}: pass another prefix`,
      )
    }
  }
  await deleteLink(names.testLink)
  await removeNetns(names.hostNetns)
  await removeNetns(names.outNetns)
  for (const entry of readdirSync(tmpdir())) {
    if (entry.startsWith(`${tempDirPrefix}${names.prefix}-`)) {
      rmSync(join(tmpdir(), entry), { recursive: true, force: true })
    }
  }
}

export interface LabNames {
  prefix: string
  hostName: string
  outName: string
  hostNetns: string
  outNetns: string
  /** The test process's end of the veth to the host; the host's end is `test0`. */
  testLink: string
}

export function labNames(prefix: string): LabNames {
  if (!/^[a-z0-9][a-z0-9-]{0,12}$/i.test(prefix) || prefix.toLowerCase().startsWith('sandcell')) {
    throw new Error(
      `network lab prefix ${JSON.stringify(prefix)} must be 1-13 letters, digits or -, not starting with sandcell`,
    )
  }
  return {
    prefix,
    hostName: `${prefix}-host`,
    outName: `${prefix}-out`,
    hostNetns: `/run/netns/${prefix}-host`,
    outNetns: `/run/netns/${prefix}-out`,
    testLink: `${prefix}-t`,
  }
}

/**
 * Picks the /30 `172.30.<n>.0` for the veth into the host, starting from the prefix's hash.
 * Adding its route claims it: the kernel refuses a second identical route, so two labs started
 * at once cannot both take one.
 * @returns n
 */
async function claimTestSubnet(prefix: string, link: string): Promise<number> {
  let start = 0
  for (const char of prefix) {
    start = (start * 31 + char.charCodeAt(0)) % 256
  }
  for (let i = 0; i < 256; i++) {
    const n = (start + i) % 256
    try {
      await ip(`route add 172.30.${n}.0/30 dev ${link} scope link`)
      return n
    } catch (err) {
      if (!String(err).includes('File exists')) {
        throw err
      }
    }
  }
  throw new Error('every 172.30.<n>.0/30 is taken: too many network labs at once')
}

export async function buildNetwork(names: LabNames, stack: CleanupStack): Promise<{ n: number }> {
  const { hostName: host, outName: out, testLink } = names
  await ip(`netns add ${host}`)
  stack.defer(`netns ${host}`, () => removeNetns(names.hostNetns))
  await ip(`netns add ${out}`)
  stack.defer(`netns ${out}`, () => removeNetns(names.outNetns))

  const { interface: uplink, address, gateway, prefixLength } = labUplink
  await ip(`-n ${host} link add ${uplink} type veth peer name ${uplink} netns ${out}`)
  await Promise.all([
    ip(`-n ${host} link set lo up`),
    ip(`-n ${out} link set lo up`),
    ip(`-n ${host} addr add ${address}/${prefixLength} dev ${uplink}`),
    ip(`-n ${out} addr add ${gateway}/${prefixLength} dev ${uplink}`),
    // The public servers live on the internet's lo; the host reaches them by its default route.
    ...[...Object.values(labServers), labDnsServer].map((server) =>
      ip(`-n ${out} addr add ${server}/32 dev lo`),
    ),
    run('nsenter', [
      `--net=${names.hostNetns}`,
      '--',
      ...['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'],
    ]),
  ])
  await ip(`-n ${host} link set ${uplink} up`)
  await ip(`-n ${out} link set ${uplink} up`)
  await ip(`-n ${host} route add default via ${gateway}`)

  await ip(`link add ${testLink} type veth peer name test0 netns ${host}`)
  // Before the netns goes: a process the kill missed would otherwise keep this end here.
  stack.defer(`veth ${testLink}`, () => deleteLink(testLink))
  await ip(`link set ${testLink} up`)
  await ip(`-n ${host} link set test0 up`)
  const n = await claimTestSubnet(names.prefix, testLink)
  await ip(`addr add 172.30.${n}.1/30 dev ${testLink} noprefixroute`)
  await ip(`-n ${host} addr add 172.30.${n}.2/30 dev test0`)
  return { n }
}
