/** Builds the classic-BPF seccomp program `bwrap --seccomp FD` loads into container sandboxes. */
import { BugError, DriverError } from '@sandcell/shared'

// ---------------------------------------------------------------------------------------------
// Kernel ABI constants (include/uapi/linux/{filter,bpf_common,seccomp,audit}.h)
// ---------------------------------------------------------------------------------------------

/** Instruction classes, sizes, modes and jump tests of classic BPF (`linux/bpf_common.h`). */
const BPF_LD = 0x00
const BPF_JMP = 0x05
const BPF_RET = 0x06
const BPF_W = 0x00
const BPF_ABS = 0x20
const BPF_K = 0x00
const BPF_JA = 0x00
const BPF_JEQ = 0x10
const BPF_JGT = 0x20
const BPF_JGE = 0x30
const BPF_JSET = 0x40

/** The kernel refuses longer programs (`BPF_MAXINSNS`). */
export const BPF_MAXINSNS = 4096

/** Size of one `struct sock_filter` on the wire: u16 code, u8 jt, u8 jf, u32 k. */
const SOCK_FILTER_SIZE_BYTES = 8

/** Filter return values (`linux/seccomp.h`); ERRNO carries the errno in its low 16 bits. */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000
export const SECCOMP_RET_ERRNO = 0x00050000
export const SECCOMP_RET_ALLOW = 0x7fff0000

/** Byte offsets in `struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6] }`. */
export const SECCOMP_DATA_NR_OFFSET = 0
export const SECCOMP_DATA_ARCH_OFFSET = 4
export const SECCOMP_DATA_ARGS_OFFSET = 16
export const SECCOMP_DATA_SIZE_BYTES = 64

/**
 * `seccomp_data.arch` of the native ABIs (`linux/audit.h`). The compat ABIs, AUDIT_ARCH_I386
 * (0x40000003) and AUDIT_ARCH_ARM (0x40000028), are foreign to the filter and get killed.
 */
export const AUDIT_ARCH_X86_64 = 0xc000003e
export const AUDIT_ARCH_AARCH64 = 0xc00000b7

/** x86_64 marks x32-ABI syscalls with this bit in `nr` (`__X32_SYSCALL_BIT`). */
const X32_SYSCALL_BIT = 0x40000000

/** Linux errno values; identical on x86_64 and aarch64 (asm-generic/errno*.h). */
const EPERM = 1
const ENOSYS = 38

/** `CLONE_NEWUSER` from `linux/sched.h`. */
const CLONE_NEWUSER = 0x10000000

/** Terminal ioctls that inject input (asm-generic/ioctls.h, shared by x86_64 and aarch64). */
const TIOCSTI = 0x5412
const TIOCLINUX = 0x541c

/** `personality(2)` values Docker's default profile allows (`linux/personality.h`). */
const PER_LINUX = 0x0000000
const PER_LINUX32 = 0x0000008
const UNAME26 = 0x0020000
const PERSONALITY_QUERY = 0xffffffff

/**
 * Offset of the low 32 bits of `args[index]`. seccomp_data is little-endian on every arch we
 * build for, and each argument we inspect is an `unsigned int` (or a flag word whose bits all
 * live in the low half) to the kernel, so the low word is exactly what the kernel acts on.
 */
function argLowOffset(index: number): number {
  return SECCOMP_DATA_ARGS_OFFSET + 8 * index
}

// ---------------------------------------------------------------------------------------------
// Classic-BPF builder
// ---------------------------------------------------------------------------------------------

/** One encoded instruction, `struct sock_filter`. */
export interface SockFilter {
  code: number
  jt: number
  jf: number
  k: number
}

/**
 * A jump target; make one with `BpfBuilder.label()` and put it in place with `place()`. Labels
 * are told apart by identity, so one from another builder can never resolve by accident.
 */
export interface BpfLabel {
  readonly name: string
}

