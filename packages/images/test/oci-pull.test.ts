/**
 * Image pulls against a real registry (Debian's docker-registry on 127.0.0.1, seeded by the
 * tests): OCI and Docker v2 manifests and indexes, the cache, layer sharing, overlay semantics,
 * and one test per hostile or failing input, each checking the error and that nothing partial
 * is left in the store.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createServer as createHttpServer } from 'node:http'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import {
  ImageRejectedError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
} from '@sandcell/shared'
import {
  assertNoLeaks,
  buildCompressionBomb,
  buildLayer,
  createTestLogger,
  pushBusyboxImage,
  pushImage,
  snapshotLeaks,
  startTestRegistry,
  startTokenServer,
  type LayerEntry,
  type LeakSnapshot,
  type TestRegistry,
  type TokenServer,
} from '@sandcell/test-utils'
import {
  ImageStore,
  imagesConfigSchema,
  type ImagesConfig,
  type PullLogLine,
} from '../src/index.js'

const uidOffset = 100000
const skip =
  process.getuid?.() !== 0
    ? 'needs root: layers are stored owned by the shifted uid range'
    : spawnSync('docker-registry', ['--version']).status !== 0
      ? 'needs docker-registry: apt-get install docker-registry'
      : false

let baseline: LeakSnapshot
let workDir: string
let registry: TestRegistry

before(async () => {
  baseline = snapshotLeaks()
  if (skip !== false) {
    return
  }
  workDir = mkdtempSync(join(tmpdir(), 'sandcell-oci-test-'))
  registry = await startTestRegistry({ dir: join(workDir, 'registry') })
})

after(async () => {
  await registry?.stop()
  if (workDir !== undefined) {
    rmSync(workDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: workDir === undefined ? [] : [workDir] })
})

let storeCount = 0

/** A store in a fresh dir of its own, closed after the test. */
function newStore(
  t: TestContext,
  config: Partial<ImagesConfig> = {},
): { store: ImageStore; dir: string; lines: PullLogLine[]; onLog: (line: PullLogLine) => void } {
  storeCount += 1
  const dir = join(workDir, `store-${storeCount}`)
  const store = new ImageStore({
    dir,
    uidOffset,
    config: imagesConfigSchema.parse(config),
    log: createTestLogger(),
  })
  t.after(() => store.close())
  const lines: PullLogLine[] = []
  return { store, dir, lines, onLog: (line) => lines.push(line) }
}

let repoCount = 0

/** Pushes a one-or-more-layer image under a fresh name and returns its reference. */
async function pushLayers(layers: LayerEntry[][], config = {}): Promise<string> {
  repoCount += 1
  const built = await Promise.all(layers.map((entries) => buildLayer(entries)))
  const pushed = await pushImage(registry.host, `test/image-${repoCount}:1`, {
    layers: built,
    config,
  })
  return pushed.reference
}

/** Temporary and partial entries of a store: a failed pull must leave none. */
function leftovers(dir: string): string[] {
  const found: string[] = []
  for (const sub of ['blobs/sha256', 'layers', 'images']) {
    const path = join(dir, sub)
    if (existsSync(path)) {
      for (const name of readdirSync(path)) {
        if (name.startsWith('.tmp-')) {
          found.push(`${sub}/${name}`)
        }
      }
    }
  }
  return found
}

function storedLayers(dir: string): string[] {
  return existsSync(join(dir, 'layers')) ? readdirSync(join(dir, 'layers')) : []
}

function storedImages(dir: string): string[] {
  return existsSync(join(dir, 'images')) ? readdirSync(join(dir, 'images')) : []
}

/** Asserts a pull fails with `errorClass` and `message`, leaving no layer, image or temp. */
async function assertRefused(
  t: TestContext,
  entries: LayerEntry[][],
  errorClass: abstract new (...args: never[]) => Error,
  message: RegExp,
): Promise<void> {
  const reference = await pushLayers(entries)
  const { store, dir } = newStore(t)
  await assert.rejects(store.pull(reference), (err: Error) => {
    assert.ok(err instanceof errorClass, `${err.name}: ${err.message}`)
    assert.match(err.message, message)
    return true
  })
  assert.deepEqual(leftovers(dir), [])
  assert.deepEqual(storedImages(dir), [])
}

