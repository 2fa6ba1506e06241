/**
 * Classic BPF for seccomp: the kernel's opcodes and `struct seccomp_data` layout, a builder with
 * named labels, and the raw `struct sock_filter[]` encoding `bwrap --seccomp FD` reads.
 */
import { BugError } from '@sandcell/shared'

// Kernel ABI constants (include/uapi/linux/{filter,bpf_common,seccomp}.h).
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
