// Runs benchmarks: `npm run bench` runs every scenario in bench/, `npm run bench -- NAME [args]`
// one of them. Benchmarks print numbers; they are not timed tests.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const [name, ...args] = process.argv.slice(2)
const scenarios = readdirSync(join(root, 'bench'))
  .filter((file) => file.endsWith('.ts'))
  .map((file) => file.replace(/\.ts$/, ''))
  .sort()
const selected = name === undefined ? scenarios : scenarios.filter((s) => s === name)
if (selected.length === 0) {
  console.error(`unknown benchmark ${name}; known: ${scenarios.join(', ')}`)
  process.exit(2)
}
spawnSync(process.execPath, [join(root, 'scripts/build-agent.mjs')], { stdio: 'inherit' })
let failed = false
for (const scenario of selected) {
  const result = spawnSync(
    process.execPath,
    [
      '--conditions=sandcell-source',
      '--import',
      'tsx',
      join(root, 'bench', `${scenario}.ts`),
      ...args,
    ],
    { stdio: 'inherit', env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } },
  )
  failed ||= result.status !== 0
}
process.exit(failed ? 1 : 0)
