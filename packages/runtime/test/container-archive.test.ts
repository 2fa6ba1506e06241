/**
 * Archive uploads (the agent's `POST /archive`, as template COPY steps use it) into a real
 * container sandbox through the envd client: what lands is checked from inside with stat and ls.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { AgentConnection } from '@sandcell/envd-client'
import type { Sandbox } from '@sandcell/runtime'
import { InvalidArgumentError, NotEnoughSpaceError } from '@sandcell/shared'
import { sh } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createTestContainerDriver,
  snapshotLeaks,
  testLimits,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let made: TestDriver
let sandbox: Sandbox
let agent: AgentConnection
let work: string

before(async () => {
  baseline = snapshotLeaks()
  work = mkdtempSync(join(tmpdir(), 'sandcell-archive-'))
  made = createTestContainerDriver()
  sandbox = await made.driver.create({ template: 'debian', limits: testLimits })
  agent = sandbox.connect()
})

after(async () => {
  agent.close()
  await sandbox.destroy()
  await made.dispose()
  rmSync(work, { recursive: true, force: true })
  await assertNoLeaks(baseline)
})

/** A tree on the host with every kind of entry a COPY source has, as GNU tar packs it. */
function packTree(gzip: boolean): Buffer {
  const source = mkdtempSync(join(work, 'tree-'))
  mkdirSync(join(source, 'app/bin'), { recursive: true })
  writeFileSync(join(source, 'app/bin/serve'), '#!/bin/sh\necho serving\n', { mode: 0o755 })
  writeFileSync(join(source, 'app/config.json'), '{}', { mode: 0o600 })
  symlinkSync('bin/serve', join(source, 'app/start'))
  linkSync(join(source, 'app/bin/serve'), join(source, 'app/bin/serve-again'))
  return execFileSync('tar', [gzip ? '-czf' : '-cf', '-', '-C', source, '.'])
}

describe('archive uploads into a container sandbox', () => {
  it('extracts a gzip tree owned by the user, as stat and ls inside show', async () => {
    const result = await agent.uploadArchive('/opt/site', packTree(true), { user: 'user' })
    // app, bin, two files, a hard link and a symlink (`./` is the destination); the link has no data.
    assert.deepEqual(result, { entries: 6, bytes: '#!/bin/sh\necho serving\n'.length + 2 })
    const listing = await sh(sandbox, 'ls -ln /opt/site/app', { user: 'root' })
    const entries = listing.stdout.split('\n').filter((line) => /^[-dl]/.test(line))
    assert.equal(entries.length, 3, listing.stdout)
    for (const line of entries) {
      assert.match(line, /^\S+\s+\d+\s+1000\s+1000\s/, `owned by user's uid: ${line}`)
    }
    const stats = await sh(
      sandbox,
      [
        'cd /opt/site/app',
        'stat -c "%n %u:%g %a %F %h" bin/serve bin/serve-again config.json start',
        'stat -c "%n %u:%g %a %F" bin /opt/site /opt',
        './start',
      ].join(' && '),
      { user: 'user' },
    )
    assert.equal(stats.exitCode, 0, stats.stderr)
    assert.deepEqual(stats.stdout.trim().split('\n'), [
      'bin/serve 1000:1000 755 regular file 2',
      'bin/serve-again 1000:1000 755 regular file 2',
      'config.json 1000:1000 600 regular file 1',
      'start 1000:1000 777 symbolic link 1',
      'bin 1000:1000 755 directory',
      '/opt/site 1000:1000 755 directory',
      '/opt 0:0 755 directory',
      'serving',
    ])
  })

  it('extracts a plain tar with a mode, relative to the home', async () => {
    await agent.uploadArchive('copied', packTree(false), { user: 'user', mode: 0o750 })
    const stats = await sh(
      sandbox,
      'cd ~/copied/app && stat -c "%n %u %a" bin bin/serve config.json',
      { user: 'user' },
    )
    assert.equal(stats.exitCode, 0, stats.stderr)
    assert.deepEqual(stats.stdout.trim().split('\n'), [
      'bin 1000 750',
      'bin/serve 1000 750',
      'config.json 1000 750',
    ])
  })

  it('rejects an entry that climbs out, writing nothing outside', async () => {
    const source = mkdtempSync(join(work, 'climb-'))
    writeFileSync(join(source, 'escaped'), 'x')
    const archive = execFileSync('tar', [
      '-cf',
      '-',
      '-C',
      source,
      '--transform',
      's,^,../../,',
      'escaped',
    ])
    await assert.rejects(
      agent.uploadArchive('/srv/climb', archive, { user: 'user' }),
      (err: unknown) =>
        err instanceof InvalidArgumentError &&
        err.message ===
          'archive entry "../../escaped" has a .. component; entries must stay below the destination',
    )
    const check = await sh(
      sandbox,
      'ls -a /srv/climb; test ! -e /escaped && test ! -e /srv/escaped',
      {
        user: 'root',
      },
    )
    assert.equal(check.exitCode, 0, check.stdout + check.stderr)
  })

  it('fails with NotEnoughSpaceError past the disk limit instead of hanging', async () => {
    const big = join(work, 'big.bin')
    writeFileSync(big, '')
    truncateSync(big, (testLimits.diskMiB + 64) * 1024 * 1024)
    const packer = spawn('tar', ['-cf', '-', '-C', work, 'big.bin'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    })
    try {
      await assert.rejects(
        agent.uploadArchive('/srv/fill', packer.stdout, { user: 'user' }),
        NotEnoughSpaceError,
      )
    } finally {
      packer.kill()
    }
    const cleanup = await sh(sandbox, 'rm -rf /srv/fill', { user: 'root' })
    assert.equal(cleanup.exitCode, 0, cleanup.stderr)
  })
})
