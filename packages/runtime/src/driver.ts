/**
 * The contract every isolation technology implements (containers now, microVMs next), and the
 * shapes callers see. Every Sandbox a driver returns is wrapped by `guardSandbox`.
 */
import type { TemplateDefaults, TemplateProgress, TemplateStatus } from '@sandcell/images'
import type { EgressPolicy } from '@sandcell/network'
import type { SandboxId } from '@sandcell/shared'
import type { AgentConnection } from '@sandcell/envd-client'
import type { SandboxListener } from './sandbox-events.js'

/** Every isolation technology sandcell has a driver for. */
export const driverKinds = ['container', 'qemu', 'firecracker'] as const

export type DriverKind = (typeof driverKinds)[number]

/**
 * `starting` until the agent answers; `running` and `paused` while alive; `destroyed` for good
 * (no process, mount, cgroup or file left behind).
 */
export type SandboxState = 'starting' | 'running' | 'paused' | 'destroyed'

export interface SandboxLimits {
  /** Memory including the agent, no swap. */
  memoryMiB: number
  /** CPU time in cores (0.5 = half a core). */
  cpus: number
  /** Maximum number of processes and threads. */
  pids: number
  /** Size of the sandbox's writable disk. */
  diskMiB: number
}

/** A sandbox's saved state that new sandboxes can start from. */
export interface SandboxSnapshot {
  driver: DriverKind
  /** The template the snapshotted sandbox was made from; new ones use it too. */
  template: string
  /** Disk size of the snapshot: sandboxes made from it have the same. */
  diskMiB: number
  /** Directory holding the driver's files for this snapshot. */
  dir: string
  /**
   * True when process memory is kept too (a microVM's snapshot): creates restore the processes
   * as they were. False for the filesystem only (every container snapshot, and a shut-down
   * sandbox's disk): creates boot on those files.
   */
  memory: boolean
}

export interface SandboxSpec {
  /** Minted by the driver when absent. */
  id?: SandboxId
  template: string
  /**
   * The isolation to run it on, read by the routing driver (`createRoutingDriver`); absent: the
   * template's configured driver, else the default one. A single driver ignores it.
   */
  driver?: DriverKind
  limits: SandboxLimits
  /** Start from this snapshot (its template and disk size win over the spec's). */
  fromSnapshot?: SandboxSnapshot
  /**
   * A sandbox made ahead of need (the warm pool's): it gets a small CPU share until its first
   * `setLimits`, so making it never slows sandboxes in use.
   */
  background?: boolean
  /** Free-form labels kept with the sandbox and returned on adoption (owner, metadata…). */
  labels?: Record<string, string>
  /**
   * Whether the sandbox gets a network of its own (NAT, DNS, reachable ports) on a driver with
   * networking; false gives loopback only. @default true
   */
  network?: boolean
  /**
   * Egress rules in force before the create resolves, for a driver with networking (default:
   * its configured default). A driver without networking gives loopback only and ignores it.
   */
  egress?: EgressPolicy
}

export interface SandboxStats {
  memoryBytes: number
  memoryPeakBytes: number
  memoryLimitBytes: number
  cpuUsageUs: number
  pids: number
  /** Processes killed for hitting the memory limit since the sandbox started. */
  oomKills: number
  diskUsedBytes: number
  diskTotalBytes: number
}

/** Why a sandbox ended; kept on the dead sandbox and given to listeners. */
export interface DestroyReason {
  reason: string
  cause?: unknown
}

export interface SandboxInfo {
  id: SandboxId
  driver: DriverKind
  template: string
  limits: SandboxLimits
  labels: Record<string, string>
  createdAt: Date
  /** Host path of the Unix socket the sandbox's agent is reached through. */
  agentSocket: string
  /** Present when the sandbox has a network of its own (not only loopback). */
  network?: SandboxNetworkInfo
  /**
   * A built template's environment, user and workdir, already handed to the agent; whoever
   * initialises the agent again (with its own env vars) must keep them. Absent for built-ins
   * and after an adoption.
   */
  templateDefaults?: TemplateDefaults
}

