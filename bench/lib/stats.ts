/** Timing statistics and reporting shared by the benchmarks: percentiles, tables, JSON results. */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface Summary {
  name: string
  unit: string
  runs: number
  p50: number
  p95: number
  min: number
  max: number
  mean: number
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) {
    return Number.NaN
  }
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[index] as number
}

export function summarize(name: string, samples: readonly number[], unit = 'ms'): Summary {
  const sorted = [...samples].sort((a, b) => a - b)
  return {
    name,
    unit,
    runs: sorted.length,
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    min: sorted[0] ?? Number.NaN,
    max: sorted[sorted.length - 1] ?? Number.NaN,
    mean: sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length),
  }
}

/** Times `fn` `runs` times after `warmup` untimed runs; returns milliseconds per run. */
export async function measure(
  runs: number,
  fn: () => Promise<void>,
  warmup = 3,
): Promise<number[]> {
  for (let i = 0; i < warmup; i++) {
    await fn()
  }
  const samples: number[] = []
  for (let i = 0; i < runs; i++) {
    const started = performance.now()
    await fn()
    samples.push(performance.now() - started)
  }
  return samples
}

const fmt = (value: number): string => (value >= 100 ? value.toFixed(0) : value.toFixed(2))

/** Prints a scenario against its baseline and writes both to bench/results/<scenario>.json. */
export function report(
  scenario: string,
  rows: Summary[],
  baseline: Summary | undefined,
  notes: string[] = [],
): void {
  console.log(`\n## ${scenario}`)
  console.log('| measurement | runs | p50 | p95 | ratio to baseline (p50) |')
  console.log('|---|---|---|---|---|')
  for (const row of [...rows, ...(baseline === undefined ? [] : [baseline])]) {
    const ratio =
      baseline === undefined || row === baseline ? '' : `${(row.p50 / baseline.p50).toFixed(2)}x`
    const label = row === baseline ? `${row.name} (baseline)` : row.name
    console.log(
      `| ${label} | ${row.runs} | ${fmt(row.p50)} ${row.unit} | ${fmt(row.p95)} ${row.unit} | ${ratio} |`,
    )
  }
  for (const note of notes) {
    console.log(`- ${note}`)
  }
  const dir = new URL('../results/', import.meta.url).pathname
  mkdirSync(dir, { recursive: true })
  writeFileSync(
    join(dir, `${scenario}.json`),
    JSON.stringify({ scenario, at: new Date().toISOString(), rows, baseline, notes }, null, 2),
  )
}