/** Comparisons against the accumulator; `set` is `(A & value) !== 0`. */
export type BpfCondition = 'eq' | 'gt' | 'ge' | 'set'

const conditionOpcodes: Readonly<Record<BpfCondition, number>> = {
  eq: BPF_JEQ,
  gt: BPF_JGT,
  ge: BPF_JGE,
  set: BPF_JSET,
}

type Statement =
  | { kind: 'load'; offset: number }
  | {
      kind: 'jump-if'
      condition: BpfCondition
      value: number
      ifTrue: BpfLabel | undefined
      ifFalse: BpfLabel | undefined
    }
  | { kind: 'jump'; target: BpfLabel }
  | { kind: 'return'; value: number }
  | { kind: 'place'; label: BpfLabel }

/**
 * Writes classic BPF with named labels instead of hand-counted offsets. `assemble()` resolves
 * every jump, refuses backward, dangling or out-of-program jumps, and turns a conditional jump
 * farther than 255 instructions (jt/jf are u8) into a short hop onto an unconditional `ja`,
 * whose offset is 32 bits.
 */
export class BpfBuilder {
  readonly #statements: Statement[] = []

  /** Makes a new, not yet placed, label; `name` only appears in error messages. */
  label(name: string): BpfLabel {
    return Object.freeze({ name })
  }

  /** Puts `label` at the next instruction. */
  place(label: BpfLabel): this {
    this.#statements.push({ kind: 'place', label })
    return this
  }

  /** `A = seccomp_data[offset]` as a 32-bit word. */
  load(offset: number): this {
    this.#statements.push({ kind: 'load', offset })
    return this
  }

  /**
   * If `A <condition> value` goes to `ifTrue`, else to `ifFalse`; `undefined` for either means
   * the next instruction.
   */
  jumpIf(
    condition: BpfCondition,
    value: number,
    ifTrue: BpfLabel | undefined,
    ifFalse?: BpfLabel,
  ): this {
    this.#statements.push({ kind: 'jump-if', condition, value, ifTrue, ifFalse })
    return this
  }

  /** Goes to `target` unless `A <condition> value`, in which case it falls through. */
  jumpUnless(condition: BpfCondition, value: number, target: BpfLabel): this {
    return this.jumpIf(condition, value, undefined, target)
  }

  /** Goes to `target` unconditionally. */
  jump(target: BpfLabel): this {
    this.#statements.push({ kind: 'jump', target })
    return this
  }

  /** Ends the program with the seccomp action `value` (`SECCOMP_RET_*`). */
  ret(value: number): this {
    this.#statements.push({ kind: 'return', value })
    return this
  }

