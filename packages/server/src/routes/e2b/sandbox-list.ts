/**
 * E2B's sandbox listing as the SDK's paginator drives it: the query it sends (state as one
 * comma-joined value, metadata as a doubly encoded form, an ISO `startedAfter`), the filters,
 * and pages behind an opaque cursor, so that paging through a changing set returns every
 * sandbox at most once, in one order across pages.
 */
import { z } from 'zod'
import { InvalidArgumentError } from '@sandcell/shared'
import type { SandboxRecord, SandboxRecordState } from '../../store/sqlite-store.js'

const stateValues = z.enum(['running', 'paused'], {
  error: (issue) => `state must be running or paused, not ${JSON.stringify(issue.input)}`,
})

/** The list's query string, as the SDK (and E2B's API) names and formats it. */
export const listQuerySchema = z.object({
  state: z
    .union([z.string(), z.array(z.string())])
    .optional()
    .transform((value) =>
      (Array.isArray(value) ? value : value === undefined ? [] : [value])
        .flatMap((v) => v.split(','))
        .filter((v) => v.length > 0),
    )
    .pipe(z.array(stateValues)),
  metadata: z.string().optional(),
  limit: z.coerce
    .number({ error: 'limit must be a number' })
    .int('limit must be a whole number')
    .min(1, 'limit must be at least 1')
    .max(100, 'limit must be at most 100')
    .default(100),
  nextToken: z.string().optional(),
  // E2B lists the newest first unless asked otherwise.
  order: z
    .enum(['asc', 'desc'], {
      error: (issue) => `order must be asc or desc, not ${String(issue.input)}`,
    })
    .default('desc'),
  startedAfter: z.iso
    .datetime({ offset: true, error: 'startedAfter must be an RFC 3339 date-time' })
    .optional(),
  template: z.string().optional(),
})

export type ListQuery = z.infer<typeof listQuerySchema>

/** How a list without a state filter and a template filter are read. */
export interface ListOptions {
  /** The states listed when the query names none. */
  defaultStates: readonly SandboxRecordState[]
  /**
   * The template a reference names (a built template's id for its id, alias or `alias:tag`), so
   * that a filter by any of its names finds sandboxes made with any other; undefined when the
   * reference names no built template (then only the same text matches).
   */
  templateIdOf: (reference: string) => string | undefined
}

export interface SandboxPage {
  records: SandboxRecord[]
  /** The cursor of the next page (E2B's `X-Next-Token`); undefined on the last page. */
  nextToken: string | undefined
}

/**
 * The SDK sends metadata filters as one query value holding a form (`k=v&k2=v2`) whose keys and
 * values it encoded once more with encodeURIComponent: undo both layers.
 * @throws InvalidArgumentError (400) for broken percent-encoding
 */
function parseMetadataFilter(raw: string | undefined): [string, string][] {
  if (raw === undefined || raw === '') {
    return []
  }
  try {
    return [...new URLSearchParams(raw).entries()].map(([key, value]) => [
      decodeURIComponent(key),
      decodeURIComponent(value),
    ])
  } catch (err) {
    throw new InvalidArgumentError(`metadata filter ${JSON.stringify(raw)} is not valid encoding`, {
      cause: err,
    })
  }
}

/** A cursor: the start time and id of the last sandbox a page held. */
type Cursor = [startedAt: number, id: string]

function encodeCursor(record: SandboxRecord): string {
  const cursor: Cursor = [record.startedAt, record.id]
  return Buffer.from(JSON.stringify(cursor)).toString('base64url')
}

function decodeCursor(token: string): Cursor {
  try {
    const value: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'))
    return z.tuple([z.number(), z.string()]).parse(value)
  } catch (err) {
    throw new InvalidArgumentError(
      `nextToken ${JSON.stringify(token)} is not one this server gave out`,
      { cause: err },
    )
  }
}

/** Oldest first; sandboxes started in the same millisecond by id. */
function compareStart(a: { startedAt: number; id: string }, b: Cursor): number {
  const [startedAt, id] = b
  return a.startedAt - startedAt || (a.id < id ? -1 : a.id > id ? 1 : 0)
}

/**
 * One page of `records` as `query` asks. A cursor is a position in the order, not a sandbox:
 * sandboxes that end, pause or resume between two pages never shift the next one.
 * @throws InvalidArgumentError (400) for a metadata filter or nextToken that cannot be read
 */
export function listSandboxes(
  records: Iterable<SandboxRecord>,
  query: ListQuery,
  options: ListOptions,
): SandboxPage {
  const states: readonly SandboxRecordState[] =
    query.state.length > 0 ? query.state : options.defaultStates
  const metadata = parseMetadataFilter(query.metadata)
  const after = query.startedAfter === undefined ? undefined : Date.parse(query.startedAfter)
  const cursor = query.nextToken === undefined ? undefined : decodeCursor(query.nextToken)
  const direction = query.order === 'asc' ? 1 : -1
  const ofTemplate = templateFilter(query.template, options.templateIdOf)
  const selected = [...records]
    .filter(
      (r) =>
        states.includes(r.state) &&
        metadata.every(([key, value]) => r.metadata[key] === value) &&
        (after === undefined || r.startedAt >= after) &&
        ofTemplate(r.templateId) &&
        (cursor === undefined || compareStart(r, cursor) * direction > 0),
    )
    .sort((a, b) => compareStart(a, [b.startedAt, b.id]) * direction)
  const page = selected.slice(0, query.limit)
  const last = page.at(-1)
  return {
    records: page,
    nextToken: selected.length > page.length && last !== undefined ? encodeCursor(last) : undefined,
  }
}

/** Whether a sandbox's template reference names the template the filter names. */
function templateFilter(
  wanted: string | undefined,
  templateIdOf: (reference: string) => string | undefined,
): (reference: string) => boolean {
  if (wanted === undefined) {
    return () => true
  }
  const wantedId = templateIdOf(wanted)
  const ids = new Map<string, string | undefined>()
  return (reference) => {
    if (reference === wanted) {
      return true
    }
    if (wantedId === undefined) {
      return false
    }
    if (!ids.has(reference)) {
      ids.set(reference, templateIdOf(reference))
    }
    return ids.get(reference) === wantedId
  }
}
