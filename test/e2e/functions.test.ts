/**
 * OpenLambda-style functions against a real `sandcell serve`, as `ol admin install` and curl use
 * them: deploy (tar.gz or one file), invoke Python `f(event)`, WSGI and Node.js handlers through
 * `/run/<name>`, the registry's listing, metadata, config and deletion, and the errors each bad
 * case gets (a handler error with its traceback, a handler that does not load, a timeout, a
 * method ol.yaml refuses, an unknown function, a bad name, hostile code).
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
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
let work: string
let server: ServeProcess

before(async () => {
  baseline = snapshotLeaks()
  dataDir = mkdtempSync(join(tmpdir(), 'sandcell-e2e-functions-'))
  work = mkdtempSync(join(tmpdir(), 'sandcell-e2e-fn-code-'))
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
    rmSync(work, { recursive: true, force: true })
  }
  await assertNoLeaks(baseline, { scope: [dataDir, testCgroupParent] })
})

/** A tar.gz of a directory holding `files`, as `ol admin install` sends one. */
function tarball(name: string, files: Record<string, string>): Buffer {
  const dir = join(work, name)
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true })
    writeFileSync(join(dir, path), content)
  }
  execFileSync('tar', ['-czf', `${dir}.tar.gz`, '-C', dir, '.'])
  return readFileSync(`${dir}.tar.gz`)
}

async function deploy(name: string, body: Buffer, query = ''): Promise<Response> {
  return fetch(`${server.url}/registry/${name}${query}`, { method: 'POST', body })
}

async function call(
  name: string,
  body: unknown,
  init: { method?: string; path?: string } = {},
): Promise<{ status: number; json: unknown; text: string }> {
  const response = await fetch(`${server.url}/run/${name}${init.path ?? ''}`, {
    method: init.method ?? 'POST',
    ...(init.method === 'GET' ? {} : { body: JSON.stringify(body) }),
  })
  const text = await response.text()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: response.status, json, text }
}

describe('functions', { timeout: 300_000 }, () => {
  it('deploys a Python function and invokes it, warm the second time', async () => {
    const deployed = await deploy(
      'echo',
      tarball('echo', {
        'f.py':
          'import os\ncount = 0\ndef f(event):\n    global count\n    count += 1\n    return {"got": event, "count": count, "user": os.getuid()}\n',
      }),
    )
    assert.equal(deployed.status, 201, await deployed.clone().text())
    const first = await call('echo', { hello: 'world' })
    assert.equal(first.status, 200, first.text)
    assert.deepEqual(first.json, { got: { hello: 'world' }, count: 1, user: 1000 })
    const second = await call('echo', [1, 2])
    assert.deepEqual(second.json, { got: [1, 2], count: 2, user: 1000 })
    const listed = (await (await fetch(`${server.url}/registry/`)).json()) as string[]
    assert.ok(listed.includes('echo'))
    const meta = (await (await fetch(`${server.url}/registry/echo`)).json()) as {
      digest: string
      runtime: string
    }
    assert.match(meta.digest, /^sha256:[0-9a-f]{64}$/)
    assert.equal(meta.runtime, 'python')
  })

  it('serves a single-file Node.js handler and a WSGI app under its path', async () => {
    const node = await deploy(
      'node-hello',
      Buffer.from('export async function handler(event) { return { hi: event.name ?? "anon" } }\n'),
      '?filename=index.mjs',
    )
    assert.equal(node.status, 201, await node.clone().text())
    assert.deepEqual((await call('node-hello', { name: 'ada' })).json, { hi: 'ada' })

    await deploy(
      'wsgi',
      tarball('wsgi', {
        'f.py': [
          'def app(environ, start_response):',
          '    body = (environ["SCRIPT_NAME"] + "|" + environ["PATH_INFO"] + "|" + environ["QUERY_STRING"]).encode()',
          '    start_response("201 Created", [("Content-Type", "text/plain"), ("X-App", "wsgi")])',
          '    return [body]',
          '',
        ].join('\n'),
      }),
    )
    const response = await fetch(`${server.url}/run/wsgi/items/7?full=1`)
    assert.equal(response.status, 201)
    assert.equal(response.headers.get('x-app'), 'wsgi')
    assert.equal(await response.text(), '/run/wsgi|/items/7|full=1')
  })

  it('answers each failure with its own code', async () => {
    await deploy(
      'raises',
      tarball('raises', { 'f.py': 'def f(event):\n    raise ValueError("nope")\n' }),
    )
    const raised = await call('raises', {})
    assert.equal(raised.status, 500)
    const error = (raised.json as { error: { code: string; details: { traceback: string } } }).error
    assert.equal(error.code, 'FUNCTION_ERROR')
    assert.match(error.details.traceback, /ValueError: nope/)

    await deploy('broken', tarball('broken', { 'f.py': 'def f(event:\n' }))
    const broken = await call('broken', {})
    assert.equal(broken.status, 500)
    assert.match(broken.text, /INIT_ERROR/)
    assert.match(broken.text, /SyntaxError/)

    await deploy(
      'slow',
      tarball('slow', {
        'f.py': 'import time\ndef f(event):\n    time.sleep(30)\n',
        'ol.yaml': 'limits: { timeout_ms: 1000 }\n',
      }),
    )
    const slow = await call('slow', {})
    assert.equal(slow.status, 504)
    assert.match(slow.text, /TIMEOUT/)

    await deploy(
      'get-only',
      tarball('get-only', {
        'f.py': 'def f(event):\n    return 1\n',
        'ol.yaml': 'triggers: { http: [{ method: GET }] }\n',
      }),
    )
    assert.equal((await call('get-only', {})).status, 405)
    assert.equal((await call('get-only', undefined, { method: 'GET' })).status, 200)
    const badEvent = await fetch(`${server.url}/run/echo`, { method: 'POST', body: '{not json' })
    assert.equal(badEvent.status, 400)
    assert.match(await badEvent.text(), /BAD_EVENT/)

    const unknown = await call('nobody', {})
    assert.equal(unknown.status, 404)
    assert.match(unknown.text, /NOT_FOUND/)
    const badName = await deploy('bad%20name', Buffer.from('def f(e): return 1\n'))
    assert.equal(badName.status, 400)
    const hostile = await deploy('hostile', execFileSync('tar', ['-cPf', '-', '/etc/hostname']))
    assert.equal(hostile.status, 400)
    assert.match(await hostile.text(), /absolute/)
    assert.doesNotMatch((await call('nobody', {})).text, new RegExp(dataDir))
  })

  it('deploys a new version that later requests see, and deletes a function', async () => {
    await deploy('versioned', tarball('v1', { 'f.py': 'def f(event):\n    return "v1"\n' }))
    assert.equal((await call('versioned', {})).json, 'v1')
    await deploy('versioned', tarball('v2', { 'f.py': 'def f(event):\n    return "v2"\n' }))
    assert.equal((await call('versioned', {})).json, 'v2')
    const meta = (await (await fetch(`${server.url}/registry/versioned`)).json()) as {
      versions: unknown[]
    }
    assert.equal(meta.versions.length, 2)
    const config = await fetch(`${server.url}/registry/get-only/config`)
    assert.deepEqual(await config.json(), { triggers: { http: [{ method: 'GET' }] } })
    assert.equal(
      (await fetch(`${server.url}/registry/versioned`, { method: 'DELETE' })).status,
      200,
    )
    assert.equal((await call('versioned', {})).status, 404)
  })
})