  /**
   * Resolves labels and returns the instructions.
   * @throws {BugError} a label is placed twice or never, a jump goes backwards or past the end,
   *   the program does not end in `ret`, or it is longer than `BPF_MAXINSNS`.
   */
  assemble(): SockFilter[] {
    const placed = new Set<BpfLabel>()
    for (const statement of this.#statements) {
      if (statement.kind === 'place') {
        if (placed.has(statement.label)) {
          throw new BugError(`BPF label ${statement.label.name} is placed twice`)
        }
        placed.add(statement.label)
      }
    }

    // Statements whose true/false branch needs a trampoline. Adding one only lengthens the
    // program, so distances only grow and this loop reaches a fixed point.
    const farTrue = new Set<number>()
    const farFalse = new Set<number>()
    let layout = this.#layout(farTrue, farFalse)
    for (;;) {
      let grew = false
      this.#statements.forEach((statement, index) => {
        if (statement.kind !== 'jump-if') {
          return
        }
        const at = layout.positions[index] ?? 0
        const end = at + this.#width(index, farTrue, farFalse)
        const branches: [BpfLabel | undefined, Set<number>][] = [
          [statement.ifTrue, farTrue],
          [statement.ifFalse, farFalse],
        ]
        for (const [label, far] of branches) {
          const target = label === undefined ? end : layout.resolve(label)
          if (!far.has(index) && target - (at + 1) > 255) {
            far.add(index)
            grew = true
          }
        }
      })
      if (!grew) {
        break
      }
      layout = this.#layout(farTrue, farFalse)
    }

    const out: SockFilter[] = []
    this.#statements.forEach((statement, index) => {
      switch (statement.kind) {
        case 'place':
          return
        case 'load':
          checkDataOffset(statement.offset)
          out.push({ code: BPF_LD | BPF_W | BPF_ABS, jt: 0, jf: 0, k: statement.offset })
          return
        case 'return':
          out.push({ code: BPF_RET | BPF_K, jt: 0, jf: 0, k: statement.value >>> 0 })
          return
        case 'jump': {
          const at = out.length
          out.push({
            code: BPF_JMP | BPF_JA,
            jt: 0,
            jf: 0,
            k: forward(at, layout, statement.target),
          })
          return
        }
        case 'jump-if': {
          const at = out.length
          const end = at + this.#width(index, farTrue, farFalse)
          const code = BPF_JMP | conditionOpcodes[statement.condition] | BPF_K
          const hops: SockFilter[] = []
          const offsetTo = (label: BpfLabel | undefined, far: boolean): number => {
            if (!far) {
              return label === undefined ? end - (at + 1) : forward(at, layout, label)
            }
            // The trampoline sits right after the jump, after any earlier trampoline.
            const hopAt = at + 1 + hops.length
            const k = label === undefined ? end - (hopAt + 1) : forward(hopAt, layout, label)
            hops.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k })
            return hopAt - (at + 1)
          }
          const jt = offsetTo(statement.ifTrue, farTrue.has(index))
          const jf = offsetTo(statement.ifFalse, farFalse.has(index))
          out.push({ code, jt, jf, k: statement.value >>> 0 }, ...hops)
          return
        }
      }
    })

    const last = out.at(-1)
    if (last === undefined || last.code !== (BPF_RET | BPF_K)) {
      throw new BugError('a BPF program must end with ret: the kernel rejects anything else')
    }
    if (out.length > BPF_MAXINSNS) {
      throw new BugError(`BPF program has ${out.length} instructions; the kernel allows 4096`)
    }
    for (const [index, instruction] of out.entries()) {
      const isJump = (instruction.code & 0x07) === BPF_JMP
      const isJa = instruction.code === (BPF_JMP | BPF_JA)
      const reach = isJa ? [instruction.k] : isJump ? [instruction.jt, instruction.jf] : []
      if (reach.some((offset) => index + 1 + offset >= out.length)) {
        throw new BugError(`BPF instruction ${index} jumps past the end of the program`)
      }
    }
    return out
  }

  /** How many instructions statement `index` becomes. */
  #width(index: number, farTrue: Set<number>, farFalse: Set<number>): number {
    const statement = this.#statements[index]
    if (statement === undefined || statement.kind === 'place') {
      return 0
    }
    if (statement.kind !== 'jump-if') {
      return 1
    }
    return 1 + (farTrue.has(index) ? 1 : 0) + (farFalse.has(index) ? 1 : 0)
  }

  #layout(farTrue: Set<number>, farFalse: Set<number>): Layout {
    const positions: number[] = []
    const labels = new Map<BpfLabel, number>()
    let at = 0
    this.#statements.forEach((statement, index) => {
      positions.push(at)
      if (statement.kind === 'place') {
        labels.set(statement.label, at)
      }
      at += this.#width(index, farTrue, farFalse)
    })
    return {
      positions,
      resolve(label) {
        const position = labels.get(label)
        if (position === undefined) {
          throw new BugError(`BPF label ${label.name} is jumped to but never placed`)
        }
        return position
      },
    }
  }
}

interface Layout {
  /** Instruction index each statement starts at. */
  positions: number[]
  resolve(label: BpfLabel): number
}

