/**
 * Network slots: a namespace, a veth pair, a /30 and a table each, made ahead of need so that
 * a create takes one from the pool instead of waiting ~15 ms for the kernel; removed when their
 * sandbox ends (never recycled: a removed slot's flows and rules go with its namespace).
 *
 * Several sandcell processes may share a host (a server and a CLI run): a slot is claimed by
 * creating its namespace (which fails when the name is taken), and an owner file says which
 * process holds a slot that has no process inside yet, so that start-up reclaim in one process
 * never removes another's.
 */
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { z } from 'zod'
import {
  DriverError,
  errorMessage,
  isProcessAlive,
  processStartTime,
  type Logger,
} from '@sandcell/shared'
import type { Cidr } from '../policy/cidr.js'
import { samePolicy, type EgressPolicy } from '../policy/egress-policy.js'
import { renderHostTable, renderSlotTable, type SlotServices } from './nft-rules.js'
import {
  netnsDir,
  parseSlotNetns,
  slotAddresses,
  slotCapacity,
  type SlotAddresses,
  type SlotKind,
} from './slot-addressing.js'
import { applyRulesScript, buildSlotScript, removeSlotScript, runScript } from './slot-commands.js'

/** A slot as its user sees it. Its policy is changed only through {@link NetworkSlots.setPolicy}. */
export interface NetworkSlot {
  readonly kind: SlotKind
  readonly addresses: SlotAddresses
  readonly policy: EgressPolicy
  /** The sandbox using it; undefined while it waits in the pool. */
  readonly sandboxId: string | undefined
}

/** What a sandbox's persisted state keeps of its slot, to adopt it after a restart. */
export const persistedSlotSchema = z.object({
  kind: z.enum(['container', 'vm']),
  addresses: z.object({
    index: z.number().int().min(0),
    netns: z.string().regex(/^sandcell-\d+$/),
    netnsPath: z.string().regex(/^\/run\/netns\/sandcell-\d+$/),
    hostInterface: z.string().regex(/^scv\d+$/),
    gateway: z.string(),
    address: z.string(),
  }),
  policy: z.object({
    allowCidrs: z.array(z.string()),
    denyCidrs: z.array(z.string()),
    allowDomains: z.array(z.string()),
  }),
})

export type PersistedSlot = z.infer<typeof persistedSlotSchema>

/** The persisted form of a slot. */
export function persistSlot(slot: NetworkSlot): PersistedSlot {
  return {
    kind: slot.kind,
    addresses: { ...slot.addresses },
    policy: {
      allowCidrs: [...slot.policy.allowCidrs],
      denyCidrs: [...slot.policy.denyCidrs],
      allowDomains: [...slot.policy.allowDomains],
    },
  }
}

/**
 * Removes a slot without a running {@link NetworkSlots} (a process that found a dead sandbox
 * but serves no sandbox networking itself). Safe to repeat.
 */
export async function removeSlot(
  addresses: SlotAddresses,
  { kind = 'container', ownerDir = defaultOwnerDir }: { kind?: SlotKind; ownerDir?: string } = {},
): Promise<void> {
  await runScript(removeSlotScript(addresses, kind), {
    what: `remove network slot ${addresses.netns}`,
  })
  rmSync(join(ownerDir, `${addresses.netns}.json`), { force: true })
}

interface MutableSlot {
  kind: SlotKind
  addresses: SlotAddresses
  policy: EgressPolicy
  sandboxId: string | undefined
}

export interface NetworkSlotsOptions {
  log: Logger
  subnet: Cidr
  /** Container slots kept ready. */
  poolSize: number
  /** The rules a slot starts with. */
  defaultPolicy: EgressPolicy
  /** Private blocks sandboxes may reach anyway (operator's choice). */
  permitCidrs: readonly string[]
  /** Where owner files live. @default /run/sandcell/net */
  ownerDir?: string
}