const blobGets = (): number =>
  registry.requests().filter((r) => r.method === 'GET' && r.path.includes('/blobs/')).length

describe('image pulls', { skip }, () => {
  it('pulls an OCI image by tag into a shifted, read-only root filesystem', async (t) => {
    const pushed = await pushBusyboxImage(registry.host, 'sandcell/busybox:1')
    const { store, dir, lines, onLog } = newStore(t)
    const image = await store.pull(`${registry.host}/sandcell/busybox:1`, { onLog })
    assert.equal(image.reference, `${registry.host}/sandcell/busybox:1`)
    assert.equal(image.manifestDigest, pushed.digest)
    assert.deepEqual(image.config.cmd, ['/bin/sh'])
    assert.match(image.config.env.join('\n'), /^PATH=/m)
    const root = image.rootfsDir
    assert.ok(root.startsWith(join(dir, 'images')))
    assert.equal(statSync(dir).mode & 0o777, 0o700)
    const busybox = statSync(join(root, 'bin/busybox'))
    assert.equal(busybox.mode & 0o7777, 0o755)
    assert.equal(busybox.uid, uidOffset)
    assert.equal(readlinkSync(join(root, 'bin/sh')), '/bin/busybox')
    assert.equal(lstatSync(join(root, 'bin/sh')).uid, uidOffset)
    assert.equal(statSync(join(root, 'home/user')).uid, uidOffset + 1000)
    assert.equal(statSync(join(root, 'tmp')).mode & 0o7777, 0o1777)
    assert.equal(statSync(join(root, 'root')).mode & 0o7777, 0o700)
    assert.match(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^user:x:1000:1000:/m)
    assert.ok(image.sizeBytes >= busybox.size)
    assert.ok(lines.some((line) => line.level === 'info' && line.message.includes('pulled')))
    assert.deepEqual(leftovers(dir), [])
    // The layer's compressed blob is gone once unpacked: the tree is what later pulls use.
    assert.equal(readdirSync(join(dir, 'blobs/sha256')).length, 2) // manifest + config
  })

  it('pulls Docker v2 manifests and picks linux/amd64 from an index and a manifest list', async (t) => {
    const layer = await buildLayer([{ type: 'file', path: 'hello', content: 'hi\n' }])
    for (const format of ['oci', 'docker'] as const) {
      const pushed = await pushImage(registry.host, `test/multi-${format}:1`, {
        layers: [layer],
        format,
        index: true,
        config: { user: '1000', workingDir: '/work', entrypoint: ['/bin/sh', '-c'] },
      })
      const single = await pushImage(registry.host, `test/single-${format}:1`, {
        layers: [layer],
        format,
      })
      const { store, lines, onLog } = newStore(t)
      const image = await store.pull(pushed.reference, { onLog })
      assert.equal(image.manifestDigest, pushed.digest, format)
      assert.equal(image.config.user, '1000')
      assert.equal(image.config.workingDir, '/work')
      assert.deepEqual(image.config.entrypoint, ['/bin/sh', '-c'])
      // The arm64 variant comes first in the index: picking it would warn about the platform.
      assert.deepEqual(
        lines.filter((line) => line.level === 'warn'),
        [],
      )
      assert.equal(readFileSync(join(image.rootfsDir, 'hello'), 'utf8'), 'hi\n')
      const plain = await store.pull(single.reference)
      assert.equal(plain.manifestDigest, single.digest)
      assert.equal(plain.rootfsDir, image.rootfsDir, 'same layers, same root filesystem')
    }
  })

  it('pulls by tag again with one manifest GET and by digest with no request at all', async (t) => {
    const reference = await pushLayers([
      [{ type: 'file', path: 'a', content: 'a' }],
      [{ type: 'file', path: 'b', content: 'b' }],
    ])
    const { store } = newStore(t)
    const first = await store.pull(reference)
    const blobsBefore = blobGets()
    const requestsBefore = registry.requests().length
    const started = performance.now()
    const again = await store.pull(reference)
    const warmMs = performance.now() - started
    assert.equal(again.rootfsDir, first.rootfsDir)
    assert.equal(blobGets(), blobsBefore, 'no blob GET on a cached pull')
    const byTag = registry.requests().slice(requestsBefore)
    assert.deepEqual(
      byTag.map((r) => `${r.method} ${r.path.replace(/:[^/]*$/, '')}`),
      [`GET /v2/test/image-${repoCount}/manifests/1`],
    )
    const requestsByDigest = registry.requests().length
    const pinned = reference.replace(/:1$/, `@${first.manifestDigest}`)
    const byDigest = await store.pull(pinned)
    assert.equal(byDigest.rootfsDir, first.rootfsDir)
    assert.equal(registry.requests().length, requestsByDigest, 'a pull by digest stays offline')
    t.diagnostic(`warm pull by tag: ${warmMs.toFixed(1)} ms`)
  })

  it('follows redirects to another host, as registries send blobs to storage', async (t) => {
    const reference = await pushLayers([[{ type: 'file', path: 'r', content: 'redirected' }]])
    const front = createHttpServer((request, response) => {
      response.writeHead(307, { location: `http://${registry.host}${request.url ?? '/'}` }).end()
    })
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve))
    t.after(() => new Promise<void>((resolve) => front.close(() => resolve())))
    const address = front.address()
    const frontHost = `127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`
    const { store } = newStore(t)
    const image = await store.pull(reference.replace(registry.host, frontHost))
    assert.equal(readFileSync(join(image.rootfsDir, 'r'), 'utf8'), 'redirected')
  })

  it('removes what a crashed pull left, and keeps what a live one is making', async (t) => {
    const { store, dir } = newStore(t)
    const dead = join(dir, 'layers', '.tmp-999999-1-0123456789ab')
    const live = join(dir, 'images', `.tmp-${process.pid}-1-0123456789ab`)
    mkdirSync(join(dead, 'tree'), { recursive: true })
    mkdirSync(live, { recursive: true })
    await store.pull(await pushLayers([[{ type: 'file', path: 'f', content: 'x' }]]))
    assert.equal(existsSync(dead), false)
    assert.equal(existsSync(live), true)
    rmSync(live, { recursive: true })
  })

  it('shares one pull between concurrent callers', async (t) => {
    const reference = await pushLayers([[{ type: 'file', path: 'x', content: 'x' }]])
    const { store } = newStore(t)
    const before = blobGets()
    const [a, b] = await Promise.all([store.pull(reference), store.pull(reference)])
    assert.equal(a.rootfsDir, b.rootfsDir)
    assert.equal(blobGets() - before, 2, 'config and layer fetched once')
  })

  it('stores a base layer shared by two images once', async (t) => {
    const base: LayerEntry[] = [
      { type: 'dir', path: 'usr' },
      { type: 'file', path: 'usr/base.bin', content: Buffer.alloc(256 * 1024, 7) },
    ]
    const first = await pushLayers([base, [{ type: 'file', path: 'app', content: 'one' }]])
    const second = await pushLayers([base, [{ type: 'file', path: 'app', content: 'two' }]])
    const { store, dir } = newStore(t)
    const a = await store.pull(first)
    const b = await store.pull(second)
    assert.notEqual(a.rootfsDir, b.rootfsDir)
    assert.equal(storedLayers(dir).length, 3)
    const inodeA = statSync(join(a.rootfsDir, 'usr/base.bin'))
    const inodeB = statSync(join(b.rootfsDir, 'usr/base.bin'))
    assert.equal(inodeA.ino, inodeB.ino, 'one inode for the shared file')
    assert.equal(inodeA.nlink, 3, 'the layer tree and both images')
    assert.equal(readFileSync(join(a.rootfsDir, 'app'), 'utf8'), 'one')
    assert.equal(readFileSync(join(b.rootfsDir, 'app'), 'utf8'), 'two')
  })

  it('applies whiteouts, opaque directories, replacements and hard links across layers', async (t) => {
    const reference = await pushLayers([
      [
        { type: 'dir', path: 'd' },
        { type: 'file', path: 'd/x', content: 'x' },
        { type: 'file', path: 'd/y', content: 'y' },
        { type: 'dir', path: 'keep', mode: 0o750, uid: 5, gid: 6 },
        { type: 'file', path: 'keep/old', content: 'old' },
        { type: 'file', path: 'gone', content: 'gone' },
        { type: 'file', path: 'target', content: 'shared' },
        { type: 'dir', path: 'was-dir' },
        { type: 'file', path: 'was-dir/inside', content: 'i' },
        { type: 'file', path: 'was-file', content: 'f' },
      ],
      [
        { type: 'whiteout', path: 'gone' },
        { type: 'opaque', path: 'd' },
        { type: 'file', path: 'd/z', content: 'z' },
        { type: 'file', path: 'keep/new', content: 'new' },
        { type: 'hardlink', path: 'link-to-lower', target: 'target' },
        { type: 'file', path: 'was-dir', content: 'now a file' },
        { type: 'dir', path: 'was-file' },
        { type: 'file', path: 'same', content: 'same' },
        { type: 'hardlink', path: 'same-link', target: 'same' },
      ],
    ])
    const { store } = newStore(t)
    const { rootfsDir: root } = await store.pull(reference)
    assert.deepEqual(readdirSync(join(root, 'd')), ['z'])
    assert.equal(existsSync(join(root, 'gone')), false)
    assert.deepEqual(readdirSync(join(root, 'keep')).sort(), ['new', 'old'])
    // keep/ came into layer 2 only implicitly: the lower layer's owner and mode stay.
    const keep = statSync(join(root, 'keep'))
    assert.equal(keep.mode & 0o7777, 0o750)
    assert.equal(keep.uid, uidOffset + 5)
    assert.equal(statSync(join(root, 'link-to-lower')).ino, statSync(join(root, 'target')).ino)
    assert.equal(statSync(join(root, 'same-link')).ino, statSync(join(root, 'same')).ino)
    assert.equal(readFileSync(join(root, 'was-dir'), 'utf8'), 'now a file')
    assert.ok(statSync(join(root, 'was-file')).isDirectory())
  })

  it('keeps setuid bits and drops device nodes with a warning', async (t) => {
    const reference = await pushLayers([
      [
        { type: 'file', path: 'su', content: '#!', mode: 0o4755 },
        { type: 'file', path: 'sg', content: '#!', mode: 0o2755, gid: 42 },
        { type: 'dir', path: 'dev' },
        { type: 'character-device', path: 'dev/null', major: 1, minor: 3 },
        { type: 'block-device', path: 'dev/sda', major: 8, minor: 0 },
        { type: 'fifo', path: 'pipe' },
      ],
    ])
    const { store, lines, onLog } = newStore(t)
    const { rootfsDir: root } = await store.pull(reference, { onLog })
    assert.equal(statSync(join(root, 'su')).mode & 0o7777, 0o4755)
    assert.equal(statSync(join(root, 'sg')).mode & 0o7777, 0o2755)
    assert.equal(statSync(join(root, 'sg')).gid, uidOffset + 42)
    assert.deepEqual(readdirSync(join(root, 'dev')), [])
    assert.equal(existsSync(join(root, 'pipe')), false)
    const warnings = lines.filter((line) => line.level === 'warn').map((line) => line.message)
    assert.equal(warnings.length, 1, warnings.join('\n'))
    assert.match(
      warnings[0] as string,
      /dropped 3 .*\/dev\/null \(character-device\).*\/dev\/sda \(block-device\).*\/pipe \(fifo\)/,
    )
  })

  it('cannot write through a lower layer symlink to the host', async (t) => {
    const victimDir = join(workDir, 'victim')
    mkdirSync(victimDir, { recursive: true })
    writeFileSync(join(victimDir, 'file'), 'host data')
    const reference = await pushLayers([
      [{ type: 'symlink', path: 'a', target: victimDir }],
      [
        { type: 'file', path: 'a/file', content: 'overwritten' },
        { type: 'whiteout', path: 'a/other' },
      ],
      [{ type: 'symlink', path: 'b', target: victimDir }],
      [{ type: 'whiteout', path: 'b/file' }],
    ])
    const { store } = newStore(t)
    const { rootfsDir: root } = await store.pull(reference)
    assert.equal(readFileSync(join(victimDir, 'file'), 'utf8'), 'host data')
    assert.ok(lstatSync(join(root, 'a')).isDirectory(), 'the upper directory replaced the link')
    assert.equal(readFileSync(join(root, 'a/file'), 'utf8'), 'overwritten')
    // The whiteout's directory is part of its layer, so it hides the link as overlayfs would.
    assert.deepEqual(readdirSync(join(root, 'b')), [])
  })
})

