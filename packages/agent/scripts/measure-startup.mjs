// Measures the built agent's cold start (spawn → ready line on the ready fd) and idle memory,
// against an empty Node script spawned the same way. Usage:
//   node packages/agent/scripts/measure-startup.mjs [runs=40] [-- extra node flags…]
import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const bundle = new URL('../bundle/agent.mjs', import.meta.url).pathname
const separator = process.argv.indexOf('--')
const runs = Number(process.argv[2] && process.argv[2] !== '--' ? process.argv[2] : 40)
const nodeFlags = separator === -1 ? [] : process.argv.slice(separator + 1)

const dir = mkdtempSync(join(tmpdir(), 'sandcell-agent-bench-'))
const root = join(dir, 'root')
mkdirSync(join(root, 'etc'), { recursive: true })
writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n')
const empty = join(dir, 'empty.mjs')
writeFileSync(
  empty,
  "import { writeSync, closeSync } from 'node:fs'\nwriteSync(3, 'ready\\n'); closeSync(3)\n",
)
const env = { ...process.env }
delete env.NODE_EXTRA_CA_CERTS

/** Spawns node with `args`, resolves with ms until the first line on fd 3, and the child. */
function timeToReady(args) {
  const started = performance.now()
  const child = spawn(process.execPath, [...nodeFlags, ...args], {
    stdio: ['ignore', 'ignore', 'inherit', 'pipe'],
    env,
  })
  return new Promise((resolve, reject) => {
    child.stdio[3].once('data', () => resolve({ ms: performance.now() - started, child }))
    child.once('error', reject)
  })
}

/** Sends Process.List over the socket; resolves when answered. */
function listProcesses(socketPath) {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: 'POST',
        path: '/process.Process/List',
        headers: { 'content-type': 'application/json' },
      },
      (res) => {
        res.resume()
        res.once('end', () =>
          res.statusCode === 200 ? resolve() : reject(new Error(`List answered ${res.statusCode}`)),
        )
      },
    )
    req.once('error', reject)
    req.end('{}')
  })
}

async function stop(child) {
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
}

const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

const agentArgs = (i) => [
  bundle,
  '--listen',
  `unix:${join(dir, `a${i}.sock`)}`,
  '--root',
  root,
  '--ready-fd',
  '3',
  '--log-level',
  'warn',
]
const baseline = []
const agent = []
const firstRpc = []
for (let i = 0; i < runs; i += 1) {
  // Interleaved so that machine noise hits both alike.
  const b = await timeToReady([empty])
  baseline.push(b.ms)
  await new Promise((resolve) => b.child.once('exit', resolve))
  const started = performance.now()
  const a = await timeToReady(agentArgs(i))
  agent.push(a.ms)
  await listProcesses(join(dir, `a${i}.sock`))
  firstRpc.push(performance.now() - started)
  await stop(a.child)
}

// Idle memory: a fresh agent, after its lazy chunk loaded and things settled.
const { child } = await timeToReady(agentArgs('idle'))
await new Promise((resolve) => setTimeout(resolve, 1500))
const rollup = readFileSync(`/proc/${child.pid}/smaps_rollup`, 'utf8')
const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(rollup)?.[1] ?? NaN)
await stop(child)
rmSync(dir, { recursive: true, force: true })

const fmt = (values) =>
  `p50 ${percentile(values, 50).toFixed(1)} ms, p95 ${percentile(values, 95).toFixed(1)} ms`
process.stdout.write(
  [
    `node flags: ${nodeFlags.join(' ') || '(none)'}; runs: ${runs}`,
    `empty node → ready: ${fmt(baseline)}`,
    `agent      → ready: ${fmt(agent)}`,
    `agent over empty node: p50 +${(percentile(agent, 50) - percentile(baseline, 50)).toFixed(1)} ms`,
    `agent → first RPC (Process.List) answered: ${fmt(firstRpc)}`,
    `idle agent: RSS ${(kib('Rss') / 1024).toFixed(1)} MiB, PSS ${(kib('Pss') / 1024).toFixed(1)} MiB, anon ${(kib('Anonymous') / 1024).toFixed(1)} MiB`,
    '',
  ].join('\n'),
)
