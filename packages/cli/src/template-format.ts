/**
 * How the template commands show builds: a build's log lines with their step, where a build is
 * (step k of n, from the builder's `[builder k/n]` lines), why it failed, and the template table.
 */
import { basename, resolve } from 'node:path'
import { stripVTControlCharacters } from 'node:util'
import { InvalidArgumentError } from '@sandcell/shared'
import type { BuildLogEntry, TemplateBuildStatus, TemplateSummary } from '@sandcell/sdk'
import { formatAgo, formatTable } from './sandbox-format.js'

/** A log line as both the server and the e2b SDK's client side give it. */
export type LogLine = Pick<BuildLogEntry, 'level' | 'message' | 'step'>

/** The widest step name (`finalize`), so messages line up. */
const stepWidth = 8

/**
 * One log line for a person: the step right-aligned in its column (blank for lines of the build
 * as a whole), then the message with terminal escapes removed. Debug lines are left out (an empty
 * string), as the e2b SDK's build logger leaves them out.
 */
export function formatLogLine(line: LogLine): string {
  if (line.level === 'debug') {
    return ''
  }
  const text = stripVTControlCharacters(line.message)
  const marked = line.level === 'warn' || line.level === 'error' ? `${line.level}: ${text}` : text
  return `${(line.step ?? '').padStart(stepWidth)} | ${marked}\n`
}

/** Where a build is: its phase (`base`, `step 3/6`, `finalize`), its share done, what it does. */
export interface BuildPosition {
  phase: string
  /** Steps done of all steps, 0..1; 0 until the builder has said how many there are. */
  fraction: number
  /** What the current step does (`RUN apt-get install -y curl`). */
  text: string
}

export interface BuildTracker {
  /** Takes the next log line in order. */
  observe(line: LogLine): void
  position(): BuildPosition
  /** A step for a person: `step 3/6 (RUN exit 3)`, `base (FROM python:3)`. */
  describeStep(step: string): string
}

// `[builder 3/6] RUN …`, `[base] FROM …`, `[finalize] …`, `CACHED ` before a step from the cache.
const header = /^(?:CACHED )?\[(?:builder (\d+)\/(\d+)|(base|finalize))\] (.*)$/

/** Follows a build through its log: the step headers say which step runs and how many there are. */
export function createBuildTracker(): BuildTracker {
  let total = 0
  let position: BuildPosition = { phase: 'starting', fraction: 0, text: '' }
  const texts = new Map<string, string>()
  const phaseOf = (step: string): string =>
    !/^\d+$/.test(step) ? step : total > 0 ? `step ${step}/${total}` : `step ${step}`
  return {
    observe(line) {
      const match = header.exec(stripVTControlCharacters(line.message))
      if (match === null) {
        return
      }
      const [, index, count, named, text = ''] = match
      if (count !== undefined) {
        total = Number(count)
      }
      const step = named ?? index ?? ''
      texts.set(step, text)
      const done = named === 'finalize' ? total : named === 'base' ? 0 : Number(index) - 1
      position = { phase: phaseOf(step), fraction: total > 0 ? done / total : 0, text }
    },
    position: () => position,
    describeStep(step) {
      const text = texts.get(step)
      return text === undefined ? phaseOf(step) : `${phaseOf(step)} (${text})`
    },
  }
}

/** Why a build failed, in one line: `build of app failed at step 3/6 (RUN exit 3): …`. */
export function describeBuildFailure(
  name: string,
  reason: { message: string; step?: string } | undefined,
  tracker: BuildTracker,
): string {
  const message = reason?.message ?? 'unknown error'
  return reason?.step === undefined
    ? `build of ${name} failed: ${message}`
    : `build of ${name} failed at ${tracker.describeStep(reason.step)}: ${message}`
}

/**
 * A template name from a directory: its base name lower-cased, every run of characters E2B does
 * not allow in a name (a-z, 0-9, `_`, `-`) made one `-`, and `-` trimmed from both ends.
 * @throws InvalidArgumentError when nothing is left (say `/` or `...`)
 */
export function templateNameFromDir(dir: string): string {
  const name = basename(resolve(dir))
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '')
  if (name === '') {
    throw new InvalidArgumentError(
      `cannot make a template name from the directory ${JSON.stringify(dir)}: pass --name`,
    )
  }
  return name
}

/** A template as `template list` shows it: the summary, when its current build finished, its newest build. */
export interface TemplateRow extends TemplateSummary {
  /** When the current build finished; absent while it has not. */
  builtAt?: Date
  /** The newest build, which is not the current one while it builds or after it failed. */
  latestBuild?: { buildId: string; status: TemplateBuildStatus }
}

function statusCell(row: TemplateRow): string {
  const latest = row.latestBuild
  return latest === undefined || latest.buildId === row.buildId
    ? row.buildStatus
    : `${row.buildStatus} (newest: ${latest.status})`
}

/** The list table: one template a line. */
export function formatTemplateTable(rows: readonly TemplateRow[], now: Date): string {
  return formatTable<TemplateRow>(
    [
      { header: 'NAME', value: (t) => t.names.join(', ') || '-' },
      { header: 'TEMPLATE ID', value: (t) => t.templateId },
      { header: 'STATUS', value: statusCell },
      { header: 'BUILDS', value: (t) => String(t.buildCount), align: 'right' },
      {
        header: 'BUILT',
        value: (t) => (t.builtAt === undefined ? '-' : formatAgo(t.builtAt, now)),
      },
    ],
    rows,
  )
}
