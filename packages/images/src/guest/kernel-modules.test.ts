/** Module dependencies from `.modinfo`, their load order, and the names a kernel has built in. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import {
  moduleDependencies,
  parseModulesBuiltin,
  readModinfo,
  resolveModuleOrder,
} from './kernel-modules.js'

/** A minimal ELF64 with a `.modinfo` section and the section-name table. */
function fakeModule(modinfo: string): Buffer {
  const names = Buffer.from('\0.modinfo\0.shstrtab\0', 'latin1')
  const info = Buffer.from(modinfo, 'utf8')
  const infoAt = 64
  const namesAt = infoAt + info.length
  const headersAt = namesAt + names.length
  const header = Buffer.alloc(64)
  header.writeUInt32BE(0x7f454c46, 0)
  header[4] = 2
  header[5] = 1
  header.writeBigUInt64LE(BigInt(headersAt), 0x28)
  header.writeUInt16LE(64, 0x3a)
  header.writeUInt16LE(3, 0x3c)
  header.writeUInt16LE(2, 0x3e)
  const sections = Buffer.alloc(64 * 3)
  const section = (index: number, name: number, offset: number, size: number): void => {
    sections.writeUInt32LE(name, index * 64)
    sections.writeBigUInt64LE(BigInt(offset), index * 64 + 0x18)
    sections.writeBigUInt64LE(BigInt(size), index * 64 + 0x20)
  }
  section(1, 1, infoAt, info.length)
  section(2, 10, namesAt, names.length)
  return Buffer.concat([header, info, names, sections])
}

describe('kernel modules', () => {
  it('reads dependencies from a module .modinfo section', () => {
    const info = readModinfo(
      fakeModule('license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0'),
    )
    assert.deepEqual(moduleDependencies(info), ['virtio', 'virtio_ring'])
    assert.deepEqual(moduleDependencies(readModinfo(fakeModule('depends=\0'))), [])
  })

  it('rejects a file that is not ELF64', () => {
    assert.throws(
      () => readModinfo(Buffer.from('not an elf file at all, no no no no no no no no no no no no')),
      InvalidArgumentError,
    )
  })

  it('orders modules after their dependencies and leaves out built-in ones', () => {
    const deps = new Map<string, string[]>([
      ['virtio_ring', []],
      ['virtio', ['virtio_ring']],
      ['virtio_mmio', ['virtio', 'virtio_ring']],
      ['virtio_net', ['virtio_ring', 'virtio', 'net_failover']],
      ['net_failover', ['failover']],
      ['failover', []],
      ['erofs', ['libcrc32c']],
    ])
    const order = resolveModuleOrder(
      ['virtio_mmio', 'virtio-net', 'erofs'],
      deps,
      new Set(['libcrc32c']),
    )
    assert.deepEqual(order, [
      'virtio_ring',
      'virtio',
      'virtio_mmio',
      'failover',
      'net_failover',
      'virtio_net',
      'erofs',
    ])
  })

  it('names a module that is neither packaged nor built in', () => {
    assert.throws(
      () => resolveModuleOrder(['erofs'], new Map([['erofs', ['libcrc32c']]])),
      (err: unknown) => err instanceof InvalidArgumentError && /libcrc32c.*erofs/.test(err.message),
    )
  })

  it('rejects a dependency cycle', () => {
    const deps = new Map([
      ['a', ['b']],
      ['b', ['a']],
    ])
    assert.throws(() => resolveModuleOrder(['a'], deps), /cycle: a -> b -> a/)
  })

  it('reads modules.builtin paths as names', () => {
    assert.deepEqual(
      [
        ...parseModulesBuiltin(
          'kernel/crypto/crc32c_generic.ko\nkernel/lib/lz4/lz4_decompress.ko\n',
        ),
      ],
      ['crc32c_generic', 'lz4_decompress'],
    )
  })
})