describe('hostile layers', { skip }, () => {
  it("rejects an entry with a '..' component", async (t) => {
    await assertRefused(
      t,
      [[{ type: 'file', path: '../escape', content: 'x' }]],
      ImageRejectedError,
      /entry "\.\.\/escape" is refused: its path has a '\.\.' component/,
    )
  })

  it('rejects an absolute path', async (t) => {
    await assertRefused(
      t,
      [[{ type: 'file', path: '/etc/evil', content: 'x' }]],
      ImageRejectedError,
      /entry "\/etc\/evil" is refused: its path is absolute/,
    )
  })

  it('rejects an entry written through a symlink of its own layer', async (t) => {
    await assertRefused(
      t,
      [
        [
          { type: 'symlink', path: 'a', target: '/etc' },
          { type: 'file', path: 'a/passwd', content: 'root::0:0::/:/bin/sh\n' },
        ],
      ],
      ImageRejectedError,
      /entry "a\/passwd" is refused: it would be written through the symbolic link a \(-> \/etc\)/,
    )
    assert.doesNotMatch(readFileSync('/etc/passwd', 'utf8'), /^root::0:0::\/:\/bin\/sh$/m)
  })

  it('rejects a hard link that leaves the layer', async (t) => {
    await assertRefused(
      t,
      [[{ type: 'hardlink', path: 'passwd', target: '../../../etc/passwd' }]],
      ImageRejectedError,
      /hard link "passwd".*entry "\.\.\/\.\.\/\.\.\/etc\/passwd" is refused: its path has a '\.\.' component/,
    )
  })

  it('rejects a hard link to a file no layer has', async (t) => {
    await assertRefused(
      t,
      [[{ type: 'hardlink', path: 'passwd', target: 'etc/passwd' }]],
      ImageRejectedError,
      /the hard link "passwd" points to "etc\/passwd", which no lower layer has as a regular file/,
    )
  })

  it('rejects a hard link to a directory', async (t) => {
    await assertRefused(
      t,
      [
        [
          { type: 'dir', path: 'd' },
          { type: 'hardlink', path: 'link', target: 'd' },
        ],
      ],
      ImageRejectedError,
      /entry "link" is refused: it is a hard link to "d", which is not a regular file/,
    )
  })

  it('rejects a file owned by uid 70000', async (t) => {
    await assertRefused(
      t,
      [[{ type: 'file', path: 'f', content: 'x', uid: 70000 }]],
      ImageRejectedError,
      /entry "f" is refused: it is owned by uid 70000; images may use ids 0-65535 only/,
    )
  })

  it('stops a compression bomb at the size limit', async (t) => {
    const bomb = await buildCompressionBomb(64 * 1024 * 1024)
    assert.ok(bomb.bytes.length < 1024 * 1024)
    const pushed = await pushImage(registry.host, 'test/bomb:1', { layers: [bomb] })
    const { store, dir } = newStore(t, { maxImageMiB: 8 })
    const started = performance.now()
    await assert.rejects(store.pull(pushed.reference), (err: Error) => {
      assert.ok(err instanceof ResourceExhaustedError, err.message)
      assert.match(err.message, /is larger than images\.maxImageMiB \(8 MiB\) when unpacked/)
      return true
    })
    t.diagnostic(`refused in ${(performance.now() - started).toFixed(0)} ms`)
    assert.deepEqual(leftovers(dir), [])
    assert.deepEqual(storedLayers(dir), [])
  })

  it('rejects an image larger than the limit before downloading it', async (t) => {
    const layer = await buildLayer([
      { type: 'file', path: 'big', content: randomBytes(2 * 1024 * 1024) },
    ])
    const pushed = await pushImage(registry.host, 'test/big:1', { layers: [layer] })
    const { store, dir } = newStore(t, { maxImageMiB: 1 })
    const before = blobGets()
    await assert.rejects(
      store.pull(pushed.reference),
      /compressed, more than images\.maxImageMiB \(1 MiB\)/,
    )
    assert.equal(blobGets(), before)
    assert.deepEqual(leftovers(dir), [])
  })

  it('rejects a blob whose content does not match its digest', async (t) => {
    const layer = await buildLayer([{ type: 'file', path: 'f', content: 'genuine' }])
    const pushed = await pushImage(registry.host, 'test/tampered:1', { layers: [layer] })
    registry.corruptBlob(layer.digest)
    const { store, dir } = newStore(t)
    await assert.rejects(store.pull(pushed.reference), (err: Error) => {
      assert.ok(err instanceof ImageRejectedError, err.message)
      assert.match(
        err.message,
        new RegExp(
          `blob ${layer.digest} \\(layer ${layer.digest} of .*test/tampered:1\\) does not match its digest: the registry sent content hashing to sha256:[0-9a-f]{64}`,
        ),
      )
      return true
    })
    assert.deepEqual(leftovers(dir), [])
    assert.deepEqual(storedLayers(dir), [])
    assert.ok(!existsSync(join(dir, 'blobs/sha256', layer.digest.slice(7))))
  })

  it('rejects a layer that does not match its diffID', async (t) => {
    const layer = await buildLayer([{ type: 'file', path: 'f', content: 'x' }])
    const other = await buildLayer([{ type: 'file', path: 'f', content: 'y' }])
    const pushed = await pushImage(registry.host, 'test/diffid:1', {
      layers: [layer],
      config: { diffIds: [other.diffId] },
    })
    const { store, dir } = newStore(t)
    await assert.rejects(
      store.pull(pushed.reference),
      new RegExp(
        `does not match its diffID: the image config says ${other.diffId}, the uncompressed layer hashes to ${layer.diffId}`,
      ),
    )
    assert.deepEqual(leftovers(dir), [])
    assert.deepEqual(storedLayers(dir), [])
  })

  it('rejects a zstd layer with a way out', async (t) => {
    const layer = await buildLayer([{ type: 'file', path: 'f', content: 'x' }])
    const zstd = { ...layer, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }
    const pushed = await pushImage(registry.host, 'test/zstd:1', { layers: [zstd] })
    const { store } = newStore(t)
    await assert.rejects(
      store.pull(pushed.reference),
      /is zstd-compressed, which sandcell does not support; use an image built with gzip layers/,
    )
  })
})