/** Offset from the instruction at `from` to `label`; classic BPF only jumps forward. */
function forward(from: number, layout: Layout, label: BpfLabel): number {
  const offset = layout.resolve(label) - (from + 1)
  if (offset < 0) {
    throw new BugError(`BPF jump to ${label.name} goes backwards; classic BPF only jumps forward`)
  }
  return offset
}

function checkDataOffset(offset: number): void {
  // Mirrors seccomp_check_filter(): aligned 32-bit loads inside struct seccomp_data only.
  if (
    !Number.isInteger(offset) ||
    offset < 0 ||
    offset % 4 !== 0 ||
    offset >= SECCOMP_DATA_SIZE_BYTES
  ) {
    throw new BugError(`BPF load at ${offset} is outside struct seccomp_data or unaligned`)
  }
}

/** Serialises instructions as the raw little-endian `struct sock_filter[]` bwrap reads. */
export function encodeSockFilters(program: readonly SockFilter[]): Buffer {
  const out = Buffer.alloc(program.length * SOCK_FILTER_SIZE_BYTES)
  program.forEach((instruction, index) => {
    const at = index * SOCK_FILTER_SIZE_BYTES
    out.writeUInt16LE(instruction.code, at)
    out.writeUInt8(instruction.jt, at + 2)
    out.writeUInt8(instruction.jf, at + 3)
    out.writeUInt32LE(instruction.k, at + 4)
  })
  return out
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

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
const x64Syscalls: SyscallTable = {
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
const arm64Syscalls: SyscallTable = {
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

/** Node's name (`process.arch`) for each architecture the filter supports. */
export type SeccompArch = 'x64' | 'arm64'

interface ArchSpec {
  auditArch: number
  /** Reject syscalls carrying the x32 bit (x86_64 only). */
  rejectX32: boolean
  syscalls: SyscallTable
}

const archSpecs: Readonly<Record<SeccompArch, ArchSpec>> = {
  x64: { auditArch: AUDIT_ARCH_X86_64, rejectX32: true, syscalls: x64Syscalls },
  arm64: { auditArch: AUDIT_ARCH_AARCH64, rejectX32: false, syscalls: arm64Syscalls },
}

/** The syscall numbers the filter uses on each arch, for tests and diagnostics. */
export const syscallTables: Readonly<Record<SeccompArch, SyscallTable>> = {
  x64: x64Syscalls,
  arm64: arm64Syscalls,
}

/** Options for `buildSeccompFilter`. */
export interface SeccompFilterOptions {
  /** Architecture to build for, named as `process.arch` names it. @default process.arch */
  arch?: string
}

function isSeccompArch(arch: string): arch is SeccompArch {
  return Object.hasOwn(archSpecs, arch)
}

/**
 * Builds the sandbox seccomp filter: a denylist (everything else allowed) as a raw
 * `struct sock_filter[]`, ready to write to the fd given to `bwrap --seccomp FD`.
 *
 * - Any `seccomp_data.arch` other than the host's native one is killed (SECCOMP_RET_KILL_PROCESS).
 *   On x86_64 that includes i386 via `int 0x80`: its syscall numbers differ, so a denylist
 *   written for x86_64 would not apply, and EPERM would leave the caller running after what can
 *   only be a 32-bit binary (which cannot work with every call failing) or a filter bypass
 *   attempt. Killing is also libseccomp's default for a foreign arch and is loud (SIGSYS).
 * - x32-ABI syscalls on x86_64 get EPERM: the same calls under other numbers.
 * - `clone3` gets ENOSYS: its flags sit in memory seccomp cannot read, and glibc falls back to
 *   `clone` only on ENOSYS. `clone` and `unshare` with CLONE_NEWUSER get EPERM (bwrap's
 *   `--disable-userns` already blocks it; this is the second lock).
 * - `ioctl` TIOCSTI and TIOCLINUX get EPERM: both push keystrokes into a terminal the sandbox
 *   may share with someone else.
 * - `personality` is allowed only for Docker's values (PER_LINUX, PER_LINUX32, UNAME26, both,
 *   and the 0xffffffff query); the rest include ADDR_NO_RANDOMIZE and READ_IMPLIES_EXEC, which
 *   weaken ASLR and NX for exploits.
 * - The syscalls in `deniedSyscalls` get EPERM.
 *
 * @throws {DriverError} when `arch` is neither x64 nor arm64.
 */
export function buildSeccompFilter(options: SeccompFilterOptions = {}): Buffer {
  const arch = options.arch ?? process.arch
  if (!isSeccompArch(arch)) {
    throw new DriverError(
      `the container driver's seccomp filter supports x64 and arm64 hosts, not ${arch}; run sandcell on one of those or use a VM driver`,
      { details: { arch } },
    )
  }
  return encodeSockFilters(assembleSeccompPolicy(archSpecs[arch]))
}

function assembleSeccompPolicy(spec: ArchSpec): SockFilter[] {
  const nr = (name: SyscallName): number | null => spec.syscalls[name]
  const b = new BpfBuilder()
  const allow = b.label('allow')
  const eperm = b.label('eperm')
  const enosys = b.label('enosys')
  const kill = b.label('kill')
  const checkNewUser = b.label('check-clone-newuser')
  const checkIoctl = b.label('check-ioctl')
  const checkPersonality = b.label('check-personality')

  b.load(SECCOMP_DATA_ARCH_OFFSET).jumpUnless('eq', spec.auditArch, kill)
  b.load(SECCOMP_DATA_NR_OFFSET)
  if (spec.rejectX32) {
    // nr -1 is how a tracer skips a syscall; EPERM here would clobber the result it chose
    // (libseccomp exempts it the same way). The kernel runs nothing for it.
    b.jumpIf('eq', 0xffffffff, allow)
    b.jumpIf('set', X32_SYSCALL_BIT, eperm)
  }

  const conditional: [SyscallName, BpfLabel][] = [
    ['clone', checkNewUser],
    ['unshare', checkNewUser],
    ['clone3', enosys],
    ['ioctl', checkIoctl],
    ['personality', checkPersonality],
  ]
  for (const [name, target] of conditional) {
    const number = nr(name)
    if (number !== null) {
      b.jumpIf('eq', number, target)
    }
  }
  for (const name of deniedSyscalls) {
    const number = nr(name)
    if (number !== null) {
      b.jumpIf('eq', number, eperm)
    }
  }
  // Not on the list: allowed. The checks below jump forward to `allow` instead, because
  // classic BPF cannot jump back here.
  b.ret(SECCOMP_RET_ALLOW)

  // clone(flags, ...) and unshare(flags): flags is args[0] on both arches.
  b.place(checkNewUser).load(argLowOffset(0)).jumpIf('set', CLONE_NEWUSER, eperm, allow)

  // ioctl(fd, cmd, ...): the kernel truncates cmd to unsigned int, so comparing the low word
  // also catches TIOCSTI with junk in the high bits (flatpak's CVE-2019-10063).
  b.place(checkIoctl).load(argLowOffset(1))
  b.jumpIf('eq', TIOCSTI, eperm).jumpIf('eq', TIOCLINUX, eperm, allow)

  // personality(unsigned int): again only the low word reaches the kernel.
  b.place(checkPersonality).load(argLowOffset(0))
  for (const persona of [PER_LINUX, PER_LINUX32, UNAME26, UNAME26 | PER_LINUX32]) {
    b.jumpIf('eq', persona, allow)
  }
  b.jumpIf('eq', PERSONALITY_QUERY, allow, eperm)

  b.place(allow).ret(SECCOMP_RET_ALLOW)
  b.place(eperm).ret(SECCOMP_RET_ERRNO | EPERM)
  b.place(enosys).ret(SECCOMP_RET_ERRNO | ENOSYS)
  b.place(kill).ret(SECCOMP_RET_KILL_PROCESS)
  return b.assemble()
}
