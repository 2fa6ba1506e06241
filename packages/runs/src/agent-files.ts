/** Writes a file into a sandbox through its agent's envd `POST /files` (a raw body, as a user). */
import { request } from 'node:http'
import {
  DriverError,
  InvalidArgumentError,
  NotEnoughSpaceError,
  errorMessage,
} from '@sandcell/shared'

export interface WriteAgentFileOptions {
  socketPath: string
  /** Absolute path inside the sandbox; parents are created. */
  path: string
  content: Buffer
  /** Linux user the file belongs to. */
  user: string
  signal?: AbortSignal
}

/**
 * @throws NotEnoughSpaceError (the sandbox's disk is full), InvalidArgumentError (the agent
 *   refused the path), DriverError (the agent cannot be reached or failed)
 */
export function writeAgentFile(options: WriteAgentFileOptions): Promise<void> {
  const query = new URLSearchParams({ path: options.path, username: options.user })
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: options.socketPath,
        method: 'POST',
        path: `/files?${query.toString()}`,
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': options.content.byteLength,
        },
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => (text += chunk))
        res.on('error', reject)
        res.on('end', () => {
          const status = res.statusCode ?? 500
          if (status < 300) {
            resolve()
            return
          }
          const message = `cannot write ${options.path} (${status}): ${text.slice(0, 300)}`
          reject(
            status === 507
              ? new NotEnoughSpaceError(`the files do not fit on the sandbox's disk: ${message}`)
              : status < 500
                ? new InvalidArgumentError(message)
                : new DriverError(message),
          )
        })
      },
    )
    req.on('error', (err) =>
      reject(
        options.signal?.aborted === true
          ? (options.signal.reason as Error)
          : new DriverError(`cannot reach the sandbox's agent: ${errorMessage(err)}`, {
              cause: err,
            }),
      ),
    )
    req.end(options.content)
  })
}
