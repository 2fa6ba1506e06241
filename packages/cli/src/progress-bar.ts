/** A one-line progress bar on stderr for long jobs (template builds), with percentage and ETA. */

export interface ProgressUpdate {
  phase: string
  done: number
  total: number
  message?: string
}

export interface ProgressBar {
  update(progress: ProgressUpdate): void
  finish(message: string): void
}

const width = 30

function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '--'
  }
  return seconds >= 60 ? `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s` : `${Math.round(seconds)}s`
}

/**
 * Draws in place on a terminal; elsewhere (CI logs) prints one line per phase change and at
 * most one line every 2 s, so logs stay readable.
 */
export function createProgressBar(stream: NodeJS.WriteStream = process.stderr): ProgressBar {
  const started = Date.now()
  let phase = ''
  let phaseStarted = started
  let lastLine = 0
  return {
    update(progress) {
      const now = Date.now()
      if (progress.phase !== phase) {
        phase = progress.phase
        phaseStarted = now
      }
      const fraction = progress.total > 0 ? Math.min(1, progress.done / progress.total) : 0
      const elapsed = (now - phaseStarted) / 1000
      const eta = fraction > 0 ? (elapsed / fraction) * (1 - fraction) : Number.NaN
      const filled = Math.round(fraction * width)
      const bar = progress.total > 0 ? `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(Math.round(fraction * 100)).padStart(3)}%` : '[working]'
      const counts = progress.total > 0 ? ` ${progress.done}/${progress.total} ETA ${formatSeconds(eta)}` : ''
      const line = `${progress.phase.padEnd(11)} ${bar}${counts}${progress.message ? ` ${progress.message}` : ''}`
      if (stream.isTTY) {
        stream.write(`\r\x1b[K${line.slice(0, (stream.columns || 100) - 1)}`)
      } else if (now - lastLine > 2000 || progress.done === progress.total) {
        lastLine = now
        stream.write(`${line}\n`)
      }
    },
    finish(message) {
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      stream.write(`${stream.isTTY ? '\r\x1b[K' : ''}${message} (${seconds}s)\n`)
    },
  }
}