describe('registry failures', { skip }, () => {
  it('says which tag is missing', async (t) => {
    await pushLayers([[{ type: 'file', path: 'f', content: 'x' }]])
    const { store, dir } = newStore(t)
    const reference = `${registry.host}/test/image-${repoCount}:nope`
    await assert.rejects(store.pull(reference), (err: Error) => {
      assert.ok(err instanceof NotFoundError, err.message)
      assert.equal(err.message, `image ${reference} not found: the registry has no tag nope`)
      return true
    })
    assert.deepEqual(leftovers(dir), [])
  })

  it('rejects a malformed reference', async (t) => {
    const { store } = newStore(t)
    await assert.rejects(store.pull('Python:3'), InvalidArgumentError)
  })

  it('gives up on a closed port with the host and the time it tried', async (t) => {
    const port = await freePort()
    const { store, dir } = newStore(t, { retries: 2 })
    await assert.rejects(store.pull(`127.0.0.1:${port}/x/y:1`), (err: Error) => {
      assert.ok(err instanceof UnavailableError, err.message)
      assert.match(
        err.message,
        new RegExp(
          `^registry 127\\.0\\.0\\.1:${port} is unavailable: 127\\.0\\.0\\.1:${port} refused the connection \\(nothing listens there\\) \\(3 attempts over \\d+\\.\\d s to fetch the manifest of 127\\.0\\.0\\.1:${port}/x/y:1\\)`,
        ),
      )
      return true
    })
    assert.deepEqual(leftovers(dir), [])
  })

  it('times out on a registry that never answers', async (t) => {
    const { port, close } = await startSilentServer()
    t.after(close)
    const { store } = newStore(t, { requestTimeoutMs: 300, retries: 1 })
    const started = performance.now()
    await assert.rejects(store.pull(`127.0.0.1:${port}/x/y:1`), (err: Error) => {
      assert.ok(err instanceof UnavailableError, err.message)
      assert.match(
        err.message,
        new RegExp(`127\\.0\\.0\\.1:${port} did not answer within 300 ms \\(2 attempts over`),
      )
      return true
    })
    const elapsedMs = performance.now() - started
    assert.ok(elapsedMs < 3000, `took ${elapsedMs.toFixed(0)} ms`)
  })

  it('stops when the caller aborts', async (t) => {
    const { port, close } = await startSilentServer()
    t.after(close)
    const { store } = newStore(t, { requestTimeoutMs: 30_000 })
    const controller = new AbortController()
    setTimeout(() => controller.abort(new Error('caller gave up')), 100)
    await assert.rejects(
      store.pull(`127.0.0.1:${port}/x/y:1`, { signal: controller.signal }),
      /caller gave up/,
    )
  })
})

