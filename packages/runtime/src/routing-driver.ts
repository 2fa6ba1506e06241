/**
 * One Driver over several: each create goes to the driver its spec, its snapshot or its
 * template asks for, so callers (the server, the CLI, the warm pool) keep talking to one Driver
 * while sandboxes run in containers or microVMs side by side.
 */
import { InvalidArgumentError, errorMessage, type Logger } from '@sandcell/shared'
import type {
  Driver,
  DriverKind,
  ProbeResult,
  Sandbox,
  SandboxSpec,
  TemplateProgress,
  TemplateStatus,
} from './driver.js'
import type { SandboxNetwork } from '@sandcell/network'
import { SandboxEvents, type SandboxListener } from './sandbox-events.js'

export interface RoutingDriverOptions {
  /** The drivers sandboxes can run on; the first one is used when nothing else decides. */
  drivers: readonly Driver[]
  /** The driver of sandboxes made without one named. @default the first of `drivers` */
  defaultDriver?: DriverKind
  /** Per-template default driver (`{ debian: 'qemu' }`); a spec's own `driver` wins. */
  templateDrivers?: Readonly<Record<string, DriverKind>>
  /** The sandbox networking the drivers share; closed with them. */
  network?: SandboxNetwork
  log: Logger
}

export function createRoutingDriver(options: RoutingDriverOptions): RoutingDriver {
  return new RoutingDriver(options)
}

export class RoutingDriver implements Driver {
  readonly events: SandboxEvents
  readonly #drivers: ReadonlyMap<DriverKind, Driver>
  readonly #defaultKind: DriverKind
  readonly #templateDrivers: Readonly<Record<string, DriverKind>>
  readonly #log: Logger
  /** The drivers' shared sandbox networking, when it is on. */
  readonly network: SandboxNetwork | undefined

  constructor(options: RoutingDriverOptions) {
    const first = options.drivers[0]
    if (first === undefined) {
      throw new InvalidArgumentError('a routing driver needs at least one driver')
    }
    this.#log = options.log.child({ component: 'runtime.routing' })
    this.events = new SandboxEvents(this.#log)
    this.#drivers = new Map(options.drivers.map((driver) => [driver.kind, driver]))
    this.#defaultKind = options.defaultDriver ?? first.kind
    this.#templateDrivers = options.templateDrivers ?? {}
    this.network = options.network
    this.#driver(this.#defaultKind, 'defaultDriver')
    for (const [template, kind] of Object.entries(this.#templateDrivers)) {
      this.#driver(kind, `templateDrivers.${template}`)
    }
    // Listeners of this driver hear every sandbox, whichever driver made it.
    for (const driver of options.drivers) {
      driver.onEvent((event) => this.events.emit(event))
    }
  }

  /** The kind of the default driver: what sandboxes run on when nothing names another. */
  get kind(): DriverKind {
    return this.#defaultKind
  }

  /** Subscribes to lifecycle events of every sandbox of every driver. */
  onEvent(listener: SandboxListener): () => void {
    return this.events.on(listener)
  }

  /** The drivers this one routes to, by kind. */
  get kinds(): DriverKind[] {
    return [...this.#drivers.keys()]
  }

  #driver(kind: DriverKind, where: string): Driver {
    const driver = this.#drivers.get(kind)
    if (driver === undefined) {
      throw new InvalidArgumentError(
        `${where} asks for the ${kind} driver, which is not configured here (available: ${this.kinds.join(', ')})`,
      )
    }
    return driver
  }

  /** The driver a spec runs on: its snapshot's, else its own choice, else its template's. */
  driverFor(spec: Pick<SandboxSpec, 'driver' | 'template' | 'fromSnapshot'>): Driver {
    const snapshotKind = spec.fromSnapshot?.driver
    if (snapshotKind !== undefined && spec.driver !== undefined && spec.driver !== snapshotKind) {
      throw new InvalidArgumentError(
        `a ${snapshotKind} snapshot cannot start a ${spec.driver} sandbox; leave the driver out or use ${snapshotKind}`,
      )
    }
    const kind =
      snapshotKind ?? spec.driver ?? this.#templateDrivers[spec.template] ?? this.#defaultKind
    return this.#driver(kind, snapshotKind !== undefined ? 'the snapshot' : 'the sandbox')
  }

  /** Usable when the default driver is; the others' verdicts are in the details. */
  async probe(): Promise<ProbeResult> {
    const results = await Promise.all(
      [...this.#drivers.values()].map(async (driver) => ({
        kind: driver.kind,
        result: await driver.probe(),
      })),
    )
    const details: Record<string, string> = { default: this.#defaultKind }
    for (const { kind, result } of results) {
      details[kind] = result.usable ? 'usable' : `unusable: ${result.reason ?? 'unknown'}`
      for (const [key, value] of Object.entries(result.details)) {
        details[`${kind}.${key}`] = value
      }
    }
    const main = results.find((r) => r.kind === this.#defaultKind)?.result
    const probe: ProbeResult = { usable: main?.usable ?? false, details }
    if (main?.reason !== undefined) {
      probe.reason = main.reason
    }
    return probe
  }

  /** Every driver builds from the same template directory: the default one lists them. */
  templates(): Promise<TemplateStatus[]> {
    return this.#driver(this.#defaultKind, 'defaultDriver').templates()
  }

  /** Prepares the template for the driver that will run it (or the one named). */
  async prepareTemplate(
    name: string,
    options: {
      signal?: AbortSignal
      onProgress?: (progress: TemplateProgress) => void
      driver?: DriverKind
    } = {},
  ): Promise<void> {
    const { driver, ...rest } = options
    return this.driverFor({
      template: name,
      ...(driver === undefined ? {} : { driver }),
    }).prepareTemplate(name, rest)
  }

  async create(spec: SandboxSpec, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    return this.driverFor(spec).create(spec, options)
  }

  /** Adopts from every driver; one that fails is logged and the others still adopt. */
  async adopt(options: { signal?: AbortSignal } = {}): Promise<Sandbox[]> {
    const adopted: Sandbox[] = []
    for (const driver of this.#drivers.values()) {
      try {
        adopted.push(...(await driver.adopt(options)))
      } catch (err) {
        this.#log.error({ err: errorMessage(err), driver: driver.kind }, 'adoption failed')
      }
    }
    return adopted
  }

  /** Closes every driver, then the networking they share (slots in use stay with their sandboxes). */
  async close(): Promise<void> {
    const results = await Promise.allSettled([...this.#drivers.values()].map((d) => d.close()))
    results.push(...(await Promise.allSettled([this.network?.close()])))
    const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failures.length > 0) {
      throw new AggregateError(
        failures.map((f) => f.reason as unknown),
        'closing the drivers failed',
      )
    }
  }
}
