/**
 * A network lab for offline network tests: a "sandcell host" netns whose uplink leads to an
 * "internet" netns of public-looking servers (HTTP, HTTPS, echo, an SSH banner, DNS) that report
 * everything they see, and a veth from the test process's netns to the host. Nothing leaves the
 * machine: the internet netns has no route but the uplink and does not forward.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { CleanupStack } from '@sandcell/shared'
import { makeCertificates } from './network-lab-certificates.js'
import {
  defaultLabDnsRecords,
  labDnsServer,
  labDnsTtlSeconds,
  labServers,
  labUplink,
} from './network-lab-facts.js'
import {
  buildNetwork,
  labNames,
  removeLeftovers,
  tempDirPrefix,
  type LabNames,
} from './network-lab-topology.js'

export * from './network-lab-facts.js'

interface LabEventBase {
  /** When the lab program saw it, ms since the epoch. */
  at: number
  /** The local address it arrived on (which public server was reached). */
  server: string
  /** The local port it arrived on. */
  port: number
  /** The sender's address as the internet sees it (after any NAT). */
  client: string
  clientPort: number
}

/** A TCP connection was accepted, on any port, before a byte was read. */
export interface LabTcpEvent extends LabEventBase {
  event: 'tcp'
}

/** A UDP datagram arrived, on any port (echo on 7, DNS on 53). */
export interface LabUdpEvent extends LabEventBase {
  event: 'udp'
  sizeBytes: number
}

/** An HTTP request (port 80) or HTTPS request (port 443) arrived; logged before it is answered. */
export interface LabHttpEvent extends LabEventBase {
  event: 'http' | 'https'
  method: string
  /** The Host header, if any. */
  host: string | null
  path: string
  /** The status the lab answers with. */
  status: number
  /** The TLS server name the client sent (HTTPS only; `null` without SNI or over HTTP). */
  sni: string | null
}

/** A DNS query was answered (or, as FORMERR, could not be parsed). */
export interface LabDnsEvent extends LabEventBase {
  event: 'dns'
  transport: 'udp' | 'tcp'
  /** The name asked for, lowercase, without the trailing dot. */
  name: string
  /** The record type asked for (`A`, `AAAA`, ...). */
  type: string
  rcode: 'NOERROR' | 'NXDOMAIN' | 'FORMERR'
  /** The addresses answered. */
  answers: string[]
}

/** Something the internet saw, as the lab program reported it. */
export type LabEvent = LabTcpEvent | LabUdpEvent | LabHttpEvent | LabDnsEvent

/** What the harness tells the lab program (its one argument, as JSON). */
export interface LabServerConfig {
  certFile: string
  keyFile: string
  /** Addresses to bind UDP services on, one socket each (TCP binds 0.0.0.0). */
  udpAddresses: string[]
  records: Record<string, string[]>
  ttlSeconds: number
  /** The test process, so a later lab can tell a live lab from a crashed one's leftovers. */
  ownerPid: number
}

export interface NetworkLabOptions {
  /**
   * Netns and interface name prefix: letters, digits and `-`, at most 13 characters (interface
   * names are at most 15), not starting with `sandcell` (the leak checker counts those).
   * @default `lab${process.pid % 10000}`
   */
  prefix?: string
  /** How long the lab program may take to listen, ms. @default 20000 */
  startTimeoutMs?: number
  signal?: AbortSignal
}

export interface ExecInHostOptions {
  /** Killed (SIGKILL) past this, ms; it then resolves with `signal: 'SIGKILL'`. @default 60000 */
  timeoutMs?: number
  /** Written to the command's stdin, which is then closed. */
  input?: string
  signal?: AbortSignal
}

