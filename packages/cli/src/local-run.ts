/**
 * The run engine without a server (`run --local`, `languages --local`): the server's own
 * LanguageCatalog and RunService over a local container driver, with no warm pool (each run
 * creates its sandbox) and templates built on demand with a progress bar.
 */
import type { ContainerDriver } from '@sandcell/runtime'
import { LanguageCatalog, RunService, defaultLanguagesFile, loadLanguages } from '@sandcell/runs'
import type { Logger } from '@sandcell/shared'
import type { CliConfig } from './config.js'
import { createLocalDriver, ownerLabels, reapOrphans } from './local-runtime.js'
import { prepareWithProgress } from './progress-bar.js'

export interface LocalRuns {
  runs: RunService
  driver: ContainerDriver
  /** Waits for runs in flight (their sandboxes are destroyed) and releases the driver. */
  close(): Promise<void>
}

export interface LocalRunsOptions {
  /** Build a missing template (with a progress bar) instead of reporting it unbuilt. */
  buildTemplates: boolean
  signal?: AbortSignal
}

/** @throws ConfigError for a bad languages file */
export async function openLocalRuns(
  config: Readonly<CliConfig>,
  log: Logger,
  options: LocalRunsOptions,
): Promise<LocalRuns> {
  const languages = loadLanguages(config.languagesFile ?? defaultLanguagesFile)
  const driver = createLocalDriver(config, log)
  await reapOrphans(driver, log)
  const labels = ownerLabels()
  const runs = new RunService({
    driver,
    catalog: new LanguageCatalog({
      languages,
      driver,
      log,
      limits: config.limits,
      labels,
      waitForBuilds: true,
      prepare: options.buildTemplates
        ? (template) => prepareWithProgress(driver, template, options.signal)
        : (template) =>
            Promise.reject(
              new Error(`not built yet; build it with: sandcell templates build ${template}`),
            ),
    }),
    log,
    limits: config.limits,
    labels,
    settings: { ...config.run, poolMin: 0, poolMax: 0 },
  })
  return {
    runs,
    driver,
    async close() {
      await runs.close()
      await driver.close()
    },
  }
}
