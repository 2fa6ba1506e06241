/** How a build reports what it does: E2B's log entries, each tagged with its step. */

export type BuildLogLevel = 'debug' | 'info' | 'warn' | 'error'

export interface BuildLogLine {
  level: BuildLogLevel
  message: string
  /** `base`, `1`…`n` (1-based index into the steps) or `finalize`, as E2B names them. */
  step?: string
}

export type BuildLogSink = (line: BuildLogLine) => void

/** Hands a process's output to the log one line at a time (a partial line waits for its end). */
export function lineSplitter(emit: (line: string) => void): {
  push(chunk: Uint8Array): void
  flush(): void
} {
  let pending = ''
  const decoder = new TextDecoder()
  return {
    push(chunk) {
      pending += decoder.decode(chunk, { stream: true })
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) {
        emit(line.replace(/\r$/, ''))
      }
    },
    flush() {
      pending += decoder.decode()
      if (pending !== '') {
        emit(pending)
        pending = ''
      }
    },
  }
}