export interface ExecResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface NetworkLab extends AsyncDisposable {
  /** The prefix of every name the lab made (`<prefix>-host`, `<prefix>-out`, `<prefix>-t`). */
  prefix: string
  /** Path of the sandcell host netns, for `nsenter --net=<path>`. */
  hostNetns: string
  /** Path of the internet's netns (for inspecting it with `nsenter --net=<path>`). */
  outNetns: string
  /** The host netns's address reachable from the test process (on a /30 veth). */
  hostAddress: string
  /** The test process's end of that veth, reachable from the host netns. */
  testAddress: string
  /** The host's uplink address: the `client` of every event that came through the host's NAT. */
  uplinkAddress: typeof labUplink.address
  /** The host's uplink interface (its default route), for NAT rules. */
  uplinkInterface: typeof labUplink.interface
  /** Resolver address inside the outside world. */
  dnsServer: typeof labDnsServer
  /** Public server addresses. */
  servers: typeof labServers
  /** PEM file of the lab's CA certificate, for curl `--cacert` or Node's `ca`. */
  caFile: string
  /** The same PEM, read. */
  caPem: string
  /**
   * Sets these names' A (and AAAA, for IPv6 addresses) records, keeping the others; an empty
   * list removes a name (NXDOMAIN). A key `*.example.com` answers for one label under it.
   * Resolves once the lab program has applied it.
   * @throws Error when an address is not one, or the lab program is gone
   */
  setDnsRecords(records: Record<string, string[]>): Promise<void>
  /** Puts back {@link defaultLabDnsRecords}. */
  resetDnsRecords(): Promise<void>
  /**
   * Everything the internet has reported so far. Reports arrive asynchronously: to assert that
   * something arrived use {@link waitForEvent}; that it did not, `waitForEvent` with a short
   * timeout after the attempt has finished.
   */
  seen(): LabEvent[]
  /**
   * Resolves with the first event, already seen or arriving within `timeoutMs`, that matches;
   * with `undefined` if none does by then.
   */
  waitForEvent(
    match: (event: LabEvent) => boolean,
    timeoutMs: number,
  ): Promise<LabEvent | undefined>
  /** Runs a command inside the host netns (nsenter --net), resolves with code/stdout/stderr. */
  execInHost(command: string, args: string[], options?: ExecInHostOptions): Promise<ExecResult>
  /** Arguments that prefix a spawn so the child runs in the host netns. */
  hostSpawnPrefix: readonly string[]
  /** What the lab program wrote that was not a report (its errors), for failure messages. */
  output(): string
  /**
   * Kills the lab program and anything left in the lab's netns, deletes both netns (their veths
   * go with them) and the temp dir. Safe to call twice, and resolves with the first call's end.
   */
  close(): Promise<void>
}

const serverProgram = new URL('../src/network-lab-server.ts', import.meta.url).pathname
const repoRoot = new URL('../../../', import.meta.url).pathname

/** The prefixes of this process's open labs: a second lab on one would tear the first down. */
const openPrefixes = new Set<string>()

function isLabEvent(line: object): line is LabEvent {
  // The lab program is ours: a line with an `event` is one of its reports.
  return 'event' in line && typeof line.event === 'string'
}

interface LabProgram {
  events: LabEvent[]
  waitForEvent: NetworkLab['waitForEvent']
  command: (command: Record<string, unknown>) => Promise<void>
  output: () => string
  stop: () => Promise<void>
}

/**
 * Starts the lab program in the internet's netns and resolves once it listens.
 * @throws Error with its output when it exits or stays silent past `timeoutMs`
 */
async function startLabProgram(
  names: LabNames,
  config: LabServerConfig,
  { timeoutMs, signal }: { timeoutMs: number; signal: AbortSignal | undefined },
): Promise<LabProgram> {
  const child = spawn(
    'nsenter',
    [
      `--net=${names.outNetns}`,
      '--',
      process.execPath,
      '--conditions=sandcell-source',
      '--import',
      'tsx',
      serverProgram,
      JSON.stringify(config),
    ],
    {
      // `--import tsx` resolves from the working directory.
      cwd: repoRoot,
      // Loading extra CA certificates costs ~50 ms per Node start.
      env: { ...process.env, NODE_EXTRA_CA_CERTS: '' },
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  )
  const events: LabEvent[] = []
  const waiters = new Set<(event: LabEvent) => void>()
  const acks = new Map<number, { resolve: () => void; reject: (err: Error) => void }>()
  let nextId = 1
  let output = ''
  let onReady = (): void => undefined
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, exitSignal) => {
      for (const { reject } of acks.values()) {
        reject(new Error(`the lab program exited (${exitSignal ?? code}):\n${output}`))
      }
      acks.clear()
      resolve()
    })
  })
  // Writes after an exit fail with EPIPE; the exit itself is what callers hear about.
  child.stdin.on('error', () => undefined)
  child.stderr.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8')
  })
  createInterface({ input: child.stdout }).on('line', (text) => {
    let line: unknown
    try {
      line = JSON.parse(text)
    } catch {
      output += `${text}\n`
      return
    }
    if (typeof line !== 'object' || line === null) {
      output += `${text}\n`
    } else if (isLabEvent(line)) {
      events.push(line)
      for (const waiter of waiters) {
        waiter(line)
      }
    } else if ('ready' in line) {
      onReady()
    } else if ('ok' in line && 'id' in line && typeof line.id === 'number') {
      const ack = acks.get(line.id)
      acks.delete(line.id)
      if (line.ok === true) {
        ack?.resolve()
      } else {
        ack?.reject(
          new Error(
            `the lab program refused a command: ${'error' in line ? String(line.error) : text}`,
          ),
        )
      }
    }
  })
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
    }
    await exited
  }
  try {
    await new Promise<void>((resolve, reject) => {
      const deadline = AbortSignal.timeout(timeoutMs)
      const stopWaiting = signal === undefined ? deadline : AbortSignal.any([deadline, signal])
      const fail = (why: string): void => reject(new Error(`the lab program ${why}:\n${output}`))
      const onAbort = (): void =>
        fail(deadline.aborted ? `did not listen in ${timeoutMs} ms` : 'start was aborted')
      if (stopWaiting.aborted) {
        onAbort()
      }
      stopWaiting.addEventListener('abort', onAbort, { once: true })
      onReady = resolve
      void exited.then(() => fail('exited before listening'))
    })
  } catch (err) {
    await stop()
    throw err
  }
  return {
    events,
    output: () => output,
    stop,
    waitForEvent(match, waitMs) {
      const found = events.find(match)
      if (found !== undefined) {
        return Promise.resolve(found)
      }
      return new Promise((resolve) => {
        const waiter = (event: LabEvent): void => {
          if (match(event)) {
            done(event)
          }
        }
        const done = (event: LabEvent | undefined): void => {
          clearTimeout(timer)
          waiters.delete(waiter)
          resolve(event)
        }
        const timer = setTimeout(() => done(undefined), waitMs)
        waiters.add(waiter)
      })
    },
    command(command) {
      const id = nextId++
      return new Promise((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          reject(new Error(`the lab program is gone:\n${output}`))
          return
        }
        acks.set(id, { resolve, reject })
        child.stdin.write(`${JSON.stringify({ id, ...command })}\n`)
      })
    },
  }
}

