/**
 * The HTTP server: one port for E2B's API (Fastify) and for the proxy to every sandbox's agent.
 * Requests addressed to a sandbox (E2b-Sandbox-Id header, PORT-ID.DOMAIN host, signed file
 * URLs) go to the proxy before Fastify parses anything, so their bodies stream untouched.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import fastifyWebsocket from '@fastify/websocket'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { NetworkStatus } from '@sandcell/network'
import type { Logger } from '@sandcell/shared'
import type { ServerConfig } from './config/schema.js'
import { errorBody, handleError } from './error-handler.js'
import type { ServerMetrics } from './metrics.js'
import { sandboxRoutes } from './routes/e2b/sandboxes.js'
import { snapshotRoutes } from './routes/e2b/snapshots.js'
import { templateRoutes } from './routes/e2b/templates.js'
import { functionRoutes } from './routes/functions/functions.js'
import { unsupportedRoutes, volumeContentPath } from './routes/e2b/unsupported.js'
import { pistonRoutes } from './routes/piston/piston-routes.js'
import { lambdoRoutes } from './routes/run/lambdo.js'
import type { RunService } from '@sandcell/runs'
import type { ApiKeys } from './services/api-keys.js'
import type { SandboxService } from './services/sandbox-service.js'
import type { TemplateService } from './services/template-service.js'
import type { FunctionService } from './services/function-service.js'

/** The part of the envd proxy the app dispatches to. */
export interface ProxyDispatch<Route> {
  route(req: IncomingMessage): Route | undefined
  handle(req: IncomingMessage, res: ServerResponse, route: Route): void
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, route: Route): void
}

export interface AppDeps<Route> {
  config: Readonly<ServerConfig>
  log: Logger
  service: SandboxService
  templates: TemplateService
  functions: FunctionService
  apiKeys: ApiKeys
  metrics: ServerMetrics
  proxy: ProxyDispatch<Route>
  runs: RunService
  /** Sandbox networking, when it is on: /health reports it. */
  network?: { status(): NetworkStatus }
}

/** Paths anyone may read: liveness and Prometheus scraping. */
const publicPaths = new Set(['/health', '/metrics'])

/** Template file uploads: the SDK sends them without its key, the link's signature authorises. */
const templateUploadPath = /^\/templates\/[^/]+\/files\/[^/]+\/upload$/

/**
 * The one-shot run APIs and OpenLambda's functions API, which Piston, Lambdo and OpenLambda
 * clients call without a key.
 */
function isRunApiPath(path: string): boolean {
  return (
    path === '/run' ||
    path.startsWith('/run/') ||
    path === '/registry' ||
    path.startsWith('/registry/') ||
    path === '/languages' ||
    path === '/api/v2' ||
    path.startsWith('/api/v2/')
  )
}

/** Run requests carry code (base64 is 4/3 of the bytes) and JSON around it. */
function runBodyLimit(config: Readonly<ServerConfig>): number {
  return Math.max(1024 * 1024, Math.ceil(config.run.maxFilesBytes * 1.5) + 256 * 1024)
}

/**
 * pino's Logger is what Fastify expects at run time; typed as Fastify's base logger so the app
 * is a plain FastifyInstance (inferring pino's generics would make every plugin's type differ).
 */
function fastifyLogger(log: Logger): FastifyBaseLogger {
  return log
}

/** What anyone may know of sandbox networking: whether it works, not how the host resolves. */
function networkHealth(status: NetworkStatus | undefined): Record<string, unknown> {
  if (status === undefined) {
    return { enabled: false }
  }
  return {
    enabled: true,
    started: status.started,
    ipForward: status.ipForward,
    slots: status.slots,
    readySlots: status.readySlots,
  }
}

export function buildApp<Route>(deps: AppDeps<Route>): FastifyInstance {
  const app = Fastify({
    loggerInstance: fastifyLogger(deps.log.child({ component: 'server.api' })),
    // Uploads go through the proxy; API bodies are small JSON.
    bodyLimit: 1024 * 1024,
    // Requests are counted in Prometheus; a log line each would drown the useful ones.
    logController: new LogController({ disableRequestLogging: true }),
    // Errors of the router itself (an overlong path parameter, a broken URL) in the API's shape.
    frameworkErrors: handleError,
    serverFactory: (handler) => {
      const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
        const route = deps.proxy.route(req)
        if (route === undefined) {
          handler(req, res)
        } else {
          deps.proxy.handle(req, res, route)
        }
      })
      // An upgrade naming a sandbox (a WebSocket to one of its ports) must reach the proxy
      // before the WebSocket plugin's 'upgrade' listener, which would route it to the API.
      const emit = server.emit.bind(server) as (event: string, ...args: unknown[]) => boolean
      server.emit = ((event: string, ...args: unknown[]): boolean => {
        if (event === 'upgrade') {
          const [req, socket, head] = args as [IncomingMessage, Duplex, Buffer]
          const route = deps.proxy.route(req)
          if (route !== undefined) {
            deps.proxy.handleUpgrade(req, socket, head, route)
            return true
          }
        }
        return emit(event, ...args)
      }) as typeof server.emit
      return server
    },
  })
  app.setErrorHandler(handleError)
  app.setNotFoundHandler((request, reply) =>
    reply
      .status(404)
      .send(errorBody(404, `no route for ${request.method} ${request.url.split('?')[0]}`)),
  )
  app.addHook('onRequest', async (request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    if (
      publicPaths.has(path) ||
      (deps.config.runApiAuth === 'none' && isRunApiPath(path)) ||
      (request.method === 'PUT' && templateUploadPath.test(path)) ||
      volumeContentPath.test(path)
    ) {
      return
    }
    const key = request.headers['x-api-key']
    if (!deps.apiKeys.verify(Array.isArray(key) ? key[0] : key)) {
      await reply
        .status(401)
        .send(errorBody(401, 'Invalid API key: send a valid key in the X-API-KEY header'))
    }
  })
  app.addHook('onResponse', async (request, reply) => {
    deps.metrics.apiRequests.inc({
      route: request.routeOptions.url ?? 'unmatched',
      status: String(reply.statusCode),
    })
  })
  app.get('/health', () => ({
    status: 'ok',
    sandboxes: deps.service.counts(),
    warmPool: deps.service.poolReady(),
    runs: { ...deps.runs.load(), warmPool: deps.runs.poolReady() },
    network: networkHealth(deps.network?.status()),
  }))
  app.get('/metrics', async (_request, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()),
  )
  sandboxRoutes(app, {
    service: deps.service,
    config: deps.config,
    templateIdOf: (reference) => deps.templates.findTemplate(reference)?.id,
  })
  snapshotRoutes(app, { service: deps.service, config: deps.config })
  templateRoutes(app, { templates: deps.templates, sandboxes: deps.service })
  functionRoutes(app, { functions: deps.functions })
  unsupportedRoutes(app)
  void app.register(fastifyWebsocket, { options: { maxPayload: runBodyLimit(deps.config) } })
  pistonRoutes(app, { runs: deps.runs, bodyLimit: runBodyLimit(deps.config) })
  lambdoRoutes(app, { runs: deps.runs, bodyLimit: runBodyLimit(deps.config) })
  return app
}
