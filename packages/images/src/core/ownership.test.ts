/** Shifting ownership and back on small real trees: offsets, setuid bits, hard links, symlinks. */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import { DriverError, InvalidArgumentError } from '@sandcell/shared'
import { shiftOwnership, unshiftOwnership } from './ownership.js'
import { countFiles, measureTree, type WalkProgress } from './tree-walk.js'

const offset = 100000
// Re-owning files to other uids needs CAP_CHOWN; counting does not.
const needsRoot = process.getuid?.() === 0 ? false : 'needs root: chown to other uids'

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-shift-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A tree with the cases that matter; returns its root and a file outside it. */
function makeTree(t: TestContext): { root: string; outside: string; outsideDir: string } {
  const base = tempDir(t)
  const root = join(base, 'rootfs')
  const outsideDir = join(base, 'outside')
  mkdirSync(outsideDir)
  const outside = join(outsideDir, 'secret')
  writeFileSync(outside, 'host file\n')
  mkdirSync(join(root, 'usr/bin'), { recursive: true })
  mkdirSync(join(root, 'home/user'), { recursive: true })
  mkdirSync(join(root, 'var/mail'), { recursive: true })
  writeFileSync(join(root, 'usr/bin/passwd'), 'setuid\n')
  chmodSync(join(root, 'usr/bin/passwd'), 0o4755)
  writeFileSync(join(root, 'usr/bin/chage'), 'setgid\n')
  chownSync(join(root, 'usr/bin/chage'), 0, 42)
  chmodSync(join(root, 'usr/bin/chage'), 0o2755)
  chownSync(join(root, 'var/mail'), 0, 8)
  chmodSync(join(root, 'var/mail'), 0o2775)
  writeFileSync(join(root, 'home/user/notes'), 'mine\n')
  chownSync(join(root, 'home/user/notes'), 1000, 1000)
  chownSync(join(root, 'home/user'), 1000, 1000)
  writeFileSync(join(root, 'usr/bin/perl'), 'x'.repeat(100))
  linkSync(join(root, 'usr/bin/perl'), join(root, 'usr/bin/perl5.36'))
  writeFileSync(join(root, 'nobody-file'), '')
  chownSync(join(root, 'nobody-file'), 65534, 65534)
  symlinkSync(outside, join(root, 'escape'))
  symlinkSync(outsideDir, join(root, 'escape-dir'))
  symlinkSync('usr/bin', join(root, 'bin'))
  return { root, outside, outsideDir }
}

function owner(path: string): string {
  const stats = lstatSync(path)
  return `${stats.uid}:${stats.gid}`
}

describe('shiftOwnership', () => {
  it('adds the offset to every uid and gid', { skip: needsRoot }, async (t) => {
    const { root } = makeTree(t)
    await shiftOwnership(root, { offset })
    assert.equal(owner(root), '100000:100000')
    assert.equal(owner(join(root, 'usr/bin/chage')), '100000:100042')
    assert.equal(owner(join(root, 'home/user')), '101000:101000')
    assert.equal(owner(join(root, 'home/user/notes')), '101000:101000')
    assert.equal(owner(join(root, 'nobody-file')), '165534:165534')
    assert.equal(owner(join(root, 'bin')), '100000:100000')
  })

  it('keeps setuid and setgid bits that chown clears', { skip: needsRoot }, async (t) => {
    const { root } = makeTree(t)
    await shiftOwnership(root, { offset })
    assert.equal(statSync(join(root, 'usr/bin/passwd')).mode & 0o7777, 0o4755)
    assert.equal(statSync(join(root, 'usr/bin/chage')).mode & 0o7777, 0o2755)
    assert.equal(statSync(join(root, 'var/mail')).mode & 0o7777, 0o2775)
  })

  it('shifts a hard-linked file once', { skip: needsRoot }, async (t) => {
    const { root } = makeTree(t)
    const result = await shiftOwnership(root, { offset })
    // Shifted twice, the owner would be 200000 (or the second pass would refuse it).
    assert.equal(owner(join(root, 'usr/bin/perl')), '100000:100000')
    assert.equal(owner(join(root, 'usr/bin/perl5.36')), '100000:100000')
    assert.equal(result.paths, result.inodes + 1)
  })

  it('cannot be led outside the tree by symlinks', { skip: needsRoot }, async (t) => {
    const { root, outside, outsideDir } = makeTree(t)
    await shiftOwnership(root, { offset })
    assert.equal(owner(outside), '0:0')
    assert.equal(owner(outsideDir), '0:0')
    // The links themselves belong to the sandbox.
    assert.equal(owner(join(root, 'escape')), '100000:100000')
    assert.equal(owner(join(root, 'escape-dir')), '100000:100000')
  })

  it('reports the tree it shifted', { skip: needsRoot }, async (t) => {
    const { root } = makeTree(t)
    const before = await measureTree(root)
    const result = await shiftOwnership(root, { offset })
    assert.equal(result.paths, before.paths)
    assert.equal(result.sizeBytes, before.sizeBytes)
    // perl (100 bytes) is counted once though it has two names.
    assert.equal(result.sizeBytes, 100 + 'setuid\n'.length + 'setgid\n'.length + 'mine\n'.length)
  })

  it('reports progress that ends with done === total', { skip: needsRoot }, async (t) => {
    const root = join(tempDir(t), 'many')
    mkdirSync(root)
    for (let i = 0; i < 50; i++) {
      mkdirSync(join(root, `d${i}`))
      for (let j = 0; j < 100; j++) {
        writeFileSync(join(root, `d${i}`, `f${j}`), '')
      }
    }
    const total = await countFiles(root)
    const reports: WalkProgress[] = []
    const result = await shiftOwnership(root, { offset, total, onProgress: (p) => reports.push(p) })
    assert.equal(total, 1 + 50 + 50 * 100)
    assert.equal(result.paths, total)
    assert.deepEqual(reports.at(-1), { done: total, total })
    for (let i = 1; i < reports.length; i++) {
      assert.ok((reports[i]?.done ?? 0) >= (reports[i - 1]?.done ?? 0), 'progress went back')
    }
  })

  it('rejects a tree that is already shifted', { skip: needsRoot }, async (t) => {
    const { root } = makeTree(t)
    await shiftOwnership(root, { offset })
    await assert.rejects(shiftOwnership(root, { offset }), (err: unknown) => {
      assert.ok(err instanceof DriverError)
      assert.match(err.message, /already shifted/)
      return true
    })
  })

  it('rejects an offset that does not fit', async (t) => {
    const root = tempDir(t)
    for (const bad of [-1, 1.5, 2 ** 32 - 100]) {
      await assert.rejects(shiftOwnership(root, { offset: bad }), InvalidArgumentError)
    }
  })

  it('stops when aborted', async (t) => {
    const root = tempDir(t)
    const controller = new AbortController()
    controller.abort(new Error('stop'))
    await assert.rejects(shiftOwnership(root, { offset, signal: controller.signal }), /stop/)
  })
})

describe('unshiftOwnership', () => {
  it('gives back the owners and setuid bits a shift changed', { skip: needsRoot }, async (t) => {
    const { root, outside } = makeTree(t)
    const listing = (): string =>
      execFileSync('find', [root, '-printf', '%p %U:%G %m\n'], { encoding: 'utf8' })
    const before = listing()
    await shiftOwnership(root, { offset })
    const inodes = await unshiftOwnership(root, offset)
    assert.equal(listing(), before)
    assert.equal(inodes, (await measureTree(root)).inodes)
    assert.equal(owner(outside), '0:0')
  })
})
