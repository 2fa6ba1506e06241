/** How the sandbox commands show sandboxes: aligned tables and lists for people, JSON for tools. */
import type { ListedSandbox, SandboxDetail } from '@sandcell/sdk'

export interface Column<T> {
  header: string
  value: (row: T) => string
  /** Numbers read better right-aligned. @default 'left' */
  align?: 'left' | 'right'
}

/** Columns padded to their widest cell, three spaces apart, no trailing blanks. */
export function formatTable<T>(columns: readonly Column<T>[], rows: readonly T[]): string {
  const cells = [
    columns.map((column) => column.header),
    ...rows.map((row) => columns.map((column) => column.value(row))),
  ]
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => (line[i] ?? '').length)))
  return cells
    .map((line) =>
      line
        .map((cell, i) => {
          const width = widths[i] ?? 0
          return columns[i]?.align === 'right' ? cell.padStart(width) : cell.padEnd(width)
        })
        .join('   ')
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join('')
}

/** A duration in its two largest units, a zero second unit left out: `45s`, `4m59s`, `2h`, `3d4h`. */
export function formatDuration(ms: number): string {
  let rest = Math.max(0, Math.round(ms / 1000))
  const amounts: [string, number][] = []
  for (const [name, size] of [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    amounts.push([name, Math.floor(rest / size)])
    rest %= size
  }
  const first = amounts.findIndex(([, amount]) => amount > 0)
  if (first === -1) {
    return '0s'
  }
  return amounts
    .slice(first, first + 2)
    .filter(([, amount], i) => i === 0 || amount > 0)
    .map(([name, amount]) => `${amount}${name}`)
    .join('')
}

/** `3m ago`, or `just now` within a second. */
export function formatAgo(at: Date, now: Date): string {
  const ms = now.getTime() - at.getTime()
  return ms < 1000 ? 'just now' : `${formatDuration(ms)} ago`
}

/** Time left until the deadline; `-` for a paused sandbox, whose clock is stopped. */
export function formatEndsIn(sandbox: Pick<ListedSandbox, 'endAt' | 'state'>, now: Date): string {
  if (sandbox.state === 'paused') {
    return '-'
  }
  const ms = sandbox.endAt.getTime() - now.getTime()
  return ms <= 0 ? 'now' : formatDuration(ms)
}

export function formatMetadata(metadata: Readonly<Record<string, string>>): string {
  const pairs = Object.entries(metadata).map(([key, value]) => `${key}=${value}`)
  return pairs.length === 0 ? '-' : pairs.join(',')
}

function templateName(sandbox: Pick<ListedSandbox, 'alias' | 'templateId'>): string {
  return sandbox.alias ?? sandbox.templateId
}

/** The list table: one sandbox a line. */
export function formatSandboxTable(sandboxes: readonly ListedSandbox[], now: Date): string {
  return formatTable<ListedSandbox>(
    [
      { header: 'SANDBOX ID', value: (s) => s.sandboxId },
      { header: 'TEMPLATE', value: templateName },
      { header: 'STATE', value: (s) => s.state },
      { header: 'STARTED', value: (s) => formatAgo(s.startedAt, now) },
      { header: 'ENDS IN', value: (s) => formatEndsIn(s, now) },
      { header: 'CPU', value: (s) => String(s.cpuCount), align: 'right' },
      { header: 'MEMORY', value: (s) => `${s.memoryMiB} MiB`, align: 'right' },
      { header: 'METADATA', value: (s) => formatMetadata(s.metadata) },
    ],
    sandboxes,
  )
}

/** One sandbox as `name   value` lines. */
export function formatSandboxDetail(sandbox: SandboxDetail, now: Date): string {
  const rows: [string, string][] = [
    ['sandbox id', sandbox.sandboxId],
    ['template', templateName(sandbox)],
    ['state', sandbox.state],
    ['started', `${sandbox.startedAt.toISOString()} (${formatAgo(sandbox.startedAt, now)})`],
    [
      'ends',
      sandbox.state === 'paused'
        ? '- (paused)'
        : `${sandbox.endAt.toISOString()} (in ${formatEndsIn(sandbox, now)})`,
    ],
    ['cpu', String(sandbox.cpuCount)],
    ['memory', `${sandbox.memoryMiB} MiB`],
    ['disk', `${sandbox.diskSizeMiB} MiB`],
    ['envd', sandbox.envdVersion],
    ['metadata', formatMetadata(sandbox.metadata)],
  ]
  return formatTable<[string, string]>(
    [
      { header: '', value: (row) => row[0] },
      { header: '', value: (row) => row[1] },
    ],
    rows,
  )
    .split('\n')
    .slice(1)
    .join('\n')
}

const secretFields = new Set(['envdAccessToken', 'trafficAccessToken'])

/** A sandbox for `--json`: dates as ISO strings, the access tokens left out (they are secrets). */
export function sandboxJson<T extends object>(
  sandbox: T,
): Omit<T, 'envdAccessToken' | 'trafficAccessToken'> {
  return Object.fromEntries(
    Object.entries(sandbox).filter(([key]) => !secretFields.has(key)),
  ) as Omit<T, 'envdAccessToken' | 'trafficAccessToken'>
}

/** One JSON document on stdout. */
export function printJson(value: unknown, stdout: NodeJS.WritableStream = process.stdout): void {
  stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}
