/**
 * E2B's network fields on create (`allow_internet_access`, `network`) and on
 * `PUT /sandboxes/{id}/network`, validated with E2B's rules and messages, turned into the egress
 * rules the runtime enforces and the settings the store keeps.
 */
import { z } from 'zod'
import { egressPolicyFromE2b, type EgressPolicy } from '@sandcell/network'
import { InvalidArgumentError } from '@sandcell/shared'
import type { SandboxNetworkInput } from '../../services/sandbox-service.js'
import type { SandboxNetworkRecord } from '../../store/sqlite-store.js'
import { envdPort } from '../../envd-proxy/envd-router.js'

const entries = z.array(z.string().max(300, 'an entry is at most 300 characters'))

/** The create body's `network` (unknown fields pass: a newer SDK may send more). */
export const networkSchema = z.looseObject({
  allowOut: entries.optional(),
  denyOut: entries.optional(),
  allowPublicTraffic: z.boolean().optional(),
  maskRequestHost: z.string().optional(),
  httpsPorts: z.array(z.number().int().min(1).max(65535)).max(100).optional(),
  rules: z.record(z.string(), z.unknown()).optional(),
  egressProxy: z.unknown().optional(),
})

/** `PUT /sandboxes/{id}/network`: the egress part only, replaced whole. */
export const networkUpdateSchema = z.looseObject({
  allowOut: entries.optional(),
  denyOut: entries.optional(),
  rules: z.record(z.string(), z.unknown()).optional(),
  egressProxy: z.unknown().optional(),
  allow_internet_access: z.boolean().optional(),
})

export type NetworkInput = z.output<typeof networkSchema>
export type NetworkUpdateInput = z.output<typeof networkUpdateSchema>

/** How the server's own settings shape a request's egress. */
export interface NetworkDefaults {
  /** Whether sandboxes get a network at all (`network.enabled`). */
  enabled: boolean
  /** Whether a sandbox that says nothing reaches the internet (`network.internet`). */
  internet: boolean
}

function refuseUnsupported(input: { rules?: unknown; egressProxy?: unknown }): void {
  if (input.egressProxy !== undefined && input.egressProxy !== null) {
    throw new InvalidArgumentError(
      'network.egressProxy is not supported by this server: sandboxes connect out directly; limit them with allowOut and denyOut',
    )
  }
  if (input.rules !== undefined && input.rules !== null && Object.keys(input.rules).length > 0) {
    throw new InvalidArgumentError(
      'network.rules (header transforms) are not supported by this server: it does not intercept TLS',
    )
  }
}

function checkMaskRequestHost(value: string): void {
  const probe = value.replaceAll('${PORT}', '1')
  if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(probe)) {
    throw new InvalidArgumentError(
      `network.maskRequestHost must be an ASCII host[:port], optionally with \${PORT} (got ${JSON.stringify(value)})`,
    )
  }
}

function egressFor(
  input: { allowOut?: readonly string[] | undefined; denyOut?: readonly string[] | undefined },
  allowInternetAccess: boolean | undefined,
  defaults: NetworkDefaults,
): EgressPolicy {
  const egress = egressPolicyFromE2b({
    allowOut: input.allowOut,
    denyOut: input.denyOut,
    // A server whose default is offline treats silence as `false`; an explicit `true` opens it.
    allowInternetAccess: allowInternetAccess ?? (defaults.internet ? undefined : false),
  })
  if (!defaults.enabled && (allowInternetAccess === true || (input.allowOut?.length ?? 0) > 0)) {
    // Asking to reach something where nothing can be reached: say so rather than pretend.
    throw new InvalidArgumentError(
      'sandbox networking is off on this server (network.enabled: false): sandboxes have loopback only',
    )
  }
  return egress
}

/** @throws InvalidArgumentError (400) with E2B's message for the first bad field */
export function parseCreateNetwork(
  network: NetworkInput | undefined,
  allowInternetAccess: boolean | undefined,
  defaults: NetworkDefaults,
): SandboxNetworkInput {
  const input = network ?? {}
  refuseUnsupported(input)
  if (input.maskRequestHost !== undefined) {
    checkMaskRequestHost(input.maskRequestHost)
  }
  if (input.httpsPorts?.includes(envdPort) === true) {
    throw new InvalidArgumentError(`network.httpsPorts may not list envd's port ${envdPort}`)
  }
  const egress = egressFor(input, allowInternetAccess, defaults)
  const record: SandboxNetworkRecord = {
    ...(input.allowOut === undefined ? {} : { allowOut: [...input.allowOut] }),
    ...(input.denyOut === undefined ? {} : { denyOut: [...input.denyOut] }),
    ...(input.allowPublicTraffic === undefined
      ? {}
      : { allowPublicTraffic: input.allowPublicTraffic }),
    ...(input.maskRequestHost === undefined ? {} : { maskRequestHost: input.maskRequestHost }),
    ...(input.httpsPorts === undefined ? {} : { httpsPorts: [...input.httpsPorts] }),
  }
  return {
    egress,
    record: network === undefined ? null : record,
    allowInternetAccess: allowInternetAccess ?? null,
  }
}

/**
 * An update replaces the egress settings whole (omitted fields are cleared, as on E2B) and
 * keeps the ingress ones (public traffic, host mask, TLS ports) as created.
 * @throws InvalidArgumentError (400)
 */
export function parseNetworkUpdate(
  body: NetworkUpdateInput,
  current: SandboxNetworkRecord | null,
  defaults: NetworkDefaults,
): SandboxNetworkInput {
  refuseUnsupported(body)
  const egress = egressFor(body, body.allow_internet_access, defaults)
  const kept: SandboxNetworkRecord = {
    ...(current?.allowPublicTraffic === undefined
      ? {}
      : { allowPublicTraffic: current.allowPublicTraffic }),
    ...(current?.maskRequestHost === undefined ? {} : { maskRequestHost: current.maskRequestHost }),
    ...(current?.httpsPorts === undefined ? {} : { httpsPorts: current.httpsPorts }),
  }
  return {
    egress,
    record: {
      ...kept,
      ...(body.allowOut === undefined ? {} : { allowOut: [...body.allowOut] }),
      ...(body.denyOut === undefined ? {} : { denyOut: [...body.denyOut] }),
    },
    allowInternetAccess: body.allow_internet_access ?? null,
  }
}
