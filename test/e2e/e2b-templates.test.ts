/**
 * Template builds through the official e2b SDK's `Template` against a real `sandcell serve`:
 * every step kind, start and ready commands, cached and partly cached rebuilds, failing steps
 * as the SDK's BuildError at the right step, tags, aliases, listing and deletion; then
 * `Sandbox.create(name)` starts from what was built.
 */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import { BuildError, Sandbox, Template, type LogEntry, type TemplateClass } from 'e2b'
import {
  assertNoLeaks,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  type LeakSnapshot,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let contextDir: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-templates-'))
  contextDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-context-'))
  server = await startServeProcess({ dataDir, killSandboxesOnExit: true })
})

after(async () => {
  try {
    const stopped = await server?.stop()
    if (server !== undefined) {
      assert.deepEqual(stopped, { code: 0, signal: null, killed: false }, server.output())
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
    rmSync(contextDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** Builds through the SDK, collecting the log messages it hands to onBuildLogs. */
async function build(
  template: TemplateClass,
  name: string,
  options: { skipCache?: boolean } = {},
): Promise<{ logs: string[]; templateId: string; buildId: string }> {
  const logs: string[] = []
  const info = await Template.build(template, name, {
    ...server.connection,
    ...options,
    onBuildLogs: (entry: LogEntry) => logs.push(entry.message),
  })
  return { logs, templateId: info.templateId, buildId: info.buildId }
}

async function run(sandbox: Sandbox, command: string): Promise<string> {
  const result = await sandbox.commands.run(command)
  return result.stdout.trim()
}

async function createFrom(t: TestContext, name: string): Promise<Sandbox> {
  const sandbox = await Sandbox.create(name, server.connection)
  t.after(() => sandbox.kill())
  return sandbox
}

describe('template builds through the e2b SDK', { timeout: 600_000 }, () => {
  it('runs every step kind and a sandbox starts as built', async (t) => {
    writeFileSync(join(contextDir, 'hello.txt'), 'hello from the context\n')
    mkdirSync(join(contextDir, 'app', 'lib'), { recursive: true })
    writeFileSync(join(contextDir, 'app', 'main.sh'), '#!/bin/sh\necho main\n', { mode: 0o755 })
    writeFileSync(join(contextDir, 'app', 'lib', 'util.txt'), 'util\n')
    const template = Template({ fileContextPath: contextDir })
      .fromTemplate('base')
      .setUser('root')
      .runCmd('echo built > /built.txt')
      .copy('hello.txt', '/opt/hello.txt')
      .copy('app', '/opt/app')
      .setEnvs({ GREETING: 'hi', PATHLIKE: '$GREETING/there' })
      .setWorkdir('/opt/app')
      .setUser('user')
      .runCmd('echo "$GREETING" > ~/greeting.txt')
    const { logs } = await build(template, 'every-step')
    assert.ok(
      logs.some((line) => line.includes('RUN echo built > /built.txt')),
      logs.join('\n'),
    )
    assert.ok(
      logs.some((line) => line.startsWith('Build finished')),
      logs.join('\n'),
    )

    const sandbox = await createFrom(t, 'every-step')
    assert.equal(await run(sandbox, 'cat /built.txt'), 'built')
    assert.equal(await run(sandbox, 'cat /opt/hello.txt'), 'hello from the context')
    assert.equal(await run(sandbox, '/opt/app/main.sh'), 'main')
    assert.equal(await run(sandbox, 'cat /opt/app/lib/util.txt'), 'util')
    assert.equal(await run(sandbox, 'echo "$GREETING $PATHLIKE"'), 'hi hi/there')
    assert.equal(await run(sandbox, 'pwd'), '/opt/app')
    assert.equal(await run(sandbox, 'whoami'), 'user')
    assert.equal(await run(sandbox, 'cat /home/user/greeting.txt'), 'hi')
    assert.match(await run(sandbox, 'cat /.e2b'), /TEMPLATE_ID=[a-z0-9]{20}/)
    assert.equal(await Template.exists('every-step', server.connection), true)
    assert.equal(await Template.exists('no-such-template', server.connection), false)
  })

  it('rebuilds from the cache, and from a changed COPY on', async () => {
    writeFileSync(join(contextDir, 'a.txt'), 'one\n')
    const template = (): TemplateClass =>
      Template({ fileContextPath: contextDir })
        .fromTemplate('base')
        .setUser('root')
        .runCmd('echo first > /first.txt')
        .copy('a.txt', '/a.txt')
        .runCmd('cat /a.txt > /b.txt')
    await build(template(), 'cached')
    const again = await build(template(), 'cached')
    const steps = again.logs.filter((line) => line.includes('[builder '))
    assert.ok(steps.length >= 4, again.logs.join('\n'))
    assert.ok(
      steps.every((line) => line.startsWith('CACHED ')),
      again.logs.join('\n'),
    )

    writeFileSync(join(contextDir, 'a.txt'), 'two\n')
    const changed = await build(template(), 'cached')
    const lines = changed.logs.filter((line) => line.includes('[builder '))
    assert.ok(lines.find((line) => line.includes('RUN echo first'))?.startsWith('CACHED '))
    assert.ok(!lines.find((line) => line.includes('COPY a.txt'))?.startsWith('CACHED '))
    assert.ok(!lines.find((line) => line.includes('RUN cat /a.txt'))?.startsWith('CACHED '))
  })

  it('reports a failing RUN as the SDK BuildError and keeps the last good build', async (t) => {
    const good = Template().fromTemplate('base').setUser('root').runCmd('echo v1 > /version')
    await build(good, 'fails-later')
    const bad = Template()
      .fromTemplate('base')
      .setUser('root')
      .runCmd('echo v2 > /version')
      .runCmd('echo about to fail; exit 3')
    await assert.rejects(build(bad, 'fails-later'), (err: unknown) => {
      assert.ok(err instanceof BuildError, String(err))
      assert.match(err.message, /exited with code 3/)
      return true
    })
    const sandbox = await createFrom(t, 'fails-later')
    assert.equal(await run(sandbox, 'cat /version'), 'v1')
  })

  it('starts the start command before a create returns', async (t) => {
    const template = Template()
      .fromTemplate('base')
      .setUser('root')
      .setStartCmd(
        "sh -c 'sleep 0.3; date +%s > /tmp/started; exec sleep 100000'",
        'test -f /tmp/started',
      )
    await build(template, 'with-start')
    const sandbox = await createFrom(t, 'with-start')
    assert.match(await run(sandbox, 'cat /tmp/started'), /^\d+$/)
    assert.match(await run(sandbox, 'ps -eo args'), /sleep 100000/)
  })

  it('fails a build whose start command never gets ready', async () => {
    const template = Template().fromTemplate('base').setStartCmd('exit 7', 'false')
    await assert.rejects(build(template, 'never-ready'), (err: unknown) => {
      assert.ok(err instanceof BuildError, String(err))
      assert.match(err.message, /start command exited with code 7/)
      return true
    })
  })

  it('builds a Dockerfile the SDK parses', async (t) => {
    writeFileSync(join(contextDir, 'Dockerfile.txt'), 'from the dockerfile\n')
    const template = Template({ fileContextPath: contextDir }).fromDockerfile(
      [
        'FROM e2bdev/base',
        'ENV MODE=docker',
        'RUN mkdir -p /srv && echo "$MODE" > /srv/mode',
        'COPY Dockerfile.txt /srv/',
        'WORKDIR /srv',
      ].join('\n'),
    )
    await build(template, 'from-dockerfile')
    const sandbox = await createFrom(t, 'from-dockerfile')
    assert.equal(await run(sandbox, 'cat mode'), 'docker')
    assert.equal(await run(sandbox, 'cat /srv/Dockerfile.txt'), 'from the dockerfile')
    assert.equal(await run(sandbox, 'whoami'), 'user')
  })

  it('manages tags, background builds, listing and deletion', async (t) => {
    const template = Template().fromTemplate('base').setUser('root').runCmd('echo tagged > /tag')
    const started = await Template.buildInBackground(template, 'tagged:v1', server.connection)
    assert.deepEqual(started.tags, ['v1'])
    let status = await Template.getBuildStatus(started, server.connection)
    for (let i = 0; i < 600 && status.status !== 'ready' && status.status !== 'error'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = await Template.getBuildStatus(started, server.connection)
    }
    assert.equal(status.status, 'ready')
    await Template.assignTags('tagged:v1', ['prod'], server.connection)
    const tags = await Template.getTags(started.templateId, server.connection)
    assert.deepEqual(tags.map((tag) => tag.tag).sort(), ['prod', 'v1'])
    const sandbox = await createFrom(t, 'tagged:prod')
    assert.equal(await run(sandbox, 'cat /tag'), 'tagged')
    await Template.removeTags('tagged', ['prod'], server.connection)
    await assert.rejects(Sandbox.create('tagged:prod', server.connection), /does not exist/)

    const listed = await fetch(`${server.url}/templates`, {
      headers: { 'x-api-key': server.apiKey },
    }).then((response) => response.json() as Promise<{ templateID: string; aliases: string[] }[]>)
    assert.ok(listed.some((entry) => entry.templateID === started.templateId))
    const deleted = await fetch(`${server.url}/templates/${started.templateId}`, {
      method: 'DELETE',
      headers: { 'x-api-key': server.apiKey },
    })
    assert.equal(deleted.status, 204)
    assert.equal(await Template.exists('tagged', server.connection), false)
  })
})
