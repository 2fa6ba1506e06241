/**
 * `sandcell template build|list|logs|rm` end to end: a real `sandcell serve` and the real CLI as
 * child processes, building Dockerfile directories as a person would, on a terminal and off it.
 */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { Sandbox } from 'e2b'
import {
  assertNoLeaks,
  runCli,
  snapshotLeaks,
  startServeProcess,
  testCgroupParent,
  type CliResult,
  type LeakSnapshot,
  type RunCliOptions,
  type ServeProcess,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let dataDir: string
let workDir: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-cli-templates-'))
  workDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-cli-contexts-'))
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
    rmSync(workDir, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** The CLI against the test server. */
function sandcell(args: string[], options: RunCliOptions = {}): Promise<CliResult> {
  return runCli(args, {
    timeoutMs: 300_000,
    ...options,
    env: { SANDCELL_SERVER_URL: server.url, SANDCELL_API_KEY: server.apiKey, ...options.env },
  })
}

/** Like `sandcell`, but a failure shows everything the CLI said. */
async function ok(args: string[], options: RunCliOptions = {}): Promise<string> {
  const result = await sandcell(args, options)
  assert.equal(
    result.code,
    0,
    `sandcell ${args.join(' ')} failed:\n${result.stdout}\n${result.stderr}`,
  )
  return result.stdout
}

/** A build context directory holding `files` (path → content). */
function context(name: string, files: Record<string, string>): string {
  const dir = join(workDir, name)
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true })
    writeFileSync(join(dir, path), content)
  }
  return dir
}

/** The step headers of a build's output (`[builder k/n] …`), without their step column. */
function stepHeaders(output: string): string[] {
  return output
    .split('\n')
    .map((line) => line.replace(/^\s*\S* \| /, ''))
    .filter((line) => line.includes('[builder '))
}

interface ListedTemplate {
  templateId: string
  buildId: string
  names: string[]
  buildStatus: string
  buildCount: number
  builtAt?: string
}

async function listed(): Promise<ListedTemplate[]> {
  return JSON.parse(await ok(['template', 'list', '--json'])) as ListedTemplate[]
}

const webApp = {
  Dockerfile: [
    'FROM e2bdev/base',
    'ENV MODE=cli',
    'RUN echo "mode is $MODE" && mkdir -p /srv && echo "$MODE" > /srv/mode',
    'COPY hello.txt /srv/',
    'WORKDIR /srv',
  ].join('\n'),
  'hello.txt': 'hello from the context\n',
}

