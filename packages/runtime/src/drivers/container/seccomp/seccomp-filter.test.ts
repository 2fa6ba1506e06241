// Checks the BPF builder and runs the sandbox seccomp filter through a small BPF interpreter.
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { constants } from 'node:os'
import { describe, it } from 'node:test'

import { BugError, DriverError } from '@sandcell/shared'

import {
  BpfBuilder,
  SECCOMP_DATA_ARCH_OFFSET,
  SECCOMP_DATA_NR_OFFSET,
  encodeSockFilters,
} from './bpf-builder.js'
import { buildSeccompFilter, syscallTables, type SeccompArch } from './seccomp-filter.js'
import { deniedSyscalls, type SyscallName } from './syscalls.js'

// The interpreter's own opcode and ABI numbers, written out independently of seccomp-filter.ts so a
// wrong constant there shows up here as a wrong verdict.
const LD_W_ABS = 0x20
const JMP_JA = 0x05
const JMP_JEQ_K = 0x15
const JMP_JGT_K = 0x25
const JMP_JGE_K = 0x35
const JMP_JSET_K = 0x45
const RET_K = 0x06
const SECCOMP_DATA_SIZE = 64
const MAX_INSNS = 4096

const AUDIT_ARCH = { x86_64: 0xc000003e, i386: 0x40000003, aarch64: 0xc00000b7, arm: 0x40000028 }
const nativeArch: Record<SeccompArch, number> = {
  x64: AUDIT_ARCH.x86_64,
  arm64: AUDIT_ARCH.aarch64,
}
const foreignArches: Record<SeccompArch, number[]> = {
  x64: [AUDIT_ARCH.i386, AUDIT_ARCH.aarch64, AUDIT_ARCH.arm, 0],
  arm64: [AUDIT_ARCH.arm, AUDIT_ARCH.x86_64, AUDIT_ARCH.i386, 0],
}

/** Syscalls outside the policy's table that must stay allowed, per arch (kernel tables). */
const everyday: Record<SeccompArch, Record<'read' | 'write' | 'openat' | 'execve', number>> = {
  x64: { read: 0, write: 1, openat: 257, execve: 59 },
  arm64: { read: 63, write: 64, openat: 56, execve: 221 },
}

/** What the brief says must return EPERM; kept here so dropping one from the policy fails. */
const mustDeny: readonly SyscallName[] = [
  'keyctl',
  'add_key',
  'request_key',
  'bpf',
  'userfaultfd',
  'perf_event_open',
  'kexec_load',
  'kexec_file_load',
  'init_module',
  'finit_module',
  'delete_module',
  'create_module',
  'get_kernel_syms',
  'query_module',
  'reboot',
  'swapon',
  'swapoff',
  'acct',
  'quotactl',
  'quotactl_fd',
  'lookup_dcookie',
  'nfsservctl',
  'uselib',
  'ustat',
  'sysfs',
  '_sysctl',
  'iopl',
  'ioperm',
  'vm86',
  'vm86old',
  'open_by_handle_at',
  'name_to_handle_at',
  'syslog',
  'settimeofday',
  'clock_settime',
  'clock_adjtime',
  'adjtimex',
  'io_uring_setup',
  'io_uring_enter',
  'io_uring_register',
  'fanotify_init',
  'mount',
  'umount2',
  'mount_setattr',
  'move_mount',
  'open_tree',
  'fsopen',
  'fsconfig',
  'fsmount',
  'fspick',
  'pivot_root',
  'setns',
]

/** Syscalls that exist on i386 or x86_64 but not in arm64's generic table. */
const absentOnArm64: readonly SyscallName[] = [
  'create_module',
  'get_kernel_syms',
  'query_module',
  'uselib',
  'ustat',
  'sysfs',
  '_sysctl',
  'iopl',
  'ioperm',
  'vm86',
  'vm86old',
]
const absentOnX64: readonly SyscallName[] = ['vm86', 'vm86old']

const CLONE_NEWUSER = 0x10000000n
const CLONE_NEWNS = 0x00020000n
// glibc's pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID.
const THREAD_FLAGS = 0x003d0f00n
// glibc's fork: CHILD_SETTID|CHILD_CLEARTID|SIGCHLD.
const FORK_FLAGS = 0x01200011n
const SIGCHLD = 17n
const TCGETS = 0x5401n
const TIOCSTI = 0x5412n
const TIOCLINUX = 0x541cn

interface SeccompData {
  nr: number
  arch: number
  args?: readonly bigint[]
}

