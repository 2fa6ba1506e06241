/**
 * Firecracker's request bodies as its serde structs read them (Firecracker v1.16.1,
 * `src/vmm/src/vmm_config/*.rs`): the same required fields, defaults, refusal of unknown fields
 * and serde's wording in the error text (without its "at line L column C" suffix).
 */

type Scalar = 'bool' | 'string' | 'u8' | 'u16' | 'u32' | 'u64' | 'mac'

/** One field: its type, and whether serde fills it in when absent (`Option` or a default). */
interface Field {
  type: Scalar | { variants: readonly string[] } | { struct: Struct } | { list: Struct }
  optional?: boolean
}

export interface Struct {
  name: string
  fields: Record<string, Field>
  /** `#[serde(deny_unknown_fields)]` */
  denyUnknown: boolean
}

const integerRange: Record<string, bigint> = {
  u8: 0xffn,
  u16: 0xffffn,
  u32: 0xffff_ffffn,
  u64: 0xffff_ffff_ffff_ffffn,
}

/** A body serde refused; `message` is serde's text. */
export class SerdeError extends Error {}

/** serde's list of names: "`a`", "`a` or `b`", "one of `a`, `b`, `c`". */
function expected(names: readonly string[]): string {
  const quoted = names.map((name) => `\`${name}\``)
  if (quoted.length === 1) {
    return quoted[0] ?? ''
  }
  if (quoted.length === 2) {
    return `${quoted[0]} or ${quoted[1]}`
  }
  return `one of ${quoted.join(', ')}`
}

/** How serde names a JSON value it did not expect. */
function describeValue(value: unknown): string {
  if (value === null) {
    return 'null'
  }
  if (typeof value === 'string') {
    return `string ${JSON.stringify(value)}`
  }
  if (typeof value === 'boolean') {
    return `boolean \`${value}\``
  }
  if (typeof value === 'number') {
    return Number.isInteger(value) ? `integer \`${value}\`` : `floating point \`${value}\``
  }
  return Array.isArray(value) ? 'sequence' : 'map'
}

function invalidType(value: unknown, what: string): SerdeError {
  return new SerdeError(`invalid type: ${describeValue(value)}, expected ${what}`)
}

function readScalar(type: Scalar, value: unknown): unknown {
  switch (type) {
    case 'bool':
      if (typeof value !== 'boolean') {
        throw invalidType(value, 'a boolean')
      }
      return value
    case 'string':
      if (typeof value !== 'string') {
        throw invalidType(value, 'a string')
      }
      return value
    case 'mac':
      if (typeof value !== 'string') {
        throw invalidType(value, 'a string')
      }
      if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(value)) {
        throw new SerdeError(
          `invalid value: string ${JSON.stringify(value)}, expected a MAC address`,
        )
      }
      return value.toLowerCase()
    case 'u8':
    case 'u16':
    case 'u32':
    case 'u64': {
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        throw invalidType(value, type)
      }
      if (value < 0 || BigInt(value) > (integerRange[type] ?? 0n)) {
        throw new SerdeError(`invalid value: integer \`${value}\`, expected ${type}`)
      }
      return value
    }
  }
}

function readField(field: Field, value: unknown): unknown {
  const { type } = field
  if (value === null && field.optional === true) {
    return undefined
  }
  if (typeof type === 'string') {
    return readScalar(type, value)
  }
  if ('variants' in type) {
    if (typeof value !== 'string') {
      throw invalidType(value, 'a string variant')
    }
    if (!type.variants.includes(value)) {
      throw new SerdeError(`unknown variant \`${value}\`, expected ${expected(type.variants)}`)
    }
    return value
  }
  if ('struct' in type) {
    return readStruct(type.struct, value)
  }
  if (!Array.isArray(value)) {
    throw invalidType(value, 'a sequence')
  }
  return value.map((item) => readStruct(type.list, item))
}

/**
 * Reads `value` as serde would read `struct`: fields serde fills in stay absent.
 * @throws SerdeError with serde's message
 */
