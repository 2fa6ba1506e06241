/**
 * Layer cache keys chained as E2B chains them: a step's key hashes the previous key, the step's
 * type and arguments and its files' hash, so a changed step changes its key and every later one.
 */
import { createHash } from 'node:crypto'

/** Bumped when a step's effect changes meaning, so that older cached layers are not reused. */
export const builderVersion = 'sandcell-builder-1'

/** sha256 hex of the parts joined by `;` (E2B's `HashKeys`). */
export function hashKeys(...parts: readonly string[]): string {
  return createHash('sha256').update(parts.join(';')).digest('hex')
}
