// Runs every test file with node:test: unit tests first, then integration suites.
// Node 20's --test takes no globs, so the files are collected here. Usage: test.mjs [filter...]
import { spawnSync } from 'node:child_process'
import { readdirSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const filters = process.argv.slice(2)

function collect(dir, out = []) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'dist' || name.startsWith('.')) {
      continue
    }
    const path = join(dir, name)
    if (statSync(path).isDirectory()) {
      collect(path, out)
    } else if (name.endsWith('.test.ts')) {
      out.push(relative(root, path))
    }
  }
  return out
}

const all = [...collect(join(root, 'packages')), ...collect(join(root, 'test'))].sort()
const selected = filters.length === 0 ? all : all.filter((f) => filters.some((x) => f.includes(x)))
const isUnit = (f) => /^packages\/[^/]+\/src\//.test(f)
const unit = selected.filter(isUnit)
const integration = selected.filter((f) => !isUnit(f))

const build = spawnSync(process.execPath, [join(root, 'scripts/build-agent.mjs')], {
  stdio: 'inherit',
  cwd: root,
})
if (build.status !== 0) {
  process.exit(build.status ?? 1)
}

// Integration files share the machine's cgroups, mounts and CPU; running them one at a time
// keeps leak checks exact and timings honest on 2 cores.
const runs = [
  { files: unit, concurrency: '2' },
  { files: integration, concurrency: '1' },
]
let failed = false
for (const { files, concurrency } of runs) {
  if (files.length === 0) {
    continue
  }
  const result = spawnSync(
    process.execPath,
    [
      '--conditions=sandcell-source',
      '--import',
      'tsx',
      '--test',
      // A file whose tests are done but that left a handle open (a socket) still ends, and its
      // leak checks report the handle, instead of holding the whole suite until CI's timeout.
      '--test-force-exit',
      `--test-concurrency=${concurrency}`,
      '--test-reporter=spec',
      ...files,
    ],
    { stdio: 'inherit', cwd: root, env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } },
  )
  failed ||= result.status !== 0
}
process.exit(failed ? 1 : 0)
