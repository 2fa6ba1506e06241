/**
 * Kernel modules, read without loading them: a module's dependencies from its ELF `.modinfo`
 * section, the load order of the modules the guest needs (with their dependencies), and the
 * names a kernel has built in.
 */
import { InvalidArgumentError } from '@sandcell/shared'

/** Reads the NUL-separated `key=value` strings of an ELF64 file's `.modinfo` section. */
export function readModinfo(elf: Buffer): Map<string, string[]> {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) {
    throw new InvalidArgumentError('not a little-endian ELF64 file')
  }
  const sectionHeaders = Number(elf.readBigUInt64LE(0x28))
  const entrySize = elf.readUInt16LE(0x3a)
  const count = elf.readUInt16LE(0x3c)
  const namesIndex = elf.readUInt16LE(0x3e)
  const section = (index: number): { name: number; offset: number; size: number } => {
    const at = sectionHeaders + index * entrySize
    return {
      name: elf.readUInt32LE(at),
      offset: Number(elf.readBigUInt64LE(at + 0x18)),
      size: Number(elf.readBigUInt64LE(at + 0x20)),
    }
  }
  const names = section(namesIndex)
  const info = new Map<string, string[]>()
  for (let i = 0; i < count; i++) {
    const header = section(i)
    const nameEnd = elf.indexOf(0, names.offset + header.name)
    const name = elf.toString('latin1', names.offset + header.name, nameEnd)
    if (name !== '.modinfo') {
      continue
    }
    const text = elf.toString('utf8', header.offset, header.offset + header.size)
    for (const pair of text.split('\0')) {
      const eq = pair.indexOf('=')
      if (eq > 0) {
        const key = pair.slice(0, eq)
        info.set(key, [...(info.get(key) ?? []), pair.slice(eq + 1)])
      }
    }
  }
  return info
}

/** A module's own dependencies as `.modinfo` names them (`depends=a,b`). */
export function moduleDependencies(modinfo: Map<string, string[]>): string[] {
  return (modinfo.get('depends') ?? [])
    .flatMap((value) => value.split(','))
    .map((name) => name.trim())
    .filter((name) => name.length > 0)
}

/** Module names are spelled with `-` or `_` interchangeably; files use either. */
export function normalizeModuleName(name: string): string {
  return name.replace(/\.ko(\.(xz|zst|gz))?$/, '').replaceAll('-', '_')
}

/**
 * The load order for `wanted` and everything they depend on: each module after its
 * dependencies, built-in ones left out, the first-wanted first where the order is free.
 * @throws InvalidArgumentError naming a module that is neither available nor built in, or a
 * dependency cycle
 */
export function resolveModuleOrder(
  wanted: readonly string[],
  dependencies: ReadonlyMap<string, readonly string[]>,
  builtin: ReadonlySet<string> = new Set(),
): string[] {
  const order: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (raw: string, chain: string[]): void => {
    const name = normalizeModuleName(raw)
    if (builtin.has(name) || state.get(name) === 'done') {
      return
    }
    if (state.get(name) === 'visiting') {
      throw new InvalidArgumentError(
        `kernel modules depend on each other in a cycle: ${[...chain, name].join(' -> ')}`,
      )
    }
    const deps = dependencies.get(name)
    if (deps === undefined) {
      throw new InvalidArgumentError(
        `kernel module ${name} (needed by ${chain.length > 0 ? chain.join(' -> ') : 'the guest'}) is not in the kernel package`,
      )
    }
    state.set(name, 'visiting')
    for (const dep of deps) {
      visit(dep, [...chain, name])
    }
    state.set(name, 'done')
    order.push(name)
  }
  for (const name of wanted) {
    visit(name, [])
  }
  return order
}

/** Names in a `modules.builtin` file (`kernel/lib/lz4/lz4_decompress.ko` per line). */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line.length > 0)
      .map((line) => normalizeModuleName(line.slice(line.lastIndexOf('/') + 1))),
  )
}
