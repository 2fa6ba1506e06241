/** The cpio writer's bytes, as the kernel's initramfs unpacker reads them. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { writeCpio } from './cpio.js'

/** Reads a newc archive back: name, mode, rdev and data of each entry. */
function readCpio(
  archive: Buffer,
): { name: string; mode: number; rdevMajor: number; data: Buffer }[] {
  const entries = []
  let at = 0
  for (;;) {
    assert.equal(archive.toString('ascii', at, at + 6), '070701')
    const field = (index: number): number =>
      parseInt(archive.toString('ascii', at + 6 + index * 8, at + 14 + index * 8), 16)
    const mode = field(1)
    const size = field(6)
    const nameSize = field(11)
    const rdevMajor = field(9)
    const name = archive.toString('utf8', at + 110, at + 110 + nameSize - 1)
    const dataAt = Math.ceil((at + 110 + nameSize) / 4) * 4
    const data = archive.subarray(dataAt, dataAt + size)
    at = Math.ceil((dataAt + size) / 4) * 4
    if (name === 'TRAILER!!!') {
      return entries
    }
    entries.push({ name, mode, rdevMajor, data })
  }
}

describe('cpio writer', () => {
  it('writes newc entries the kernel can unpack, 4-byte aligned, with a trailer', () => {
    const archive = writeCpio([
      { kind: 'directory', path: '/dev' },
      { kind: 'char-device', path: 'dev/console', major: 5, minor: 1 },
      { kind: 'file', path: 'init', data: Buffer.from('#!init'), mode: 0o755 },
      { kind: 'symlink', path: 'sbin', target: 'bin' },
    ])
    assert.equal(archive.length % 4, 0)
    const entries = readCpio(archive)
    assert.deepEqual(
      entries.map((e) => [e.name, e.mode.toString(8)]),
      [
        ['dev', '40755'],
        ['dev/console', '20600'],
        ['init', '100755'],
        ['sbin', '120777'],
      ],
    )
    assert.equal(entries[1]?.rdevMajor, 5)
    assert.equal(entries[2]?.data.toString(), '#!init')
    assert.equal(entries[3]?.data.toString(), 'bin')
  })

  it('gives the same bytes for the same entries', () => {
    const entries = [{ kind: 'file' as const, path: 'a', data: Buffer.from('x') }]
    assert.deepEqual(writeCpio(entries), writeCpio(entries))
  })
})
