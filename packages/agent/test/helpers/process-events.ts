/** Reading Process.Start / Process.Connect streams in tests. */
import type { ConnectResponse, ProcessEvent_EndEvent, StartResponse } from '@sandcell/protocol'

/** Everything a process stream carried, in order. */
export interface CollectedRun {
  pid: number
  stdout: string
  stderr: string
  pty: Buffer
  end: ProcessEvent_EndEvent | undefined
  keepalives: number
  /** Event kinds in arrival order ("start", "stdout", "end"…). */
  kinds: string[]
}

/** Reads a whole stream (until end or until the stream finishes). */
export async function collectRun(
  stream: AsyncIterable<StartResponse | ConnectResponse>,
): Promise<CollectedRun> {
  const run: CollectedRun = {
    pid: 0,
    stdout: '',
    stderr: '',
    pty: Buffer.alloc(0),
    end: undefined,
    keepalives: 0,
    kinds: [],
  }
  for await (const response of stream) {
    record(run, response)
  }
  return run
}

/** Adds one response to a run. */
export function record(run: CollectedRun, response: StartResponse | ConnectResponse): void {
  const event = response.event?.event
  switch (event?.case) {
    case 'start':
      run.pid = event.value.pid
      run.kinds.push('start')
      break
    case 'data': {
      const output = event.value.output
      if (output.case === 'stdout') {
        run.stdout += Buffer.from(output.value).toString('utf8')
      } else if (output.case === 'stderr') {
        run.stderr += Buffer.from(output.value).toString('utf8')
      } else if (output.case === 'pty') {
        run.pty = Buffer.concat([run.pty, output.value])
      }
      run.kinds.push(output.case ?? 'data')
      break
    }
    case 'end':
      run.end = event.value
      run.kinds.push('end')
      break
    case 'keepalive':
      run.keepalives += 1
      run.kinds.push('keepalive')
      break
    case undefined:
    default:
      run.kinds.push('unknown')
  }
}

/**
 * Reads a stream in the background; `until(predicate)` resolves once what was read so far
 * satisfies it (or rejects at the deadline), `done` when the stream ends.
 */
export function follow(stream: AsyncIterable<StartResponse | ConnectResponse>): {
  run: CollectedRun
  done: Promise<CollectedRun>
  until(
    what: string,
    predicate: (run: CollectedRun) => boolean,
    timeoutMs?: number,
  ): Promise<CollectedRun>
} {
  const run: CollectedRun = {
    pid: 0,
    stdout: '',
    stderr: '',
    pty: Buffer.alloc(0),
    end: undefined,
    keepalives: 0,
    kinds: [],
  }
  const waiters = new Set<() => void>()
  let finished = false
  const done = (async () => {
    try {
      for await (const response of stream) {
        record(run, response)
        for (const waiter of waiters) {
          waiter()
        }
      }
      return run
    } finally {
      finished = true
      for (const waiter of waiters) {
        waiter()
      }
    }
  })()
  // Surfaced through `done` and `until`; never unhandled.
  done.catch(() => undefined)
  return {
    run,
    done,
    until(what, predicate, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (predicate(run)) {
            cleanup()
            resolve(run)
          } else if (finished) {
            cleanup()
            done.then(
              () =>
                reject(
                  new Error(
                    `stream ended before ${what}: ${JSON.stringify(run.kinds)} ${run.stdout}${run.pty.toString()}`,
                  ),
                ),
              (err: unknown) => reject(err as Error),
            )
          }
        }
        const timer = setTimeout(() => {
          cleanup()
          reject(
            new Error(
              `timed out waiting for ${what}; so far ${JSON.stringify({ stdout: run.stdout, pty: run.pty.toString(), kinds: run.kinds.slice(-10) })}`,
            ),
          )
        }, timeoutMs)
        const cleanup = (): void => {
          clearTimeout(timer)
          waiters.delete(check)
        }
        waiters.add(check)
        check()
      })
    },
  }
}
