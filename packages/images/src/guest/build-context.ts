/** What every guest artifact build shares: where artifacts go, the layout version, progress. */
import type { Logger } from '@sandcell/shared'
import type { TemplateProgress } from '../core/progress.js'

/** Bumped when the layout of an artifact changes, so old caches are not reused. */
export const guestImageVersion = 2

/** Where guest artifacts are cached, and the caller's logger, signal and progress listener. */
export interface BuildContext {
  imagesDir: string
  log: Logger
  signal?: AbortSignal
  onProgress?: (progress: TemplateProgress) => void
}

/** Logs a build step and reports it as progress without counts. */
export function reportProgress(context: BuildContext, phase: string, message: string): void {
  context.log.info({ phase }, message)
  context.onProgress?.({ phase, done: 0, total: 0, message })
}
