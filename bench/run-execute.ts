/**
 * One-shot runs through Piston's `POST /api/v2/execute` on a real `sandcell serve`: p50/p95 of
 * a Python and a C hello world (each in a fresh sandbox from the warm pool, the pool refilled
 * between runs, untimed) beside the same programs run directly on the host in the same run
 * (`/usr/bin/python3 -c`, a binary compiled once); where the time goes (the Server-Timing
 * phases); and sustained Python runs per second with every core busy, against direct runs.
 * Goals: Python p50 ≤ 30 ms and ≤ 15 ms over direct. Usage: npm run bench -- run-execute [runs=100] [seconds=20]
 */
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { startServeProcess } from '@sandcell/test-utils'
import { measure, percentile, report, summarize } from './lib/stats.js'

const runs = Number(process.argv[2] ?? 100)
const seconds = Number(process.argv[3] ?? 20)
const dataDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-run-'))
const python = '/usr/bin/python3'
const pythonHello = 'print("hello")'
const cHello = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
const cores = availableParallelism()

const serveEnv = {
  SANDCELL_CGROUP_PARENT: 'sandcell-bench',
  SANDCELL_RUN_MAX_CONCURRENT: String(2 * cores),
  SANDCELL_RUN_POOL_MAX: String(2 * cores),
}

interface Health {
  runs: { running: number; waiting: number; warmPool: Record<string, number> }
}

async function health(url: string): Promise<Health> {
  return (await (await fetch(`${url}/health`)).json()) as Health
}

/** Waits (untimed) until no run holds a slot and the pool holds `ready` sandboxes. */
async function settle(url: string, ready = 1): Promise<void> {
  for (;;) {
    const { runs: state } = await health(url)
    if (state.running === 0 && (state.warmPool.debian ?? 0) >= ready) {
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

interface Stage {
  stdout: string
  code: number | null
  wall_time: number
}

const phases = new Map<string, number[]>()

async function execute(
  url: string,
  language: string,
  content: string,
): Promise<{ run: Stage; compile?: Stage }> {
  const response = await fetch(`${url}/api/v2/execute`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ language, version: '*', files: [{ content }] }),
  })
  const body = (await response.json()) as { run: Stage; compile?: Stage; message?: string }
  if (response.status !== 200 || body.run.stdout !== 'hello\n') {
    throw new Error(`${language} run failed (${response.status}): ${JSON.stringify(body)}`)
  }
  for (const part of (response.headers.get('server-timing') ?? '').split(',')) {
    const match = /^\s*(\w+);dur=([\d.]+)/.exec(part)
    if (match?.[1] !== undefined) {
      const key = `${language}.${match[1]}`
      phases.set(key, [...(phases.get(key) ?? []), Number(match[2])])
    }
  }
  return body
}

function runDirect(file: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] })
    child.stdout.resume()
    child.on('error', reject)
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${file} exited ${code}`)),
    )
  })
}

/** Runs `job` from `workers` loops for `durationMs`; returns completions per second. */
async function throughput(
  workers: number,
  durationMs: number,
  job: () => Promise<void>,
): Promise<number> {
  const deadline = performance.now() + durationMs
  let done = 0
  const started = performance.now()
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (performance.now() < deadline) {
        await job()
        done += 1
      }
    }),
  )
  return done / ((performance.now() - started) / 1000)
}

const median = (values: readonly number[]): number =>
  percentile(
    [...values].sort((a, b) => a - b),
    50,
  )

const binaryDir = mkdtempSync(join(tmpdir(), 'sandcell-bench-c-'))
writeFileSync(join(binaryDir, 'hello.c'), cHello)
execFileSync('gcc', ['-o', join(binaryDir, 'hello'), join(binaryDir, 'hello.c')])

const server = await startServeProcess({ dataDir, env: serveEnv, killSandboxesOnExit: true })
const { url } = server
try {
  await settle(url)
  const pythonRuns: number[] = []
  const pythonRunStage: number[] = []
  for (let i = 0; i < runs + 3; i++) {
    await settle(url)
    const started = performance.now()
    const result = await execute(url, 'python', pythonHello)
    if (i >= 3) {
      pythonRuns.push(performance.now() - started)
      pythonRunStage.push(result.run.wall_time)
    }
  }
  const cRuns: number[] = []
  const cRunStage: number[] = []
  for (let i = 0; i < Math.min(runs, 50) + 2; i++) {
    await settle(url)
    const started = performance.now()
    const result = await execute(url, 'c', cHello)
    if (i >= 2) {
      cRuns.push(performance.now() - started)
      cRunStage.push(result.run.wall_time)
    }
  }
  const directPython = await measure(runs, () => runDirect(python, ['-c', pythonHello]))
  const directC = await measure(runs, () => runDirect(join(binaryDir, 'hello'), []))

  // The pools are sized from demand: a short untimed burst grows them to the load measured.
  const clients = 4 * cores
  await throughput(clients, 3000, async () => {
    await execute(url, 'python', pythonHello)
  })
  const runsPerSecond = await throughput(clients, seconds * 1000, async () => {
    await execute(url, 'python', pythonHello)
  })
  const directPerSecond = await throughput(cores, seconds * 1000, () =>
    runDirect(python, ['-c', pythonHello]),
  )

  const pythonSummary = summarize('Python hello world via POST /api/v2/execute', pythonRuns)
  const directPythonSummary = summarize(`${python} -c (direct, baseline)`, directPython)
  const phaseNote = (language: string): string =>
    ['queue', 'acquire', 'write', 'compile', 'run']
      .filter((phase) => phases.has(`${language}.${phase}`))
      .map((phase) => `${phase} ${median(phases.get(`${language}.${phase}`) ?? []).toFixed(1)}`)
      .join(', ')
  report(
    'run-execute',
    [
      pythonSummary,
      summarize('  its run stage alone (python3 in the sandbox)', pythonRunStage),
      summarize('C hello world via POST /api/v2/execute (gcc + run)', cRuns),
      summarize('  its run stage alone (./a.out in the sandbox)', cRunStage),
      summarize('compiled C binary run directly', directC),
    ],
    directPythonSummary,
    [
      `goals: Python p50 ≤ 30 ms; overhead over direct ≤ 15 ms (measured p50 difference: ${(pythonSummary.p50 - directPythonSummary.p50).toFixed(1)} ms)`,
      `server phases, median ms — Python: ${phaseNote('python')}; C: ${phaseNote('c')}`,
      `sustained Python runs with ${cores} cores, ${clients} clients, ${seconds} s: ${runsPerSecond.toFixed(1)} runs/s; direct ${python} -c from ${cores} workers: ${directPerSecond.toFixed(1)} runs/s (ratio ${(runsPerSecond / directPerSecond).toFixed(2)})`,
    ],
  )
} finally {
  await server.stop()
  rmSync(dataDir, { recursive: true, force: true })
  rmSync(binaryDir, { recursive: true, force: true })
}
