/**
 * E2B templates on this server: build requests, file links and uploads, the build queue and its
 * logs, tags and aliases, listing and deletion, and the resolution `Sandbox.create('<name>')`
 * needs. The builds themselves run in @sandcell/builds' TemplateBuilder.
 */
import { randomUUID } from 'node:crypto'
import type { Readable } from 'node:stream'
import {
  buildStartSchema,
  type BuildBase,
  type BuildPlan,
  type BuildStart,
  type BuildsConfig,
  type TemplateBuilder,
} from '@sandcell/builds'
import { templateNames } from '@sandcell/runtime'
import {
  AlreadyExistsError,
  BuildFailedError,
  InvalidArgumentError,
  NotFoundError,
  Semaphore,
  errorMessage,
  isSandcellError,
  newTemplateId,
  type Logger,
} from '@sandcell/shared'
import type { BuildRecord, TemplateRecord, TemplateStore } from '../store/template-store.js'
import type { BuildLogEntry, BuildLogs } from './build-logs.js'
import { TemplateFiles } from './template-files.js'
import { assertTag, defaultTag, isUuid, parseTemplateRef } from './template-names.js'

export interface BuildRequestInput {
  name: string
  tags?: string[] | undefined
  cpuCount?: number | undefined
  memoryMB?: number | undefined
}

export interface BuildRequestResult {
  template: TemplateRecord
  build: BuildRecord
  tags: string[]
}

export interface BuildStatusResult {
  build: BuildRecord
  logEntries: BuildLogEntry[]
  reasonEntries: BuildLogEntry[]
}

export interface TemplateServiceOptions {
  store: TemplateStore
  builder: TemplateBuilder
  logs: BuildLogs
  files: TemplateFiles
  config: BuildsConfig
  /** Image names mapped by the images config: `e2bdev/base` there wins over the built-in. */
  imageAliases: Readonly<Record<string, string>>
  /** Closed with the service (its HTTP connections to registries). */
  images: { close(): Promise<void> }
  log: Logger
  /** Build ids that live sandboxes use now (their layers must stay). */
  buildsInUse: () => Set<string>
  /** Called when what a name resolves to may have changed (a build ready, tags, a deletion). */
  onChange?: () => void
}

/** The image the SDK names when a template never called a `from*` method. */
const e2bBaseImage = /^(docker\.io\/)?e2bdev\/base(:[a-z0-9_.-]+)?$/

export class TemplateService {
  readonly files: TemplateFiles
  readonly #store: TemplateStore
  readonly #builder: TemplateBuilder
  readonly #logs: BuildLogs
  readonly #config: BuildsConfig
  readonly #imageAliases: Readonly<Record<string, string>>
  readonly #images: { close(): Promise<void> }
  readonly #log: Logger
  readonly #buildsInUse: () => Set<string>
  readonly #onChange: () => void
  readonly #queue: Semaphore
  readonly #running = new Map<string, { abort: AbortController; done: Promise<void> }>()

  constructor(options: TemplateServiceOptions) {
    this.#store = options.store
    this.#builder = options.builder
    this.#logs = options.logs
    this.files = options.files
    this.#config = options.config
    this.#imageAliases = options.imageAliases
    this.#images = options.images
    this.#log = options.log.child({ component: 'server.templates' })
    this.#buildsInUse = options.buildsInUse
    this.#onChange = options.onChange ?? (() => undefined)
    this.#queue = new Semaphore(options.config.concurrency)
  }

