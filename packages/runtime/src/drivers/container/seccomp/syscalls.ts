/** The syscalls the seccomp policy names, and their numbers on each architecture it supports. */

/**
 * Kernel attack surface sandboxed code never needs; each returns EPERM, which programs treat as
 * "not allowed here" and mostly work around. Deliberately allowed, with reasons:
 * - `ptrace`, `process_vm_readv/writev`: gdb and strace inside a sandbox are legitimate; the pid
 *   namespace hides every process outside the sandbox, the user namespace gives no credentials
 *   over the host, the tracer carries this same filter, and since Linux 4.8 seccomp runs after
 *   the tracer's syscall-entry stop, so a tracer cannot rewrite a call past the filter. process_vm_* pass the same PTRACE_MODE_ATTACH check as ptrace,
 *   so denying them while allowing ptrace would add nothing (Docker allows all three too).
 * - `seccomp`/`prctl`: a process may tighten its own sandbox further; filters only stack.
 */
export const deniedSyscalls = [
  // Kernel keyrings are not namespaced and have a long CVE history.
  'keyctl',
  // Adds a key to a kernel keyring; same surface as keyctl.
  'add_key',
  // Asks the kernel (and its upcall helper on the host) for a key; same surface as keyctl.
  'request_key',
  // eBPF verifier and JIT are a prime kernel exploit target.
  'bpf',
  // Lets an exploit stall kernel copies at will, turning races into reliable wins.
  'userfaultfd',
  // Perf counters leak kernel addresses and timing and are a frequent CVE source.
  'perf_event_open',
  // Replaces the running kernel.
  'kexec_load',
  // Replaces the running kernel from a file.
  'kexec_file_load',
  // Loads code into the kernel.
  'init_module',
  // Loads code into the kernel from a file.
  'finit_module',
  // Unloads kernel modules the host relies on.
  'delete_module',
  // Obsolete module API (ENOSYS since 2.6); no reason to reach it.
  'create_module',
  // Obsolete module API that listed kernel symbols.
  'get_kernel_syms',
  // Obsolete module API.
  'query_module',
  // Restarts or halts the machine (or the pid namespace).
  'reboot',
  // Changes the host's swap.
  'swapon',
  // Changes the host's swap.
  'swapoff',
  // Turns process accounting on or off host-wide.
  'acct',
  // Edits filesystem quotas of host block devices.
  'quotactl',
  // Edits filesystem quotas via an fd; same surface as quotactl.
  'quotactl_fd',
  // Profiling helper that resolves kernel cookies to paths; removed from modern kernels.
  'lookup_dcookie',
  // Kernel NFS server control; removed in 3.1.
  'nfsservctl',
  // Loads a.out shared libraries: ancient, unmaintained loader code.
  'uselib',
  // Obsolete filesystem stats for a device number.
  'ustat',
  // Obsolete filesystem-type query.
  'sysfs',
  // Binary sysctl interface: removed, historically buggy.
  '_sysctl',
  // Raises the I/O privilege level: direct port access to host hardware.
  'iopl',
  // Grants direct I/O port access to host hardware.
  'ioperm',
  // Virtual-8086 mode (i386 only; unreachable here because i386 is killed, listed for clarity).
  'vm86',
  // Old virtual-8086 entry point (i386 only, as above).
  'vm86old',
  // Opens any inode by handle, bypassing path checks: the "shocker" container escape.
  'open_by_handle_at',
  // Produces the handles open_by_handle_at consumes.
  'name_to_handle_at',
  // Reads or clears the kernel log, which leaks kernel addresses.
  'syslog',
  // Sets the host clock.
  'settimeofday',
  // Sets the host clock.
  'clock_settime',
  // Tunes the host clock.
  'clock_adjtime',
  // Tunes the host clock.
  'adjtimex',
  // io_uring bypasses syscall filtering for the work it queues and has a heavy CVE record.
  'io_uring_setup',
  // Submits io_uring work; see io_uring_setup.
  'io_uring_enter',
  // Configures io_uring; see io_uring_setup.
  'io_uring_register',
  // Filesystem-wide event monitoring meant for host antivirus and auditing.
  'fanotify_init',
  // Classic mount: sandboxes get a fixed filesystem layout from bwrap, never their own mounts.
  'mount',
  // Unmounting could uncover what bwrap's mounts hide.
  'umount2',
  // New mount API: changes mount attributes.
  'mount_setattr',
  // New mount API: attaches mounts.
  'move_mount',
  // New mount API: clones mount trees.
  'open_tree',
  // New mount API: creates a filesystem context (parser attack surface).
  'fsopen',
  // New mount API: configures a filesystem context.
  'fsconfig',
  // New mount API: turns a context into a mount.
  'fsmount',
  // New mount API: reconfigures an existing mount.
  'fspick',
  // Swaps the root filesystem out from under bwrap's layout.
  'pivot_root',
  // Joins other namespaces through /proc fds; sandboxes stay in their own.
  'setns',
] as const

