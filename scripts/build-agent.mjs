// Bundles the in-sandbox agent into packages/agent/bundle/: agent-main.cjs (the whole agent), its
// V8 code cache made after a warm-up run, agent.mjs (the entry that loads both), node-pty's
// runtime files and the agent's spawner addon, so the dist directory runs on its own when the
// container driver mounts it read-only at /.sandcell/agent. Skips all work when the last build
// is newer than every input, so test runs start fast. Usage: node scripts/build-agent.mjs [--force]
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { spawn } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { build } from 'esbuild'

const root = new URL('..', import.meta.url).pathname
const agentDir = join(root, 'packages/agent')
const distDir = join(agentDir, 'bundle')
const stampPath = join(distDir, '.bundle-stamp')
const force = process.argv.includes('--force')

const requireFromAgent = createRequire(join(agentDir, 'package.json'))
const nodePtyDir = dirname(requireFromAgent.resolve('node-pty/package.json'))

/** Newest mtime (ms) of the files under `path`, skipping tests and build outputs. */
function newestMtime(path) {
  if (!existsSync(path)) {
    return 0
  }
  const stats = statSync(path)
  if (!stats.isDirectory()) {
    return stats.mtimeMs
  }
  let newest = stats.mtimeMs
  for (const name of readdirSync(path)) {
    if (name === 'node_modules' || name === 'dist' || name.endsWith('.test.ts')) {
      continue
    }
    newest = Math.max(newest, newestMtime(join(path, name)))
  }
  return newest
}

// npm builds the agent's addon (node-gyp) at install; sources changed since (a merge) need a rebuild.
const addonPath = join(agentDir, 'build/Release/sandcell_spawn.node')
if (
  Math.max(newestMtime(join(agentDir, 'binding.gyp')), newestMtime(join(agentDir, 'native'))) >
  newestMtime(addonPath)
) {
  console.error(
    `build-agent: ${relative(root, addonPath)} is older than packages/agent/native; rebuild it with` +
      ' `npm rebuild -w @sandcell/agent` (offline: npm_config_nodedir=/usr npm rebuild -w @sandcell/agent)',
  )
  process.exit(1)
}

const inputs = [
  join(agentDir, 'src'),
  join(agentDir, 'package.json'),
  join(root, 'packages/shared/src'),
  join(root, 'packages/protocol/src'),
  join(root, 'package-lock.json'),
  join(nodePtyDir, 'package.json'),
  join(nodePtyDir, 'lib'),
  join(nodePtyDir, 'build/Release/pty.node'),
  addonPath,
  new URL(import.meta.url).pathname,
]

const newestInput = Math.max(...inputs.map(newestMtime))
const stampText = `${process.version}\n`
if (
  !force &&
  existsSync(stampPath) &&
  statSync(stampPath).mtimeMs >= newestInput &&
  readFileSync(stampPath, 'utf8').endsWith(stampText)
) {
  process.exit(0)
}

const started = performance.now()
rmSync(distDir, { recursive: true, force: true })
mkdirSync(distDir, { recursive: true })

/** One copy of @connectrpc/connect in the bundle, whichever workspace imports it. */
const dedupeConnect = {
  name: 'dedupe-connect',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^@connectrpc\/connect$/ }, async (args) => {
      if (args.pluginData?.deduped === true) {
        return undefined
      }
      return pluginBuild.resolve(args.path, {
        kind: args.kind,
        resolveDir: agentDir,
        pluginData: { deduped: true },
      })
    })
  },
}

/**
 * Workspace sources are side-effect free modules: let esbuild drop the ones the agent does not use
 * (e.g. @sandcell/shared's YAML config loader, which would pull yaml and full zod into startup).
 */
const workspaceSourcesArePure = {
  name: 'workspace-sources-are-pure',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^@sandcell\/|^\.\.?\// }, async (args) => {
      if (args.pluginData?.pure === true) {
        return undefined
      }
      const resolved = await pluginBuild.resolve(args.path, {
        kind: args.kind,
        resolveDir: args.resolveDir,
        importer: args.importer,
        pluginData: { pure: true },
      })
      if (
        resolved.errors.length > 0 ||
        !/\/packages\/(shared|protocol)\/src\//.test(resolved.path)
      ) {
        return resolved
      }
      return { ...resolved, sideEffects: false }
    })
  },
}

/** pino's transports run in worker threads; the agent never uses them, so they stay out of startup. */
const noPinoTransports = {
  name: 'no-pino-transports',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^thread-stream$/ }, () => ({
      path: 'thread-stream',
      namespace: 'stub',
    }))
    pluginBuild.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({
      contents:
        'module.exports = function ThreadStream() { throw new Error("pino transports are not bundled in the agent") }',
      loader: 'js',
    }))
  },
}