  /**
   * Prepares the stores, fails the builds a previous process left unfinished (nothing they made
   * half is ever used: layers and manifests appear only complete), and collects garbage.
   */
  async start(): Promise<void> {
    this.#logs.start()
    this.files.start()
    await this.#builder.start()
    for (const build of this.#store.listBuilds()) {
      if (
        build.status === 'building' ||
        (build.status === 'waiting' && build.request !== undefined)
      ) {
        this.#fail(
          build.id,
          new BuildFailedError('base', 'the server restarted during the build: start it again'),
        )
      }
    }
    await this.collectGarbage()
  }

  /** Stops every running build (each fails with the reason) and waits for them to end. */
  async close(): Promise<void> {
    for (const { abort } of this.#running.values()) {
      abort.abort(
        new BuildFailedError('base', 'the server stopped during the build: start it again'),
      )
    }
    await Promise.all([...this.#running.values()].map(({ done }) => done))
    await this.#images.close()
  }

  /** Removes manifests and layers of builds that are gone and that no live sandbox uses. */
  async collectGarbage(): Promise<void> {
    const keep = new Set([
      ...this.#store
        .listBuilds()
        .filter((build) => build.status !== 'error')
        .map((build) => build.id),
      ...this.#buildsInUse(),
    ])
    await this.#builder.removeUnknownBuilds(keep)
  }

  /**
   * Registers a build (E2B's POST /v3/templates): the template is created or reused by name,
   * the build waits for its start, the tags point at it (used once it is ready); older builds
   * still waiting are superseded.
   */
  requestBuild(input: BuildRequestInput): BuildRequestResult {
    const ref = parseTemplateRef(input.name)
    const tags = [...new Set([...(ref.explicitTag ? [ref.tag] : []), ...(input.tags ?? [])])]
    for (const tag of tags) {
      assertTag(tag)
    }
    if (tags.length === 0) {
      tags.push(defaultTag)
    }
    const now = Date.now()
    let template = this.#store.findTemplate(ref.alias)
    if (template !== undefined && template.id === ref.alias && template.alias !== ref.alias) {
      throw new AlreadyExistsError(`the name ${ref.alias} conflicts with a template id`)
    }
    if (template === undefined) {
      if (templateNames.includes(ref.alias)) {
        throw new AlreadyExistsError(`${ref.alias} is a built-in template: choose another name`)
      }
      template = {
        id: newTemplateId(),
        alias: ref.alias,
        public: false,
        createdAt: now,
        updatedAt: now,
        spawnCount: 0,
        lastSpawnedAt: null,
      }
      this.#store.insertTemplate(template)
    }
    for (const older of this.#store.listBuilds(template.id)) {
      if (older.status === 'waiting' && older.request === undefined) {
        this.#fail(older.id, new BuildFailedError('base', 'superseded by a newer one'))
      }
    }
    const build: BuildRecord = {
      id: randomUUID(),
      templateId: template.id,
      status: 'waiting',
      reason: null,
      request: undefined,
      cpuCount: input.cpuCount ?? this.#config.cpus,
      memoryMB: input.memoryMB ?? this.#config.memoryMiB,
      diskMB: this.#config.diskMiB,
      createdAt: now,
      updatedAt: now,
      finishedAt: null,
    }
    this.#store.insertBuild(build)
    this.#store.assignTags(template.id, build.id, tags)
    this.#log.info(
      { templateId: template.id, buildId: build.id, alias: ref.alias },
      'build requested',
    )
    return { template, build, tags }
  }

  /** @throws NotFoundError (404) */
  requireTemplate(idOrName: string): TemplateRecord {
    const found = this.findTemplate(idOrName)
    if (found === undefined) {
      throw new NotFoundError(`template '${idOrName}' not found`)
    }
    return found
  }

  /** The template an id, alias or `alias:tag` names; undefined for none (or a built-in). */
  findTemplate(idOrName: string): TemplateRecord | undefined {
    const direct = this.#store.findTemplate(idOrName)
    if (direct !== undefined) {
      return direct
    }
    let alias: string | undefined
    try {
      alias = parseTemplateRef(idOrName).alias
    } catch {
      alias = undefined
    }
    return alias === undefined ? undefined : this.#store.findTemplate(alias)
  }

  /** @throws InvalidArgumentError (400) for an unknown build, as E2B answers */
  #requireBuild(templateId: string, buildId: string): BuildRecord {
    const build = isUuid(buildId) ? this.#store.findBuild(buildId) : undefined
    if (build === undefined || build.templateId !== templateId) {
      throw new InvalidArgumentError(`Build '${buildId}' not found`)
    }
    return build
  }

  /** Whether the files of `hash` are here; the upload query when they are not. */
  fileLink(templateId: string, hash: string): { present: boolean; query: string } {
    TemplateFiles.assertHash(hash)
    this.requireTemplate(templateId)
    return { present: this.files.has(hash), query: this.files.signedQuery(templateId, hash) }
  }

  /** Stores an upload through a signed link. */
  async upload(
    templateId: string,
    hash: string,
    signature: { expires?: string | undefined; signature?: string | undefined },
    body: Readable,
  ): Promise<void> {
    TemplateFiles.assertHash(hash)
    this.files.verify(templateId, hash, signature.expires, signature.signature)
    const bytes = await this.files.store(hash, body)
    this.#log.debug({ templateId, hash, bytes }, 'template files uploaded')
  }

  /**
   * Starts a waiting build (E2B's POST /v2/templates/{id}/builds/{buildID}): validated, queued,
   * run in the background.
   * @throws InvalidArgumentError (400) for a bad body or a build not waiting
   */
  startBuild(templateId: string, buildId: string, body: unknown): void {
    this.requireTemplate(templateId)
    const build = this.#requireBuild(templateId, buildId)
    if (build.status !== 'waiting' || build.request !== undefined) {
      throw new InvalidArgumentError(`build ${buildId} was started already (${build.status})`)
    }
    const start = buildStartSchema.parse(body)
    const plan: BuildPlan = {
      buildId,
      templateId,
      base: this.#base(start),
      steps: start.steps,
      ...(start.startCmd === undefined || start.startCmd === ''
        ? {}
        : { startCmd: start.startCmd }),
      ...(start.readyCmd === undefined || start.readyCmd === ''
        ? {}
        : { readyCmd: start.readyCmd }),
      force: start.force,
      memoryMiB: build.memoryMB,
      cpus: build.cpuCount,
      diskMiB: build.diskMB,
    }
    this.#store.updateBuild(buildId, { status: 'building', request: redactCredentials(start) })
    const abort = new AbortController()
    const done = this.#queue
      .run(() => this.#run(plan, abort.signal), abort.signal)
      .catch((err: unknown) => this.#fail(buildId, err))
      .finally(() => {
        this.#running.delete(buildId)
        this.#logs.release(buildId)
      })
    this.#running.set(buildId, { abort, done })
  }

  /** Where the build starts, resolved: names to builds, `e2bdev/base` to the debian template. */
  #base(start: BuildStart): BuildBase {
    if (start.fromTemplate !== undefined) {
      if (templateNames.includes(start.fromTemplate)) {
        return { kind: 'template', name: start.fromTemplate }
      }
      return { kind: 'template', name: this.resolve(start.fromTemplate).buildId }
    }
    const image = start.fromImage ?? 'e2bdev/base'
    if (e2bBaseImage.test(image) && !Object.hasOwn(this.#imageAliases, image)) {
      return { kind: 'template', name: 'debian' }
    }
    const registry = start.fromImageRegistry
    if (registry !== undefined && registry.type !== 'registry') {
      throw new InvalidArgumentError(
        `registry credentials of type ${registry.type} are not supported: use fromImage(image, { username, password })`,
      )
    }
    return {
      kind: 'image',
      reference: image,
      ...(registry?.username === undefined || registry.password === undefined
        ? {}
        : { credentials: { username: registry.username, password: registry.password } }),
    }
  }

  async #run(plan: BuildPlan, signal: AbortSignal): Promise<void> {
    const log = this.#log.child({ templateId: plan.templateId, buildId: plan.buildId })
    log.info('build started')
    await this.#builder.build(plan, {
      signal,
      onLog: (line) => this.#logs.append(plan.buildId, line),
    })
    this.#store.updateBuild(plan.buildId, { status: 'ready' })
    log.info('build ready')
    this.#onChange()
  }

  /** Marks a build failed, its reason and the log's last line saying why. */
  #fail(buildId: string, err: unknown): void {
    const step = err instanceof BuildFailedError ? err.step : 'base'
    const message = isSandcellError(err) ? err.message : errorMessage(err)
    this.#logs.append(buildId, { level: 'error', message: `Build failed: ${message}`, step })
    this.#store.updateBuild(buildId, { status: 'error', reason: { message, step } })
    this.#log.warn({ buildId, step, reason: message }, 'build failed')
  }

  /** A build's status and a page of its log from `offset`. */
  status(templateId: string, buildId: string, offset: number, limit?: number): BuildStatusResult {
    const template = this.requireTemplate(templateId)
    const build = this.#requireBuild(template.id, buildId)
    return {
      build,
      logEntries: this.#logs.read(buildId, offset, limit),
      reasonEntries:
        build.reason?.step === undefined ? [] : this.#logs.problems(buildId, build.reason.step),
    }
  }

  /**
   * The ready build a reference names (`name`, `name:tag`, `name:<buildId>`, a template id).
   * @throws NotFoundError when there is no such template, tag or ready build
   */
  resolve(reference: string): { template: TemplateRecord; buildId: string } {
    const template = this.requireTemplate(reference)
    const ref = template.id === reference ? { tag: defaultTag } : parseTemplateRef(reference)
    if (isUuid(ref.tag)) {
      const build = this.#store.findBuild(ref.tag)
      if (build?.templateId !== template.id || build.status !== 'ready') {
        throw new NotFoundError(`build '${ref.tag}' of template '${template.alias}' is not ready`)
      }
      return { template, buildId: build.id }
    }
    const buildId = this.#store.resolveTag(template.id, ref.tag)
    if (buildId === undefined) {
      throw new NotFoundError(
        this.#store.hasTag(template.id, ref.tag)
          ? `template '${template.alias}' has no finished build for tag '${ref.tag}' yet`
          : `tag '${ref.tag}' does not exist for template '${template.alias}'`,
      )
    }
    return { template, buildId }
  }

  /** The ready build a name resolves to now; undefined for no such template or no ready build. */
  currentBuild(reference: string): string | undefined {
    if (templateNames.includes(reference)) {
      return undefined
    }
    try {
      return this.resolve(reference).buildId
    } catch {
      return undefined
    }
  }

  /** The build a sandbox create names, or undefined when the name is not a built template. */
  resolveForSandbox(reference: string): { templateId: string; buildId: string } | undefined {
    if (templateNames.includes(reference)) {
      return undefined
    }
    try {
      const { template, buildId } = this.resolve(reference)
      this.#store.recordSpawn(template.id)
      return { templateId: template.id, buildId }
    } catch (err) {
      if (
        err instanceof NotFoundError &&
        this.#store.findTemplate(parseAliasOrSelf(reference)) === undefined
      ) {
        return undefined
      }
      throw err
    }
  }

  /**
   * The template an alias names (`Template.exists`); with an explicit tag, that tag must exist.
   * @throws NotFoundError (404)
   */
  resolveAlias(text: string): { template: TemplateRecord } {
    const ref = parseTemplateRef(text)
    const template = this.#store.findTemplate(ref.alias)
    if (template === undefined) {
      throw new NotFoundError(`template '${ref.alias}' not found`)
    }
    if (ref.explicitTag && !this.#store.hasTag(template.id, ref.tag)) {
      throw new NotFoundError(`tag '${ref.tag}' does not exist for template '${ref.alias}'`)
    }
    return { template }
  }

  listTemplates(): { template: TemplateRecord; builds: BuildRecord[] }[] {
    return this.#store.listTemplates().map((template) => ({
      template,
      builds: this.#store.listBuilds(template.id),
    }))
  }

  getTemplate(idOrName: string): { template: TemplateRecord; builds: BuildRecord[] } {
    const template = this.requireTemplate(idOrName)
    return { template, builds: this.#store.listBuilds(template.id) }
  }

  /** Deletes a template with its builds (running ones are stopped); files of live sandboxes stay. */
  async deleteTemplate(idOrName: string): Promise<void> {
    const template = this.requireTemplate(idOrName)
    const builds = this.#store.listBuilds(template.id)
    for (const build of builds) {
      const running = this.#running.get(build.id)
      running?.abort.abort(new BuildFailedError('base', 'the template was deleted'))
      await running?.done
    }
    this.#store.deleteTemplate(template.id)
    for (const build of builds) {
      this.#logs.remove(build.id)
    }
    this.#log.info({ templateId: template.id, alias: template.alias }, 'template deleted')
    this.#onChange()
    await this.collectGarbage()
  }

  setPublic(idOrName: string, value: boolean): TemplateRecord {
    const template = this.requireTemplate(idOrName)
    this.#store.setPublic(template.id, value)
    return { ...template, public: value }
  }

  /** Points tags at the build `target` (`name:tag`) resolves to (E2B's POST /templates/tags). */
  assignTags(target: string, tags: readonly string[]): { buildId: string; tags: string[] } {
    for (const tag of tags) {
      assertTag(tag)
    }
    const { template, buildId } = this.resolve(target)
    this.#store.assignTags(template.id, buildId, tags)
    this.#onChange()
    return { buildId, tags: [...tags] }
  }

  /** @throws InvalidArgumentError for `default` or a name with a tag; NotFoundError */
  removeTags(name: string, tags: readonly string[]): void {
    const ref = parseTemplateRef(name)
    if (ref.explicitTag) {
      throw new InvalidArgumentError('name must not contain a tag: give the tags in the list')
    }
    if (tags.includes(defaultTag)) {
      throw new InvalidArgumentError('the default tag cannot be removed')
    }
    const template = this.requireTemplate(ref.alias)
    const missing = tags.filter((tag) => !this.#store.hasTag(template.id, tag))
    if (missing.length > 0) {
      throw new NotFoundError(`template '${template.alias}' has no tag ${missing.join(', ')}`)
    }
    this.#store.removeTags(template.id, tags)
    this.#onChange()
  }

  tags(idOrName: string): { tag: string; buildId: string; assignedAt: number }[] {
    return this.#store.listTags(this.requireTemplate(idOrName).id)
  }
}

/** A reference's alias when it parses, else the text itself (a template id). */
function parseAliasOrSelf(reference: string): string {
  try {
    return parseTemplateRef(reference).alias
  } catch {
    return reference
  }
}

/** The start request as stored: registry passwords never reach the database. */
function redactCredentials(start: BuildStart): BuildStart {
  if (start.fromImageRegistry === undefined) {
    return start
  }
  const registry = { ...start.fromImageRegistry }
  delete registry.password
  return { ...start, fromImageRegistry: registry }
}