describe('registry credentials', { skip }, () => {
  let authRegistry: TestRegistry
  const login = { username: 'alice', password: 's3cret-pass' }

  before(async () => {
    authRegistry = await startTestRegistry({ dir: join(workDir, 'auth-registry'), auth: login })
    const layer = await buildLayer([{ type: 'file', path: 'private', content: 'p' }])
    await pushImage(authRegistry.host, 'private/app:1', { layers: [layer], credentials: login })
  })
  after(() => authRegistry?.stop())

  it('pulls with the credentials given with the pull or in the config', async (t) => {
    const reference = `${authRegistry.host}/private/app:1`
    const { store } = newStore(t)
    const image = await store.pull(reference, { credentials: login })
    assert.equal(readFileSync(join(image.rootfsDir, 'private'), 'utf8'), 'p')
    const configured = newStore(t, { credentials: { [authRegistry.host]: login } })
    await configured.store.pull(reference)
  })

  it('rejects wrong credentials without repeating them', async (t) => {
    const { store, dir } = newStore(t)
    const wrong = { username: 'alice', password: 'wrong-password-123' }
    await assert.rejects(
      store.pull(`${authRegistry.host}/private/app:1`, { credentials: wrong }),
      (err: Error) => {
        assert.ok(err instanceof UnauthenticatedError, err.message)
        assert.equal(
          err.message,
          `the registry refused the credentials for host ${authRegistry.host}: check the username and password given for it`,
        )
        assert.ok(!err.message.includes(wrong.password))
        return true
      },
    )
    assert.deepEqual(leftovers(dir), [])
  })

  it('says that credentials are needed when none are given', async (t) => {
    const { store } = newStore(t)
    await assert.rejects(
      store.pull(`${authRegistry.host}/private/app:1`),
      new RegExp(`registry ${authRegistry.host} requires credentials for private/app`),
    )
  })
})

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() =>
        resolve(typeof address === 'object' && address !== null ? address.port : 0),
      )
    })
  })
}

