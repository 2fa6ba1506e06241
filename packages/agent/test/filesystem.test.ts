// Filesystem service against the real agent bundle: entries, mkdir, move, list, remove, watches,
// as-user permission rules and path confinement.
import assert from 'node:assert/strict'
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { Code, ConnectError } from '@connectrpc/connect'
import { EventType, FileType, Filesystem, type WatchDirResponse } from '@sandcell/protocol'
import { startAgent, testUserId, waitFor, type TestAgent } from './helpers/agent.js'

async function expectCode(promise: Promise<unknown>, code: Code, pattern?: RegExp): Promise<void> {
  try {
    await promise
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`)
    assert.equal(Code[err.code], Code[code], err.message)
    if (pattern !== undefined) {
      assert.match(err.rawMessage, pattern)
    }
    return
  }
  assert.fail(`expected ${Code[code]}, but the call succeeded`)
}

interface Watch {
  events: { name: string; type: EventType }[]
  readonly keepalives: number
  until(
    what: string,
    predicate: (events: { name: string; type: EventType }[]) => boolean,
  ): Promise<void>
  stop(): void
  done: Promise<void>
}

/** Starts WatchDir, waits for its start event, and collects events in the background. */
async function watch(
  agent: TestAgent,
  path: string,
  recursive: boolean,
  headers?: Record<string, string>,
): Promise<Watch> {
  const controller = new AbortController()
  const client = agent.client(Filesystem, {
    user: 'user',
    ...(headers === undefined ? {} : { headers }),
  })
  const stream = client.watchDir({ path, recursive }, { signal: controller.signal })
  const iterator = stream[Symbol.asyncIterator]()
  const first = await iterator.next()
  assert.equal((first.value as WatchDirResponse | undefined)?.event.case, 'start')
  const events: { name: string; type: EventType }[] = []
  const counters = { keepalives: 0 }
  const done = (async () => {
    try {
      for (;;) {
        const next = await iterator.next()
        if (next.done === true) {
          return
        }
        const event = next.value.event
        if (event.case === 'filesystem') {
          events.push({ name: event.value.name, type: event.value.type })
        } else if (event.case === 'keepalive') {
          counters.keepalives += 1
        }
      }
    } catch {
      // Aborted by stop().
    }
  })()
  const state: Watch = {
    events,
    get keepalives() {
      return counters.keepalives
    },
    async until(what, predicate) {
      await waitFor(what, () => (predicate(events) ? true : undefined)).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}; events: ${JSON.stringify(events)}`)
      })
    },
    stop: () => controller.abort(),
    done,
  }
  return state
}

const has = (events: { name: string; type: EventType }[], name: string, type: EventType) =>
  events.some((e) => e.name === name && e.type === type)