/** Reads the raw `struct sock_filter[]` back into fields. */
function decode(program: Buffer): { code: number; jt: number; jf: number; k: number }[] {
  assert.equal(program.length % 8, 0, 'program length is a multiple of 8 bytes')
  const out = []
  for (let at = 0; at < program.length; at += 8) {
    out.push({
      code: program.readUInt16LE(at),
      jt: program.readUInt8(at + 2),
      jf: program.readUInt8(at + 3),
      k: program.readUInt32LE(at + 4),
    })
  }
  return out
}

/** Runs a classic-BPF seccomp program the way the kernel does; returns its 32-bit verdict. */
function run(program: Buffer, data: SeccompData): number {
  const packet = Buffer.alloc(SECCOMP_DATA_SIZE)
  packet.writeUInt32LE(data.nr >>> 0, 0)
  packet.writeUInt32LE(data.arch >>> 0, 4)
  ;(data.args ?? []).forEach((arg, index) => packet.writeBigUInt64LE(arg, 16 + 8 * index))

  const code = decode(program)
  let a = 0
  for (let pc = 0; ; pc++) {
    const insn = code[pc]
    assert.ok(
      insn !== undefined,
      `pc ${pc} ran off the end of a ${code.length}-instruction program`,
    )
    const branch = (taken: boolean): void => {
      pc += taken ? insn.jt : insn.jf
    }
    switch (insn.code) {
      case LD_W_ABS:
        assert.ok(insn.k % 4 === 0 && insn.k < SECCOMP_DATA_SIZE, `bad load offset ${insn.k}`)
        a = packet.readUInt32LE(insn.k)
        break
      case JMP_JA:
        pc += insn.k
        break
      case JMP_JEQ_K:
        branch(a === insn.k)
        break
      case JMP_JGT_K:
        branch(a > insn.k)
        break
      case JMP_JGE_K:
        branch(a >= insn.k)
        break
      case JMP_JSET_K:
        branch((a & insn.k) !== 0)
        break
      case RET_K:
        return insn.k
      default:
        assert.fail(`unexpected opcode 0x${insn.code.toString(16)} at ${pc}`)
    }
  }
}

/** A readable verdict: `allow`, `kill-process`, `EPERM`, `ENOSYS` or the raw value. */
function verdict(ret: number): string {
  if (ret === 0x7fff0000) {
    return 'allow'
  }
  if (ret === 0x80000000) {
    return 'kill-process'
  }
  if ((ret & 0xffff0000) >>> 0 === 0x00050000) {
    const errno = ret & 0xffff
    const name = Object.entries(constants.errno).find(([, value]) => value === errno)?.[0]
    return name ?? `errno ${errno}`
  }
  return `0x${ret.toString(16)}`
}

/** The number of `name` on `arch`; fails the test if the table lacks it. */
function nr(arch: SeccompArch, name: SyscallName): number {
  const number = syscallTables[arch][name]
  assert.ok(number !== null, `${name} has no number on ${arch}`)
  return number
}