/** A TCP server on 127.0.0.1 that accepts connections and never answers. */
async function startSilentServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) {
          socket.destroy()
        }
        server.close(() => resolve())
      }),
  }
}

describe('bearer token registries', { skip }, () => {
  let tokens: TokenServer
  let tokenRegistry: TestRegistry
  const login = { username: 'bob', password: 'token-pass-1' }

  before(async () => {
    const dir = join(workDir, 'token-registry')
    mkdirSync(dir, { recursive: true })
    tokens = await startTokenServer({ dir, login })
    tokenRegistry = await startTestRegistry({ dir, tokenAuth: tokens })
    const layer = await buildLayer([{ type: 'file', path: 'f', content: 'token' }])
    for (const repo of ['public/app:1', 'private/app:1']) {
      await pushImage(tokenRegistry.host, repo, { layers: [layer], credentials: login })
    }
  })
  after(async () => {
    await tokenRegistry?.stop()
    await tokens?.close()
  })

  it('pulls with an anonymous token, and reuses it until it expires', async (t) => {
    const { store } = newStore(t)
    const image = await store.pull(`${tokenRegistry.host}/public/app:1`)
    assert.equal(readFileSync(join(image.rootfsDir, 'f'), 'utf8'), 'token')
    const before = tokens.requests()
    await store.pull(`${tokenRegistry.host}/public/app:1`)
    assert.equal(tokens.requests(), before, 'the cached token served the manifest GET')
  })

  it('pulls a private repository with a token bought with the login', async (t) => {
    const { store } = newStore(t)
    await store.pull(`${tokenRegistry.host}/private/app:1`, { credentials: login })
  })

  it('rejects a private repository without a login, and a wrong login', async (t) => {
    const { store } = newStore(t)
    await assert.rejects(
      store.pull(`${tokenRegistry.host}/private/app:1`),
      new RegExp(`registry ${tokenRegistry.host} requires credentials for private/app`),
    )
    await assert.rejects(
      store.pull(`${tokenRegistry.host}/private/app:1`, {
        credentials: { username: 'bob', password: 'nope-nope-nope' },
      }),
      new RegExp(`the registry refused the credentials for host ${tokenRegistry.host}`),
    )
  })
})
