import assert from 'node:assert/strict'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, beforeEach, describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import type { ArchiveEntry } from './archive-entry.js'
import { createArchiveWriter, type ArchiveWriterOptions } from './archive-writer.js'

const mtime = new Date('2023-03-04T05:06:07Z')
const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }

function content(text: string): AsyncIterable<Uint8Array> {
  return Readable.from([Buffer.from(text)])
}
const none = content('')

const file = (name: string, mode = 0o644): ArchiveEntry => ({
  kind: 'file',
  name,
  parts: name.split('/').filter((part) => part !== '' && part !== '.'),
  mode,
  mtime,
  sizeBytes: 0,
})
const directory = (name: string, mode = 0o750): ArchiveEntry => ({
  ...file(name, mode),
  kind: 'directory',
})
const symlink = (name: string, target: string): ArchiveEntry => ({
  ...file(name, 0o777),
  kind: 'symlink',
  target,
})
const hardlink = (name: string, target: string): ArchiveEntry => ({
  ...file(name),
  kind: 'hardlink',
  target: target.split('/'),
})

const permissions = (path: string): number => statSync(path).mode & 0o7777

describe('createArchiveWriter', () => {
  let root: string
  const host = (path: string): string => join(root, path)
  const writer = (overrides: Partial<ArchiveWriterOptions> = {}) =>
    createArchiveWriter({ root, destination: '/dest', owner, mode: undefined, ...overrides })

  beforeEach(() => {
    root = join(realpathSync(mkdtempSync(join(tmpdir(), 'archive-writer-'))), 'root')
    mkdirSync(root)
  })
  afterEach(() => rmSync(join(root, '..'), { recursive: true, force: true }))

  it('creates the destination and its missing parents', () => {
    writer({ destination: '/a/b/c' }).finish()
    assert.equal(statSync(host('/a/b/c')).isDirectory(), true)
    assert.equal(permissions(host('/a')), 0o755)
  })

  it('writes files, directories, symlinks and hard links with their modes and times', async () => {
    const w = writer()
    await w.write(directory('bin/', 0o750), none)
    await w.write(file('bin/run', 0o755), content('#!/bin/sh\n'))
    await w.write(file('deep/er/data.txt', 0o600), content('data'))
    await w.write(symlink('bin/sh', '/bin/busybox'), none)
    await w.write(hardlink('bin/run-again', 'bin/run'), none)
    assert.deepEqual(w.finish(), { entries: 5, bytes: 14 })
    assert.equal(readFileSync(host('/dest/bin/run'), 'utf8'), '#!/bin/sh\n')
    assert.equal(permissions(host('/dest/bin/run')), 0o755)
    assert.equal(permissions(host('/dest/bin')), 0o750)
    assert.equal(permissions(host('/dest/deep/er/data.txt')), 0o600)
    assert.equal(permissions(host('/dest/deep')), 0o755, 'an implied directory')
    assert.equal(readlinkSync(host('/dest/bin/sh')), '/bin/busybox')
    assert.equal(statSync(host('/dest/bin/run-again')).ino, statSync(host('/dest/bin/run')).ino)
    assert.equal(statSync(host('/dest/bin/run')).mtime.getTime(), mtime.getTime())
    assert.equal(statSync(host('/dest/bin')).mtime.getTime(), mtime.getTime())
    assert.equal(lstatSync(host('/dest/bin/sh')).mtime.getTime(), mtime.getTime())
  })

  it('applies the mode to files and directories but not symlinks', async () => {
    const w = writer({ mode: 0o700 })
    await w.write(directory('d', 0o755), none)
    await w.write(file('d/f', 0o644), content('x'))
    await w.write(symlink('d/l', 'f'), none)
    w.finish()
    assert.equal(permissions(host('/dest/d')), 0o700)
    assert.equal(permissions(host('/dest/d/f')), 0o700)
    assert.equal(lstatSync(host('/dest/d/l')).mode & 0o777, 0o777)
  })

  it('keeps setuid bits from the header', async () => {
    const w = writer()
    await w.write(file('suid', 0o4755), content('x'))
    assert.equal(permissions(host('/dest/suid')), 0o4755)
  })

  it('merges into existing directories, which keep their mode unless listed', async () => {
    mkdirSync(host('/dest/kept'), { recursive: true, mode: 0o711 })
    mkdirSync(host('/dest/listed'), { mode: 0o711 })
    writeFileSync(host('/dest/kept/old.txt'), 'old')
    const w = writer()
    await w.write(file('kept/new.txt'), content('new'))
    await w.write(directory('listed', 0o750), none)
    w.finish()
    assert.equal(readFileSync(host('/dest/kept/old.txt'), 'utf8'), 'old')
    assert.equal(readFileSync(host('/dest/kept/new.txt'), 'utf8'), 'new')
    assert.equal(permissions(host('/dest/kept')), 0o711)
    assert.equal(permissions(host('/dest/listed')), 0o750)
  })

  it('replaces a file or a symlink with a file, leaving the link target alone', async () => {
    mkdirSync(host('/dest'))
    writeFileSync(host('/dest/file'), 'old')
    writeFileSync(host('/target'), 'target')
    symlinkSync('/target', host('/dest/link'))
    const w = writer()
    await w.write(file('file'), content('new'))
    await w.write(file('link'), content('new link'))
    assert.equal(readFileSync(host('/dest/file'), 'utf8'), 'new')
    assert.equal(lstatSync(host('/dest/link')).isFile(), true)
    assert.equal(readFileSync(host('/target'), 'utf8'), 'target')
  })

  it('replaces a non-directory with a directory entry', async () => {
    mkdirSync(host('/dest'))
    writeFileSync(host('/dest/was-file'), 'x')
    const w = writer()
    await w.write(directory('was-file'), none)
    assert.equal(lstatSync(host('/dest/was-file')).isDirectory(), true)
  })

  it('merges a directory entry into what an existing symlink to a directory points at', async () => {
    mkdirSync(host('/dest/usr/lib'), { recursive: true })
    symlinkSync('usr/lib', host('/dest/lib'))
    const w = writer()
    await w.write(directory('lib', 0o755), none)
    await w.write(file('lib/libc.so'), content('elf'))
    assert.equal(lstatSync(host('/dest/lib')).isSymbolicLink(), true)
    assert.equal(readFileSync(host('/dest/usr/lib/libc.so'), 'utf8'), 'elf')
  })

  it('cannot write through a symlink the archive made', async () => {
    mkdirSync(host('/elsewhere'))
    const w = writer()
    await w.write(symlink('escape', '/elsewhere'), none)
    await assert.rejects(
      w.write(file('escape/planted'), content('x')),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        /archive entry "escape\/planted" is below \/dest\/escape, a symlink of this archive/.test(
          err.message,
        ),
    )
    assert.equal(existsSync(host('/elsewhere/planted')), false)
  })

  it('cannot write through a symlink the archive made, reached by another name', async () => {
    mkdirSync(host('/dest/real'), { recursive: true })
    symlinkSync('real', host('/dest/alias'))
    mkdirSync(host('/elsewhere'))
    const w = writer()
    await w.write(symlink('real/escape', '/elsewhere'), none)
    await assert.rejects(w.write(file('alias/escape/planted'), content('x')), /a symlink of this/)
    assert.equal(existsSync(host('/elsewhere/planted')), false)
  })

  it('writes below a directory entry that replaced one of its symlinks', async () => {
    const w = writer()
    await w.write(symlink('d', '/elsewhere'), none)
    await w.write(directory('d'), none)
    await w.write(file('d/f'), content('x'))
    assert.equal(readFileSync(host('/dest/d/f'), 'utf8'), 'x')
  })

  it('rejects a hard link to anything but an earlier regular file of the archive', async () => {
    mkdirSync(host('/dest'))
    writeFileSync(host('/dest/preexisting'), 'x')
    const w = writer()
    await assert.rejects(
      w.write(hardlink('l1', 'preexisting'), none),
      /archive entry "l1" is a hard link to "preexisting", which is not an earlier regular file/,
    )
    await w.write(file('f'), content('x'))
    await w.write(symlink('f', 'elsewhere'), none)
    await assert.rejects(w.write(hardlink('l2', 'f'), none), /not an earlier regular file/)
    assert.equal(existsSync(host('/dest/l1')), false)
    assert.equal(existsSync(host('/dest/l2')), false)
  })

  it('rejects a non-directory over a directory', async () => {
    mkdirSync(host('/dest/d'), { recursive: true })
    const w = writer()
    await assert.rejects(
      w.write(file('d'), content('x')),
      /archive entry "d": \/dest\/d is a directory and cannot be replaced by a file/,
    )
    await assert.rejects(w.write(symlink('d', '/'), none), /cannot be replaced by a symlink/)
  })

  it('rejects an entry below an existing file', async () => {
    const w = writer()
    await w.write(file('f'), content('x'))
    await assert.rejects(
      w.write(file('f/g'), content('x')),
      /archive entry "f\/g": \/dest\/f exists and is not a directory/,
    )
  })

  it('rejects a destination that is not a directory', () => {
    writeFileSync(host('/file'), 'x')
    assert.throws(
      () => writer({ destination: '/file/sub' }),
      /cannot extract into \/file\/sub: \/file exists and is not a directory/,
    )
  })

  it('skips the destination itself: it keeps its mode', async () => {
    mkdirSync(host('/dest'), { mode: 0o711 })
    const w = writer()
    await w.write(directory('./', 0o777), none)
    assert.deepEqual(w.finish(), { entries: 0, bytes: 0 })
    assert.equal(permissions(host('/dest')), 0o711)
  })
})