export function readStruct(struct: Struct, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidType(value, `struct ${struct.name}`)
  }
  const names = Object.keys(struct.fields)
  const result: Record<string, unknown> = {}
  for (const [key, item] of Object.entries(value)) {
    const field = struct.fields[key]
    if (field === undefined) {
      if (struct.denyUnknown) {
        throw new SerdeError(`unknown field \`${key}\`, expected ${expected(names)}`)
      }
      continue
    }
    const read = readField(field, item)
    if (read !== undefined) {
      result[key] = read
    }
  }
  for (const name of names) {
    if (result[name] === undefined && struct.fields[name]?.optional !== true) {
      throw new SerdeError(`missing field \`${name}\``)
    }
  }
  return result
}

const tokenBucket: Struct = {
  name: 'TokenBucketConfig',
  denyUnknown: true,
  fields: {
    size: { type: 'u64' },
    one_time_burst: { type: 'u64', optional: true },
    refill_time: { type: 'u64' },
  },
}

const rateLimiter: Field = {
  type: {
    struct: {
      name: 'RateLimiterConfig',
      denyUnknown: true,
      fields: {
        bandwidth: { type: { struct: tokenBucket }, optional: true },
        ops: { type: { struct: tokenBucket }, optional: true },
      },
    },
  },
  optional: true,
}

const machineConfig: Struct = {
  name: 'MachineConfig',
  denyUnknown: true,
  fields: {
    vcpu_count: { type: 'u8' },
    mem_size_mib: { type: 'u64' },
    smt: { type: 'bool', optional: true },
    cpu_template: {
      type: { variants: ['C3', 'T2', 'T2S', 'T2CL', 'T2A', 'V1N1', 'None'] },
      optional: true,
    },
    track_dirty_pages: { type: 'bool', optional: true },
    huge_pages: { type: { variants: ['None', '2M'] }, optional: true },
  },
}

