/** The seccomp filter container sandboxes run under: which syscalls, arguments and ABIs it refuses. */
import { DriverError } from '@sandcell/shared'
import {
  BpfBuilder,
  SECCOMP_DATA_ARCH_OFFSET,
  SECCOMP_DATA_ARGS_OFFSET,
  SECCOMP_DATA_NR_OFFSET,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  encodeSockFilters,
  type BpfLabel,
  type SockFilter,
} from './bpf-builder.js'
import {
  arm64Syscalls,
  deniedSyscalls,
  x64Syscalls,
  type SyscallName,
  type SyscallTable,
} from './syscalls.js'

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