const defaultOwnerDir = '/run/sandcell/net'
/** A slot's namespace without an owner file younger than this is being built: reclaim leaves it. */
const buildGraceMs = 30_000
const maxBuildAttempts = 8
const refillDelayMs = 100

const ownerRecordSchema = z.object({
  pid: z.number().int(),
  startTime: z.number(),
  /** The slot's address, for removing its tracked connections when it is reclaimed. */
  address: z.string().optional(),
})

type OwnerRecord = z.infer<typeof ownerRecordSchema>

/** The network namespace inode of every process on the host. */
async function namespacesInUse(): Promise<Set<string>> {
  const inUse = new Set<string>()
  await Promise.all(
    readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .map(async (pid) => {
        try {
          inUse.add(await readlink(`/proc/${pid}/ns/net`))
        } catch {
          // Gone while we looked, or a kernel thread.
        }
      }),
  )
  return inUse
}

export class NetworkSlots {
  readonly #log: Logger
  readonly #subnet: Cidr
  readonly #poolSize: number
  readonly #permitCidrs: readonly string[]
  readonly #ownerDir: string
  readonly #owner: OwnerRecord
  readonly #byAddress = new Map<string, MutableSlot>()
  readonly #pool: MutableSlot[] = []
  readonly #claimed = new Set<number>()
  readonly #pending = new Set<Promise<unknown>>()
  #defaultPolicy: EgressPolicy
  #services: SlotServices | undefined
  #cursor: number
  #filling: Promise<void> | undefined
  #closed = false

  constructor(options: NetworkSlotsOptions) {
    this.#log = options.log.child({ component: 'network.slots' })
    this.#subnet = options.subnet
    this.#poolSize = options.poolSize
    this.#defaultPolicy = options.defaultPolicy
    this.#permitCidrs = options.permitCidrs
    this.#ownerDir = options.ownerDir ?? defaultOwnerDir
    this.#owner = { pid: process.pid, startTime: processStartTime(process.pid) ?? 0 }
    // Spread new slots over the subnet so an index (and its address) is rarely reused soon.
    this.#cursor = Math.floor(Math.random() * slotCapacity(this.#subnet))
  }

  get defaultPolicy(): EgressPolicy {
    return this.#defaultPolicy
  }