describe('BpfBuilder', () => {
  it('resolves labels and fall-through to the right instructions', () => {
    const b = new BpfBuilder()
    const yes = b.label('yes')
    const no = b.label('no')
    b.load(SECCOMP_DATA_NR_OFFSET)
      .jumpIf('eq', 7, yes)
      .jumpIf('gt', 100, yes, no)
      .place(no)
      .ret(2)
      .place(yes)
      .ret(1)
    const program = encodeSockFilters(b.assemble())
    assert.equal(run(program, { nr: 7, arch: 0 }), 1)
    assert.equal(run(program, { nr: 101, arch: 0 }), 1)
    assert.equal(run(program, { nr: 8, arch: 0 }), 2)
  })

  it('supports jumpUnless, ge and set conditions', () => {
    const b = new BpfBuilder()
    const out = b.label('out')
    const big = b.label('big')
    b.load(SECCOMP_DATA_ARCH_OFFSET)
      .jumpUnless('set', 0x1, out)
      .jumpIf('ge', 0x1000, big)
      .ret(10)
      .place(big)
      .ret(20)
      .place(out)
      .ret(30)
    const program = encodeSockFilters(b.assemble())
    assert.equal(run(program, { nr: 0, arch: 0x2 }), 30)
    assert.equal(run(program, { nr: 0, arch: 0x3 }), 10)
    assert.equal(run(program, { nr: 0, arch: 0x1001 }), 20)
  })

  it('reaches labels more than 255 instructions away through trampolines', () => {
    const b = new BpfBuilder()
    const far = b.label('far')
    const alsoFar = b.label('also-far')
    b.load(SECCOMP_DATA_NR_OFFSET).jumpIf('eq', 1, far, alsoFar)
    for (let i = 0; i < 600; i++) {
      b.load(SECCOMP_DATA_NR_OFFSET)
    }
    b.ret(0).place(far).ret(111)
    for (let i = 0; i < 300; i++) {
      b.load(SECCOMP_DATA_NR_OFFSET)
    }
    b.ret(0).place(alsoFar).ret(222)
    const instructions = b.assemble()
    assert.ok(instructions.every(({ jt, jf }) => jt <= 255 && jf <= 255))
    const program = encodeSockFilters(instructions)
    assert.equal(run(program, { nr: 1, arch: 0 }), 111)
    assert.equal(run(program, { nr: 2, arch: 0 }), 222)
  })

  it('rejects a label that is never placed', () => {
    const b = new BpfBuilder()
    b.load(SECCOMP_DATA_NR_OFFSET).jumpIf('eq', 1, b.label('nowhere')).ret(0)
    assert.throws(() => b.assemble(), BugError)
  })

  it('rejects a label placed twice', () => {
    const b = new BpfBuilder()
    const twice = b.label('twice')
    b.place(twice).ret(0).place(twice).ret(1)
    assert.throws(() => b.assemble(), BugError)
  })

  it('rejects a backward jump', () => {
    const b = new BpfBuilder()
    const back = b.label('back')
    b.place(back).load(SECCOMP_DATA_NR_OFFSET).jump(back).ret(0)
    assert.throws(() => b.assemble(), /backwards/)
  })

  it('rejects a jump to a label past the last instruction', () => {
    const b = new BpfBuilder()
    const end = b.label('end')
    b.load(SECCOMP_DATA_NR_OFFSET).jumpIf('eq', 1, end).ret(0).place(end)
    assert.throws(() => b.assemble(), /past the end/)
  })

  it('rejects a program that does not end with ret', () => {
    const b = new BpfBuilder()
    b.ret(0).load(SECCOMP_DATA_NR_OFFSET)
    assert.throws(() => b.assemble(), /end with ret/)
  })

  it('rejects a load outside seccomp_data', () => {
    assert.throws(() => new BpfBuilder().load(64).ret(0).assemble(), BugError)
    assert.throws(() => new BpfBuilder().load(2).ret(0).assemble(), BugError)
  })

  it('rejects a program longer than the kernel allows', () => {
    const b = new BpfBuilder()
    for (let i = 0; i < MAX_INSNS; i++) {
      b.load(SECCOMP_DATA_NR_OFFSET)
    }
    b.ret(0)
    assert.throws(() => b.assemble(), /4096/)
  })
})