export interface SandboxNetworkInfo {
  /** Where the host reaches the sandbox's TCP ports (any port a process listens on inside). */
  address: string
  /** The egress rules in force. */
  egress: EgressPolicy
}

/**
 * One isolated machine with the agent running inside it.
 *
 * After `destroy` (or any failure, through the guard) every method but `destroy` and `state`
 * throws SandboxDeadError with the first failure as cause; `destroy` again is a no-op.
 */
export interface Sandbox {
  readonly id: SandboxId
  readonly info: SandboxInfo
  readonly state: SandboxState
  /** The agent's Connect clients and HTTP access. Throws when not running. */
  connect(): AgentConnection
  /** Stops every process in place (memory and disk kept). */
  pause(options?: { signal?: AbortSignal }): Promise<void>
  resume(options?: { signal?: AbortSignal }): Promise<void>
  /** Changes limits of a live sandbox (used when a pooled sandbox is handed over). */
  setLimits(limits: SandboxLimits, options?: { signal?: AbortSignal }): Promise<void>
  /** Replaces the sandbox's labels (kept with it, returned on adoption). */
  setLabels(labels: Record<string, string>): Promise<void>
  /**
   * Replaces the egress rules; new connections follow them once this resolves (established
   * ones go on). Also reloads the rules after an adoption, so that they name this process's
   * DNS and proxy. @throws FailedPreconditionError for a sandbox without a network
   */
  setNetwork(egress: EgressPolicy, options?: { signal?: AbortSignal }): Promise<void>
  stats(): Promise<SandboxStats>
  /**
   * Saves the sandbox's state into `dir` (which must not exist) without stopping it for longer
   * than the copy takes; the sandbox goes on as it was (running or paused).
   */
  snapshot(options: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot>
  /**
   * Ends the sandbox keeping its filesystem only (E2B's filesystem-only pause): every process
   * stops (a VM's guest shuts down, flushing its disk), the disk is saved into `dir` (which must
   * not exist) as a snapshot without memory, and the sandbox is destroyed. A create from that
   * snapshot, with the same id if wanted, boots a sandbox on those files. Whether it succeeds
   * or fails, the sandbox is destroyed afterwards; `dir` holds a complete disk or no disk.
   */
  shutDown(options: { dir: string; signal?: AbortSignal }): Promise<SandboxSnapshot>
  /** Idempotent. Leaves nothing behind on the host. */
  destroy(reason?: DestroyReason): Promise<void>
  /** Resolves when the sandbox ends for any reason (destroy, crash, agent exit). */
  readonly ended: Promise<DestroyReason>
}

/** A template's readiness and a build's progress reports: the image builders' own shapes. */
export type { TemplateDefaults, TemplateProgress, TemplateStatus }

export interface ProbeResult {
  usable: boolean
  /** Why not, or facts about the host (cgroup version, accelerator…). */
  details: Record<string, string>
  reason?: string
}

export interface Driver {
  readonly kind: DriverKind
  /** Whether this host can run this driver, and why not. */
  probe(): Promise<ProbeResult>
  templates(): Promise<TemplateStatus[]>
  /** Builds a template if needed; a no-op when it is ready. */
  prepareTemplate(
    name: string,
    options?: { signal?: AbortSignal; onProgress?: (progress: TemplateProgress) => void },
  ): Promise<void>
  /**
   * Creates a sandbox and waits until its agent answers.
   * @throws TemplateNotFoundError, InvalidArgumentError (limits), DriverError
   */
  create(spec: SandboxSpec, options?: { signal?: AbortSignal }): Promise<Sandbox>
  /**
   * Finds the sandboxes this driver left running or paused (they outlive the process that made
   * them) and re-attaches to the live ones; leftovers of dead ones are cleaned up.
   */
  adopt(options?: { signal?: AbortSignal }): Promise<Sandbox[]>
  /**
   * Subscribes to lifecycle events of every sandbox this driver creates or adopts (the pool,
   * the server's bookkeeping and metrics listen); returns the unsubscribe.
   */
  onEvent(listener: SandboxListener): () => void
  /** Releases what the driver itself holds (not the sandboxes: they are detached). */
  close(): Promise<void>
}
