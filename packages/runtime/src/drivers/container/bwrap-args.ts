/**
 * The bubblewrap command line of a container sandbox: namespaces, the overlay as `/`, the host's
 * Node and the agent mounted read-only, reduced capabilities, seccomp, and the agent as the
 * command. Pure: it builds arguments and never touches the system.
 */
import type { HostNode } from '@sandcell/images'
import { standardPath } from '@sandcell/shared'

/** Where sandcell's own files appear inside every sandbox. */
export const sandboxMounts = {
  root: '/.sandcell',
  node: '/.sandcell/bin/node',
  libDir: '/.sandcell/lib',
  agentDir: '/.sandcell/agent',
  runDir: '/.sandcell/run',
  agentSocket: '/.sandcell/run/agent.sock',
} as const

/**
 * What root inside a sandbox may still do, in the sandbox's own user namespace only: the
 * agent needs to switch users, own files and signal processes. Everything that reaches the
 * kernel's wider surface (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, MKNOD, NET_RAW…) is
 * dropped.
 */
export const sandboxCapabilities = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_AUDIT_WRITE',
  'CAP_SETFCAP',
] as const

/** File descriptors as the spawned bwrap sees them (the spawn's stdio array order). */
export const launchFds = {
  ready: 3,
  userNamespaceBlock: 4,
  info: 5,
  seccomp: 6,
} as const

export interface BwrapArgsOptions {
  rootfs: string
  runDir: string
  agentDir: string
  hostNode: HostNode
  /** Host directories bound read-only at the same path (the `base` template's /usr…). */
  hostBinds: readonly string[]
  hostname: string
  /** Extra node flags for the agent (heap sizing). */
  nodeFlags: readonly string[]
  withSeccomp: boolean
  /**
   * Host file bound over /etc/resolv.conf when the sandbox joins a network slot made by the
   * host (then bwrap makes no network namespace of its own); absent: loopback only.
   */
  resolvConf?: string
  /**
   * Host file bound over /proc/sys/kernel/random/boot_id: a container shares the host's kernel,
   * so without it every sandbox would see the host's boot id and never a new one on a reboot.
   */
  bootId: string
}

export function buildBwrapArgs(options: BwrapArgsOptions): string[] {
  const args = [
    '--unshare-user',
    // The host writes the uid/gid maps (a whole range, which bwrap alone cannot map), then
    // releases bwrap through this fd.
    '--userns-block-fd',
    String(launchFds.userNamespaceBlock),
    '--info-fd',
    String(launchFds.info),
    '--uid',
    '0',
    '--gid',
    '0',
    // Nested user namespaces are refused by the seccomp filter: bwrap's --disable-userns
    // cannot be combined with a host-written uid map (--userns-block-fd).
    '--unshare-pid',
    // A slot's namespace is made by the host, outside the sandbox's user namespace, so that root
    // inside cannot change its rules; without one, bwrap's own gives loopback only.
    ...(options.resolvConf === undefined ? ['--unshare-net'] : []),
    '--unshare-ipc',
    '--unshare-uts',
    '--unshare-cgroup',
    '--hostname',
    options.hostname,
    '--new-session',
    '--bind',
    options.rootfs,
    '/',
  ]
  for (const dir of options.hostBinds) {
    args.push('--ro-bind', dir, dir)
  }
  args.push('--proc', '/proc', '--dev', '/dev')
  args.push('--ro-bind', options.bootId, '/proc/sys/kernel/random/boot_id')
  if (options.resolvConf !== undefined) {
    args.push('--bind', options.resolvConf, '/etc/resolv.conf')
  }
  args.push('--ro-bind', options.hostNode.node, sandboxMounts.node)
  for (const lib of [options.hostNode.loader, ...options.hostNode.libraries]) {
    args.push('--ro-bind', lib.path, `${sandboxMounts.libDir}/${lib.name}`)
  }
  args.push('--ro-bind', options.agentDir, sandboxMounts.agentDir)
  args.push('--bind', options.runDir, sandboxMounts.runDir)
  args.push('--cap-drop', 'ALL')
  for (const cap of sandboxCapabilities) {
    args.push('--cap-add', cap)
  }
  if (options.withSeccomp) {
    args.push('--seccomp', String(launchFds.seccomp))
  }
  args.push(
    '--clearenv',
    '--setenv',
    'PATH',
    standardPath,
    '--chdir',
    '/',
    '--',
    `${sandboxMounts.libDir}/${options.hostNode.loader.name}`,
    '--library-path',
    sandboxMounts.libDir,
    sandboxMounts.node,
    ...options.nodeFlags,
    `${sandboxMounts.agentDir}/agent.mjs`,
    '--listen',
    `unix:${sandboxMounts.agentSocket}`,
    '--ready-fd',
    String(launchFds.ready),
  )
  return args
}
