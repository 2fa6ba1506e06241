/** Fixture for the resources' unit tests: an HttpClient answering canned responses in order. */
import assert from 'node:assert/strict'
import { Headers } from 'undici'
import type { HttpClient, HttpRequest } from './http.js'

export interface Canned {
  status?: number
  headers?: Record<string, string>
  body?: unknown
}

/** An HttpClient answering from a queue and recording what was asked. */
export function fakeHttp(answers: Canned[]): HttpClient & { requests: HttpRequest[] } {
  const requests: HttpRequest[] = []
  const next = (request: HttpRequest): Canned => {
    requests.push(request)
    const answer = answers.shift()
    assert.ok(answer, `unexpected request ${request.method} ${request.path}`)
    return answer
  }
  return {
    serverUrl: 'http://server',
    requests,
    request(request) {
      const answer = next(request)
      return Promise.resolve({
        status: answer.status ?? 204,
        headers: new Headers(answer.headers),
        raw: undefined as never,
        context: { serverUrl: 'http://server', method: request.method, url: request.path },
        failure: (err: unknown) => err,
      })
    },
    requestJson(request, schema) {
      const answer = next(request)
      return Promise.resolve({
        status: answer.status ?? 200,
        headers: new Headers(answer.headers),
        body: schema.parse(answer.body),
      })
    },
    close: () => Promise.resolve(),
  }
}
