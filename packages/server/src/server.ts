/**
 * Starts the whole server: store, runtime, warm pool, sandbox service (which adopts what the
 * last process left running), API keys, proxy, HTTP listener. `close` drains requests and, by
 * default, leaves sandboxes running for the next start.
 */
import { mkdirSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { TemplateBuilder } from '@sandcell/builds'
import { FunctionEngine } from '@sandcell/functions'
import { ImageStore } from '@sandcell/images'
import {
  ContainerDriver,
  WarmPool,
  createDriversFromConfig,
  templateNames,
} from '@sandcell/runtime'
import { BugError, type Logger } from '@sandcell/shared'
import { buildApp } from './app.js'
import type { ServerConfig } from './config/schema.js'
import { createEnvdProxy } from './envd-proxy/envd-proxy.js'
import { createServerMetrics, runOutcome } from './metrics.js'
import { LanguageCatalog } from '@sandcell/runs'
import { defaultLanguagesFile, loadLanguages } from '@sandcell/runs'
import { RunService } from '@sandcell/runs'
import { createApiKeys } from './services/api-keys.js'
import { serverOwnerLabels } from './services/restart-reconciliation.js'
import { SandboxService } from './services/sandbox-service.js'
import { BuildLogs } from './services/build-logs.js'
import { TemplateFiles } from './services/template-files.js'
import { FunctionService } from './services/function-service.js'
import { TemplatePools } from './services/template-pools.js'
import { TemplateService } from './services/template-service.js'
import { SqliteStore } from './store/sqlite-store.js'
import { TemplateStore } from './store/template-store.js'
import { FunctionStore } from './store/function-store.js'

export interface StartServerOptions {
  config: Readonly<ServerConfig>
  log: Logger
}

export interface StartedServer {
  /** Base URL for both E2B_API_URL and E2B_SANDBOX_URL. */
  url: string
  /** An API key generated on this first start (show it once), else undefined. */
  generatedApiKey: string | undefined
  service: SandboxService
  runs: RunService
  /** Stops accepting requests, lets those in flight finish (up to the drain timeout), closes. */
  close(options?: { killSandboxes?: boolean }): Promise<void>
}

export async function startServer(options: StartServerOptions): Promise<StartedServer> {
  const { config, log } = options
  // Read first: a bad languages file stops the start before anything is created.
  const languages = loadLanguages(config.languagesFile ?? defaultLanguagesFile)
  mkdirSync(config.dataDir, { recursive: true })
  const store = new SqliteStore(join(config.dataDir, 'sandcell.db'))
  const metrics = createServerMetrics()
  // Containers and microVMs behind one driver, chosen per sandbox, per template or by default.
  const driver = createDriversFromConfig(config, log)
  // Built-in templates' pools start now; built templates' follow their current build.
  const [builtinSizes, builtSizes] = splitPoolSizes(config.warmPool)
  const pool = new WarmPool({ driver, log, sizes: builtinSizes, limits: config.limits })
  const templates = createTemplateService(config, log, store, driver, {
    buildsInUse: () => service.templatesInUse(),
    onChange: () => {
      templatePools.sync().catch((err: unknown) => log.warn({ err }, 'cannot resize a warm pool'))
    },
  })
  const functions = createFunctionService(config, log, store, driver)
  const templatePools = new TemplatePools({
    pool,
    sizes: builtSizes,
    resolve: (name) => templates.currentBuild(name),
    log,
  })
  const service = new SandboxService({
    config,
    log,
    store,
    driver,
    pool,
    metrics,
    resolveTemplate: (reference) => templates.resolveForSandbox(reference)?.buildId ?? reference,
  })
  try {
    // Now rather than at the first sandbox: reclaim what a crash left, and say at once when
    // this host cannot give sandboxes a network (creates then fail with the same reason).
    await driver.network?.start().catch((err: unknown) => {
      log.error({ err }, 'sandbox networking cannot start')
    })
    await service.start()
    // After the adoption: layers of builds that live sandboxes use must stay.
    await templates.start()
    await templatePools.sync()
    await functions.start()
  } catch (err) {
    store.close()
    throw err
  }
  // After the service's start: its adoption sweep would take run sandboxes made before it.
  const runLabels = { ...serverOwnerLabels }
  const runs = new RunService({
    driver,
    catalog: new LanguageCatalog({
      languages,
      driver,
      log,
      limits: config.limits,
      labels: runLabels,
      resolveTemplate: (name) => templates.currentBuild(name),
    }),
    log,
    limits: config.limits,
    labels: runLabels,
    settings: config.run,
    metrics: {
      finished(language, result, seconds) {
        metrics.runs.inc({ language, outcome: runOutcome(result) })
        metrics.runSeconds.observe(seconds)
      },
      rejected: () => metrics.runsRejected.inc(),
      waiting: (count) => metrics.runsWaiting.set(count),
    },
  })
  runs.start()
  const apiKeys = createApiKeys(config.apiKeys, store)
  const proxy = createEnvdProxy({
    registry: service.registry,
    log,
    domain: config.domain,
    metrics: {
      onRequest({ status, bytesIn, bytesOut }) {
        metrics.proxyRequests.inc({ status: `${Math.floor(status / 100)}xx` })
        metrics.proxyBytes.inc({ direction: 'in' }, bytesIn)
        metrics.proxyBytes.inc({ direction: 'out' }, bytesOut)
      },
    },
  })
  const app = buildApp({
    config,
    log,
    service,
    templates,
    functions,
    apiKeys,
    metrics,
    proxy,
    runs,
    ...(driver.network === undefined ? {} : { network: driver.network }),
  })
  await app.listen({ host: config.host, port: config.port })
  const address = app.server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  const url = `http://${host}:${address.port}`
  log.info({ url }, 'sandcell server listening')

  let closing: Promise<void> | undefined
  return {
    url,
    generatedApiKey: apiKeys.generated,
    service,
    runs,
    close({ killSandboxes = config.killSandboxesOnExit } = {}) {
      closing ??= (async () => {
        const drained = app.close()
        const timer = setTimeout(() => app.server.closeAllConnections(), config.drainTimeoutMs)
        await drained
        clearTimeout(timer)
        await proxy.close()
        await templates.close()
        await functions.close()
        await runs.close()
        await service.close({ killSandboxes })
        await driver.close()
        store.close()
        log.info({ killSandboxes }, 'sandcell server stopped')
      })()
      return closing
    },
  }
}

/** Functions on the container driver, recorded in the server's database. */
function createFunctionService(
  config: Readonly<ServerConfig>,
  log: Logger,
  store: SqliteStore,
  driver: ReturnType<typeof createDriversFromConfig>,
): FunctionService {
  const containers = containerDriverOf(driver)
  const functionsDir = join(config.dataDir, 'functions')
  return new FunctionService({
    store: new FunctionStore(store.database),
    engine: new FunctionEngine({
      driver: containers,
      functionsDir,
      uidBase: config.uidBase,
      limits: config.limits,
      labels: { ...serverOwnerLabels },
      log,
    }),
    functionsDir,
    uidBase: config.uidBase,
    log,
  })
}

/** The container driver behind the routing driver: builds and functions run on it. */
function containerDriverOf(driver: ReturnType<typeof createDriversFromConfig>): ContainerDriver {
  const containers = driver.driverFor({ driver: 'container', template: 'base' })
  if (!(containers instanceof ContainerDriver)) {
    throw new BugError('template builds and functions need the container driver')
  }
  return containers
}

/** Pool sizes of built-in templates, and of names that are built templates. */
function splitPoolSizes(
  sizes: Readonly<Record<string, number>>,
): [Record<string, number>, Map<string, number>] {
  const builtin: Record<string, number> = {}
  const built = new Map<string, number>()
  for (const [name, size] of Object.entries(sizes)) {
    if (templateNames.includes(name)) {
      builtin[name] = size
    } else {
      built.set(name, size)
    }
  }
  return [builtin, built]
}

/** Template builds on the container driver, recorded in the server's database. */
function createTemplateService(
  config: Readonly<ServerConfig>,
  log: Logger,
  store: SqliteStore,
  driver: ReturnType<typeof createDriversFromConfig>,
  hooks: { buildsInUse: () => Set<string>; onChange: () => void },
): TemplateService {
  const containers = containerDriverOf(driver)
  const buildsDir = containers.buildsDir
  // Image layers are owned like template files: by the sandboxes' id range on the host.
  const images = new ImageStore({
    dir: join(buildsDir, 'images'),
    uidOffset: config.uidBase,
    config: config.images,
    log,
  })
  const builder = new TemplateBuilder({
    driver: containers,
    images,
    filesDir: join(buildsDir, 'files'),
    log,
    stepTimeoutMs: config.builds.stepTimeoutMs,
    readyTimeoutMs: config.builds.readyTimeoutMs,
    labels: { ...serverOwnerLabels },
  })
  return new TemplateService({
    store: new TemplateStore(store.database),
    builder,
    logs: new BuildLogs(join(buildsDir, 'logs')),
    files: new TemplateFiles({
      dir: join(buildsDir, 'files'),
      maxBytes: config.builds.maxUploadMiB * 1024 * 1024,
    }),
    config: config.builds,
    imageAliases: config.images.aliases,
    images,
    log,
    ...hooks,
  })
}
