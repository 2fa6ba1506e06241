/**
 * Which configured languages can run here, on which template and at which version: each
 * template is probed once (a sandbox runs `command -v` for every toolchain and each language's
 * version command), the answer is kept, and a language takes the first of its templates where
 * everything it needs was found. Unavailable languages keep the reason.
 */
import { runCommand } from '@sandcell/envd-client'
import type { Driver, SandboxLimits } from '@sandcell/runtime'
import { InvalidArgumentError, errorMessage, type Logger } from '@sandcell/shared'
import semver from 'semver'
import type { LanguageConfig } from './languages.js'
import { parseProbeOutput, probeScript, type TemplateFinding } from './template-probe.js'

/** A language as a run uses it: its config, the template it runs on, its version. */
export interface ResolvedLanguage {
  config: LanguageConfig
  template: string
  version: string
}

/** A language's availability, as `sandcell languages` and GET /languages show it. */
export interface LanguageStatus {
  name: string
  aliases: readonly string[]
  runtime: string | undefined
  compiled: boolean
  available: boolean
  /** Where it runs (when available). */
  template: string | undefined
  version: string | undefined
  /** Why not (when unavailable): one clause per template tried. */
  reason: string | undefined
}

type TemplateProbe =
  | { state: 'ready'; findings: Map<LanguageConfig, TemplateFinding> }
  | { state: 'failed'; reason: string }
  | { state: 'building' }

export interface LanguageCatalogOptions {
  languages: readonly LanguageConfig[]
  driver: Pick<Driver, 'templates' | 'prepareTemplate' | 'create'>
  log: Logger
  /** Limits of the probe sandbox (its memory and pids are raised to what toolchains need). */
  limits: SandboxLimits
  labels: Record<string, string>
  /**
   * Builds a template that is not built yet. Without `waitForBuilds`, languages skip such a
   * template (reason "being built") until the build is done, then it is probed.
   * @default the driver's prepareTemplate
   */
  prepare?: (template: string) => Promise<void>
  /** Wait for template builds instead of skipping templates being built (the CLI). */
  waitForBuilds?: boolean
  /**
   * The runtime's name of a template built from a step list or an image (its ready build), or
   * undefined when `name` is no such template: a language may name one (Lambdo's model).
   */
  resolveTemplate?: (name: string) => string | undefined
}

const probeTimeoutMs = 30_000

export class LanguageCatalog {
  readonly languages: readonly LanguageConfig[]
  readonly #options: LanguageCatalogOptions
  readonly #log: Logger
  readonly #probes = new Map<string, Promise<TemplateProbe>>()
  readonly #building = new Map<string, Promise<void>>()
  /** Probes that made a sandbox and have not destroyed it yet. */
  readonly #running = new Set<Promise<TemplateProbe>>()
  #closed = false

  constructor(options: LanguageCatalogOptions) {
    this.languages = options.languages
    this.#options = options
    this.#log = options.log.child({ component: 'server.languages' })
  }

  /** Every template some language may run on, in first-mention order. */
  templates(): string[] {
    return [...new Set(this.languages.flatMap((language) => language.templates))]
  }

  /** Starts probing every template in the background (the server does at start). */
  warmUp(): void {
    for (const template of this.templates()) {
      // Failures become the probe's "failed" state; nothing is thrown here.
      void this.#probe(template)
    }
  }