describe('sandcell template', { timeout: 600_000 }, () => {
  let webAppDir: string

  it("builds a Dockerfile directory under the directory's name, each log line with its step", async (t) => {
    webAppDir = context('Web App', webApp)
    const output = await ok(['template', 'build', webAppDir])
    assert.match(output, /^ +base \| \[base\] FROM template debian$/m)
    assert.match(output, /^ +(\d+) \| \[builder \1\/\d+\] RUN echo "mode is \$MODE"/m)
    assert.match(output, /^ +\d+ \| mode is cli$/m)
    assert.match(output, /^ +\d+ \| \[builder \d+\/\d+\] COPY hello\.txt \/srv\/$/m)
    assert.match(output, /^built web-app \(template [a-z0-9]{20}, build [0-9a-f-]{36}\)/m)

    const sandbox = await Sandbox.create('web-app', server.connection)
    t.after(() => sandbox.kill())
    const result = await sandbox.commands.run('cat mode hello.txt; pwd; whoami')
    assert.equal(result.stdout, 'cli\nhello from the context\n/srv\nuser\n')
  })

  it('lists it with its current build', async () => {
    const table = await ok(['template', 'list'])
    assert.match(table, /^NAME +TEMPLATE ID +STATUS +BUILDS +BUILT$/m)
    assert.match(table, /^web-app +[a-z0-9]{20} +ready +1 +(just now|\d+s ago)$/m)
    const [template] = (await listed()).filter((entry) => entry.names.includes('web-app'))
    assert.ok(template !== undefined)
    assert.equal(template.buildStatus, 'ready')
    assert.equal(template.buildCount, 1)
    assert.ok(template.builtAt !== undefined && Date.parse(template.builtAt) <= Date.now())
  })

  it('prints a build log by name, by tag and by build id', async () => {
    const byName = await ok(['template', 'logs', 'web-app'])
    assert.ok(stepHeaders(byName).length >= 5, byName)
    assert.match(byName, /^ +\d+ \| mode is cli$/m)
    assert.match(byName, /^ +\| Build finished, took/m)
    assert.equal(await ok(['template', 'logs', 'web-app:default']), byName)
    const [template] = (await listed()).filter((entry) => entry.names.includes('web-app'))
    assert.equal(await ok(['template', 'logs', '--follow', template?.buildId ?? '']), byName)
  })

  it('rebuilds from the cache, and every step again with --no-cache', async () => {
    const cached = stepHeaders(await ok(['template', 'build', webAppDir, '--tag', 'v2']))
    assert.ok(cached.length >= 5, cached.join('\n'))
    assert.ok(
      cached.every((line) => line.startsWith('CACHED ')),
      cached.join('\n'),
    )
    const fresh = stepHeaders(
      await ok(['template', 'build', '--no-cache', '--name', 'web-app', webAppDir]),
    )
    assert.equal(fresh.length, cached.length)
    assert.ok(
      fresh.every((line) => !line.startsWith('CACHED ')),
      fresh.join('\n'),
    )
    assert.equal((await listed()).find((entry) => entry.names.includes('web-app'))?.buildCount, 3)
  })

  it('draws a progress line with the step on a terminal', async () => {
    const result = await sandcell(['template', 'build', webAppDir], { tty: true })
    assert.equal(result.code, 0, result.stdout)
    // Each redraw erases the line first (carriage return, erase to its end), then writes.
    const drawn = result.stdout.split('\r\x1b[K')
    assert.ok(
      drawn.some((part) => /^step \d+\/\d+ +\[[#-]+\] +\d+% /.test(part)),
      result.stdout,
    )
    assert.ok(
      drawn.some((part) => /^ +\d+ \| CACHED \[builder /.test(part)),
      result.stdout,
    )
  })

  it('fails a build whose RUN fails: exit 1, the step and the message', async () => {
    const dir = context('failing', { 'hello.txt': 'unused\n' })
    const dockerfile = join(workDir, 'Failing.dockerfile')
    writeFileSync(dockerfile, 'FROM e2bdev/base\nRUN echo about to fail; exit 3\n')
    const result = await sandcell(['template', 'build', '-f', dockerfile, '--name', 'fails', dir])
    assert.equal(result.code, 1, `${result.stdout}\n${result.stderr}`)
    assert.match(result.stdout, /^ +(\d+) \| about to fail$/m)
    assert.match(
      result.stderr,
      /^sandcell: build of fails failed at step \d+\/\d+ \(RUN echo about to fail; exit 3\): .*exited with code 3$/m,
    )
    const followed = await sandcell(['template', 'logs', 'fails', '--follow'])
    assert.equal(followed.code, 1, followed.stderr)
    assert.match(followed.stdout, /error: Build failed: .*exited with code 3/)
    assert.match(followed.stderr, /build of fails failed at step \d+\/\d+ \(RUN echo about/)
  })

  it('says what is wrong: no Dockerfile, one the SDK refuses, no server', async () => {
    const empty = context('empty', { 'README.md': 'no Dockerfile here\n' })
    const missing = await sandcell(['template', 'build', empty])
    assert.equal(missing.code, 125)
    assert.match(missing.stderr, /^sandcell: no Dockerfile at .*\/empty\/Dockerfile; /m)
    const stages = context('stages', { Dockerfile: 'FROM e2bdev/base AS a\nFROM e2bdev/base\n' })
    const refused = await sandcell(['template', 'build', stages])
    assert.equal(refused.code, 125)
    assert.match(
      refused.stderr,
      /^sandcell: .*\/stages\/Dockerfile: Multi-stage Dockerfiles are not supported$/m,
    )
    const down = await sandcell(['template', 'build', webAppDir], {
      env: { SANDCELL_SERVER_URL: 'http://127.0.0.1:9' },
    })
    assert.equal(down.code, 125)
    assert.match(
      down.stderr,
      /cannot reach the sandcell server at http:\/\/127\.0\.0\.1:9 .*--server$/m,
    )
  })

  it('removes a template by name, and says when there is none', async () => {
    assert.match(
      await ok(['template', 'rm', 'web-app']),
      /^deleted template web-app \([a-z0-9]{20}\)$/m,
    )
    assert.ok(!(await listed()).some((entry) => entry.names.includes('web-app')))
    const again = await sandcell(['template', 'rm', 'web-app'])
    assert.equal(again.code, 125)
    assert.match(again.stderr, /^sandcell: template 'web-app' not found$/m)
    await ok(['template', 'rm', 'fails'])
  })
})
