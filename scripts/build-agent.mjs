// Bundles the in-sandbox agent into packages/agent/dist/agent.mjs (plus lazily loaded chunks) and
// copies node-pty's runtime files next to it, so the dist directory runs on its own when the
// container driver mounts it read-only at /.sandcell/agent. Skips all work when the last build
// is newer than every input, so test runs start fast. Usage: node scripts/build-agent.mjs [--force]
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, relative } from 'node:path'
import { build } from 'esbuild'

const root = new URL('..', import.meta.url).pathname
const agentDir = join(root, 'packages/agent')
const distDir = join(agentDir, 'dist')
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

const inputs = [
  join(agentDir, 'src'),
  join(agentDir, 'package.json'),
  join(root, 'packages/shared/src'),
  join(root, 'packages/protocol/src'),
  join(root, 'package-lock.json'),
  join(nodePtyDir, 'package.json'),
  join(nodePtyDir, 'lib'),
  join(nodePtyDir, 'build/Release/pty.node'),
  join(agentDir, 'build/Release/sandcell_spawn.node'),
  new URL(import.meta.url).pathname,
]

const newestInput = Math.max(...inputs.map(newestMtime))
if (!force && existsSync(stampPath) && statSync(stampPath).mtimeMs >= newestInput) {
  process.exit(0)
}

const started = performance.now()
// Only the bundle's own outputs: tsc -b also emits into dist/ and keeps its files.
for (const name of [
  'agent.mjs',
  'agent.mjs.map',
  'chunks',
  'node_modules',
  'native',
  '.bundle-stamp',
]) {
  rmSync(join(distDir, name), { recursive: true, force: true })
}
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

const result = await build({
  absWorkingDir: root,
  entryPoints: { agent: join(agentDir, 'src/main.ts') },
  outdir: distDir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  conditions: ['sandcell-source'],
  external: ['node-pty'],
  plugins: [dedupeConnect, workspaceSourcesArePure, noPinoTransports],
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  // CommonJS dependencies (pino, busboy) call require() for Node built-ins.
  banner: {
    js: "import { createRequire as __sandcellCreateRequire } from 'node:module'; const require = __sandcellCreateRequire(import.meta.url);",
  },
  minifySyntax: true,
  minifyWhitespace: true,
  legalComments: 'none',
  sourcemap: 'linked',
  metafile: true,
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
for (const name of ['agent.mjs', 'agent.mjs.map', 'chunks', 'node_modules', 'native']) {
  makeWorldReadable(join(distDir, name))
}

writeFileSync(stampPath, `${new Date().toISOString()}\n`)
const outputs = Object.entries(result.metafile.outputs)
  .filter(([file]) => file.endsWith('.mjs'))
  .map(([file, info]) => `${relative(root, file)} ${Math.round(info.bytes / 1024)} KiB`)
process.stdout.write(
  `build-agent: ${outputs.join(', ')} in ${Math.round(performance.now() - started)} ms\n`,
)