describe('filesystem service', () => {
  let agent: TestAgent
  const asUser = () => agent.client(Filesystem, { user: 'user' })
  const asRoot = () => agent.client(Filesystem, { user: 'root' })

  before(async () => {
    agent = await startAgent()
    writeFileSync(agent.host('/root/secret'), 'top secret', { mode: 0o600 })
  })
  after(() => agent.dispose())

  it('stats a file with name, type, sandbox path, size, mode, ls permissions, owner names and mtime', async () => {
    writeFileSync(agent.host('/home/user/hello.txt'), 'hello')
    chmodSync(agent.host('/home/user/hello.txt'), 0o640)
    const { entry } = await asRoot().stat({ path: '/home/user/hello.txt' })
    assert.equal(entry?.name, 'hello.txt')
    assert.equal(entry?.type, FileType.FILE)
    assert.equal(entry?.path, '/home/user/hello.txt')
    assert.equal(entry?.size, 5n)
    assert.equal(entry?.mode, 0o640)
    assert.equal(entry?.permissions, '-rw-r-----')
    assert.equal(entry?.owner, 'root')
    assert.equal(entry?.group, 'root')
    const mtime = statSync(agent.host('/home/user/hello.txt')).mtimeMs
    assert.ok(Math.abs(Number(entry?.modifiedTime?.seconds) * 1000 - mtime) < 2000)
    assert.equal(entry?.symlinkTarget, undefined)
  })

  it('resolves relative paths and ~ against the user home', async () => {
    writeFileSync(agent.host('/home/user/rel.txt'), 'x')
    assert.equal((await asUser().stat({ path: 'rel.txt' })).entry?.path, '/home/user/rel.txt')
    assert.equal((await asUser().stat({ path: '~/rel.txt' })).entry?.path, '/home/user/rel.txt')
    await expectCode(asUser().stat({ path: '~root/x' }), Code.InvalidArgument)
  })

  it('stats a symlink itself, reporting its target', async () => {
    symlinkSync('/home/user/hello.txt', agent.host('/home/user/link'))
    const { entry } = await asUser().stat({ path: '/home/user/link' })
    assert.equal(entry?.type, FileType.FILE)
    assert.equal(entry?.symlinkTarget, '/home/user/hello.txt')
    assert.equal(entry?.permissions, 'lrwxrwxrwx')
    assert.equal(entry?.path, '/home/user/link')
  })

  it('answers not_found for a missing path and invalid_argument for an empty one', async () => {
    await expectCode(
      asUser().stat({ path: '/home/user/missing' }),
      Code.NotFound,
      /\/home\/user\/missing/,
    )
    await expectCode(asUser().stat({ path: '' }), Code.InvalidArgument, /path is required/)
    await expectCode(asUser().stat({ path: '/home/user/a\0b' }), Code.InvalidArgument, /NUL/)
  })

  it('makes a directory with its parents, owned by the user, and already_exists the second time', async () => {
    const { entry } = await asUser().makeDir({ path: '/home/user/a/b/c' })
    assert.equal(entry?.type, FileType.DIRECTORY)
    assert.equal(entry?.path, '/home/user/a/b/c')
    for (const dir of ['/home/user/a', '/home/user/a/b', '/home/user/a/b/c']) {
      assert.equal(statSync(agent.host(dir)).uid, testUserId)
    }
    await expectCode(asUser().makeDir({ path: '/home/user/a/b/c' }), Code.AlreadyExists)
    await expectCode(
      asUser().makeDir({ path: '/home/user/hello.txt' }),
      Code.InvalidArgument,
      /not a directory/,
    )
  })

  it('cannot make a directory where the user may not write', async () => {
    await expectCode(asUser().makeDir({ path: '/etc/nope' }), Code.PermissionDenied)
    assert.equal(existsSync(agent.host('/etc/nope')), false)
    await asRoot().makeDir({ path: '/etc/yes' })
    assert.equal(statSync(agent.host('/etc/yes')).uid, 0)
  })

  it('moves a file into a new directory and returns the destination entry', async () => {
    writeFileSync(agent.host('/home/user/move-me'), 'm')
    const { entry } = await asUser().move({
      source: 'move-me',
      destination: '/home/user/moved/here',
    })
    assert.equal(entry?.path, '/home/user/moved/here')
    assert.equal(readFileSync(agent.host('/home/user/moved/here'), 'utf8'), 'm')
    assert.equal(existsSync(agent.host('/home/user/move-me')), false)
    await expectCode(
      asUser().move({ source: '/home/user/nothing', destination: '/home/user/x' }),
      Code.NotFound,
    )
    await expectCode(
      asUser().move({ source: '', destination: '/home/user/x' }),
      Code.InvalidArgument,
      /source is required/,
    )
  })

  it('moves a symlink itself, not its target', async () => {
    symlinkSync('hello.txt', agent.host('/home/user/rel-link'))
    await asUser().move({ source: '/home/user/rel-link', destination: '/home/user/rel-link-2' })
    assert.equal(readlinkSync(agent.host('/home/user/rel-link-2')), 'hello.txt')
    assert.ok(existsSync(agent.host('/home/user/hello.txt')))
  })

  it('lists a directory one level deep by default and deeper on request, without following links', async () => {
    mkdirSync(agent.host('/home/user/tree/sub/deeper'), { recursive: true })
    writeFileSync(agent.host('/home/user/tree/top.txt'), '1')
    writeFileSync(agent.host('/home/user/tree/sub/mid.txt'), '22')
    writeFileSync(agent.host('/home/user/tree/sub/deeper/low.txt'), '333')
    symlinkSync('/home/user/tree/sub', agent.host('/home/user/tree/sublink'))
    const one = await asUser().listDir({ path: '/home/user/tree', depth: 0 })
    assert.deepEqual(
      one.entries.map((e) => [e.path, e.type]),
      [
        ['/home/user/tree/sub', FileType.DIRECTORY],
        ['/home/user/tree/sublink', FileType.DIRECTORY],
        ['/home/user/tree/top.txt', FileType.FILE],
      ],
    )
    assert.equal(one.entries[1]?.symlinkTarget, '/home/user/tree/sub')
    const three = await asUser().listDir({ path: '/home/user/tree', depth: 3 })
    assert.deepEqual(
      three.entries.map((e) => e.path),
      [
        '/home/user/tree/sub',
        '/home/user/tree/sub/deeper',
        '/home/user/tree/sub/deeper/low.txt',
        '/home/user/tree/sub/mid.txt',
        '/home/user/tree/sublink',
        '/home/user/tree/top.txt',
      ],
    )
    await expectCode(
      asUser().listDir({ path: '/home/user/tree/top.txt', depth: 1 }),
      Code.InvalidArgument,
      /not a directory/,
    )
    await expectCode(asUser().listDir({ path: '/home/user/none', depth: 1 }), Code.NotFound)
    await expectCode(
      asUser().listDir({ path: '/home/user', depth: 5000 }),
      Code.InvalidArgument,
      /depth/,
    )
  })

  it('removes files and whole trees, a link without its target, and a missing path quietly', async () => {
    mkdirSync(agent.host('/home/user/doomed/a/b'), { recursive: true })
    for (let i = 0; i < 600; i += 1) {
      writeFileSync(agent.host(`/home/user/doomed/a/b/f${i}`), 'x')
    }
    for (const dir of ['/home/user/doomed', '/home/user/doomed/a', '/home/user/doomed/a/b']) {
      chownSync(agent.host(dir), testUserId, testUserId)
    }
    await asUser().remove({ path: '/home/user/doomed' })
    assert.equal(existsSync(agent.host('/home/user/doomed')), false)
    writeFileSync(agent.host('/home/user/keep'), 'k')
    symlinkSync('/home/user/keep', agent.host('/home/user/keep-link'))
    await asUser().remove({ path: '/home/user/keep-link' })
    assert.ok(existsSync(agent.host('/home/user/keep')))
    await asUser().remove({ path: '/home/user/never-existed' })
    await expectCode(asRoot().remove({ path: '/' }), Code.InvalidArgument, /root/)
  })

  it('cannot read, list or remove what the user has no permission for', async () => {
    await expectCode(asUser().listDir({ path: '/root', depth: 1 }), Code.PermissionDenied)
    await expectCode(asUser().stat({ path: '/root/secret' }), Code.PermissionDenied)
    await expectCode(asUser().remove({ path: '/etc/passwd' }), Code.PermissionDenied)
    assert.ok(existsSync(agent.host('/etc/passwd')))
    const { entry } = await asRoot().stat({ path: '/root/secret' })
    assert.equal(entry?.mode, 0o600)
  })

  it('rejects paths and links that leave the root', async () => {
    // `..` in a request path stops at the sandbox root, like `/..` is `/`: this is the sandbox's passwd.
    const { entry } = await asRoot().stat({ path: '/../../../../../etc/passwd' })
    assert.equal(entry?.path, '/etc/passwd')
    assert.equal(entry?.size, BigInt(statSync(agent.host('/etc/passwd')).size))
    symlinkSync('../../../../../../etc', agent.host('/home/user/escape'))
    await expectCode(
      asRoot().listDir({ path: '/home/user/escape', depth: 1 }),
      Code.PermissionDenied,
      /leaves the sandbox root/,
    )
    // An absolute link target means the sandbox's own /etc.
    symlinkSync('/etc', agent.host('/home/user/abs-etc'))
    const listed = await asRoot().listDir({ path: '/home/user/abs-etc', depth: 1 })
    assert.deepEqual(
      listed.entries.map((e) => e.name).filter((n) => n === 'passwd' || n === 'group'),
      ['group', 'passwd'],
    )
  })

  it('watches a directory: create, write, chmod, rename and remove events with relative names', async () => {
    mkdirSync(agent.host('/home/user/w'))
    chmodSync(agent.host('/home/user/w'), 0o777)
    const w = await watch(agent, '/home/user/w', false)
    writeFileSync(agent.host('/home/user/w/f.txt'), 'one')
    await w.until('create', (e) => has(e, 'f.txt', EventType.CREATE))
    writeFileSync(agent.host('/home/user/w/f.txt'), 'two', { flag: 'a' })
    await w.until('write', (e) => has(e, 'f.txt', EventType.WRITE))
    chmodSync(agent.host('/home/user/w/f.txt'), 0o600)
    await w.until('chmod', (e) => has(e, 'f.txt', EventType.CHMOD))
    await asUser().move({ source: '/home/user/w/f.txt', destination: '/home/user/w/g.txt' })
    await w.until(
      'rename',
      (e) => has(e, 'f.txt', EventType.RENAME) && has(e, 'g.txt', EventType.CREATE),
    )
    await asUser().remove({ path: '/home/user/w/g.txt' })
    await w.until('remove', (e) => has(e, 'g.txt', EventType.REMOVE))
    w.stop()
    await w.done
  })

  it('watches recursively, including directories created later', async () => {
    mkdirSync(agent.host('/home/user/rw/sub'), { recursive: true })
    chmodSync(agent.host('/home/user/rw'), 0o777)
    chmodSync(agent.host('/home/user/rw/sub'), 0o777)
    const w = await watch(agent, '/home/user/rw', true)
    writeFileSync(agent.host('/home/user/rw/sub/inner.txt'), 'x')
    await w.until('nested create', (e) => has(e, 'sub/inner.txt', EventType.CREATE))
    mkdirSync(agent.host('/home/user/rw/later'))
    await w.until('new dir', (e) => has(e, 'later', EventType.CREATE))
    writeFileSync(agent.host('/home/user/rw/later/deep.txt'), 'y')
    await w.until('create in new dir', (e) => has(e, 'later/deep.txt', EventType.CREATE))
    w.stop()
    await w.done
  })

  it('sends keepalives on a quiet watch and rejects watching a file or a missing path', async () => {
    const w = await watch(agent, '/home/user', false, { 'keepalive-ping-interval': '1' })
    await waitFor('a keepalive', () => (w.keepalives > 0 ? true : undefined), 3000)
    w.stop()
    await w.done
    const iterate = async (path: string) => {
      for await (const _ of asUser().watchDir({ path })) {
        return
      }
    }
    await expectCode(iterate('/home/user/hello.txt'), Code.InvalidArgument, /not a directory/)
    await expectCode(iterate('/home/user/nope'), Code.NotFound)
    await expectCode(iterate('/root'), Code.PermissionDenied)
  })

  it('serves polled watchers: create, collect events, remove', async () => {
    mkdirSync(agent.host('/home/user/pw'))
    chmodSync(agent.host('/home/user/pw'), 0o777)
    const client = asUser()
    const { watcherId } = await client.createWatcher({ path: '/home/user/pw', recursive: false })
    assert.ok(watcherId.length > 0)
    writeFileSync(agent.host('/home/user/pw/p.txt'), 'p')
    const seen: { name: string; type: EventType }[] = []
    await waitFor('polled create', async () => {
      const { events } = await client.getWatcherEvents({ watcherId })
      seen.push(...events.map((e) => ({ name: e.name, type: e.type })))
      return has(seen, 'p.txt', EventType.CREATE) ? true : undefined
    })
    await client.removeWatcher({ watcherId })
    await expectCode(client.getWatcherEvents({ watcherId }), Code.NotFound)
    await expectCode(client.removeWatcher({ watcherId: '' }), Code.InvalidArgument)
  })
})