function execIn(
  netns: string,
  command: string,
  args: readonly string[],
  { timeoutMs = 60_000, input, signal }: ExecInHostOptions = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--net=${netns}`, '--', command, ...args], {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
      ...(signal === undefined ? {} : { signal }),
    })
    const stdout: Buffer[] = []
    const stderr: Buffer[] = []
    child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk))
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk))
    // A command that exits without reading its input makes the write fail with EPIPE; its
    // exit status is the answer.
    child.stdin?.on('error', () => undefined)
    child.stdin?.end(input)
    child.once('error', reject)
    child.once('close', (code, exitSignal) =>
      resolve({
        code,
        signal: exitSignal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      }),
    )
  })
}

/**
 * Builds a lab (removing a crashed one's leftovers with the same prefix first) and resolves once
 * its internet answers. Needs root. A failed start undoes what it did.
 * @throws Error naming the step that failed
 */
export async function startNetworkLab(options: NetworkLabOptions = {}): Promise<NetworkLab> {
  const names = labNames(options.prefix ?? `lab${process.pid % 10000}`)
  if (openPrefixes.has(names.prefix)) {
    throw new Error(`this process already has a network lab on prefix ${names.prefix}`)
  }
  const stack = new CleanupStack()
  openPrefixes.add(names.prefix)
  stack.defer('prefix', () => {
    openPrefixes.delete(names.prefix)
  })
  try {
    options.signal?.throwIfAborted()
    await removeLeftovers(names)
    const dir = mkdtempSync(join(tmpdir(), `${tempDirPrefix}${names.prefix}-`))
    stack.defer(`temp dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }))
    // Both at once, and both settled before a failure is acted on: undoing one while the other
    // still adds to the stack would leak what it adds next.
    const [certs, network] = await Promise.allSettled([
      makeCertificates(dir),
      buildNetwork(names, stack),
    ])
    if (certs.status === 'rejected') {
      throw certs.reason
    }
    if (network.status === 'rejected') {
      throw network.reason
    }
    options.signal?.throwIfAborted()
    const program = await startLabProgram(
      names,
      {
        certFile: certs.value.certFile,
        keyFile: certs.value.keyFile,
        udpAddresses: [labUplink.gateway, ...Object.values(labServers), labDnsServer],
        records: Object.fromEntries(
          Object.entries(defaultLabDnsRecords).map(([name, addresses]) => [name, [...addresses]]),
        ),
        ttlSeconds: labDnsTtlSeconds,
        ownerPid: process.pid,
      },
      { timeoutMs: options.startTimeoutMs ?? 20_000, signal: options.signal },
    )
    stack.defer('lab program', program.stop)
    let closing: Promise<void> | undefined
    const close = (): Promise<void> => {
      closing ??= stack.dispose()
      return closing
    }
    const { n } = network.value
    return {
      prefix: names.prefix,
      hostNetns: names.hostNetns,
      outNetns: names.outNetns,
      hostAddress: `172.30.${n}.2`,
      testAddress: `172.30.${n}.1`,
      uplinkAddress: labUplink.address,
      uplinkInterface: labUplink.interface,
      dnsServer: labDnsServer,
      servers: labServers,
      caFile: certs.value.caFile,
      caPem: readFileSync(certs.value.caFile, 'utf8'),
      setDnsRecords: (records) => program.command({ setRecords: records }),
      resetDnsRecords: () => program.command({ resetRecords: true }),
      seen: () => [...program.events],
      waitForEvent: program.waitForEvent,
      execInHost: (command, args, execOptions) =>
        execIn(names.hostNetns, command, args, execOptions),
      hostSpawnPrefix: Object.freeze(['nsenter', `--net=${names.hostNetns}`, '--']),
      output: program.output,
      close,
      [Symbol.asyncDispose]: close,
    }
  } catch (err) {
    await stack.dispose().catch((cleanupErr: unknown) => {
      throw new AggregateError(
        [err, cleanupErr],
        `network lab ${names.prefix} failed and left something behind`,
      )
    })
    throw err
  }
}