  /** Where a language naming `template` runs: a built template's current build, or itself. */
  #runtimeTemplate(template: string): string {
    return this.#options.resolveTemplate?.(template) ?? template
  }

  #probe(template: string): Promise<TemplateProbe> {
    const target = this.#runtimeTemplate(template)
    let probe = this.#probes.get(target)
    if (probe === undefined) {
      if (this.#closed) {
        return Promise.resolve({ state: 'failed', reason: 'the server is stopping' })
      }
      // A built template is ready by definition (each rebuild is a new target, probed anew).
      const started =
        target === template ? this.#probeTemplate(template) : this.#runProbe(template, target)
      probe = started
      this.#probes.set(target, started)
      this.#running.add(started)
      void started.finally(() => this.#running.delete(started))
    }
    return probe
  }

  /** Waits for probes in flight (their sandboxes are destroyed); later probes fail at once. */
  async close(): Promise<void> {
    this.#closed = true
    await Promise.allSettled([...this.#running])
  }

  async #probeTemplate(template: string): Promise<TemplateProbe> {
    const status = (await this.#options.driver.templates()).find((t) => t.name === template)
    if (status === undefined) {
      return { state: 'failed', reason: `template ${template} does not exist` }
    }
    if (!status.ready) {
      const build = this.#build(template)
      if (this.#options.waitForBuilds !== true) {
        // Probed again once built; until then languages use their next template.
        this.#probes.delete(template)
        return { state: 'building' }
      }
      try {
        await build
      } catch (err) {
        return {
          state: 'failed',
          reason: `template ${template} cannot be built: ${errorMessage(err)}`,
        }
      }
    }
    return this.#runProbe(template, template)
  }

  #build(template: string): Promise<void> {
    let build = this.#building.get(template)
    if (build === undefined) {
      const prepare =
        this.#options.prepare ?? ((name: string) => this.#options.driver.prepareTemplate(name))
      this.#log.info({ template }, 'building a template for runs')
      build = prepare(template)
      this.#building.set(template, build)
      build.then(
        () => {
          this.#log.info({ template }, 'template built')
          this.#probes.delete(template)
        },
        (err: unknown) => {
          this.#log.warn({ template, err: errorMessage(err) }, 'template cannot be built')
          this.#probes.set(
            template,
            Promise.resolve({
              state: 'failed',
              reason: `template ${template} cannot be built: ${errorMessage(err)}`,
            }),
          )
        },
      )
    }
    return build
  }

  /** Probes `target`, the runtime's template for the languages naming `template`. */
  async #runProbe(template: string, target: string): Promise<TemplateProbe> {
    const languages = this.languages.filter((language) => language.templates.includes(template))
    const started = performance.now()
    let sandbox
    try {
      sandbox = await this.#options.driver.create(
        {
          template: target,
          limits: {
            ...this.#options.limits,
            memoryMiB: Math.max(256, this.#options.limits.memoryMiB),
          },
          labels: this.#options.labels,
          // A probe looks for programs; it has no business on the network.
          network: false,
        },
        { signal: AbortSignal.timeout(probeTimeoutMs) },
      )
    } catch (err) {
      this.#log.warn({ template, err: errorMessage(err) }, 'cannot start a sandbox to probe')
      // Not kept: a later resolve tries again (the host may have been busy).
      this.#probes.delete(target)
      return {
        state: 'failed',
        reason: `no sandbox of template ${template} starts: ${errorMessage(err)}`,
      }
    }
    try {
      let output = ''
      const result = await runCommand(sandbox.connect(), {
        cmd: '/bin/sh',
        args: ['-c', probeScript(languages)],
        cwd: '/',
        timeoutMs: probeTimeoutMs,
        onStdout: (chunk) => (output += Buffer.from(chunk).toString('utf8')),
      })
      if (result.timedOut) {
        return { state: 'failed', reason: `probing template ${template} timed out` }
      }
      const findings = parseProbeOutput(languages, output)
      this.#log.info(
        { template, durationMs: Math.round(performance.now() - started) },
        'template probed for languages',
      )
      return { state: 'ready', findings }
    } catch (err) {
      this.#probes.delete(target)
      return {
        state: 'failed',
        reason: `probing template ${template} failed: ${errorMessage(err)}`,
      }
    } finally {
      await sandbox.destroy({ reason: 'language probe done' }).catch((err: unknown) => {
        this.#log.warn({ err, template }, 'cannot destroy the probe sandbox')
      })
    }
  }

  /** A language's availability: the first template where everything it needs is there. */
  async status(language: LanguageConfig): Promise<LanguageStatus> {
    const reasons: string[] = []
    const base = {
      name: language.name,
      aliases: language.aliases,
      runtime: language.runtime,
      compiled: language.compile !== undefined,
    }
    for (const template of language.templates) {
      const probe = await this.#probe(template)
      switch (probe.state) {
        case 'building':
          reasons.push(`template ${template} is being built`)
          continue
        case 'failed':
          reasons.push(probe.reason)
          continue
        case 'ready':
          break
      }
      const finding = probe.findings.get(language)
      if (finding === undefined) {
        reasons.push(`template ${template}: the probe did not report on ${language.name}`)
        continue
      }
      if (finding.missing.length > 0) {
        reasons.push(`template ${template} has no ${finding.missing.join(', ')}`)
        continue
      }
      const version = language.version ?? finding.version
      if (version === undefined) {
        reasons.push(
          `template ${template}: the version command printed no version (${JSON.stringify(finding.versionOutput.trim().slice(0, 100))})`,
        )
        continue
      }
      return { ...base, available: true, template, version, reason: undefined }
    }
    return {
      ...base,
      available: false,
      template: undefined,
      version: undefined,
      reason: reasons.join('; '),
    }
  }

  /** Every language's availability, in file order. */
  statuses(): Promise<LanguageStatus[]> {
    return Promise.all(this.languages.map((language) => this.status(language)))
  }

  /** The available languages, as runs use them. */
  async available(): Promise<ResolvedLanguage[]> {
    const statuses = await this.statuses()
    return statuses.flatMap((status, index) => {
      const config = this.languages[index]
      return status.available && config !== undefined
        ? [
            {
              config,
              template: this.#runtimeTemplate(status.template as string),
              version: status.version as string,
            },
          ]
        : []
    })
  }

  /**
   * The available language named `name` (or an alias, any case) whose version matches the
   * SemVer selector (`*`, `3.x`, `3.11`, `3.11.2`).
   * @throws InvalidArgumentError `<name>-<version> runtime is unknown` (Piston's message),
   *   with the reason in `details.reason` when the language exists but cannot run here
   */
  async resolve(name: string, selector: string): Promise<ResolvedLanguage> {
    const key = name.toLowerCase()
    const language = this.languages.find(
      (l) => l.name.toLowerCase() === key || l.aliases.some((a) => a.toLowerCase() === key),
    )
    const unknown = (reason?: string): InvalidArgumentError =>
      new InvalidArgumentError(`${name}-${selector} runtime is unknown`, {
        details: reason === undefined ? {} : { reason },
      })
    if (language === undefined) {
      throw unknown()
    }
    const status = await this.status(language)
    if (!status.available) {
      throw unknown(`${language.name} is unavailable: ${status.reason ?? 'unknown'}`)
    }
    const version = status.version as string
    if (!versionMatches(version, selector)) {
      throw unknown(`${language.name} here is version ${version}`)
    }
    return { config: language, template: this.#runtimeTemplate(status.template as string), version }
  }
}

/** Piston's matching: a SemVer range (`*`, `3.x`, `^3.10`, `3.11`) or an exact version. */
export function versionMatches(version: string, selector: string): boolean {
  const trimmed = selector.trim()
  if (trimmed === version) {
    return true
  }
  try {
    return semver.satisfies(version, trimmed)
  } catch {
    return false
  }
}
