import assert from 'node:assert/strict'
import { once } from 'node:events'
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { after, describe, it } from 'node:test'
import { gzipSync } from 'node:zlib'
import { InvalidArgumentError, ResourceExhaustedError } from '@sandcell/shared'
import tar from 'tar-stream'
import { unpackFunctionCode, type CodeLimits } from './code-archive.js'

const work = mkdtempSync(join(tmpdir(), 'sandcell-fn-code-'))
after(() => rmSync(work, { recursive: true, force: true }))

interface TestEntry {
  name: string
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo'
  content?: string
  linkname?: string
  mode?: number
}

async function tarOf(entries: TestEntry[]): Promise<Buffer> {
  const pack = tar.pack()
  const chunks: Buffer[] = []
  pack.on('data', (chunk: unknown) => chunks.push(chunk as Buffer))
  const ended = once(pack, 'end')
  for (const entry of entries) {
    const type = entry.type ?? 'file'
    pack.entry(
      {
        name: entry.name,
        type,
        mode: entry.mode ?? 0o644,
        ...(entry.linkname === undefined ? {} : { linkname: entry.linkname }),
      },
      Buffer.from(type === 'file' ? (entry.content ?? '') : ''),
    )
  }
  pack.finalize()
  await ended
  return Buffer.concat(chunks)
}

let counter = 0
async function unpack(body: Buffer, options: { fileName?: string; limits?: CodeLimits } = {}) {
  counter++
  const target = join(work, `code-${counter}`)
  const result = await unpackFunctionCode(Readable.from([body]), {
    target,
    spoolPath: join(work, `spool-${counter}`),
    uidOffset: 0,
    ...options,
  })
  return { target, result }
}

async function refused(body: Buffer, pattern: RegExp, limits?: CodeLimits): Promise<void> {
  const target = join(work, `code-${counter + 1}`)
  await assert.rejects(unpack(body, limits === undefined ? {} : { limits }), (err: unknown) => {
    assert.ok(
      err instanceof InvalidArgumentError || err instanceof ResourceExhaustedError,
      String(err),
    )
    assert.match((err as Error).message, pattern)
    return true
  })
  assert.equal(existsSync(target), false, 'nothing is left behind')
  assert.equal(existsSync(join(work, `spool-${counter}`)), false, 'the spool is removed')
}

describe('unpackFunctionCode', () => {
  it('unpacks a tar.gz with a Python handler, its config, modes and internal links', async () => {
    const body = gzipSync(
      await tarOf([
        { name: './', type: 'directory' },
        { name: './f.py', content: 'def f(event):\n    return event\n' },
        { name: './ol.yaml', content: 'triggers: { http: [{ method: POST }] }\n' },
        { name: './bin/run', content: '#!/bin/sh\n', mode: 0o4755 },
        { name: './lib/util.py', content: 'X = 1\n' },
        { name: './util.py', type: 'symlink', linkname: 'lib/util.py' },
      ]),
    )
    const { target, result } = await unpack(body)
    assert.equal(result.runtime, 'python')
    assert.equal(result.entry, 'f.py')
    assert.match(result.digest, /^sha256:[0-9a-f]{64}$/)
    assert.deepEqual(result.config.triggers?.http, [{ method: 'POST' }])
    assert.equal(readFileSync(join(target, 'util.py'), 'utf8'), 'X = 1\n')
    assert.equal(statSync(join(target, 'bin/run')).mode & 0o7777, 0o755, 'setuid dropped')
    assert.ok(lstatSync(join(target, 'util.py')).isSymbolicLink())
  })

  it('takes a single file and a Node.js handler', async () => {
    const python = await unpack(Buffer.from('def f(event):\n    return 1\n'))
    assert.equal(python.result.runtime, 'python')
    const node = await unpack(Buffer.from('export function handler() { return 1 }\n'), {
      fileName: 'index.mjs',
    })
    assert.equal(node.result.runtime, 'node')
    assert.equal(node.result.entry, 'index.mjs')
  })

  it('refuses escapes, links, devices and code without a handler, naming the entry', async () => {
    await refused(await tarOf([{ name: '../evil.py' }]), /"\.\.\/evil\.py" has a "\.\." component/)
    await refused(await tarOf([{ name: '/etc/passwd' }]), /absolute/)
    await refused(
      await tarOf([{ name: 'out', type: 'symlink', linkname: '../../etc' }]),
      /points outside the function/,
    )
    await refused(
      await tarOf([{ name: 'abs', type: 'symlink', linkname: '/etc/passwd' }]),
      /points outside the function/,
    )
    await refused(
      await tarOf([
        { name: 'dir', type: 'symlink', linkname: '.' },
        { name: 'dir/f.py', content: 'x' },
      ]),
      /goes through "dir", which is not a directory/,
    )
    await refused(
      await tarOf([
        { name: 'f.py', content: 'x' },
        { name: 'g.py', type: 'link', linkname: 'f.py' },
      ]),
      /hard link/,
    )
    await refused(await tarOf([{ name: 'null', type: 'character-device' }]), /character-device/)
    await refused(await tarOf([{ name: 'pipe', type: 'fifo' }]), /fifo/)
    await refused(await tarOf([{ name: 'README.md', content: 'hi' }]), /no handler/)
  })

  it('stops a compression bomb and too many files at their limits', async () => {
    const bomb = gzipSync(await tarOf([{ name: 'f.py', content: '\0'.repeat(8 * 1024 * 1024) }]))
    assert.ok(bomb.length < 64 * 1024)
    await refused(bomb, /more than 1 MiB/, {
      maxUploadBytes: 1024 * 1024,
      maxBytes: 1024 * 1024,
      maxEntries: 100,
    })
    const many = await tarOf(
      Array.from({ length: 200 }, (_, i): TestEntry => ({ name: `m${i}.py`, content: '' })),
    )
    await refused(many, /more than 100 entries/, {
      maxUploadBytes: 1024 * 1024,
      maxBytes: 1024 * 1024,
      maxEntries: 100,
    })
    await refused(Buffer.alloc(2 * 1024 * 1024, 1), /upload is larger than 1 MiB/, {
      maxUploadBytes: 1024 * 1024,
      maxBytes: 1024 * 1024,
      maxEntries: 100,
    })
  })
})
