import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { z } from 'zod'
import {
  BugError,
  DriverError,
  FailedPreconditionError,
  FileNotFoundError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  NotFoundError,
  ResourceExhaustedError,
  SandboxNotFoundError,
  SandcellError,
  UnauthenticatedError,
  UnavailableError,
} from '@sandcell/shared'
import {
  errorFromBadBody,
  errorFromNetwork,
  errorFromResponse,
  parseJsonBody,
  serverMessage,
  type RequestContext,
} from './http-errors.js'

const context: RequestContext = {
  serverUrl: 'http://127.0.0.1:3000',
  method: 'GET',
  url: 'http://127.0.0.1:3000/v2/sandboxes',
}
const body = (code: number, message: string): string => JSON.stringify({ code, message })

describe('errorFromResponse', () => {
  it('maps each status to its error class, keeping the server message', () => {
    const cases: [number, new (...args: never[]) => SandcellError][] = [
      [400, InvalidArgumentError],
      [401, UnauthenticatedError],
      [404, NotFoundError],
      [409, FailedPreconditionError],
      [429, ResourceExhaustedError],
      [502, UnavailableError],
      [503, UnavailableError],
      [507, NotEnoughSpaceError],
    ]
    for (const [status, cls] of cases) {
      const err = errorFromResponse(status, body(status, 'the reason'), context)
      assert.ok(err instanceof cls, `${status} -> ${err.constructor.name}`)
      assert.match(err.message, /the reason/)
      assert.equal(err.details?.status, status)
    }
  })

  it('says unauthorized and names the server for a 401', () => {
    const err = errorFromResponse(401, body(401, 'invalid API key'), context)
    assert.equal(err.message, 'unauthorized (401) by http://127.0.0.1:3000: invalid API key')
  })

  it('names the sandbox for a 404 or 502 on a sandbox path', () => {
    const sandbox = { ...context, sandboxId: 'abc123' }
    const missing = errorFromResponse(404, body(404, 'sandbox not found'), sandbox)
    assert.ok(missing instanceof SandboxNotFoundError)
    assert.equal(missing.message, 'sandbox abc123 does not exist or was killed')
    const down = errorFromResponse(502, body(502, 'paused'), sandbox)
    assert.ok(down instanceof UnavailableError)
    assert.equal(down.message, 'sandbox abc123 is not running: paused')
  })

  it('names the file for a 404 on /files', () => {
    const err = errorFromResponse(404, body(404, 'no such file'), {
      ...context,
      sandboxId: 'abc',
      filePath: '/tmp/x',
    })
    assert.ok(err instanceof FileNotFoundError)
    assert.equal(err.message, '/tmp/x does not exist')
  })

  it('falls back to the plain SandcellError with method, URL and status', () => {
    const err = errorFromResponse(500, body(500, 'boom'), context)
    assert.equal(err.constructor, SandcellError)
    assert.equal(err.message, 'GET http://127.0.0.1:3000/v2/sandboxes failed with HTTP 500: boom')
  })

  it("makes a 5xx from an agent's own socket a DriverError, but keeps 507 and 4xx classes", () => {
    const socket: RequestContext = {
      serverUrl: 'unix:/run/a.sock',
      method: 'POST',
      url: 'unix:/run/a.sock/files?path=%2Fx',
      filePath: '/x',
      agentSocket: '/run/a.sock',
    }
    const failed = errorFromResponse(500, body(500, 'boom'), socket)
    assert.ok(failed instanceof DriverError)
    assert.equal(failed.message, 'POST unix:/run/a.sock/files?path=%2Fx failed with HTTP 500: boom')
    assert.ok(errorFromResponse(503, body(503, 'x'), socket) instanceof DriverError)
    assert.ok(errorFromResponse(507, body(507, 'full'), socket) instanceof NotEnoughSpaceError)
    assert.ok(errorFromResponse(400, body(400, 'dir'), socket) instanceof InvalidArgumentError)
    assert.ok(errorFromResponse(404, body(404, 'gone'), socket) instanceof FileNotFoundError)
  })

  it('uses the text of a body that is not E2B JSON, shortened', () => {
    assert.equal(serverMessage('<html>\n  Bad gateway\n</html>'), '<html> Bad gateway </html>')
    assert.equal(serverMessage('x'.repeat(300)).length, 201)
    assert.equal(serverMessage('{"message":"m","code":1}'), 'm')
    assert.match(errorFromResponse(418, '', context).message, /HTTP 418: HTTP 418$/)
  })
})

describe('errorFromNetwork', () => {
  it('names the server URL and the socket error', () => {
    const cause = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), {
      code: 'ECONNREFUSED',
    })
    const err = errorFromNetwork(new TypeError('fetch failed', { cause }), {
      ...context,
      serverUrl: 'http://127.0.0.1:9',
    })
    assert.ok(err instanceof UnavailableError)
    assert.equal(
      err.message,
      'cannot reach the sandcell server at http://127.0.0.1:9 (connect ECONNREFUSED 127.0.0.1:9)',
    )
  })

  it("gives the innermost cause's message when no error has a code", () => {
    const err = errorFromNetwork(new TypeError('fetch failed', { cause: new Error('bad port') }), {
      ...context,
      serverUrl: 'http://127.0.0.1:9',
    })
    assert.equal(err.message, 'cannot reach the sandcell server at http://127.0.0.1:9 (bad port)')
  })

  it('adds the message when it does not already carry the code', () => {
    const cause = Object.assign(new Error('getaddrinfo failed'), { code: 'ENOTFOUND' })
    const err = errorFromNetwork(new TypeError('fetch failed', { cause }), context)
    assert.match(err.message, /\(ENOTFOUND getaddrinfo failed\)$/)
  })

  it("names the agent's socket as a DriverError when the agent was reached directly", () => {
    const cause = Object.assign(new Error('connect ENOENT /run/a.sock'), { code: 'ENOENT' })
    const err = errorFromNetwork(cause, {
      ...context,
      serverUrl: 'unix:/run/a.sock',
      agentSocket: '/run/a.sock',
    })
    assert.ok(err instanceof DriverError)
    assert.equal(
      err.message,
      "cannot reach the sandbox's agent at /run/a.sock (connect ENOENT /run/a.sock)",
    )
  })
})

describe('parseJsonBody', () => {
  it('reads JSON, an empty body as undefined, and calls anything else a server bug', () => {
    assert.deepEqual(parseJsonBody('{"a":1}', context), { a: 1 })
    assert.equal(parseJsonBody('', context), undefined)
    assert.throws(
      () => parseJsonBody('<html>proxy login</html>', context),
      (err: unknown) =>
        err instanceof BugError &&
        err.message ===
          'the server answered GET http://127.0.0.1:3000/v2/sandboxes with a body that is not JSON: "<html>proxy login</html>"',
    )
  })
})

describe('errorFromBadBody', () => {
  it('lists every unexpected field of a body as a server bug', () => {
    const schema = z.object({ sandboxID: z.string(), cpuCount: z.number() })
    const parsed = schema.safeParse({ cpuCount: 'two' })
    assert.equal(parsed.success, false)
    const err = errorFromBadBody((parsed as { error: z.ZodError }).error, context)
    assert.ok(err instanceof BugError)
    assert.match(err.message, /unexpected body: sandboxID: .*; cpuCount: /)
  })
})
