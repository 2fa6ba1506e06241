/**
 * The agent's full request handler: the envd Connect services plus the envd HTTP routes that need
 * the heavy modules (/files, /archive, /metrics). Loaded lazily by server.ts once the listeners
 * are up, so none of this is on the startup path.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Code, type ConnectError, type Interceptor } from '@connectrpc/connect'
import { connectNodeAdapter } from '@connectrpc/connect-node'
import { Filesystem, Process, toConnectError } from '@sandcell/protocol'
import { NotFoundError, SandcellError, type Logger } from '@sandcell/shared'
import type { AgentContext } from './agent-context.js'
import { createFilesystemService } from './filesystem/filesystem-service.js'
import { PolledWatchers } from './filesystem/polled-watchers.js'
import { handleArchive } from './http/archive.js'
import { handleFiles } from './http/files.js'
import { discardBody, sendError, sendJson } from './http/http-response.js'
import { createMetricsSource } from './http/metrics.js'
import { nativeAddon } from './native-addon.js'
import { createProcessService } from './process/process-service.js'
import { ProcessTable } from './process/process-table.js'

/** Largest RPC message accepted (SendInput chunks, StreamInput frames). */
const readMaxBytes = 32 * 1024 * 1024
/** Most of an unread upload body drained before an error answer. */
const maxDiscardBytes = 1024 * 1024

/** The handler plus what must be torn down at shutdown. */
export interface AgentRoutes {
  handle(req: IncomingMessage, res: ServerResponse, url: URL): void
  /** Kills every process group (SIGKILL) and stops every watcher; resolves once processes ended. */
  shutdown(timeoutMs: number): Promise<void>
}

/** Builds the services and the HTTP routes over one context. */
export function createAgentRoutes(context: AgentContext): AgentRoutes {
  // File operations call the addon inside credential brackets, as sandbox users, who cannot
  // reach the agent's directory (/.sandcell is 0700): load it now, as the agent.
  nativeAddon()
  const log = context.log.child({ component: 'agent.rpc' })
  const table = new ProcessTable()
  const watchers = new PolledWatchers(log)
  const readMetrics = createMetricsSource({ diskPath: context.root })
  const rpcContext = { ...context, log }

  const httpFallback = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://agent')
    const route = `${req.method ?? 'GET'} ${url.pathname}`
    const done = (promise: Promise<void>): void => {
      // Every failure is answered here (after draining a little of an unread body, so the client
      // sees the answer rather than a broken pipe); nothing escapes to crash the agent.
      promise
        .catch(async (err: unknown) => {
          await discardBody(req, maxDiscardBytes)
          sendError(res, err, log)
        })
        .catch((err: unknown) => log.error({ err }, 'cannot answer a failed request'))
    }
    switch (route) {
      case 'GET /files':
      case 'POST /files':
        done(handleFiles(req, res, url, context))
        return
      case 'POST /archive':
        done(handleArchive(req, res, url, context))
        return
      case 'GET /metrics':
        sendJson(res, 200, readMetrics())
        return
      default:
        sendError(res, new NotFoundError(`no route for ${route}`), log)
    }
  }

  const adapter = connectNodeAdapter({
    routes(router) {
      router.service(Process, createProcessService({ context: rpcContext, table }))
      router.service(Filesystem, createFilesystemService({ context: rpcContext, watchers }))
    },
    interceptors: [translateErrors(log)],
    readMaxBytes,
    jsonOptions: { ignoreUnknownFields: true },
    fallback: (req, res) => httpFallback(req as IncomingMessage, res as ServerResponse),
  })

  return {
    handle(req, res) {
      adapter(req, res)
    },
    async shutdown(timeoutMs) {
      watchers.closeAll()
      table.killAll('SIGKILL')
      await table.waitAll(timeoutMs)
    },
  }
}

/**
 * Turns every error a handler throws (also mid-stream) into the ConnectError of its sandcell
 * class, logs the ones that are not the client's fault, and logs each RPC at debug.
 */
function translateErrors(log: Logger): Interceptor {
  const translate = (err: unknown, method: string): ConnectError => {
    const connectError = toConnectError(err)
    if (
      !(err instanceof SandcellError) ||
      connectError.code === Code.Internal ||
      connectError.code === Code.Unknown
    ) {
      if (connectError.code !== Code.Canceled) {
        log.error({ err, method }, 'rpc failed')
      }
    } else {
      log.debug(
        { method, code: Code[connectError.code], message: connectError.rawMessage },
        'rpc rejected',
      )
    }
    return connectError
  }
  return (next) => async (request) => {
    const method = `${request.service.typeName}/${request.method.name}`
    const started = performance.now()
    let response
    try {
      response = await next(request)
    } catch (err) {
      throw translate(err, method)
    }
    log.debug(
      { method, durationMs: Math.round(performance.now() - started) },
      response.stream ? 'rpc stream started' : 'rpc',
    )
    if (!response.stream) {
      return response
    }
    const messages = response.message
    return {
      ...response,
      message: (async function* () {
        try {
          yield* messages
        } catch (err) {
          throw translate(err, method)
        }
      })(),
    }
  }
}
