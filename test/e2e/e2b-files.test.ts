/**
 * The official e2b SDK's filesystem against a real `sandcell serve`: text and bytes both ways,
 * many files at once, listing, stat, rename, remove, directories, watching, signed URLs, file
 * metadata.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import {
  FileNotFoundError,
  FileType,
  FilesystemEventType,
  InvalidArgumentError,
  Sandbox,
  type FilesystemEvent,
} from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  waitFor,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let server: ServeProcess
let sandbox: Sandbox

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
  sandbox = await Sandbox.create(server.connection)
})

after(async () => {
  try {
    await sandbox?.kill()
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

describe('files', { timeout: 60_000 }, () => {
  it('writes a text file and reads it back, overwriting on a second write', async () => {
    const info = await sandbox.files.write('/home/user/notes/hello.txt', 'héllo wörld\n')
    assert.deepEqual(
      { name: info.name, type: info.type, path: info.path },
      { name: 'hello.txt', type: FileType.FILE, path: '/home/user/notes/hello.txt' },
    )
    assert.equal(await sandbox.files.read('/home/user/notes/hello.txt'), 'héllo wörld\n')
    await sandbox.files.write('/home/user/notes/hello.txt', 'short')
    assert.equal(await sandbox.files.read('/home/user/notes/hello.txt'), 'short')
    // What the SDK wrote is what a command in the sandbox sees, owned by the default user.
    const seen = await sandbox.commands.run('stat -c "%U %s" /home/user/notes/hello.txt')
    assert.equal(seen.stdout, 'user 5\n')
  })

  it('round-trips every byte value as bytes, blob and stream', async () => {
    const bytes = new Uint8Array(512).map((_, i) => i % 256)
    await sandbox.files.write('/tmp/all-bytes.bin', bytes.buffer)
    assert.deepEqual(await sandbox.files.read('/tmp/all-bytes.bin', { format: 'bytes' }), bytes)
    const blob = await sandbox.files.read('/tmp/all-bytes.bin', { format: 'blob' })
    assert.deepEqual(new Uint8Array(await blob.arrayBuffer()), bytes)
    const stream = await sandbox.files.read('/tmp/all-bytes.bin', { format: 'stream' })
    const chunks: Uint8Array[] = []
    for await (const chunk of stream) {
      chunks.push(chunk)
    }
    assert.deepEqual(new Uint8Array(Buffer.concat(chunks)), bytes)
  })

  it('moves an 8 MiB file both ways through the proxy intact', async () => {
    const big = randomBytes(8 * 1024 * 1024)
    await sandbox.files.write('/tmp/big.bin', new Uint8Array(big).buffer)
    const sum = await sandbox.commands.run('sha256sum /tmp/big.bin | cut -d" " -f1')
    assert.equal(sum.stdout.trim(), createHash('sha256').update(big).digest('hex'))
    const back = await sandbox.files.read('/tmp/big.bin', { format: 'bytes' })
    assert.equal(Buffer.compare(Buffer.from(back), big), 0)
  })

  it('writes many files at once and says where each went', async () => {
    const files = Array.from({ length: 12 }, (_, i) => ({
      path: `/home/user/batch/dir${i % 3}/file${i}.txt`,
      data: `content ${i}`,
    }))
    const written = await sandbox.files.write(files)
    assert.deepEqual(
      written.map((w) => w.path),
      files.map((f) => f.path),
    )
    const contents = await Promise.all(files.map((f) => sandbox.files.read(f.path)))
    assert.deepEqual(
      contents,
      files.map((f) => f.data),
    )
  })

  it('resolves a relative path in the home of the user it acts as', async () => {
    await sandbox.files.write('relative.txt', 'mine')
    assert.equal(await sandbox.files.read('/home/user/relative.txt'), 'mine')
    await sandbox.files.write('relative.txt', 'roots', { user: 'root' })
    assert.equal(await sandbox.files.read('/root/relative.txt', { user: 'root' }), 'roots')
  })

  it('lists a directory one level deep by default and deeper with depth', async () => {
    await sandbox.files.makeDir('/home/user/tree/a/b')
    await sandbox.files.write('/home/user/tree/top.txt', 'top')
    await sandbox.files.write('/home/user/tree/a/mid.txt', 'mid')
    await sandbox.files.write('/home/user/tree/a/b/deep.txt', 'deep')

    const shallow = await sandbox.files.list('/home/user/tree')
    assert.deepEqual(shallow.map((e) => [e.path, e.type]).sort(), [
      ['/home/user/tree/a', FileType.DIR],
      ['/home/user/tree/top.txt', FileType.FILE],
    ])
    const deeper = await sandbox.files.list('/home/user/tree', { depth: 2 })
    assert.deepEqual(deeper.map((e) => e.path).sort(), [
      '/home/user/tree/a',
      '/home/user/tree/a/b',
      '/home/user/tree/a/mid.txt',
      '/home/user/tree/top.txt',
    ])
    const all = await sandbox.files.list('/home/user/tree', { depth: 3 })
    assert.ok(all.some((e) => e.path === '/home/user/tree/a/b/deep.txt'))
  })

  it('tells whether a path exists and describes files and directories', async () => {
    await sandbox.files.write('/home/user/info/stat.txt', '12345')
    assert.equal(await sandbox.files.exists('/home/user/info/stat.txt'), true)
    assert.equal(await sandbox.files.exists('/home/user/info/missing.txt'), false)

    const file = await sandbox.files.getInfo('/home/user/info/stat.txt')
    assert.equal(file.name, 'stat.txt')
    assert.equal(file.path, '/home/user/info/stat.txt')
    assert.equal(file.type, FileType.FILE)
    assert.equal(file.size, 5)
    assert.equal(file.owner, 'user')
    assert.equal(file.group, 'user')
    assert.equal(file.permissions, '-rw-r--r--')
    assert.equal(file.mode & 0o777, 0o644)
    assert.ok(file.modifiedTime instanceof Date)
    assert.ok(Math.abs(Date.now() - file.modifiedTime.getTime()) < 60_000)

    const dir = await sandbox.files.getInfo('/home/user/info')
    assert.equal(dir.type, FileType.DIR)
    assert.match(dir.permissions, /^d/)
    await assert.rejects(sandbox.files.getInfo('/home/user/info/missing.txt'), FileNotFoundError)
  })

  it('makes directories, saying whether each one was new', async () => {
    assert.equal(await sandbox.files.makeDir('/home/user/made/x/y'), true)
    assert.equal(await sandbox.files.makeDir('/home/user/made/x/y'), false)
    assert.equal((await sandbox.files.getInfo('/home/user/made/x')).type, FileType.DIR)
  })

  it('renames a file and a directory', async () => {
    await sandbox.files.write('/home/user/mv/old.txt', 'moving')
    const moved = await sandbox.files.rename('/home/user/mv/old.txt', '/home/user/mv/new.txt')
    assert.equal(moved.path, '/home/user/mv/new.txt')
    assert.equal(moved.type, FileType.FILE)
    assert.equal(await sandbox.files.exists('/home/user/mv/old.txt'), false)
    assert.equal(await sandbox.files.read('/home/user/mv/new.txt'), 'moving')

    const dir = await sandbox.files.rename('/home/user/mv', '/home/user/moved')
    assert.equal(dir.type, FileType.DIR)
    assert.equal(await sandbox.files.read('/home/user/moved/new.txt'), 'moving')
  })

  it('removes a file and a whole directory', async () => {
    await sandbox.files.write('/home/user/rm/a.txt', 'a')
    await sandbox.files.write('/home/user/rm/sub/b.txt', 'b')
    await sandbox.files.remove('/home/user/rm/a.txt')
    assert.equal(await sandbox.files.exists('/home/user/rm/a.txt'), false)
    await sandbox.files.remove('/home/user/rm')
    assert.equal(await sandbox.files.exists('/home/user/rm'), false)
  })

  it('throws FileNotFoundError for a file that does not exist', async () => {
    await assert.rejects(sandbox.files.read('/home/user/nothing-here.txt'), FileNotFoundError)
    await assert.rejects(sandbox.files.list('/home/user/no-such-dir'), FileNotFoundError)
  })

  it("cannot read root's private files as the default user", async () => {
    await sandbox.files.write('/root/secret.txt', 'for root only', { user: 'root' })
    await assert.rejects(sandbox.files.read('/root/secret.txt'))
    assert.equal(await sandbox.files.read('/root/secret.txt', { user: 'root' }), 'for root only')
  })

  it('reports create, write and remove events from watchDir', async (t) => {
    await sandbox.files.makeDir('/home/user/watched')
    const events: FilesystemEvent[] = []
    const watcher = await sandbox.files.watchDir('/home/user/watched', (event) => {
      events.push(event)
    })
    t.after(() => watcher.stop())
    const seen = (type: FilesystemEventType, name: string): boolean =>
      events.some((e) => e.type === type && e.name === name)

    await sandbox.files.write('/home/user/watched/w.txt', 'one')
    await waitFor('a create event', () => seen(FilesystemEventType.CREATE, 'w.txt'))
    await sandbox.commands.run('echo more >> /home/user/watched/w.txt')
    await waitFor('a write event', () => seen(FilesystemEventType.WRITE, 'w.txt'))
    await sandbox.files.remove('/home/user/watched/w.txt')
    await waitFor('a remove event', () => seen(FilesystemEventType.REMOVE, 'w.txt'))
  })

  it('watches subdirectories with recursive: true', async (t) => {
    await sandbox.files.makeDir('/home/user/rwatch/sub')
    const names: string[] = []
    const watcher = await sandbox.files.watchDir(
      '/home/user/rwatch',
      (event) => {
        names.push(event.name)
      },
      { recursive: true },
    )
    t.after(() => watcher.stop())
    await sandbox.files.write('/home/user/rwatch/sub/inner.txt', 'x')
    await waitFor('an event from the subdirectory', () => names.includes('sub/inner.txt'))
  })

  it('serves signed download and upload URLs that name no sandbox', async () => {
    await sandbox.files.write('/home/user/shared.txt', 'download me')
    const downloadUrl = await sandbox.downloadUrl('/home/user/shared.txt')
    assert.ok(downloadUrl.startsWith(`${server.url}/files?`), downloadUrl)
    assert.match(downloadUrl, /signature=v1_/)
    const download = await fetch(downloadUrl)
    assert.equal(download.status, 200)
    assert.equal(await download.text(), 'download me')

    const uploadUrl = await sandbox.uploadUrl('/home/user/uploaded.txt')
    const form = new FormData()
    form.append('file', new Blob(['uploaded by url']), 'uploaded.txt')
    const upload = await fetch(uploadUrl, { method: 'POST', body: form })
    assert.equal(upload.status, 200, await upload.clone().text())
    assert.equal(await sandbox.files.read('/home/user/uploaded.txt'), 'uploaded by url')

    // The signature covers the path: the same URL for another file is refused.
    const tampered = downloadUrl.replace('shared.txt', 'relative.txt')
    assert.equal((await fetch(tampered)).status, 401)
  })

  it('writes several files at once to absolute and relative paths, as the user and as root', async () => {
    const files = [
      { path: 'several/one.txt', data: 'one' },
      { path: '/tmp/several/two.txt', data: 'two' },
      { path: 'three.txt', data: 'three' },
      { path: '~/several/four.txt', data: 'four' },
    ]
    const mine = await sandbox.files.writeFiles(files)
    assert.deepEqual(
      mine.map((w) => w.path),
      [
        '/home/user/several/one.txt',
        '/tmp/several/two.txt',
        '/home/user/three.txt',
        '/home/user/several/four.txt',
      ],
    )
    const owners = await sandbox.commands.run(
      'stat -c "%U %n" /home/user/several/one.txt /tmp/several/two.txt /home/user/three.txt',
    )
    assert.equal(
      owners.stdout,
      'user /home/user/several/one.txt\nuser /tmp/several/two.txt\nuser /home/user/three.txt\n',
    )
    const roots = await sandbox.files.writeFiles(
      files.filter((f) => !f.path.startsWith('/')),
      { user: 'root' },
    )
    assert.deepEqual(
      roots.map((w) => w.path),
      ['/root/several/one.txt', '/root/three.txt', '/root/several/four.txt'],
    )
    assert.equal(await sandbox.files.read('/root/three.txt', { user: 'root' }), 'three')
    // The octet-stream form (one request per file) resolves the same way.
    const streamed = await sandbox.files.writeFiles(files.slice(0, 2), { useOctetStream: true })
    assert.deepEqual(
      streamed.map((w) => w.path),
      ['/home/user/several/one.txt', '/tmp/several/two.txt'],
    )
  })

  it('stores file metadata on write and writeFiles, shows it in getInfo, list and rename, and an overwrite clears it', async () => {
    const info = await sandbox.files.write('/home/user/meta/a.txt', 'a', {
      metadata: { Owner: 'alice', stage: 'draft' },
    })
    // envd lowercases keys (they travel as X-Metadata-<key> headers).
    assert.deepEqual(info.metadata, { owner: 'alice', stage: 'draft' })
    assert.deepEqual((await sandbox.files.getInfo('/home/user/meta/a.txt')).metadata, {
      owner: 'alice',
      stage: 'draft',
    })

    const batch = await sandbox.files.writeFiles(
      [
        { path: '/home/user/meta/b.txt', data: 'b' },
        { path: 'meta/c.txt', data: 'c' },
      ],
      { metadata: { batch: '1' } },
    )
    assert.deepEqual(
      batch.map((w) => [w.path, w.metadata]),
      [
        ['/home/user/meta/b.txt', { batch: '1' }],
        ['/home/user/meta/c.txt', { batch: '1' }],
      ],
    )
    const streamed = await sandbox.files.write('/home/user/meta/d.txt', 'd', {
      metadata: { via: 'octet-stream' },
      gzip: true,
    })
    assert.deepEqual(streamed.metadata, { via: 'octet-stream' })

    const listed = await sandbox.files.list('/home/user/meta')
    assert.deepEqual(listed.map((e) => [e.name, e.metadata]).sort(), [
      ['a.txt', { owner: 'alice', stage: 'draft' }],
      ['b.txt', { batch: '1' }],
      ['c.txt', { batch: '1' }],
      ['d.txt', { via: 'octet-stream' }],
    ])

    const renamed = await sandbox.files.rename('/home/user/meta/a.txt', '/home/user/meta/e.txt')
    assert.deepEqual(renamed.metadata, { owner: 'alice', stage: 'draft' })

    const overwritten = await sandbox.files.write('/home/user/meta/e.txt', 'new content')
    assert.equal(overwritten.metadata, undefined)
    assert.equal((await sandbox.files.getInfo('/home/user/meta/e.txt')).metadata, undefined)
    const replaced = await sandbox.files.write('/home/user/meta/b.txt', 'b2', {
      metadata: { other: 'x' },
    })
    assert.deepEqual(replaced.metadata, { other: 'x' })
  })

  it('shows metadata set inside the sandbox as user.e2b.* xattrs', async () => {
    await sandbox.files.write('/home/user/meta/inside.txt', 'x')
    await sandbox.commands.run(
      `python3 -c "import os; os.setxattr('/home/user/meta/inside.txt', 'user.e2b.tool', b'setxattr'); os.setxattr('/home/user/meta/inside.txt', 'user.other', b'ignored')"`,
    )
    assert.deepEqual((await sandbox.files.getInfo('/home/user/meta/inside.txt')).metadata, {
      tool: 'setxattr',
    })
    // What the SDK wrote is an ordinary xattr to programs in the sandbox.
    await sandbox.files.write('/home/user/meta/sdk.txt', 'x', { metadata: { k: 'v' } })
    const read = await sandbox.commands.run(
      `python3 -c "import os; print(os.getxattr('/home/user/meta/sdk.txt', 'user.e2b.k').decode())"`,
    )
    assert.equal(read.stdout, 'v\n')
  })

  it('rejects metadata larger than envd stores with InvalidArgumentError', async () => {
    await assert.rejects(
      sandbox.files.write('/home/user/meta/big.txt', 'x', { metadata: { big: 'x'.repeat(5000) } }),
      InvalidArgumentError,
    )
    assert.equal(await sandbox.files.exists('/home/user/meta/big.txt'), false)
  })

  it('includes each entry with its metadata in watch events with includeEntry', async (t) => {
    await sandbox.files.makeDir('/home/user/entries')
    const events: FilesystemEvent[] = []
    const watcher = await sandbox.files.watchDir(
      '/home/user/entries',
      (event) => {
        events.push(event)
      },
      { includeEntry: true, allowNetworkMounts: true },
    )
    t.after(() => watcher.stop())
    await sandbox.files.write('/home/user/entries/e.txt', 'entry', { metadata: { seen: 'yes' } })
    await waitFor('a write event carrying the entry and its metadata', () =>
      events.some((e) => e.name === 'e.txt' && e.entry?.metadata?.seen === 'yes'),
    )
    const event = events.find((e) => e.name === 'e.txt' && e.entry !== undefined)
    assert.equal(event?.entry?.path, '/home/user/entries/e.txt')
    assert.equal(event?.entry?.type, FileType.FILE)
    assert.equal(event?.entry?.owner, 'user')
    await sandbox.files.remove('/home/user/entries/e.txt')
    await waitFor('a remove event', () =>
      events.some((e) => e.type === FilesystemEventType.REMOVE && e.name === 'e.txt'),
    )
    const removal = events.find((e) => e.type === FilesystemEventType.REMOVE)
    assert.equal(removal?.entry, undefined)
  })

  it('writes a file through a signed upload URL, with and without a user, and answers with its entry', async () => {
    const post = async (url: string, name: string, data: string): Promise<unknown> => {
      const form = new FormData()
      form.append('file', new Blob([data]), name)
      const res = await fetch(url, { method: 'POST', body: form })
      assert.equal(res.status, 200, await res.clone().text())
      return res.json()
    }
    const plain = await sandbox.uploadUrl('/home/user/signed/plain.txt')
    assert.deepEqual(await post(plain, 'plain.txt', 'by default user'), [
      { name: 'plain.txt', type: 'file', path: '/home/user/signed/plain.txt' },
    ])
    const asRoot = await sandbox.uploadUrl('/root/signed.txt', { user: 'root' })
    assert.match(asRoot, /username=root/)
    assert.deepEqual(await post(asRoot, 'signed.txt', 'by root'), [
      { name: 'signed.txt', type: 'file', path: '/root/signed.txt' },
    ])
    const relative = await sandbox.uploadUrl('signed/relative.txt', {
      user: 'root',
      useSignatureExpiration: 60,
    })
    assert.deepEqual(await post(relative, 'relative.txt', 'relative'), [
      { name: 'relative.txt', type: 'file', path: '/root/signed/relative.txt' },
    ])
    const owners = await sandbox.commands.run(
      'stat -c "%U %n" /home/user/signed/plain.txt /root/signed.txt /root/signed/relative.txt',
      { user: 'root' },
    )
    assert.equal(
      owners.stdout,
      'user /home/user/signed/plain.txt\nroot /root/signed.txt\nroot /root/signed/relative.txt\n',
    )
    assert.equal(await sandbox.files.read('/root/signed.txt', { user: 'root' }), 'by root')
    // A URL signed for the default user does not write as root.
    const tampered = plain.replace('path=', 'username=root&path=')
    const refused = await fetch(tampered, { method: 'POST', body: new FormData() })
    assert.equal(refused.status, 401)
  })
})