/** sonic-boom (pino's writer) is the only user of node:assert, for one call: see assert-lite.cjs. */
const liteAssert = {
  name: 'lite-assert',
  setup(pluginBuild) {
    pluginBuild.onResolve({ filter: /^(node:)?assert$/ }, (args) =>
      /[/\\]sonic-boom[/\\]/.test(args.importer)
        ? { path: join(agentDir, 'src/assert-lite.cjs') }
        : undefined,
    )
  },
}

const result = await build({
  absWorkingDir: root,
  entryPoints: { 'agent-main': join(agentDir, 'src/main.ts') },
  outdir: distDir,
  bundle: true,
  // One CommonJS file: V8 can code-cache a classic script, not ES modules (Node 20).
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  conditions: ['sandcell-source'],
  external: ['node-pty'],
  plugins: [dedupeConnect, workspaceSourcesArePure, noPinoTransports, liteAssert],
  outExtension: { '.js': '.cjs' },
  define: { 'import.meta.url': '__sandcellImportMetaUrl' },
  banner: {
    js: "const __sandcellImportMetaUrl = require('node:url').pathToFileURL(__filename).href;",
  },
  minify: true,
  legalComments: 'none',
  sourcemap: 'linked',
  metafile: true,
  logLevel: 'warning',
})

await build({
  absWorkingDir: root,
  entryPoints: { agent: join(agentDir, 'src/boot.ts') },
  outdir: distDir,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outExtension: { '.js': '.mjs' },
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
})

// node-pty is a native addon: ship its JS and the compiled binding, nothing else.
const ptyTarget = join(distDir, 'node_modules/node-pty')
cpSync(join(nodePtyDir, 'package.json'), join(ptyTarget, 'package.json'))
cpSync(join(nodePtyDir, 'lib'), join(ptyTarget, 'lib'), {
  recursive: true,
  filter: (source) => !/\.test\.js$|\.map$/.test(source),
})
cpSync(join(nodePtyDir, 'build/Release/pty.node'), join(ptyTarget, 'build/Release/pty.node'))
// The agent's own spawner (packages/agent/native), found next to the bundle at run time.
cpSync(
  join(agentDir, 'build/Release/sandcell_spawn.node'),
  join(distDir, 'native/sandcell_spawn.node'),
)

/**
 * World-readable whatever the builder's umask: inside a sandbox the host's files belong to an
 * unmapped owner, so the agent (root of its user namespace) and the users it acts as read them
 * through the "other" bits.
 */
function makeWorldReadable(path) {
  const stats = statSync(path)
  if (stats.isDirectory()) {
    chmodSync(path, 0o755)
    for (const name of readdirSync(path)) {
      makeWorldReadable(join(path, name))
    }
  } else {
    chmodSync(path, stats.mode & 0o111 ? 0o755 : 0o644)
  }
}
/**
 * Runs the built agent once, warms it up (it compiles its request path before reporting ready),
 * and has it write V8's code cache of the bundle, compiled functions included.
 */
async function writeCodeCache() {
  const work = mkdtempSync(join(tmpdir(), 'sandcell-agent-cache-'))
  const cacheFile = join(distDir, 'agent-main.cjs.cache')
  try {
    const child = spawn(
      process.execPath,
      [
        '--v8-pool-size=1',
        join(distDir, 'agent.mjs'),
        '--listen',
        `unix:${join(work, 'agent.sock')}`,
        '--root',
        work,
        '--log-level',
        'warn',
        '--ready-fd',
        '3',
      ],
      {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          SANDCELL_AGENT_WRITE_CODE_CACHE: cacheFile,
        },
        stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      },
    )
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk.toString()))
    let exited = false
    child.once('exit', () => (exited = true))
    await new Promise((resolve, reject) => {
      child.stdio[3].once('data', () => resolve())
      child.once('exit', (code) => reject(new Error(`the agent exited (${code}): ${stderr}`)))
    })
    rmSync(cacheFile, { force: true })
    child.kill('SIGUSR2')
    // The agent renames the finished cache into place: its appearance is the signal.
    const deadline = Date.now() + 20_000
    while (!existsSync(cacheFile)) {
      if (exited || Date.now() > deadline) {
        throw new Error(`the agent wrote no code cache: ${stderr}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    child.kill('SIGKILL')
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}
await writeCodeCache()

makeWorldReadable(distDir)

writeFileSync(stampPath, `${new Date().toISOString()}\n${stampText}`)
const outputs = Object.entries(result.metafile.outputs)
  .filter(([file]) => file.endsWith('.cjs'))
  .map(([file, info]) => `${relative(root, file)} ${Math.round(info.bytes / 1024)} KiB`)
process.stdout.write(
  `build-agent: ${outputs.join(', ')} in ${Math.round(performance.now() - started)} ms\n`,
)