describe('buildSeccompFilter', () => {
  it('builds for the host by default', () => {
    if (process.arch === 'x64' || process.arch === 'arm64') {
      assert.deepEqual(buildSeccompFilter(), buildSeccompFilter({ arch: process.arch }))
    } else {
      assert.throws(() => buildSeccompFilter(), DriverError)
    }
  })

  it('fails with a DriverError on an unsupported architecture', () => {
    assert.throws(
      () => buildSeccompFilter({ arch: 'ia32' }),
      (error: unknown) => {
        assert.ok(error instanceof DriverError)
        assert.match(error.message, /x64 and arm64/)
        return true
      },
    )
  })

  it('lists every syscall the brief requires', () => {
    assert.deepEqual([...deniedSyscalls].sort(), [...mustDeny].sort())
  })

  for (const arch of ['x64', 'arm64'] as const) {
    describe(`on ${arch}`, () => {
      const program = buildSeccompFilter({ arch })
      const native = nativeArch[arch]
      const check = (nrValue: number, args: readonly bigint[] = []): string =>
        verdict(run(program, { nr: nrValue, arch: native, args }))

      it('fits the kernel: ≤ 4096 instructions, in-range jumps, ends in ret', () => {
        const code = decode(program)
        assert.ok(code.length > 0 && code.length <= MAX_INSNS, `${code.length} instructions`)
        code.forEach((insn, pc) => {
          const targets =
            insn.code === JMP_JA ? [insn.k] : (insn.code & 0x07) === 0x05 ? [insn.jt, insn.jf] : []
          for (const offset of targets) {
            assert.ok(pc + 1 + offset < code.length, `jump at ${pc} leaves the program`)
          }
        })
        assert.equal(code.at(-1)?.code, RET_K)
      })

      it('has a number for every syscall except those the arch lacks', () => {
        const missing = Object.entries(syscallTables[arch])
          .filter(([, number]) => number === null)
          .map(([name]) => name)
          .sort()
        assert.deepEqual(missing, [...(arch === 'x64' ? absentOnX64 : absentOnArm64)].sort())
        const numbers = Object.values(syscallTables[arch]).filter((n) => n !== null)
        assert.equal(new Set(numbers).size, numbers.length, 'syscall numbers are unique')
      })

      it('allows everyday syscalls', () => {
        for (const [name, number] of Object.entries(everyday[arch])) {
          assert.equal(check(number, [3n, 0n, 0n]), 'allow', name)
        }
      })

      for (const name of mustDeny) {
        if (syscallTables[arch][name] === null) {
          continue
        }
        it(`rejects ${name} with EPERM`, () => {
          assert.equal(check(nr(arch, name)), 'EPERM')
          assert.equal(check(nr(arch, name), [0xffffffffffffffffn, 1n, 2n]), 'EPERM')
        })
      }

      it('allows clone for threads and fork', () => {
        assert.equal(check(nr(arch, 'clone'), [THREAD_FLAGS]), 'allow')
        assert.equal(check(nr(arch, 'clone'), [FORK_FLAGS]), 'allow')
        assert.equal(check(nr(arch, 'clone'), [SIGCHLD]), 'allow')
      })

      it('rejects clone and unshare with CLONE_NEWUSER', () => {
        assert.equal(check(nr(arch, 'clone'), [CLONE_NEWUSER | SIGCHLD]), 'EPERM')
        assert.equal(check(nr(arch, 'clone'), [CLONE_NEWUSER | CLONE_NEWNS | FORK_FLAGS]), 'EPERM')
        assert.equal(check(nr(arch, 'unshare'), [CLONE_NEWUSER]), 'EPERM')
        assert.equal(check(nr(arch, 'unshare'), [CLONE_NEWNS]), 'allow')
      })

      it('answers clone3 with ENOSYS so glibc falls back to clone', () => {
        assert.equal(check(nr(arch, 'clone3')), 'ENOSYS')
      })

      it('rejects TIOCSTI and TIOCLINUX but allows TCGETS', () => {
        const ioctl = nr(arch, 'ioctl')
        assert.equal(check(ioctl, [0n, TIOCSTI]), 'EPERM')
        assert.equal(check(ioctl, [0n, TIOCLINUX]), 'EPERM')
        assert.equal(check(ioctl, [0n, TCGETS]), 'allow')
      })

      it('rejects TIOCSTI with junk in the upper 32 bits of cmd', () => {
        assert.equal(check(nr(arch, 'ioctl'), [0n, (1n << 32n) | TIOCSTI]), 'EPERM')
      })

      it('allows only the personalities Docker allows', () => {
        const personality = nr(arch, 'personality')
        for (const persona of [0x0n, 0x8n, 0x20000n, 0x20008n, 0xffffffffn]) {
          assert.equal(check(personality, [persona]), 'allow', `persona ${persona}`)
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, PER_BSD.
        for (const persona of [0x0040000n, 0x0400000n, 0x0100000n, 0x6n]) {
          assert.equal(check(personality, [persona]), 'EPERM', `persona ${persona}`)
        }
      })

      it('kills a process calling in with a foreign architecture', () => {
        for (const foreign of foreignArches[arch]) {
          const result = verdict(run(program, { nr: everyday[arch].read, arch: foreign }))
          assert.equal(result, 'kill-process', `arch 0x${foreign.toString(16)}`)
        }
      })

      if (arch === 'x64') {
        it('rejects the x32 ABI', () => {
          const x32 = 0x40000000
          assert.equal(check(x32 | everyday.x64.read), 'EPERM')
          assert.equal(check(x32 | nr('x64', 'keyctl')), 'EPERM')
          // x32's own numbering for its compat calls starts at 512.
          assert.equal(check(x32 | 512), 'EPERM')
        })

        it('leaves nr -1 (a tracer skipping the syscall) to the kernel', () => {
          assert.equal(check(-1), 'allow')
        })
      }
    })
  }
})

describe('syscall tables', () => {
  // The tables are hand-written from the kernel's; cross-check them against the installed
  // uapi headers (linux-libc-dev) where this machine has them.
  const headers: Record<SeccompArch, string> = {
    x64: '/usr/include/x86_64-linux-gnu/asm/unistd_64.h',
    arm64: '/usr/include/asm-generic/unistd.h',
  }
  for (const arch of ['x64', 'arm64'] as const) {
    const header = headers[arch]
    it(`match ${header}`, { skip: existsSync(header) ? false : `${header} is missing` }, () => {
      const text = readFileSync(header, 'utf8')
      for (const [name, number] of Object.entries(syscallTables[arch])) {
        const match = new RegExp(`^#define __NR_${name}\\s+(\\d+)\\s*$`, 'm').exec(text)
        assert.equal(match === null ? null : Number(match[1]), number, `${arch} ${name}`)
      }
      for (const [name, number] of Object.entries(everyday[arch])) {
        const match = new RegExp(`^#define __NR_${name}\\s+(\\d+)\\s*$`, 'm').exec(text)
        assert.equal(match === null ? null : Number(match[1]), number, `${arch} ${name}`)
      }
    })
  }
})
