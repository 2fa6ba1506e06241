// File metadata against the real agent bundle: X-Metadata-* upload headers stored as user.e2b.*
// xattrs, shown by uploads, Stat, ListDir, Move and watch events, and the attacks on it.
import assert from 'node:assert/strict'
import { chownSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { after, before, describe, it } from 'node:test'
import { EventType, Filesystem, type WatchDirResponse } from '@sandcell/protocol'
import { startAgent, testUserId, type TestAgent } from './helpers/agent.js'

/** The agent's addon as bundled, for looking at attributes from the host side. */
interface XattrAddon {
  xattrList(target: string): string[] | number
  xattrGet(target: string, name: string): Buffer | null | number
  xattrSet(target: string, name: string, value: Buffer): number
}
const addon = createRequire(import.meta.url)(
  new URL('../bundle/native/sandcell_spawn.node', import.meta.url).pathname,
) as XattrAddon

interface UploadedEntry {
  name: string
  path: string
  type: string
  metadata?: Record<string, string>
}

describe('file metadata', () => {
  let agent: TestAgent

  before(async () => {
    agent = await startAgent()
  })
  after(() => agent.dispose())

  const upload = (
    path: string,
    data: string,
    headers: Record<string, string> = {},
    user = 'user',
  ): ReturnType<TestAgent['http']> =>
    agent.http('POST', `/files?path=${encodeURIComponent(path)}&username=${user}`, {
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body: data,
    })
  const stat = async (path: string, user = 'user') =>
    (await agent.client(Filesystem, { user }).stat({ path })).entry
  const metadataNames = (sandboxPath: string): string[] => {
    const names = addon.xattrList(agent.host(sandboxPath))
    assert.ok(Array.isArray(names), `xattrList failed: ${String(names)}`)
    return names.sort()
  }

  it('stores X-Metadata headers on an upload and shows them in its answer, Stat and ListDir', async () => {
    const res = await upload('/home/user/meta/a.txt', 'a', {
      'X-Metadata-Owner': 'alice',
      'x-metadata-stage': 'draft ready',
    })
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(res.json<UploadedEntry[]>(), [
      {
        name: 'a.txt',
        type: 'file',
        path: '/home/user/meta/a.txt',
        metadata: { owner: 'alice', stage: 'draft ready' },
      },
    ])
    assert.deepEqual(metadataNames('/home/user/meta/a.txt'), ['user.e2b.owner', 'user.e2b.stage'])
    assert.deepEqual((await stat('/home/user/meta/a.txt'))?.metadata, {
      owner: 'alice',
      stage: 'draft ready',
    })
    const listed = await agent
      .client(Filesystem, { user: 'user' })
      .listDir({ path: '/home/user', depth: 2 })
    assert.deepEqual(listed.entries.find((e) => e.path === '/home/user/meta/a.txt')?.metadata, {
      owner: 'alice',
      stage: 'draft ready',
    })
  })

  it('answers without metadata for a file that has none', async () => {
    const res = await upload('/home/user/meta/plain.txt', 'plain')
    assert.deepEqual(res.json<UploadedEntry[]>()[0]?.metadata, undefined)
    assert.deepEqual((await stat('/home/user/meta/plain.txt'))?.metadata, {})
  })

  it('gives every file of a multipart upload the same metadata', async () => {
    const form = new FormData()
    form.append('file', new Blob(['one']), '/home/user/meta/multi/1.txt')
    form.append('file', new Blob(['two']), 'meta/multi/2.txt')
    const request = new Request('http://x/', { method: 'POST', body: form })
    const res = await agent.http('POST', '/files?username=user', {
      headers: {
        'content-type': request.headers.get('content-type') ?? '',
        'x-metadata-batch': '7',
      },
      body: Buffer.from(await request.arrayBuffer()),
    })
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(
      res.json<UploadedEntry[]>().map((e) => [e.path, e.metadata]),
      [
        ['/home/user/meta/multi/1.txt', { batch: '7' }],
        ['/home/user/meta/multi/2.txt', { batch: '7' }],
      ],
    )
  })

  it('keeps metadata across a move, replaces it on an overwrite and clears it without any', async () => {
    await upload('/home/user/meta/move.txt', 'x', { 'x-metadata-a': '1', 'x-metadata-b': '2' })
    const moved = await agent
      .client(Filesystem, { user: 'user' })
      .move({ source: '/home/user/meta/move.txt', destination: '/home/user/meta/moved.txt' })
    assert.deepEqual(moved.entry?.metadata, { a: '1', b: '2' })

    const replaced = await upload('/home/user/meta/moved.txt', 'y', { 'x-metadata-b': 'new' })
    assert.deepEqual(replaced.json<UploadedEntry[]>()[0]?.metadata, { b: 'new' })
    assert.deepEqual((await stat('/home/user/meta/moved.txt'))?.metadata, { b: 'new' })

    await upload('/home/user/meta/moved.txt', 'z')
    assert.deepEqual((await stat('/home/user/meta/moved.txt'))?.metadata, {})
    assert.deepEqual(metadataNames('/home/user/meta/moved.txt'), [])
  })

  it('uses the first value of a repeated header', async () => {
    const res = await agent.http('POST', '/files?path=/home/user/meta/twice.txt&username=user', {
      headers: {
        'content-type': 'application/octet-stream',
        'x-metadata-key': ['first', 'second'],
      },
      body: 'x',
    })
    assert.equal(res.status, 200, res.text())
    assert.deepEqual(res.json<UploadedEntry[]>()[0]?.metadata, { key: 'first' })
  })

  it('shows user.e2b.* attributes set inside the sandbox, and no other attribute', async () => {
    writeFileSync(agent.host('/home/user/meta/external.txt'), 'x')
    const host = agent.host('/home/user/meta/external.txt')
    assert.equal(addon.xattrSet(host, 'user.e2b.from-setfattr', Buffer.from('yes')), 0)
    assert.equal(addon.xattrSet(host, 'user.e2b.emoji', Buffer.from('é \u{1f600}')), 0)
    assert.equal(addon.xattrSet(host, 'user.mime_type', Buffer.from('text/plain')), 0)
    assert.equal(addon.xattrSet(host, 'user.e2b.binary', Buffer.from([0xc3, 0x28])), 0)
    assert.deepEqual((await stat('/home/user/meta/external.txt'))?.metadata, {
      'from-setfattr': 'yes',
      emoji: 'é \u{1f600}',
    })
    // Directories carry metadata too.
    assert.equal(
      addon.xattrSet(agent.host('/home/user/meta'), 'user.e2b.kind', Buffer.from('dir')),
      0,
    )
    assert.deepEqual((await stat('/home/user/meta'))?.metadata, { kind: 'dir' })
  })

  it('puts the entry and its metadata in watch events with includeEntry', async () => {
    mkdirSync(agent.host('/home/user/watched-meta'))
    chownSync(agent.host('/home/user/watched-meta'), testUserId, testUserId)
    const controller = new AbortController()
    const stream = agent
      .client(Filesystem, { user: 'user' })
      .watchDir(
        { path: '/home/user/watched-meta', includeEntry: true },
        { signal: controller.signal },
      )
    const iterator = stream[Symbol.asyncIterator]()
    assert.equal(((await iterator.next()).value as WatchDirResponse).event.case, 'start')
    try {
      await upload('/home/user/watched-meta/w.txt', 'watched', { 'x-metadata-seen': 'yes' })
      for (;;) {
        const { value } = (await iterator.next()) as { value: WatchDirResponse }
        if (value.event.case !== 'filesystem') {
          continue
        }
        const event = value.event.value
        assert.equal(event.name, 'w.txt')
        if (event.type === EventType.REMOVE || event.type === EventType.RENAME) {
          assert.equal(event.entry, undefined)
          continue
        }
        assert.equal(event.entry?.path, '/home/user/watched-meta/w.txt')
        if (event.entry?.metadata.seen === 'yes') {
          break
        }
      }
    } finally {
      controller.abort()
    }
  })

  it('watches a local directory with allowNetworkMounts', async () => {
    const controller = new AbortController()
    const stream = agent
      .client(Filesystem, { user: 'user' })
      .watchDir({ path: '/home/user', allowNetworkMounts: true }, { signal: controller.signal })
    const first = await stream[Symbol.asyncIterator]().next()
    controller.abort()
    assert.equal((first.value as WatchDirResponse).event.case, 'start')
  })

  it('rejects metadata that is too large or not printable ASCII with 400 and writes nothing', async () => {
    const cases: Record<string, string>[] = [
      { [`x-metadata-${'k'.repeat(247)}`]: 'v' },
      { 'x-metadata-big': 'x'.repeat(4096) },
      Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`x-metadata-key${i}`, 'value'])),
      // Header values travel as latin1 bytes: this is 0xe9, not UTF-8.
      { 'x-metadata-accent': 'caf\u00e9' },
      { 'x-metadata-utf8': Buffer.from('é').toString('latin1') },
    ]
    for (const [index, headers] of cases.entries()) {
      const path = `/home/user/meta/rejected-${index}.txt`
      const res = await upload(path, 'x', headers)
      assert.equal(res.status, 400, `case ${index}: ${res.text()}`)
      assert.match(res.json<{ message: string }>().message, /invalid metadata/)
      assert.equal(existsSync(agent.host(path)), false, `case ${index} wrote the file`)
    }
  })

  it('cannot reach another xattr namespace through a key', async () => {
    await upload('/home/user/meta/ns.txt', 'x', {
      'x-metadata-trusted.overlay.opaque': 'y',
      'x-metadata-security.capability': 'z',
    })
    assert.deepEqual(metadataNames('/home/user/meta/ns.txt'), [
      'user.e2b.security.capability',
      'user.e2b.trusted.overlay.opaque',
    ])
  })

  it("cannot read a file's metadata through a link when the user may not read the file", async () => {
    writeFileSync(agent.host('/tmp/private.txt'), 'private', { mode: 0o600 })
    assert.equal(
      addon.xattrSet(agent.host('/tmp/private.txt'), 'user.e2b.secret', Buffer.from('s')),
      0,
    )
    symlinkSync('/tmp/private.txt', agent.host('/home/user/meta/to-private'))
    assert.deepEqual((await stat('/home/user/meta/to-private'))?.metadata, {})
    assert.deepEqual((await stat('/tmp/private.txt'))?.metadata, {})
    assert.deepEqual((await stat('/tmp/private.txt', 'root'))?.metadata, { secret: 's' })
    // A link shows its target's metadata to a user who may read it.
    assert.deepEqual((await stat('/home/user/meta/to-private', 'root'))?.metadata, {
      secret: 's',
    })
  })

  it("cannot set metadata on another user's file through a link", async () => {
    writeFileSync(agent.host('/tmp/roots.txt'), 'root file', { mode: 0o644 })
    symlinkSync('/tmp/roots.txt', agent.host('/home/user/meta/to-roots'))
    const res = await upload('/home/user/meta/to-roots', 'hijack', { 'x-metadata-owned': 'yes' })
    assert.equal(res.status, 403, res.text())
    assert.deepEqual(metadataNames('/tmp/roots.txt'), [])
  })

  it('stores metadata on a file uploaded as root, owned by root', async () => {
    const res = await upload(
      '/home/user/meta/by-root.txt',
      'x',
      { 'x-metadata-by': 'root' },
      'root',
    )
    assert.equal(res.status, 200, res.text())
    const entry = await stat('/home/user/meta/by-root.txt', 'root')
    assert.equal(entry?.owner, 'root')
    assert.deepEqual(entry?.metadata, { by: 'root' })
  })
})
