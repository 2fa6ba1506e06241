/** The agent's entry point: argv → config → logger → server → ready line → wait for SIGTERM. */
import { closeSync, writeSync } from 'node:fs'
import { createLogger, errorMessage, type Logger } from '@sandcell/shared'
import { parseAgentArgv, type AgentConfig } from './config.js'
import { createAgentServer, type AgentServer, type BoundListener } from './server.js'
import { installWebHeaders } from './web-headers.js'

// Before anything can touch the global Headers (see web-headers.ts).
installWebHeaders()

/** Startup failed: one clear line on stderr (the host shows the log's tail), exit non-zero. */
function failStartup(err: unknown): never {
  writeSync(2, `sandcell-agent: startup failed: ${errorMessage(err)}\n`)
  process.exit(2)
}

/**
 * Drops the agent's supplementary groups: it is root and needs none, and children started by
 * node-pty (which does not call setgroups) would otherwise inherit them.
 */
function dropSupplementaryGroups(log: Logger): void {
  if (
    process.getuid?.() !== 0 ||
    process.setgroups === undefined ||
    process.getgroups?.().length === 0
  ) {
    return
  }
  try {
    process.setgroups([])
  } catch (err) {
    // In a user namespace with setgroups denied the groups are unmapped and harmless.
    log.debug({ err: errorMessage(err) }, 'cannot drop supplementary groups')
  }
}

/** `ready <json>\n` on the ready fd: the agent's pid and its listeners as bound (real TCP ports). */
function announceReady(fd: number, listeners: BoundListener[]): void {
  const line = `ready ${JSON.stringify({ pid: process.pid, listeners })}\n`
  writeSync(fd, line)
  closeSync(fd)
}

/** Shutdown never takes longer than this: the host is waiting to tear the sandbox down. */
const shutdownDeadlineMs = 5000

/** Exits after a last log line; exiting must not depend on the log still being writable. */
function exitWith(code: number, log: Logger): never {
  try {
    log.flush()
  } catch {
    // The log's reader is gone: nothing more to tell it.
  }
  process.exit(code)
}

function installSignalHandlers(server: AgentServer, log: Logger): void {
  let stopping = false
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal, exiting now')
      exitWith(1, log)
    }
    stopping = true
    log.info({ signal }, 'stopping')
    setTimeout(() => {
      log.error({ deadlineMs: shutdownDeadlineMs }, 'shutdown did not finish in time, exiting')
      exitWith(1, log)
    }, shutdownDeadlineMs).unref()
    server
      .close()
      .then(() => {
        log.info('stopped')
        exitWith(0, log)
      })
      .catch((err: unknown) => {
        log.error({ err }, 'shutdown failed')
        exitWith(1, log)
      })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  // A request-level bug must not take the sandbox's control plane down with it.
  process.on('uncaughtException', (err) => log.error({ err }, 'uncaught exception'))
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'))
}

async function main(): Promise<void> {
  let config: AgentConfig
  try {
    config = parseAgentArgv(process.argv.slice(2))
  } catch (err) {
    failStartup(err)
  }
  // Files the agent creates for users get 0644/0755, whatever umask the launcher had.
  process.umask(0o022)
  const log = createLogger({ level: config.logLevel, name: 'sandcell-agent' })
  let server: AgentServer
  let listeners: BoundListener[]
  try {
    server = createAgentServer({ config, log })
    listeners = await server.listen()
    installSignalHandlers(server, log)
    dropSupplementaryGroups(log)
    // Ready means served at full speed: the services are loaded and the request path compiled,
    // so the host's first command does not pay for them.
    await server.warm()
    if (config.readyFd !== undefined) {
      announceReady(config.readyFd, listeners)
    }
  } catch (err) {
    failStartup(err)
  }
  log.info({ listeners, startupMs: Math.round(performance.now()) }, 'agent ready')
}

main().catch((err: unknown) => failStartup(err))
