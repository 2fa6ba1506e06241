/** The server's Prometheus metrics (prom-client), served at GET /metrics. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { pistonOutcome, stageSucceeded, type RunResult } from '@sandcell/runs'

export interface ServerMetrics {
  registry: Registry
  sandboxes: Gauge<'state'>
  createSeconds: Histogram
  proxyRequests: Counter<'status'>
  proxyBytes: Counter<'direction'>
  apiRequests: Counter<'route' | 'status'>
  runs: Counter<'language' | 'outcome'>
  runSeconds: Histogram
  runsRejected: Counter
  runsWaiting: Gauge
}

export function createServerMetrics(): ServerMetrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'sandcell_process_' })
  return {
    registry,
    sandboxes: new Gauge({
      name: 'sandcell_sandboxes',
      help: 'Sandboxes the server manages, by state',
      labelNames: ['state'],
      registers: [registry],
    }),
    createSeconds: new Histogram({
      name: 'sandcell_sandbox_create_seconds',
      help: 'Time from a create request to a sandbox ready to use',
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    proxyRequests: new Counter({
      name: 'sandcell_proxy_requests_total',
      help: 'Requests forwarded to sandbox agents, by HTTP status class',
      labelNames: ['status'],
      registers: [registry],
    }),
    proxyBytes: new Counter({
      name: 'sandcell_proxy_bytes_total',
      help: 'Bytes through the sandbox proxy, by direction (in = to sandboxes)',
      labelNames: ['direction'],
      registers: [registry],
    }),
    apiRequests: new Counter({
      name: 'sandcell_api_requests_total',
      help: 'API requests by route and status',
      labelNames: ['route', 'status'],
      registers: [registry],
    }),
    runs: new Counter({
      name: 'sandcell_runs_total',
      help: 'One-shot runs by language and outcome (ok, compile_error, a Piston status, error)',
      labelNames: ['language', 'outcome'],
      registers: [registry],
    }),
    runSeconds: new Histogram({
      name: 'sandcell_run_seconds',
      help: 'Time from a run request to its result, queueing included',
      buckets: [0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    runsRejected: new Counter({
      name: 'sandcell_runs_rejected_total',
      help: 'Runs answered 429 because every slot stayed busy',
      registers: [registry],
    }),
    runsWaiting: new Gauge({
      name: 'sandcell_runs_waiting',
      help: 'Runs waiting for a slot',
      registers: [registry],
    }),
  }
}

/**
 * The `outcome` label of a run: `ok`, `compile_error`, the run stage's Piston status, or `error`
 * for a run that failed (`result` undefined).
 */
export function runOutcome(result: RunResult | undefined): string {
  if (result === undefined) {
    return 'error'
  }
  if (result.run !== undefined) {
    return pistonOutcome(result.run.end).status ?? 'ok'
  }
  return result.compile !== undefined && !stageSucceeded(result.compile.end)
    ? 'compile_error'
    : 'ok'
}