  /**
   * Loads the host table, removes slots nobody holds any more, and starts filling the pool.
   * `services` are the ports of this process's DNS forwarder and egress proxy.
   */
  async start(services: SlotServices): Promise<void> {
    this.#services = services
    mkdirSync(this.#ownerDir, { recursive: true, mode: 0o700 })
    await runScript(`nft -f - <<'NFT'\n${renderHostTable()}NFT\n`, { what: 'load the host table' })
    await this.reclaim()
    this.#fill()
  }

  /** The slot whose sandbox has this source address (for the DNS forwarder and the proxy). */
  lookup(address: string): NetworkSlot | undefined {
    return this.#byAddress.get(address)
  }

  /** Slots in use or ready, and ready ones. */
  counts(): { slots: number; ready: number } {
    return { slots: this.#byAddress.size, ready: this.#pool.length }
  }

  #rules(slot: { kind: SlotKind; addresses: SlotAddresses; policy: EgressPolicy }): string {
    if (this.#services === undefined) {
      throw new DriverError('sandbox networking is not started')
    }
    return renderSlotTable({
      kind: slot.kind,
      slot: slot.addresses,
      policy: slot.policy,
      services: this.#services,
      permitCidrs: this.#permitCidrs,
    })
  }

  #ownerPath(addresses: SlotAddresses): string {
    return join(this.#ownerDir, `${addresses.netns}.json`)
  }

  #writeOwner(addresses: SlotAddresses): void {
    const record: OwnerRecord = { ...this.#owner, address: addresses.address }
    writeFileSync(this.#ownerPath(addresses), JSON.stringify(record))
  }

  /** The next index that is neither ours nor, by its namespace file, anyone else's. */
  #nextIndex(): number {
    const capacity = slotCapacity(this.#subnet)
    for (let tried = 0; tried < capacity; tried += 1) {
      const index = this.#cursor
      this.#cursor = (this.#cursor + 1) % capacity
      const addresses = slotAddresses(this.#subnet, index)
      if (!this.#claimed.has(index) && !existsSync(addresses.netnsPath)) {
        this.#claimed.add(index)
        return index
      }
    }
    throw new DriverError(
      `every one of the subnet's ${capacity} network slots is in use: widen network.subnet`,
    )
  }

  async #build(kind: SlotKind, policy: EgressPolicy): Promise<MutableSlot> {
    for (let attempt = 1; ; attempt += 1) {
      const index = this.#nextIndex()
      const slot: MutableSlot = {
        kind,
        addresses: slotAddresses(this.#subnet, index),
        policy,
        sandboxId: undefined,
      }
      const started = performance.now()
      try {
        await runScript(buildSlotScript(kind, slot.addresses, this.#rules(slot)), {
          what: `make network slot ${slot.addresses.netns}`,
        })
        this.#writeOwner(slot.addresses)
        this.#byAddress.set(slot.addresses.address, slot)
        this.#log.debug(
          { slot: slot.addresses.netns, kind, durationMs: Math.round(performance.now() - started) },
          'network slot made',
        )
        return slot
      } catch (err) {
        const taken = /File exists/.test(errorMessage(err))
        if (!taken) {
          // Undo whatever part of the script ran; the name is ours (the namespace add came first).
          await runScript(removeSlotScript(slot.addresses), {
            what: `remove the half-made slot ${slot.addresses.netns}`,
          }).catch((cleanupErr: unknown) =>
            this.#log.error({ err: cleanupErr }, 'cannot remove a half-made network slot'),
          )
        }
        if (!taken || attempt >= maxBuildAttempts) {
          throw err
        }
      } finally {
        this.#claimed.delete(index)
      }
    }
  }

  /**
   * A slot for a new sandbox with `policy` in force before this resolves: a container slot
   * from the pool when one is ready, otherwise one made now.
   */
  async acquire(
    kind: SlotKind,
    { sandboxId, policy }: { sandboxId: string; policy?: EgressPolicy },
  ): Promise<NetworkSlot> {
    const wanted = policy ?? this.#defaultPolicy
    let slot = kind === 'container' ? this.#pool.shift() : undefined
    if (slot !== undefined) {
      // Later: spawning the refill's commands would hold up this hand-over and the launch
      // that follows it by a few ms.
      setTimeout(() => this.#fill(), refillDelayMs).unref()
    } else {
      slot = await this.#build(kind, wanted)
    }
    slot.sandboxId = sandboxId
    try {
      if (!samePolicy(slot.policy, wanted)) {
        await this.setPolicy(slot, wanted)
      }
    } catch (err) {
      this.release(slot)
      throw err
    }
    return slot
  }

  /** Applies new rules to a slot; they hold for new connections when this resolves. */
  async setPolicy(slot: NetworkSlot, policy: EgressPolicy): Promise<void> {
    const mutable = this.#byAddress.get(slot.addresses.address)
    if (mutable === undefined || mutable !== slot) {
      throw new DriverError(`network slot ${slot.addresses.netns} is not held by this process`)
    }
    await runScript(applyRulesScript(slot.addresses, this.#rules({ ...mutable, policy })), {
      what: `apply network rules to ${slot.addresses.netns}`,
    })
    mutable.policy = policy
  }

  /**
   * Takes over the slot of an adopted sandbox for lookups and removal. Its table still names
   * the services of the process that made it; the sandbox's owner loads it anew with
   * {@link setPolicy} (a process that merely found the sandbox must not divert its DNS).
   */
  adopt(persisted: PersistedSlot, sandboxId: string): NetworkSlot {
    const slot: MutableSlot = { ...persisted, sandboxId }
    this.#byAddress.set(slot.addresses.address, slot)
    return slot
  }

  /** Removes a slot in the background; {@link close} waits for it. Safe to call twice. */
  release(slot: NetworkSlot): void {
    const held = this.#byAddress.get(slot.addresses.address)
    if (held === slot) {
      this.#byAddress.delete(slot.addresses.address)
    }
    this.#track(this.#remove(slot.addresses, slot.kind))
  }

  async #remove(addresses: SlotAddresses, kind: SlotKind): Promise<void> {
    try {
      await removeSlot(addresses, { kind, ownerDir: this.#ownerDir })
    } catch (err) {
      // Start-up reclaim removes it later: nothing holds it.
      this.#log.error({ err, slot: addresses.netns }, 'cannot remove a network slot')
    }
  }

  #track(work: Promise<unknown>): void {
    this.#pending.add(work)
    void work.finally(() => this.#pending.delete(work))
  }

  #fill(): void {
    if (this.#filling !== undefined || this.#closed || this.#services === undefined) {
      return
    }
    // Background work: failures are logged and retried on the next acquire.
    this.#filling = (async () => {
      while (!this.#closed && this.#pool.length < this.#poolSize) {
        try {
          const slot = await this.#build('container', this.#defaultPolicy)
          if (this.#closed) {
            this.release(slot)
            return
          }
          this.#pool.push(slot)
        } catch (err) {
          this.#log.warn({ err: errorMessage(err) }, 'cannot fill the network slot pool')
          return
        }
      }
    })().finally(() => {
      this.#filling = undefined
    })
  }

  /** Resolves once the pool is full (for tests and benchmarks). */
  async waitFull(): Promise<void> {
    while (this.#pool.length < this.#poolSize && !this.#closed) {
      this.#fill()
      await (this.#filling ?? new Promise((resolve) => setTimeout(resolve, 10)))
    }
  }

  /**
   * Removes every slot namespace that no process is in and no live process owns: the leftovers
   * of a crash. Slots that sandboxes still run in are left for their driver to adopt.
   */
  async reclaim(): Promise<number> {
    let names: string[]
    try {
      names = readdirSync(netnsDir)
    } catch {
      return 0
    }
    const inUse = await namespacesInUse()
    let removed = 0
    for (const name of names) {
      const index = parseSlotNetns(name)
      if (index === undefined) {
        continue
      }
      const path = join(netnsDir, name)
      let inode: number
      let ageMs: number
      try {
        const stat = statSync(path)
        inode = stat.ino
        ageMs = Date.now() - stat.ctimeMs
      } catch {
        continue
      }
      if (inUse.has(`net:[${inode}]`)) {
        continue
      }
      const owner = readOwner(join(this.#ownerDir, `${name}.json`))
      const held =
        owner === undefined
          ? // So young that its maker has not written the owner file yet.
            ageMs < buildGraceMs
          : owner.pid !== process.pid && isProcessAlive(owner.pid, owner.startTime)
      if (held) {
        continue
      }
      if ([...this.#byAddress.values()].some((slot) => slot.addresses.netns === name)) {
        continue
      }
      const fallback = slotAddresses(this.#subnet, index)
      const addresses = { ...fallback, address: owner?.address ?? fallback.address }
      // Whatever it was, its link goes now too: a leftover may linger.
      await this.#remove(addresses, 'vm')
      removed += 1
    }
    if (removed > 0) {
      this.#log.info({ removed }, 'removed network slots left by a crash')
    }
    return removed
  }

  /** Stops filling, removes the idle pool slots and waits for removals in flight. */
  async close(): Promise<void> {
    this.#closed = true
    await this.#filling
    for (const slot of this.#pool.splice(0)) {
      this.release(slot)
    }
    await Promise.allSettled([...this.#pending])
  }
}

function readOwner(path: string): OwnerRecord | undefined {
  try {
    const parsed = ownerRecordSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')))
    return parsed.success ? parsed.data : undefined
  } catch {
    // Missing or unreadable: nobody we can ask.
    return undefined
  }
}
