/**
 * Builds a template from a plan: the base (a pulled image or another template), then each step
 * as a layer made in a fresh build sandbox (or reused from the layer cache), then the finalize
 * layer, a start-command check, and the manifest drivers create sandboxes from.
 *
 * Every step runs in a container sandbox of its own on top of the layers so far, through the
 * agent, exactly as a user's commands would; its changes (the overlay's upper directory) become
 * the step's layer. The container driver runs build sandboxes for every target driver: a
 * microVM makes its image from the same layers.
 */
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import {
  builtTemplatePath,
  listBuiltTemplates,
  writeBuiltTemplate,
  type BuiltTemplate,
  type TemplateDefaults,
} from '@sandcell/images'
import type { AgentConnection } from '@sandcell/envd-client'
import type { ContainerDriver, Sandbox } from '@sandcell/runtime'
import {
  BuildFailedError,
  errorMessage,
  isSandcellError,
  type Logger,
  type SandcellError,
} from '@sandcell/shared'
import type { BuildBase, BuildPlan, TemplateStep } from './build-request.js'
import type { BuildLogLine, BuildLogSink } from './build-log.js'
import { envFromList } from './build-state.js'
import { builderVersion, hashKeys } from './cache-key.js'
import { LayerStore, type BuildState, type Layer } from './layer-store.js'
import { runSandboxStep, runScriptAsRoot, stepSummary, type StepContext } from './step-actions.js'

/** What the builder needs from an image store (ImageStore of @sandcell/images fits). */
export interface ImagePuller {
  pull(
    reference: string,
    options?: {
      credentials?: { username: string; password: string }
      signal?: AbortSignal
      onLog?: (line: { level: 'info' | 'warn'; message: string }) => void
    },
  ): Promise<{
    manifestDigest: string
    rootfsDir: string
    config: { env: string[]; workingDir?: string }
  }>
}

export interface TemplateBuilderOptions {
  /** Runs the build sandboxes and owns the layers' directory. */
  driver: ContainerDriver
  images: ImagePuller
  /** Uploaded COPY archives, `<filesDir>/<filesHash>.tar`. */
  filesDir: string
  log: Logger
  /** Longest a RUN step may take. */
  stepTimeoutMs: number
  /** Longest a start command may take to be ready at the build's check. */
  readyTimeoutMs: number
  /** Labels of every build sandbox (the server's owner label: a restart destroys leftovers). */
  labels?: Record<string, string>
}

/** The layers a build has stacked so far and where it stands. */
interface Stack {
  key: string
  /** Overlay lower directories, topmost first. */
  lowerDirs: string[]
  hostBinds: readonly string[]
  layerKeys: string[]
  state: BuildState
  startCmd?: string
  readyCmd?: string
}

/** Bumped when the finalize script changes. */
const finalizeVersion = 'finalize-3'

/**
 * The E2B finalize script: the default user, /code and /.e2b (ids of the build that made it).
 * E2B's provisioning guarantees a bash, which the SDK runs every command with (`bash -l -c`): an
 * image without one (busybox, alpine) gets /bin/bash as a link to its sh, so that commands run;
 * bash-only syntax then needs bash installed in the image.
 */
function finalizeScript(templateId: string, buildId: string): string {
  return [
    'set -e',
    'if [ ! -e /bin/bash ] && [ -x /bin/sh ]; then',
    '  printf \'#!/bin/sh\\nexec /bin/sh "$@"\\n\' > /bin/bash && chmod 755 /bin/bash',
    'fi',
    'if ! id -u user >/dev/null 2>&1; then',
    '  if command -v useradd >/dev/null 2>&1; then useradd --create-home --shell /bin/bash user;',
    '  else adduser -D user; fi',
    'fi',
    'mkdir -p /code',
    `printf 'ENV_ID=%s\\nTEMPLATE_ID=%s\\nBUILD_ID=%s\\n' '${templateId}' '${templateId}' '${buildId}' > /.e2b`,
  ].join('\n')
}

/** Ensures `user` exists with a home, as E2B's default-user phase does for image bases. */
const defaultUserScript = [
  'if ! id -u user >/dev/null 2>&1; then',
  '  if command -v useradd >/dev/null 2>&1; then useradd --create-home --shell /bin/bash user;',
  '  else adduser -D user; fi',
  'fi',
  'mkdir -p /home/user && chown "$(id -u user):$(id -g user)" /home/user',
].join('\n')

