/** Hands a sandbox's agent its env vars and access token (envd's POST /init) over its socket. */
import { request } from 'node:http'
import { DriverError, TimeoutError } from '@sandcell/shared'

export interface AgentInit {
  envVars: Record<string, string>
  accessToken: string
  /** The token the agent holds now, when it has one (rotation needs it). */
  currentAccessToken?: string
  defaultUser?: string
}

/** @throws DriverError when the agent refuses or cannot be reached. */
export function initAgent(socketPath: string, init: AgentInit, timeoutMs = 5000): Promise<void> {
  const body = JSON.stringify({
    envVars: init.envVars,
    accessToken: init.accessToken,
    defaultUser: init.defaultUser ?? 'user',
  })
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: 'POST',
        path: '/init',
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          ...(init.currentAccessToken === undefined
            ? {}
            : { 'x-access-token': init.currentAccessToken }),
        },
        timeout: timeoutMs,
      },
      (res) => {
        let text = ''
        res.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')))
        res.on('end', () => {
          if ((res.statusCode ?? 500) < 300) {
            resolve()
          } else {
            reject(
              new DriverError(`the agent refused /init (${res.statusCode}): ${text.slice(0, 200)}`),
            )
          }
        })
      },
    )
    req.on('timeout', () =>
      req.destroy(new TimeoutError(`the agent did not answer /init within ${timeoutMs} ms`)),
    )
    req.on('error', (err) =>
      reject(
        err instanceof TimeoutError
          ? err
          : new DriverError(`cannot reach the agent: ${err.message}`, { cause: err }),
      ),
    )
    req.end(body)
  })
}
