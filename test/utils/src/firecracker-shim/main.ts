/**
 * The Firecracker shim's process: Firecracker's command line, its HTTP API on `--api-sock`, a
 * QEMU guest behind it, and Firecracker's exit when the guest stops. Started through the
 * executable that {@link createFirecrackerShim} writes; the `--shim-*` options are the shim's own.
 */
import { existsSync } from 'node:fs'
import { FirecrackerController } from './api-controller.js'
import { serveApi } from './api-socket.js'
import { createQemuBackend } from './qemu-backend.js'
import { firecrackerVersion } from './shim-version.js'
import { bindVsock } from './vsock-relay.js'

/** Firecracker's exit code for a command line it cannot parse. */
const argParsingExit = 153
/** Firecracker's flags that take a value, and those it takes alone. */
const valueFlags = new Set([
  'api-sock',
  'id',
  'seccomp-filter',
  'start-time-us',
  'start-time-cpu-us',
  'parent-cpu-time-us',
  'log-path',
  'level',
  'module',
  'http-api-max-payload-size',
  'mmds-size-limit',
])
const plainFlags = new Set(['no-seccomp', 'show-level', 'show-log-origin', 'boot-timer'])
/** Real Firecracker flags whose features the shim lacks: refused loudly. */
const unsupportedFlags = new Set([
  'config-file',
  'no-api',
  'metadata',
  'metrics-path',
  'snapshot-version',
  'describe-snapshot',
  'enable-pci',
])

function fail(message: string, code = 1): never {
  process.stderr.write(`firecracker shim: ${message}\n`)
  process.exit(code)
}

function parseArguments(argv: string[]): { values: Map<string, string>; flags: Set<string> } {
  const values = new Map<string, string>()
  const flags = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? ''
    const name = arg.replace(/^--/, '')
    if (!arg.startsWith('--')) {
      fail(
        `Found argument '${arg}' which wasn't expected, or isn't valid in this context.`,
        argParsingExit,
      )
    }
    if (valueFlags.has(name) || name.startsWith('shim-')) {
      const value = argv[++i]
      if (value === undefined) {
        fail(`The argument '--${name}' requires a value, but none was supplied`, argParsingExit)
      }
      values.set(name, value)
    } else if (plainFlags.has(name) || name === 'version' || name === 'help') {
      flags.add(name)
    } else if (unsupportedFlags.has(name)) {
      fail(`the sandcell Firecracker shim does not implement --${name}`, argParsingExit)
    } else {
      fail(
        `Found argument '${arg}' which wasn't expected, or isn't valid in this context.`,
        argParsingExit,
      )
    }
  }
  return { values, flags }
}

function main(): void {
  const { values, flags } = parseArguments(process.argv.slice(2))
  if (flags.has('version') || flags.has('help')) {
    process.stdout.write(`Firecracker v${firecrackerVersion}\n\n`)
    return
  }
  const apiSocket = values.get('api-sock') ?? '/run/firecracker.socket'
  if (existsSync(apiSocket)) {
    fail(`Failed to open the API socket at: ${apiSocket}. Check that it is not already used.`)
  }
  const accel = values.get('shim-accel') === 'kvm' ? 'kvm' : 'tcg'
  const vsockPorts = new Map<number, string>()
  for (const mapping of (values.get('shim-vsock-ports') ?? '').split(',').filter(Boolean)) {
    const [port, name] = mapping.split('=')
    vsockPorts.set(Number(port), name ?? '')
  }
  const memoryCgroup = values.get('shim-vmm-memory-cgroup')
  let fatal = false
  const controller = new FirecrackerController({
    id: values.get('id') ?? 'anonymous-instance',
    version: firecrackerVersion,
    backend: createQemuBackend({
      qemuBinary: values.get('shim-qemu') ?? 'qemu-system-x86_64',
      accel,
      vsockPorts,
      ...(memoryCgroup === undefined ? {} : { vmmMemoryCgroup: memoryCgroup }),
      // Like Firecracker, the process ends with its guest.
      onExit: (code) => process.exit(code),
    }),
    bindVsock,
    onFatal: () => {
      fatal = true
    },
  })
  serveApi(
    apiSocket,
    (method, url, body) => controller.handle(method, url, body),
    () => {
      if (fatal) {
        fail('loading the snapshot failed; the process is too dirty to go on')
      }
    },
  ).catch((err: unknown) => fail(`API socket: ${(err as Error).message}`))
}

main()