export class TemplateBuilder {
  readonly layers: LayerStore
  readonly #options: TemplateBuilderOptions
  readonly #buildsDir: string
  /** Manifests of build sandboxes in use now (not a build of the store's). */
  readonly #scratchIds = new Set<string>()
  /** Builds running now: their layers are in no manifest yet, so sweeps wait for them. */
  #building = 0
  #sweepPending = false

  constructor(options: TemplateBuilderOptions) {
    this.#options = options
    this.#buildsDir = options.driver.buildsDir
    this.layers = new LayerStore(this.#buildsDir)
  }

  async start(): Promise<void> {
    await this.layers.start()
  }

  /**
   * Runs the plan to a finished template and records its manifest under the build id.
   * @throws BuildFailedError naming the step; AbortError when aborted
   */
  async build(
    plan: BuildPlan,
    options: { onLog: BuildLogSink; signal?: AbortSignal },
  ): Promise<BuiltTemplate> {
    this.#building++
    try {
      return await this.#build(plan, options)
    } finally {
      this.#building--
      if (this.#building === 0 && this.#sweepPending) {
        this.#sweepPending = false
        await this.sweep()
      }
    }
  }

  async #build(
    plan: BuildPlan,
    options: { onLog: BuildLogSink; signal?: AbortSignal },
  ): Promise<BuiltTemplate> {
    const started = performance.now()
    const log = (line: BuildLogLine): void => options.onLog(line)
    const context: StepContext = {
      plan,
      driver: this.#options.driver,
      filesDir: this.#options.filesDir,
      stepTimeoutMs: this.#options.stepTimeoutMs,
      log,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      inSandbox: (stack, step, run) => this.#inSandbox(plan, stack, step, run, options.signal),
    }
    let stack = await this.#base(plan, log, options.signal)
    let useCache = !plan.force
    const total = plan.steps.length
    for (const [index, step] of plan.steps.entries()) {
      const name = String(index + 1)
      useCache &&= step.force !== true
      const key = hashKeys(stack.key, step.type, step.args.join(' '), step.filesHash ?? '')
      const label = `[builder ${index + 1}/${total}] ${stepSummary(step)}`
      stack = await this.#layer(stack, key, useCache, { label, step: name, log }, () =>
        runSandboxStep(context, stack, step, name),
      )
    }
    const finalizeKey = hashKeys(stack.key, 'FINALIZE', finalizeVersion, plan.templateId)
    stack = await this.#layer(
      stack,
      finalizeKey,
      useCache,
      { label: '[finalize] configuring the template', step: 'finalize', log },
      async () => {
        const made = await this.#inSandbox(plan, stack, 'finalize', (connection) =>
          runScriptAsRoot(
            connection,
            finalizeScript(plan.templateId, plan.buildId),
            'finalize',
            log,
          ),
        )
        return { ...made, state: stack.state }
      },
    )
    const startCmd = plan.startCmd ?? stack.startCmd
    const readyCmd = plan.readyCmd ?? stack.readyCmd
    const defaults: TemplateDefaults = {
      env: stack.state.env,
      user: stack.state.user,
      ...(stack.state.workdir === undefined ? {} : { workdir: stack.state.workdir }),
      ...(startCmd === undefined ? {} : { startCmd }),
      ...(readyCmd === undefined ? {} : { readyCmd }),
    }
    const template: BuiltTemplate = {
      version: 1,
      buildId: plan.buildId,
      lowerDirs: stack.lowerDirs,
      hostBinds: [...stack.hostBinds],
      layerKeys: stack.layerKeys,
      defaults,
      createdAt: new Date().toISOString(),
    }
    await writeBuiltTemplate(this.#buildsDir, template)
    if (startCmd !== undefined) {
      await this.#checkStart(plan, template, log, options.signal)
    }
    const seconds = Math.round((performance.now() - started) / 100) / 10
    log({ level: 'info', message: `Build finished, took ${seconds}s` })
    return template
  }

  /** Forgets a build: its manifest goes, and layers nothing else uses are removed. */
  async forget(buildIds: readonly string[]): Promise<void> {
    for (const buildId of buildIds) {
      await rm(builtTemplatePath(this.#buildsDir, buildId), { force: true })
    }
    await this.sweep()
  }

  /**
   * Removes layers no build manifest names any more; while builds run (their layers are named
   * only once they finish), after the last of them.
   */
  async sweep(): Promise<number> {
    if (this.#building > 0) {
      this.#sweepPending = true
      return 0
    }
    const inUse = listBuiltTemplates(this.#buildsDir).flatMap((template) => template.layerKeys)
    return this.layers.sweep(inUse)
  }

  /**
   * Removes the manifests of builds the caller does not know (scratch manifests of build steps
   * a crash left, builds whose record is gone), then sweeps their layers.
   */
  async removeUnknownBuilds(known: ReadonlySet<string>): Promise<void> {
    const unknown = listBuiltTemplates(this.#buildsDir)
      .filter((template) => template.owner === undefined)
      .map((template) => template.buildId)
      .filter((buildId) => !known.has(buildId) && !this.#scratchIds.has(buildId))
    await this.forget(unknown)
  }

  /** The bottom of the stack: a pulled image (plus the default user), or a template's layers. */
  async #base(plan: BuildPlan, log: BuildLogSink, signal?: AbortSignal): Promise<Stack> {
    try {
      return await this.#resolveBase(plan, plan.base, log, signal)
    } catch (err) {
      throw asBuildError('base', err)
    }
  }

  async #resolveBase(
    plan: BuildPlan,
    base: BuildBase,
    log: BuildLogSink,
    signal?: AbortSignal,
  ): Promise<Stack> {
    if (base.kind === 'template') {
      log({ level: 'info', message: `[base] FROM template ${base.name}`, step: 'base' })
      const prepared = await this.#options.driver.templateLayers(base.name, {
        ...(signal === undefined ? {} : { signal }),
      })
      const top = prepared.lowerDirs[0] ?? ''
      const metadata = join(dirname(top), 'template.json')
      const defaults = prepared.defaults
      return {
        key: hashKeys(
          builderVersion,
          'template',
          base.name,
          ...prepared.lowerDirs,
          existsSync(metadata) ? readFileSync(metadata, 'utf8') : '',
        ),
        lowerDirs: [...prepared.lowerDirs],
        hostBinds: prepared.hostBinds,
        layerKeys: [],
        state: {
          env: defaults?.env ?? {},
          user: defaults?.user ?? 'user',
          ...(defaults?.workdir === undefined ? {} : { workdir: defaults.workdir }),
        },
        ...(defaults?.startCmd === undefined ? {} : { startCmd: defaults.startCmd }),
        ...(defaults?.readyCmd === undefined ? {} : { readyCmd: defaults.readyCmd }),
      }
    }
    log({ level: 'info', message: `[base] FROM ${base.reference}`, step: 'base' })
    const image = await this.#options.images.pull(base.reference, {
      ...(base.credentials === undefined ? {} : { credentials: base.credentials }),
      ...(signal === undefined ? {} : { signal }),
      onLog: (line) => log({ ...line, step: 'base' }),
    })
    const imageStack: Stack = {
      key: hashKeys(builderVersion, 'image', image.manifestDigest),
      lowerDirs: [image.rootfsDir],
      hostBinds: [],
      layerKeys: [],
      state: {
        env: envFromList(image.config.env),
        user: 'root',
        ...(image.config.workingDir === undefined || image.config.workingDir === ''
          ? {}
          : { workdir: image.config.workingDir }),
      },
    }
    const key = hashKeys(imageStack.key, 'DEFAULT_USER')
    return this.#layer(
      imageStack,
      key,
      !plan.force,
      { label: '[base] setting up the default user', step: 'base', log },
      async () => {
        const made = await this.#inSandbox(plan, imageStack, 'base', (connection) =>
          runScriptAsRoot(connection, defaultUserScript, 'base', log),
        )
        return { ...made, state: { ...imageStack.state, user: 'user', workdir: '/home/user' } }
      },
    )
  }

  /** One layer: from the cache when allowed and present, else made by `make` and published. */
  async #layer(
    stack: Stack,
    key: string,
    useCache: boolean,
    report: { label: string; step: string; log: BuildLogSink },
    make: () => Promise<{ scratch?: string; empty: boolean; state: BuildState }>,
  ): Promise<Stack> {
    const cached = useCache ? this.layers.get(key) : undefined
    if (cached !== undefined) {
      report.log({ level: 'info', message: `CACHED ${report.label}`, step: report.step })
      return stacked(stack, cached)
    }
    report.log({ level: 'info', message: report.label, step: report.step })
    let made: { scratch?: string; empty: boolean; state: BuildState }
    try {
      made = await make()
    } catch (err) {
      throw asBuildError(report.step, err)
    }
    const scratch = made.scratch ?? this.layers.scratch()
    return stacked(stack, await this.layers.commit(scratch, key, made.state, made.empty))
  }

  /**
   * Runs `run` in a fresh build sandbox on the stack and captures what it changed.
   * @returns the scratch layer directory (its changes in `tree/`) and whether it is empty
   */
  async #inSandbox(
    plan: BuildPlan,
    stack: Pick<Stack, 'lowerDirs' | 'hostBinds' | 'state'>,
    step: string,
    run: (connection: AgentConnection, sandbox: Sandbox) => Promise<void>,
    signal?: AbortSignal,
  ): Promise<{ scratch: string; empty: boolean }> {
    const scratchId = randomUUID()
    this.#scratchIds.add(scratchId)
    await writeBuiltTemplate(this.#buildsDir, {
      version: 1,
      buildId: scratchId,
      lowerDirs: stack.lowerDirs,
      hostBinds: [...stack.hostBinds],
      layerKeys: [],
      defaults: { env: stack.state.env, user: 'root' },
      createdAt: new Date().toISOString(),
    })
    try {
      const sandbox = await this.#options.driver.create(
        {
          template: scratchId,
          limits: { memoryMiB: plan.memoryMiB, cpus: plan.cpus, pids: 4096, diskMiB: plan.diskMiB },
          labels: {
            ...this.#options.labels,
            purpose: 'template-build',
            buildId: plan.buildId,
            step,
          },
        },
        signal === undefined ? {} : { signal },
      )
      try {
        await run(sandbox.connect(), sandbox)
        await sandbox.pause()
        const scratch = this.layers.scratch()
        try {
          const { empty } = await this.#options.driver.captureChanges(
            sandbox.id,
            join(scratch, 'tree'),
            signal === undefined ? {} : { signal },
          )
          return { scratch, empty }
        } catch (err) {
          await this.layers.discard(scratch)
          throw err
        }
      } finally {
        await sandbox.destroy({ reason: 'build step done' })
      }
    } finally {
      await rm(builtTemplatePath(this.#buildsDir, scratchId), { force: true })
      this.#scratchIds.delete(scratchId)
    }
  }

  /** Creates one sandbox of the finished template: its start command must get ready. */
  async #checkStart(
    plan: BuildPlan,
    template: BuiltTemplate,
    log: BuildLogSink,
    signal?: AbortSignal,
  ): Promise<void> {
    log({
      level: 'info',
      message: `[finalize] running the start command ${JSON.stringify(template.defaults.startCmd)}`,
      step: 'finalize',
    })
    try {
      const sandbox = await this.#options.driver.create(
        {
          template: template.buildId,
          limits: { memoryMiB: plan.memoryMiB, cpus: plan.cpus, pids: 4096, diskMiB: plan.diskMiB },
          labels: {
            ...this.#options.labels,
            purpose: 'template-build',
            buildId: plan.buildId,
            step: 'finalize',
          },
        },
        {
          signal: AbortSignal.any([
            AbortSignal.timeout(this.#options.readyTimeoutMs),
            ...(signal === undefined ? [] : [signal]),
          ]),
        },
      )
      await sandbox.destroy({ reason: 'start command checked' })
    } catch (err) {
      await rm(builtTemplatePath(this.#buildsDir, template.buildId), { force: true })
      throw asBuildError('finalize', err)
    }
    log({ level: 'info', message: '[finalize] the start command is ready', step: 'finalize' })
  }
}

/** The stack with a layer on top (an empty layer changes only the state). */
function stacked(stack: Stack, layer: Layer): Stack {
  return {
    ...stack,
    key: layer.key,
    lowerDirs: layer.treeDir === undefined ? stack.lowerDirs : [layer.treeDir, ...stack.lowerDirs],
    layerKeys: [...stack.layerKeys, layer.key],
    state: layer.state,
  }
}

/** A failure as the build's error at `step`, keeping sandcell's own message. */
export function asBuildError(step: string, err: unknown): SandcellError {
  if (err instanceof BuildFailedError || (err instanceof Error && err.name === 'AbortError')) {
    return err as SandcellError
  }
  const message = isSandcellError(err) ? err.message : errorMessage(err)
  return new BuildFailedError(step, message, { cause: err })
}

export type { TemplateStep }