/** The structs of the requests the shim serves, by Firecracker's names. */
export const shapes = {
  MachineConfig: machineConfig,
  /** PATCH /machine-config: the same fields, each optional. */
  MachineConfigUpdate: {
    name: 'MachineConfigUpdate',
    denyUnknown: true,
    fields: Object.fromEntries(
      Object.entries(machineConfig.fields).map(([name, field]) => [
        name,
        { ...field, optional: true },
      ]),
    ),
  },
  BootSourceConfig: {
    name: 'BootSourceConfig',
    denyUnknown: true,
    fields: {
      kernel_image_path: { type: 'string' },
      initrd_path: { type: 'string', optional: true },
      boot_args: { type: 'string', optional: true },
    },
  },
  BlockDeviceConfig: {
    name: 'BlockDeviceConfig',
    denyUnknown: true,
    fields: {
      drive_id: { type: 'string' },
      partuuid: { type: 'string', optional: true },
      is_root_device: { type: 'bool' },
      cache_type: { type: { variants: ['Unsafe', 'Writeback'] }, optional: true },
      is_read_only: { type: 'bool', optional: true },
      path_on_host: { type: 'string', optional: true },
      rate_limiter: rateLimiter,
      io_engine: { type: { variants: ['Sync', 'Async'] }, optional: true },
      socket: { type: 'string', optional: true },
    },
  },
  BlockDeviceUpdateConfig: {
    name: 'BlockDeviceUpdateConfig',
    denyUnknown: true,
    fields: {
      drive_id: { type: 'string' },
      path_on_host: { type: 'string', optional: true },
      rate_limiter: rateLimiter,
    },
  },
  NetworkInterfaceConfig: {
    name: 'NetworkInterfaceConfig',
    denyUnknown: true,
    fields: {
      iface_id: { type: 'string' },
      host_dev_name: { type: 'string' },
      guest_mac: { type: 'mac', optional: true },
      mtu: { type: 'u16', optional: true },
      rx_rate_limiter: rateLimiter,
      tx_rate_limiter: rateLimiter,
    },
  },
  NetworkInterfaceUpdateConfig: {
    name: 'NetworkInterfaceUpdateConfig',
    denyUnknown: true,
    fields: {
      iface_id: { type: 'string' },
      rx_rate_limiter: rateLimiter,
      tx_rate_limiter: rateLimiter,
    },
  },
  VsockDeviceConfig: {
    name: 'VsockDeviceConfig',
    denyUnknown: true,
    fields: {
      vsock_id: { type: 'string', optional: true },
      guest_cid: { type: 'u32' },
      uds_path: { type: 'string' },
    },
  },
  BalloonDeviceConfig: {
    name: 'BalloonDeviceConfig',
    denyUnknown: true,
    fields: {
      amount_mib: { type: 'u32' },
      deflate_on_oom: { type: 'bool' },
      stats_polling_interval_s: { type: 'u16', optional: true },
      free_page_hinting: { type: 'bool', optional: true },
      free_page_reporting: { type: 'bool', optional: true },
    },
  },
  BalloonUpdateConfig: {
    name: 'BalloonUpdateConfig',
    denyUnknown: true,
    fields: { amount_mib: { type: 'u32' } },
  },
  ActionBody: {
    name: 'ActionBody',
    denyUnknown: true,
    fields: {
      action_type: { type: { variants: ['FlushMetrics', 'InstanceStart', 'SendCtrlAltDel'] } },
    },
  },
  Vm: {
    name: 'Vm',
    denyUnknown: true,
    fields: { state: { type: { variants: ['Paused', 'Resumed'] } } },
  },
  CreateSnapshotParams: {
    name: 'CreateSnapshotParams',
    denyUnknown: true,
    fields: {
      snapshot_type: { type: { variants: ['Diff', 'Full'] }, optional: true },
      snapshot_path: { type: 'string' },
      mem_file_path: { type: 'string' },
    },
  },
  LoadSnapshotConfig: {
    name: 'LoadSnapshotConfig',
    denyUnknown: true,
    fields: {
      snapshot_path: { type: 'string' },
      mem_file_path: { type: 'string', optional: true },
      mem_backend: {
        type: {
          struct: {
            name: 'MemBackendConfig',
            denyUnknown: true,
            fields: {
              backend_path: { type: 'string' },
              backend_type: { type: { variants: ['File', 'Uffd'] } },
            },
          },
        },
        optional: true,
      },
      enable_diff_snapshots: { type: 'bool', optional: true },
      track_dirty_pages: { type: 'bool', optional: true },
      resume_vm: { type: 'bool', optional: true },
      network_overrides: {
        type: {
          list: {
            name: 'NetworkOverride',
            denyUnknown: false,
            fields: { iface_id: { type: 'string' }, host_dev_name: { type: 'string' } },
          },
        },
        optional: true,
      },
      vsock_override: {
        type: {
          struct: {
            name: 'VsockOverride',
            denyUnknown: false,
            fields: { uds_path: { type: 'string' } },
          },
        },
        optional: true,
      },
      clock_realtime: { type: 'bool', optional: true },
    },
  },
} satisfies Record<string, Struct>

/** What the typed readers below return. */
export interface MachineConfig {
  vcpu_count: number
  mem_size_mib: number
  smt: boolean
  track_dirty_pages: boolean
  huge_pages: 'None' | '2M'
  cpu_template?: string
}

export interface BootSourceConfig {
  kernel_image_path: string
  initrd_path?: string
  boot_args?: string
}

export interface DriveConfig {
  drive_id: string
  is_root_device: boolean
  cache_type: 'Unsafe' | 'Writeback'
  is_read_only: boolean
  path_on_host: string
  io_engine: 'Sync' | 'Async'
  partuuid?: string
}

export interface NetConfig {
  iface_id: string
  host_dev_name: string
  guest_mac?: string
  mtu?: number
}

export interface VsockConfig {
  guest_cid: number
  uds_path: string
}

export interface BalloonConfig {
  amount_mib: number
  deflate_on_oom: boolean
  stats_polling_interval_s: number
  free_page_hinting: boolean
  free_page_reporting: boolean
}

/** Parses a request body as JSON; what is not JSON gets serde's text for it. */
export function parseJson(body: string): unknown {
  try {
    return JSON.parse(body) as unknown
  } catch (err) {
    throw new SerdeError(`expected value (${(err as Error).message})`)
  }
}
