/**
 * The agent's entry file (bundle/agent.mjs): runs the agent bundle (agent-main.cjs) through V8's
 * code cache, made at build time after a warm-up, so a sandbox's agent skips parsing and
 * compiling ~600 KB of JavaScript. A cache from another Node version is rejected by V8 and the
 * bundle simply compiles. With SANDCELL_AGENT_WRITE_CODE_CACHE=FILE set (the build does this),
 * SIGUSR2 writes a fresh cache to FILE (atomically).
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { Module, createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Script } from 'node:vm'

const here = dirname(fileURLToPath(import.meta.url))
const bundle = join(here, 'agent-main.cjs')
const cacheFile = `${bundle}.cache`

let cachedData: Buffer | undefined
try {
  cachedData = readFileSync(cacheFile)
} catch {
  // No cache (first build, or removed): compile normally.
}
const script = new Script(Module.wrap(readFileSync(bundle, 'utf8')), {
  filename: bundle,
  ...(cachedData === undefined ? {} : { cachedData }),
})
if (script.cachedDataRejected === true) {
  // Made by another Node, or under other V8 flags (V8 keys the cache by them): the agent still runs, only slower to start.
  process.stderr.write(
    'sandcell-agent: code cache rejected (made by another Node or with other V8 flags)\n',
  )
}
const moduleObject = { exports: {} }
const run = script.runInThisContext() as (
  exports: object,
  require: NodeJS.Require,
  module: object,
  filename: string,
  dirname: string,
) => void
run(moduleObject.exports, createRequire(bundle), moduleObject, bundle, here)

const cacheTarget = process.env.SANDCELL_AGENT_WRITE_CODE_CACHE
if (cacheTarget !== undefined && cacheTarget !== '') {
  process.on('SIGUSR2', () => {
    writeFileSync(`${cacheTarget}.tmp`, script.createCachedData())
    renameSync(`${cacheTarget}.tmp`, cacheTarget)
  })
}
