/** A one-line progress bar on stderr for long jobs (template builds), with percentage and ETA. */
import type { Driver } from '@sandcell/runtime'

export interface ProgressUpdate {
  phase: string
  done: number
  total: number
  /** Overall progress 0..1; preferred over done/total when given. */
  fraction?: number
  message?: string
}

export interface ProgressBar {
  update(progress: ProgressUpdate): void
  /** Erases the line drawn on a terminal, so other output can go above it; `update` redraws it. */
  clear(): void
  finish(message: string): void
}

const width = 30

function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '--'
  }
  return seconds >= 60
    ? `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s`
    : `${Math.round(seconds)}s`
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
      const phaseChanged = progress.phase !== phase
      if (phaseChanged) {
        phase = progress.phase
        phaseStarted = now
      }
      const overall = progress.fraction !== undefined
      const fraction = overall
        ? Math.min(1, progress.fraction ?? 0)
        : progress.total > 0
          ? Math.min(1, progress.done / progress.total)
          : 0
      const elapsed = (now - (overall ? started : phaseStarted)) / 1000
      const eta = fraction > 0 ? (elapsed / fraction) * (1 - fraction) : Number.NaN
      const filled = Math.round(fraction * width)
      const countable = overall || progress.total > 0
      const bar = countable
        ? `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(Math.round(fraction * 100)).padStart(3)}%`
        : '[working]'
      const counts = `${progress.total > 0 ? ` ${progress.done}/${progress.total}` : ''}${countable ? ` ETA ${formatSeconds(eta)}` : ''}`
      const line = `${progress.phase.padEnd(11)} ${bar}${counts}${progress.message ? ` ${progress.message}` : ''}`
      if (stream.isTTY) {
        stream.write(`\r\x1b[K${line.slice(0, (stream.columns || 100) - 1)}`)
      } else if (phaseChanged || now - lastLine > 2000) {
        lastLine = now
        stream.write(`${line}\n`)
      }
    },
    clear() {
      if (stream.isTTY) {
        stream.write('\r\x1b[K')
      }
    },
    finish(message) {
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      stream.write(`${stream.isTTY ? '\r\x1b[K' : ''}${message} (${seconds}s)\n`)
    },
  }
}

/**
 * Builds a template if needed, drawing a bar only once the builder reports progress: templates
 * that are ready, or build in a blink, print nothing.
 */
export async function prepareWithProgress(
  driver: Driver,
  template: string,
  signal?: AbortSignal,
): Promise<void> {
  let bar: ProgressBar | undefined
  await driver.prepareTemplate(template, {
    ...(signal === undefined ? {} : { signal }),
    onProgress: (progress) => {
      if (bar === undefined) {
        process.stderr.write(`sandcell: building template ${template} (once)\n`)
        bar = createProgressBar()
      }
      bar.update(progress)
    },
  })
  bar?.finish(`sandcell: template ${template} ready`)
}
