import assert from 'node:assert/strict'
import { once } from 'node:events'
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import tar from 'tar-stream'
import { prepareCopyArchive } from './copy-archive.js'

const work = mkdtempSync(join(tmpdir(), 'sandcell-copy-test-'))
after(() => rmSync(work, { recursive: true, force: true }))

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link'; linkname?: string }

async function makeTar(name: string, entries: Entry[]): Promise<string> {
  const path = join(work, name)
  const pack = tar.pack()
  const out = createWriteStream(path)
  pack.pipe(out)
  for (const entry of entries) {
    const type = entry.type ?? 'file'
    const header = {
      name: entry.name,
      type,
      ...(entry.linkname ? { linkname: entry.linkname } : {}),
    }
    if (type === 'file') {
      pack.entry(header, `content of ${entry.name}`)
    } else {
      pack.entry(header, Buffer.alloc(0))
    }
  }
  pack.finalize()
  await once(out, 'close')
  return path
}

async function names(path: string): Promise<string[]> {
  const extract = tar.extract()
  createReadStream(path).pipe(extract)
  const found: string[] = []
  for await (const entry of extract) {
    found.push(
      entry.header.type === 'link'
        ? `${entry.header.name} -> ${entry.header.linkname}`
        : entry.header.name,
    )
    entry.resume()
  }
  return found
}

const noDirs = { baseDir: '/home/user', isDirectory: () => Promise.resolve(false) }

describe('prepareCopyArchive', () => {
  it('merges a directory into the destination', async () => {
    const input = await makeTar('dir.tar', [
      { name: 'app', type: 'directory' },
      { name: 'app/main.py' },
      { name: 'app/lib', type: 'directory' },
      { name: 'app/lib/util.py' },
      { name: 'app/lib/alias.py', type: 'link', linkname: 'app/lib/util.py' },
      { name: 'other.txt' },
    ])
    const output = join(work, 'dir-out.tar')
    const target = await prepareCopyArchive(input, output, {
      src: 'app',
      dest: '/srv/app',
      ...noDirs,
    })
    assert.equal(target.root, '/srv/app')
    assert.deepEqual(await names(output), [
      'main.py',
      'lib',
      'lib/util.py',
      'lib/alias.py -> lib/util.py',
    ])
  })

  it('places a single file at, or into, its destination', async () => {
    const input = await makeTar('file.tar', [{ name: 'conf/a.txt' }])
    const output = join(work, 'file-out.tar')
    let target = await prepareCopyArchive(input, output, {
      src: 'conf/a.txt',
      dest: 'etc/b.txt',
      ...noDirs,
    })
    assert.equal(target.root, '/home/user/etc')
    assert.deepEqual(await names(output), ['b.txt'])
    target = await prepareCopyArchive(input, output, {
      src: './conf/a.txt',
      dest: '/etc/',
      ...noDirs,
    })
    assert.equal(target.root, '/etc')
    assert.deepEqual(await names(output), ['a.txt'])
    target = await prepareCopyArchive(input, output, {
      src: 'conf/a.txt',
      dest: '/etc',
      baseDir: '/',
      isDirectory: (path) => Promise.resolve(path === '/etc'),
    })
    assert.equal(target.root, '/etc')
    assert.deepEqual(await names(output), ['a.txt'])
  })

  it('cuts the static part of a glob', async () => {
    const input = await makeTar('glob.tar', [{ name: 'src/a.py' }, { name: 'src/pkg/b.py' }])
    const output = join(work, 'glob-out.tar')
    const target = await prepareCopyArchive(input, output, {
      src: 'src/**/*.py',
      dest: '/code',
      ...noDirs,
    })
    assert.equal(target.root, '/code')
    assert.deepEqual(await names(output), ['a.py', 'pkg/b.py'])
  })

  it('refuses a missing source, `..` names and hard links out of the copy', async () => {
    const input = await makeTar('bad.tar', [{ name: 'a.txt' }])
    const output = join(work, 'bad-out.tar')
    await assert.rejects(
      prepareCopyArchive(input, output, { src: 'b.txt', dest: '/x', ...noDirs }),
      (err: unknown) =>
        err instanceof InvalidArgumentError && /do not contain "b.txt"/.test(err.message),
    )
    const escaping = await makeTar('escape.tar', [{ name: '../up.txt' }])
    await assert.rejects(
      prepareCopyArchive(escaping, output, { src: '.', dest: '/x', ...noDirs }),
      /\.\.\/up\.txt/,
    )
    const linked = await makeTar('link.tar', [
      { name: 'keep', type: 'directory' },
      { name: 'keep/l', type: 'link', linkname: 'secret' },
      { name: 'secret' },
    ])
    await assert.rejects(
      prepareCopyArchive(linked, output, { src: 'keep', dest: '/x', ...noDirs }),
      /hard link to a file this step does not copy/,
    )
  })
})