/** Every syscall the policy names; each arch table must give each a number or `null`. */
export type SyscallName =
  (typeof deniedSyscalls)[number] | 'clone' | 'clone3' | 'unshare' | 'ioctl' | 'personality'

/** A syscall table: `null` where the syscall does not exist on that arch (nothing to deny). */
export type SyscallTable = Readonly<Record<SyscallName, number | null>>

/** From arch/x86/entry/syscalls/syscall_64.tbl (the "common"/"64" rows). */
export const x64Syscalls: SyscallTable = {
  ioctl: 16,
  clone: 56,
  syslog: 103,
  uselib: 134,
  personality: 135,
  ustat: 136,
  sysfs: 139,
  pivot_root: 155,
  _sysctl: 156,
  adjtimex: 159,
  acct: 163,
  settimeofday: 164,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  iopl: 172,
  ioperm: 173,
  create_module: 174,
  init_module: 175,
  delete_module: 176,
  get_kernel_syms: 177,
  query_module: 178,
  quotactl: 179,
  nfsservctl: 180,
  lookup_dcookie: 212,
  clock_settime: 227,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  fanotify_init: 300,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  clock_adjtime: 305,
  setns: 308,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  userfaultfd: 323,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  clone3: 435,
  mount_setattr: 442,
  quotactl_fd: 443,
  // i386-only syscalls: no x86_64 number exists.
  vm86: null,
  vm86old: null,
}

/** From include/uapi/asm-generic/unistd.h, which arm64 uses unchanged. */
export const arm64Syscalls: SyscallTable = {
  lookup_dcookie: 18,
  ioctl: 29,
  umount2: 39,
  mount: 40,
  pivot_root: 41,
  nfsservctl: 42,
  quotactl: 60,
  acct: 89,
  personality: 92,
  unshare: 97,
  kexec_load: 104,
  init_module: 105,
  delete_module: 106,
  clock_settime: 112,
  syslog: 116,
  reboot: 142,
  settimeofday: 170,
  adjtimex: 171,
  add_key: 217,
  request_key: 218,
  keyctl: 219,
  clone: 220,
  swapon: 224,
  swapoff: 225,
  perf_event_open: 241,
  fanotify_init: 262,
  name_to_handle_at: 264,
  open_by_handle_at: 265,
  clock_adjtime: 266,
  setns: 268,
  finit_module: 273,
  bpf: 280,
  userfaultfd: 282,
  kexec_file_load: 294,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  clone3: 435,
  mount_setattr: 442,
  quotactl_fd: 443,
  // Never part of the generic table: arm64 has no such syscall.
  create_module: null,
  get_kernel_syms: null,
  query_module: null,
  uselib: null,
  ustat: null,
  sysfs: null,
  _sysctl: null,
  iopl: null,
  ioperm: null,
  vm86: null,
  vm86old: null,
}
