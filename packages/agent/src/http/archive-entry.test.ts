import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import type { Header } from 'tar-stream'
import { normalizeEntryName, parseEntry, parseModeQuery } from './archive-entry.js'

const mtime = new Date('2024-05-01T12:00:00Z')

function header(overrides: Partial<Header> & Pick<Header, 'name'>): Header {
  return {
    size: 0,
    mode: 0o644,
    mtime,
    type: 'file',
    linkname: '',
    uid: 0,
    gid: 0,
    uname: '',
    gname: '',
    devmajor: 0,
    devminor: 0,
    ...overrides,
  }
}

describe('normalizeEntryName', () => {
  it('strips a leading ./ and empty or . components', () => {
    assert.deepEqual(normalizeEntryName('./a/b.txt'), ['a', 'b.txt'])
    assert.deepEqual(normalizeEntryName('a//./b/'), ['a', 'b'])
    assert.deepEqual(normalizeEntryName('././x'), ['x'])
  })

  it('names the destination itself with no components', () => {
    assert.deepEqual(normalizeEntryName('./'), [])
    assert.deepEqual(normalizeEntryName('.'), [])
  })

  it('keeps names that only look like ..', () => {
    assert.deepEqual(normalizeEntryName('a/..b/c..'), ['a', '..b', 'c..'])
  })

  it('rejects an absolute name, naming the entry', () => {
    assert.throws(
      () => normalizeEntryName('/etc/passwd'),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        err.message ===
          'archive entry "/etc/passwd" has an absolute name; entries must be relative to the destination',
    )
  })

  it('rejects a .. component anywhere, naming the entry', () => {
    for (const name of ['../x', 'a/../../x', 'a/..', './..', 'a/b/../c']) {
      assert.throws(
        () => normalizeEntryName(name),
        new RegExp(`archive entry "${name.replaceAll('.', '\\.')}" has a \\.\\. component`),
        name,
      )
    }
  })

  it('rejects a NUL byte', () => {
    assert.throws(() => normalizeEntryName('a\0b'), InvalidArgumentError)
  })
})

describe('parseEntry', () => {
  it('reads a regular file with its permission bits masked to 07777', () => {
    assert.deepEqual(parseEntry(header({ name: './bin/run', mode: 0o104755, size: 12 })), {
      kind: 'file',
      name: './bin/run',
      parts: ['bin', 'run'],
      mode: 0o4755,
      mtime,
      sizeBytes: 12,
    })
    assert.equal(parseEntry(header({ name: 'c', type: 'contiguous-file' })).kind, 'file')
  })

  it('reads directories, the destination itself included', () => {
    assert.deepEqual(parseEntry(header({ name: 'lib/', type: 'directory', mode: 0o755 })), {
      kind: 'directory',
      name: 'lib/',
      parts: ['lib'],
      mode: 0o755,
      mtime,
    })
    assert.deepEqual(parseEntry(header({ name: './', type: 'directory' })).parts, [])
  })

  it('keeps a symlink target as given, absolute or climbing', () => {
    for (const target of ['/etc/passwd', '../../..', 'sibling']) {
      const entry = parseEntry(header({ name: 'l', type: 'symlink', linkname: target }))
      assert.equal(entry.kind === 'symlink' && entry.target, target)
    }
  })

  it('normalizes a hard link target like a name', () => {
    const entry = parseEntry(header({ name: 'b', type: 'link', linkname: './dir/a' }))
    assert.deepEqual(entry.kind === 'hardlink' && entry.target, ['dir', 'a'])
  })

  it('rejects a hard link that leaves the archive', () => {
    for (const linkname of ['/etc/shadow', '../outside', './']) {
      assert.throws(
        () => parseEntry(header({ name: 'b', type: 'link', linkname })),
        /archive entry "b" is a hard link to/,
        linkname,
      )
    }
  })

  it('rejects a symlink without a target', () => {
    assert.throws(
      () => parseEntry(header({ name: 'l', type: 'symlink', linkname: '' })),
      /archive entry "l" is a symlink without a valid target/,
    )
  })

  it('rejects device nodes and FIFOs, naming the entry', () => {
    for (const type of ['character-device', 'block-device'] as const) {
      assert.throws(
        () => parseEntry(header({ name: 'dev/sda', type })),
        /^InvalidArgumentError: archive entry "dev\/sda": device nodes cannot be copied$/,
      )
    }
    assert.throws(
      () => parseEntry(header({ name: 'pipe', type: 'fifo' })),
      /archive entry "pipe": FIFOs cannot be copied/,
    )
  })

  it('rejects a type tar-stream does not know', () => {
    const unknown = { ...header({ name: 'sparse' }), type: null } as unknown as Header
    assert.throws(
      () => parseEntry(unknown),
      /archive entry "sparse" has a type that cannot be copied/,
    )
  })

  it('rejects a non-directory that names the destination itself', () => {
    assert.throws(
      () => parseEntry(header({ name: './', type: 'symlink', linkname: '/' })),
      /names the destination itself and must be a directory/,
    )
  })
})

describe('parseModeQuery', () => {
  it('reads 3 or 4 octal digits', () => {
    assert.equal(parseModeQuery('0755'), 0o755)
    assert.equal(parseModeQuery('644'), 0o644)
    assert.equal(parseModeQuery('4755'), 0o4755)
  })

  it('is undefined when absent or empty', () => {
    assert.equal(parseModeQuery(null), undefined)
    assert.equal(parseModeQuery(''), undefined)
  })

  it('rejects anything but octal permissions', () => {
    for (const text of ['0855', 'rwx', '75', '01755', '0x1ed', '-1']) {
      assert.throws(() => parseModeQuery(text), /mode must be an octal permission like 0755/, text)
    }
  })
})
