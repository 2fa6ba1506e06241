/**
 * `sandcell serve`: the E2B-compatible API and the sandbox proxy on one port, until SIGTERM or
 * SIGINT; then requests in flight drain and sandboxes keep running for the next start (unless
 * --kill-sandboxes-on-exit).
 */
import { Command, InvalidArgumentError as CommanderArgumentError } from 'commander'
import { createLogger } from '@sandcell/shared'

export interface ServeContext {
  env: Record<string, string | undefined>
  globals: () => {
    config?: string | undefined
    dataDir?: string | undefined
    logLevel?: string | undefined
  }
}

interface ServeFlags {
  host?: string
  port?: number
  killSandboxesOnExit?: boolean
  dataDir?: string
  config?: string
  logLevel?: string
}

function parsePort(value: string): number {
  const port = Number(value)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new CommanderArgumentError('--port must be a whole number from 0 to 65535')
  }
  return port
}

export function serveCommand(context: ServeContext): Command {
  return new Command('serve')
    .description('start the API server and the sandbox proxy (Ctrl-C or SIGTERM stops it)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'port to listen on (default 3000; 0 = any free port)', parsePort)
    .option('--kill-sandboxes-on-exit', 'destroy every sandbox when the server stops')
    .option('--data-dir <dir>', 'where the store, templates, disks and sandboxes live')
    .option('--config <file>', 'YAML config file')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .action(async (flags: ServeFlags) => {
      // Loaded on use: the CLI's other commands start without the server.
      const { loadServerConfig, startServer } = await import('@sandcell/server')
      const globals = context.globals()
      const config = loadServerConfig({
        file: flags.config ?? globals.config,
        env: context.env,
        flags: {
          host: flags.host,
          port: flags.port,
          dataDir: flags.dataDir ?? globals.dataDir,
          logLevel: flags.logLevel ?? globals.logLevel,
          killSandboxesOnExit: flags.killSandboxesOnExit,
        },
      })
      const log = createLogger({ level: config.logLevel, name: 'sandcell' })
      // Signals are ours from before the start: one arriving while the server starts is kept
      // and acted on as soon as there is a server to stop, never the default kill mid-start.
      let requested: NodeJS.Signals | undefined
      let stop: ((signal: NodeJS.Signals) => void) | undefined
      const onSignal = (signal: NodeJS.Signals): void => {
        if (stop === undefined) {
          requested ??= signal
        } else {
          stop(signal)
        }
      }
      process.on('SIGTERM', onSignal)
      process.on('SIGINT', onSignal)
      try {
        const server = await startServer({ config, log })
        process.stdout.write(`sandcell listening on ${server.url}\n`)
        if (server.generatedApiKey !== undefined) {
          process.stdout.write(
            `API key (shown once, keep it): ${server.generatedApiKey}\n` +
              `  export E2B_API_URL=${server.url} E2B_SANDBOX_URL=${server.url} E2B_API_KEY=${server.generatedApiKey}\n`,
          )
        }
        await new Promise<void>((resolve) => {
          let stopping = false
          stop = (signal) => {
            if (stopping) {
              log.warn({ signal }, 'second signal: exiting without waiting for the drain')
              process.exit(130)
            }
            stopping = true
            log.info({ signal }, 'stopping')
            server.close().then(resolve, (err: unknown) => {
              log.error({ err }, 'the server did not stop cleanly')
              process.exitCode = 1
              resolve()
            })
          }
          if (requested !== undefined) {
            stop(requested)
          }
        })
      } finally {
        process.off('SIGTERM', onSignal)
        process.off('SIGINT', onSignal)
      }
    })
}
