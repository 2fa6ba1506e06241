// Watches on network file systems against the real agent bundle: a FUSE mount (one of the kinds
// envd refuses) is refused unless the request sets allow_network_mounts, like envd 0.6.4.
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { Code, ConnectError } from '@connectrpc/connect'
import { Filesystem, type WatchDirResponse } from '@sandcell/protocol'
import { mountEmptyFuse, type FuseMount } from './helpers/fuse-mount.js'
import { startAgent, type TestAgent } from './helpers/agent.js'

describe('watching network mounts', () => {
  let agent: TestAgent
  let mount: FuseMount

  before(async () => {
    agent = await startAgent()
    mkdirSync(agent.host('/mnt/net'), { recursive: true })
    mount = await mountEmptyFuse(agent.host('/mnt/net'))
  })
  after(async () => {
    await mount?.unmount()
    await agent?.dispose()
  })

  const firstEvent = async (allowNetworkMounts: boolean): Promise<WatchDirResponse> => {
    const controller = new AbortController()
    try {
      const stream = agent
        .client(Filesystem, { user: 'user' })
        .watchDir({ path: '/mnt/net', allowNetworkMounts }, { signal: controller.signal })
      const first = await stream[Symbol.asyncIterator]().next()
      return first.value as WatchDirResponse
    } finally {
      controller.abort()
    }
  }

  it('rejects a watch on a FUSE mount with invalid_argument naming it', async () => {
    await assert.rejects(firstEvent(false), (err: unknown) => {
      assert.ok(err instanceof ConnectError, String(err))
      assert.equal(err.code, Code.InvalidArgument)
      assert.match(err.rawMessage, /\/mnt\/net.*network file system \(fuse\).*allowNetworkMounts/)
      return true
    })
  })

  it('watches it with allowNetworkMounts', async () => {
    assert.equal((await firstEvent(true)).event.case, 'start')
  })

  it('still stats the mount (only watches are refused)', async () => {
    const entry = (await agent.client(Filesystem, { user: 'user' }).stat({ path: '/mnt/net' }))
      .entry
    assert.equal(entry?.path, '/mnt/net')
  })
})
