/**
 * Template builds through the official e2b SDK's `Template` against a real `sandcell serve`:
 * every step kind, start and ready commands, cached and partly cached rebuilds, failing steps
 * as the SDK's BuildError at the right step, tags, aliases, listing and deletion; then
 * `Sandbox.create(name)` starts from what was built.
 */
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import { BuildError, Sandbox, Template, type LogEntry, type TemplateClass } from 'e2b'
import {
  assertNoLeaks,
  buildLayer,
  busyboxEntries,
  pushBusyboxImage,
  pushImage,
  snapshotLeaks,
  startServeProcess,
  startTestRegistry,
  testCgroupParent,
  type LeakSnapshot,
  type ServeProcess,
  type TestRegistry,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let contextDir: string
let server: ServeProcess
/** Data dirs of the other servers this file starts: the leak check covers them too. */
const otherDirs: string[] = []

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
  await assertNoLeaks(baseline, { scope: [dataDir, ...otherDirs, testCgroupParent] })
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

    const forced = await build(template(), 'cached', { skipCache: true })
    assert.ok(
      forced.logs.every((line) => !line.startsWith('CACHED ')),
      forced.logs.join('\n'),
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

/** The API as a plain client (curl) uses it, for what the SDK never sends. */
async function api(
  target: ServeProcess,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown }> {
  const response = await fetch(`${target.url}${path}`, {
    method,
    headers: {
      'x-api-key': target.apiKey,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  })
  const text = await response.text()
  return { status: response.status, json: text === '' ? undefined : (JSON.parse(text) as unknown) }
}

interface StatusJson {
  status: string
  logEntries: { message: string; step?: string }[]
  reason?: { message: string; step?: string }
}

/** Polls a build until it ends; returns its last status and every log message. */
async function waitForBuild(
  target: ServeProcess,
  templateId: string,
  buildId: string,
  until: (status: StatusJson, messages: string[]) => boolean = (status) =>
    status.status === 'ready' || status.status === 'error',
): Promise<{ status: StatusJson; messages: string[] }> {
  const messages: string[] = []
  for (let i = 0; i < 1200; i++) {
    const { json } = await api(
      target,
      'GET',
      `/templates/${templateId}/builds/${buildId}/status?logsOffset=${messages.length}`,
    )
    const status = json as StatusJson
    messages.push(...status.logEntries.map((entry) => entry.message))
    if (until(status, messages)) {
      return { status, messages }
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`build ${buildId} did not end: ${messages.join('\n')}`)
}

/** Registers and starts a build of `steps` through the raw API. */
async function startRawBuild(
  target: ServeProcess,
  name: string,
  start: Record<string, unknown>,
): Promise<{ templateId: string; buildId: string }> {
  const requested = await api(target, 'POST', '/v3/templates', { name })
  assert.equal(requested.status, 202, JSON.stringify(requested.json))
  const { templateID, buildID } = requested.json as { templateID: string; buildID: string }
  const started = await api(target, 'POST', `/v2/templates/${templateID}/builds/${buildID}`, {
    fromTemplate: 'base',
    ...start,
  })
  assert.equal(started.status, 202, JSON.stringify(started.json))
  return { templateId: templateID, buildId: buildID }
}

describe('template builds: pools, languages, limits and faults', { timeout: 600_000 }, () => {
  let tunedDir: string
  let tuned: ServeProcess

  before(async () => {
    tunedDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-templates-tuned-'))
    // Sandboxes' own uids must reach the data dir below it.
    chmodSync(tunedDir, 0o711)
    otherDirs.push(tunedDir)
    const languagesFile = join(tunedDir, 'languages.yaml')
    writeFileSync(
      languagesFile,
      [
        'apiVersion: sandcell/v1',
        'kind: Languages',
        'languages:',
        '  - name: shout',
        '    version: 1.0.0',
        '    template: shout-tpl',
        '    main: main.txt',
        '    requires: [/opt/shout/shout]',
        '    run:',
        "      command: [/opt/shout/shout, '{{main}}']",
      ].join('\n'),
    )
    const configFile = join(tunedDir, 'config.yaml')
    writeFileSync(
      configFile,
      [
        'warmPool:',
        '  base: 0',
        '  pooled: 1',
        'builds:',
        '  stepTimeoutMs: 4000',
        `languagesFile: ${languagesFile}`,
      ].join('\n'),
    )
    tuned = await startServeProcess({
      dataDir: join(tunedDir, 'data'),
      configFile,
      killSandboxesOnExit: true,
    })
  })

  after(async () => {
    await tuned?.stop()
    rmSync(tunedDir, { recursive: true, force: true })
  })

  it('keeps a warm pool of a built template and moves it to each new build', async (t) => {
    const template = Template().fromTemplate('base').setUser('root').runCmd('echo one > /pooled')
    const first = await Template.build(template, 'pooled', tuned.connection)
    const health = async (): Promise<Record<string, number>> =>
      ((await (await fetch(`${tuned.url}/health`)).json()) as { warmPool: Record<string, number> })
        .warmPool
    for (let i = 0; i < 300 && (await health())[first.buildId] !== 1; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    assert.equal((await health())[first.buildId], 1, JSON.stringify(await health()))
    const sandbox = await Sandbox.create('pooled', tuned.connection)
    t.after(() => sandbox.kill())
    assert.equal(await run(sandbox, 'cat /pooled'), 'one')

    const second = await Template.build(
      Template().fromTemplate('base').setUser('root').runCmd('echo two > /pooled'),
      'pooled',
      tuned.connection,
    )
    for (let i = 0; i < 300 && (await health())[second.buildId] !== 1; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const counts = await health()
    assert.equal(counts[second.buildId], 1, JSON.stringify(counts))
    assert.equal(counts[first.buildId] ?? 0, 0, JSON.stringify(counts))
  })

  it('runs a language whose template was built', async () => {
    const template = Template()
      .fromTemplate('base')
      .setUser('root')
      .runCmd(
        'mkdir -p /opt/shout && printf \'#!/bin/sh\\ntr a-z A-Z < "$1"\\n\' > /opt/shout/shout && chmod 755 /opt/shout/shout',
      )
    await Template.build(template, 'shout-tpl', tuned.connection)
    const response = await fetch(`${tuned.url}/api/v2/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        language: 'shout',
        version: '*',
        files: [{ content: 'hello from a template\n' }],
      }),
    })
    const result = (await response.json()) as { run?: { stdout: string }; message?: string }
    assert.equal(response.status, 200, JSON.stringify(result))
    assert.equal(result.run?.stdout, 'HELLO FROM A TEMPLATE\n')
  })

  it('fails a RUN that outlives the step timeout', async () => {
    const { templateId, buildId } = await startRawBuild(tuned, 'never-ends', {
      steps: [{ type: 'RUN', args: ['sleep 60'] }],
    })
    const { status, messages } = await waitForBuild(tuned, templateId, buildId)
    assert.equal(status.status, 'error')
    assert.match(status.reason?.message ?? '', /did not finish within 4 s/)
    assert.equal(status.reason?.step, '1')
    assert.ok(
      messages.some((line) => line.startsWith('Build failed:')),
      messages.join('\n'),
    )
  })

  it('refuses a COPY whose upload escapes its destination', async () => {
    const work = mkdtempSync(join(tmpdir(), 'sandcell-evil-'))
    try {
      mkdirSync(join(work, 'ctx'))
      writeFileSync(join(work, 'outside.txt'), 'escaped\n')
      const archive = join(work, 'evil.tar')
      const made = spawnSync('tar', ['-cPf', archive, '../outside.txt'], { cwd: join(work, 'ctx') })
      assert.equal(made.status, 0, made.stderr.toString())
      const hash = 'e'.repeat(64)
      const requested = await api(tuned, 'POST', '/v3/templates', { name: 'evil-copy' })
      const { templateID, buildID } = requested.json as { templateID: string; buildID: string }
      const link = await api(tuned, 'GET', `/templates/${templateID}/files/${hash}`)
      assert.equal(link.status, 201)
      const { present, url } = link.json as { present: boolean; url: string }
      assert.equal(present, false)
      const unsigned = await fetch(url.split('?')[0] ?? '', { method: 'PUT', body: 'x' })
      assert.equal(unsigned.status, 403)
      const uploaded = await fetch(url, { method: 'PUT', body: readFileSync(archive) })
      assert.equal(uploaded.status, 201)
      const started = await api(tuned, 'POST', `/v2/templates/${templateID}/builds/${buildID}`, {
        fromTemplate: 'base',
        steps: [{ type: 'COPY', args: ['.', '/app', '', ''], filesHash: hash }],
      })
      assert.equal(started.status, 202)
      const { status } = await waitForBuild(tuned, templateID, buildID)
      assert.equal(status.status, 'error')
      assert.equal(status.reason?.step, '1')
      assert.match(status.reason?.message ?? '', /\.\.\/outside\.txt/)
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  })

  it('answers bad requests with the status the SDK maps', async () => {
    assert.equal((await api(tuned, 'POST', '/v3/templates', {})).status, 400)
    assert.equal((await api(tuned, 'POST', '/v3/templates', { name: 'Bad Name!' })).status, 400)
    assert.equal((await api(tuned, 'POST', '/v3/templates', { name: 'base' })).status, 409)
    const requested = await api(tuned, 'POST', '/v3/templates', { name: 'bad-input' })
    const { templateID, buildID } = requested.json as { templateID: string; buildID: string }
    const badHash = await api(tuned, 'GET', `/templates/${templateID}/files/not-a-hash`)
    assert.equal(badHash.status, 400)
    const unknownBuild = await api(
      tuned,
      'GET',
      `/templates/${templateID}/builds/00000000-0000-4000-8000-000000000000/status`,
    )
    assert.equal(unknownBuild.status, 400)
    assert.equal(
      (await api(tuned, 'GET', `/templates/${templateID}/builds/${buildID}/status`)).json &&
        (
          (await api(tuned, 'GET', `/templates/${templateID}/builds/${buildID}/status`))
            .json as StatusJson
        ).status,
      'waiting',
    )
    const badSteps = await api(tuned, 'POST', `/v2/templates/${templateID}/builds/${buildID}`, {
      steps: [{ type: 'RUN', args: 'not a list' }],
    })
    assert.equal(badSteps.status, 400)
    const unknownTemplate = await api(tuned, 'POST', '/v2/templates/nope/builds/' + buildID, {})
    assert.equal(unknownTemplate.status, 404)
    await assert.rejects(Sandbox.create('bad-input', tuned.connection), /no finished build/)
    await assert.rejects(Sandbox.create('bad-input:nope', tuned.connection), /does not exist/)
  })

  it('queues two builds of one name and serves the newer', async (t) => {
    const first = await Template.buildInBackground(
      Template().fromTemplate('base').setUser('root').runCmd('sleep 1; echo first > /which'),
      'twice',
      tuned.connection,
    )
    const second = await Template.buildInBackground(
      Template().fromTemplate('base').setUser('root').runCmd('echo second > /which'),
      'twice',
      tuned.connection,
    )
    assert.equal(first.templateId, second.templateId)
    for (const build of [first, second]) {
      const { status } = await waitForBuild(tuned, build.templateId, build.buildId)
      assert.equal(status.status, 'ready')
    }
    const sandbox = await Sandbox.create('twice', tuned.connection)
    t.after(() => sandbox.kill())
    assert.equal(await run(sandbox, 'cat /which'), 'second')
  })

  it('fails a build cut by a server restart, cleanly, and builds again after', async () => {
    const { templateId, buildId } = await startRawBuild(tuned, 'restarted', {
      steps: [{ type: 'RUN', args: ['sleep 3'] }],
    })
    await waitForBuild(tuned, templateId, buildId, (_status, messages) =>
      messages.some((line) => line.includes('RUN sleep 3')),
    )
    const stopped = await tuned.stop()
    assert.equal(stopped.code, 0, tuned.output())
    tuned = await startServeProcess({
      dataDir: join(tunedDir, 'data'),
      configFile: join(tunedDir, 'config.yaml'),
      killSandboxesOnExit: true,
    })
    const { status } = await waitForBuild(tuned, templateId, buildId)
    assert.equal(status.status, 'error')
    assert.match(status.reason?.message ?? '', /server stopped during the build/)
    const again = await startRawBuild(tuned, 'restarted', {
      steps: [{ type: 'RUN', args: ['echo ok > /tmp/ok'] }],
    })
    const rebuilt = await waitForBuild(tuned, again.templateId, again.buildId)
    assert.equal(rebuilt.status.status, 'ready', rebuilt.messages.join('\n'))
  })
})

describe('template builds from registry images', { timeout: 600_000 }, () => {
  let imagesDir: string
  let registry: TestRegistry
  let privateRegistry: TestRegistry
  let imageServer: ServeProcess
  const login = { username: 'builder', password: 'correct horse battery' }

  before(async () => {
    imagesDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-templates-images-'))
    chmodSync(imagesDir, 0o711)
    otherDirs.push(imagesDir)
    registry = await startTestRegistry({ dir: join(imagesDir, 'registry') })
    privateRegistry = await startTestRegistry({ dir: join(imagesDir, 'private'), auth: login })
    await pushBusyboxImage(registry.host, 'sandcell/busybox:1')
    await pushImage(privateRegistry.host, 'team/busybox:1', {
      layers: [await buildLayer(busyboxEntries())],
      config: { env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'] },
      credentials: login,
    })
    const configFile = join(imagesDir, 'config.yaml')
    writeFileSync(
      configFile,
      ['images:', '  aliases:', `    e2bdev/base: ${registry.host}/sandcell/busybox:1`].join('\n'),
    )
    imageServer = await startServeProcess({
      dataDir: join(imagesDir, 'data'),
      configFile,
      killSandboxesOnExit: true,
    })
  })

  after(async () => {
    await imageServer?.stop()
    await registry?.stop()
    await privateRegistry?.stop()
    rmSync(imagesDir, { recursive: true, force: true })
  })

  it('builds from an image and a sandbox starts as built', async (t) => {
    writeFileSync(join(contextDir, 'served.txt'), 'served from busybox\n')
    const template = Template({ fileContextPath: contextDir })
      .fromImage(`${registry.host}/sandcell/busybox:1`)
      .copy('served.txt', '/home/user/www/')
      .runCmd('echo "made by $(whoami)" > ~/made.txt')
      .setEnvs({ STAGE: 'image' })
      .setWorkdir('/home/user/www')
    const logs: string[] = []
    await Template.build(template, 'from-busybox', {
      ...imageServer.connection,
      onBuildLogs: (entry: LogEntry) => logs.push(entry.message),
    })
    assert.ok(logs.some((line) => line.includes(`FROM ${registry.host}/sandcell/busybox:1`)))
    const sandbox = await Sandbox.create('from-busybox', imageServer.connection)
    t.after(() => sandbox.kill())
    assert.equal(await run(sandbox, 'cat served.txt'), 'served from busybox')
    assert.equal(await run(sandbox, 'cat /home/user/made.txt'), 'made by user')
    assert.equal(await run(sandbox, 'echo $STAGE; pwd; whoami'), 'image\n/home/user/www\nuser')
    assert.equal(await run(sandbox, 'ls /bin/busybox'), '/bin/busybox')
  })

  it('maps e2bdev/base through the images config, so an offline host builds', async (t) => {
    const template = Template().fromBaseImage().setUser('root').runCmd('echo based > /based')
    await Template.build(template, 'mapped-base', imageServer.connection)
    const sandbox = await Sandbox.create('mapped-base', imageServer.connection)
    t.after(() => sandbox.kill())
    assert.equal(await run(sandbox, 'cat /based'), 'based')
    assert.equal(await run(sandbox, 'ls /bin/busybox'), '/bin/busybox')
  })

  it('pulls with the credentials the SDK sends, and names wrong ones', async (t) => {
    const image = `${privateRegistry.host}/team/busybox:1`
    await Template.build(
      Template().fromImage(image, login).setUser('root').runCmd('echo private > /private'),
      'private-image',
      imageServer.connection,
    )
    const sandbox = await Sandbox.create('private-image', imageServer.connection)
    t.after(() => sandbox.kill())
    assert.equal(await run(sandbox, 'cat /private'), 'private')

    const wrong = Template()
      .fromImage(image, { username: login.username, password: 'wrong' })
      .runCmd('true')
    await assert.rejects(
      Template.build(wrong, 'private-wrong', imageServer.connection),
      (err: unknown) => {
        assert.ok(err instanceof BuildError, String(err))
        assert.match(err.message, /refused the credentials/)
        assert.doesNotMatch(err.message, /wrong/)
        return true
      },
    )
    await assert.rejects(
      Template.build(
        Template().fromImage(`${registry.host}/sandcell/busybox:nope`).runCmd('true'),
        'unknown-tag',
        imageServer.connection,
      ),
      /not found/,
    )
  })
})
