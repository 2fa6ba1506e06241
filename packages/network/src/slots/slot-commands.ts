/**
 * The host commands that make and remove a slot, as shell scripts run by one `sh` each (a slot
 * costs a handful of short processes, not a dozen), and the runner that executes them.
 */
import { spawn } from 'node:child_process'
import { DriverError, withTimeout, standardPath } from '@sandcell/shared'
import {
  slotInterfaceName,
  vmTapAddress,
  vmTapName,
  vmTapPrefix,
  type SlotAddresses,
  type SlotKind,
} from './slot-addressing.js'

/** A heredoc body may not contain its own terminator line; ours never do (generated text). */
function heredoc(tag: string, body: string): string {
  return `<<'${tag}'\n${body.endsWith('\n') ? body : `${body}\n`}${tag}\n`
}

/**
 * Per-namespace settings. Ports below 1024 are the sandbox's to bind (its namespace's own
 * setting, since its root is not root over the namespace); ICMP echo sockets let `ping` work
 * without raw sockets; IPv6 is off until sandboxes can have rules for it; `route_localnet` lets
 * the host reach services a sandbox bound to 127.0.0.1.
 */
function sysctls(kind: SlotKind): string[] {
  return [
    'net.ipv4.ip_unprivileged_port_start=0',
    'net.ipv4.ping_group_range=0 2147483647',
    'net.ipv6.conf.all.disable_ipv6=1',
    'net.ipv6.conf.default.disable_ipv6=1',
    ...(kind === 'container'
      ? [`net.ipv4.conf.${slotInterfaceName}.route_localnet=1`]
      : ['net.ipv4.ip_forward=1']),
  ]
}

/**
 * Makes the namespace (failing if the name is taken: that is how two processes never claim the
 * same slot), the veth pair with one end inside, both ends' addresses and routes, and the slot's
 * table. For a microVM slot, also the TAP the VMM attaches to.
 */
export function buildSlotScript(kind: SlotKind, slot: SlotAddresses, rules: string): string {
  const inside = [
    `link set lo up`,
    `addr add ${slot.address}/30 dev ${slotInterfaceName}`,
    `link set ${slotInterfaceName} up`,
    `route add default via ${slot.gateway}`,
    ...(kind === 'vm'
      ? [
          `tuntap add dev ${vmTapName} mode tap`,
          `addr add ${vmTapAddress}/${vmTapPrefix} dev ${vmTapName}`,
          `link set ${vmTapName} up`,
        ]
      : []),
  ].join('\n')
  const host = [
    `netns add ${slot.netns}`,
    `link add ${slot.hostInterface} type veth peer name ${slotInterfaceName} netns ${slot.netns}`,
    `addr add ${slot.gateway}/30 dev ${slot.hostInterface}`,
    `link set ${slot.hostInterface} up`,
  ].join('\n')
  // One shell inside the namespace writes its settings (builtins, no process each), addresses
  // and table: a slot costs four short processes.
  const settings = sysctls(kind)
    .map((setting) => {
      const [name = '', value = ''] = setting.split('=')
      return `echo '${value}' > /proc/sys/${name.replaceAll('.', '/')}`
    })
    .join('\n')
  const insideScript = [
    settings,
    `ip -batch - ${heredoc('INSIDE', inside)}`,
    `nft -f - ${heredoc('NFT', rules)}`,
  ].join('\n')
  return [
    `ip -batch - ${heredoc('HOST', host)}`,
    `nsenter --net=${slot.netnsPath} sh -e ${heredoc('SLOT', insideScript)}`,
  ].join('\n')
}

/** Loads a slot's table anew (rules changed, or another process's services now serve it). */
export function applyRulesScript(slot: SlotAddresses, rules: string): string {
  return `nsenter --net=${slot.netnsPath} nft -f - ${heredoc('NFT', rules)}`
}

/**
 * Removes the namespace (its veth pair and its own connection tracking go with it) and the
 * host's tracked connections of the slot's address, so that the next tenant of the address
 * inherits no flow of this one. Missing pieces are not errors: removal may repeat.
 */
export function removeSlotScript(slot: SlotAddresses, kind: SlotKind = 'container'): string {
  // A container slot: only the namespace. Its veth end, and with it the host's, goes when the
  // kernel's batched namespace cleanup runs (a second or so); deleting the link at once costs
  // ~35 ms of RCU waits. A microVM slot's namespace can outlive its VM for minutes (the relay's
  // orphaned connections to a guest that is gone keep retrying), so its link goes at once.
  // A slot made meanwhile on a lingering index finds the name taken and moves on.
  const links = [
    `netns del ${slot.netns}`,
    ...(kind === 'vm' ? [`link del ${slot.hostInterface}`] : []),
  ]
  return [
    `{ ip -force -batch - ${heredoc('REMOVE', links.join('\n'))}} >/dev/null 2>&1 || true`,
    `conntrack -D -s ${slot.address} >/dev/null 2>&1 || true`,
    `conntrack -D -d ${slot.address} >/dev/null 2>&1 || true`,
  ].join('\n')
}

/**
 * Runs a script with `sh -e`; resolves when it succeeds.
 * @throws DriverError with the script's stderr when it fails or outlives `timeoutMs`
 */
export function runScript(
  script: string,
  { timeoutMs = 10_000, what }: { timeoutMs?: number; what: string },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const signal = withTimeout(timeoutMs)
    const child = spawn('sh', ['-e', '-c', script], {
      env: { PATH: standardPath, LC_ALL: 'C' },
      stdio: ['ignore', 'ignore', 'pipe'],
      signal,
      killSignal: 'SIGKILL',
    })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4096)
    })
    child.once('error', (err) => {
      // An abort also ends in 'close', which reports it as a timeout.
      if (!signal.aborted) {
        reject(new DriverError(`cannot ${what}: ${err.message}`, { cause: err }))
      }
    })
    child.once('close', (code, sig) => {
      if (code === 0) {
        resolve()
        return
      }
      const why = signal.aborted ? `timed out after ${timeoutMs} ms` : `exit ${code ?? sig}`
      reject(new DriverError(`cannot ${what} (${why}): ${stderr.trim() || 'no output'}`))
    })
  })
}
