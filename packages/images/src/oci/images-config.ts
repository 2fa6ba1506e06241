/** Settings of image pulls: name mappings, mirrors, plain-http hosts, credentials and limits. */
import { z } from 'zod'

/** The platform whose image variant is pulled from an index on this host's architecture. */
export function hostPlatform(arch: string = process.arch): string {
  return arch === 'arm64' ? 'linux/arm64' : 'linux/amd64'
}

const credentialsSchema = z.object({
  username: z.string().min(1),
  password: z.string(),
})

export const imagesConfigSchema = z.object({
  aliases: z
    .record(z.string(), z.string().min(1))
    .default({})
    .describe(
      "image names replaced before anything else, matched exactly as written (e.g. 'e2bdev/base' → '127.0.0.1:5000/sandcell/base:1'), so an offline host still builds (YAML only)",
    ),
  mirrors: z
    .record(z.string(), z.string().regex(/^[a-z0-9.-]+(:\d+)?$/i, 'a host[:port]'))
    .default({})
    .describe(
      "registry host → host pulled from instead, same repository paths (e.g. 'docker.io' → '127.0.0.1:5000') (YAML only)",
    ),
  insecureRegistries: z
    .array(z.string())
    .default([])
    .describe(
      'registry hosts spoken to over plain http; 127.0.0.1, localhost and [::1] (any port) always are; SANDCELL_IMAGES_INSECURE_REGISTRIES (comma-separated)',
    ),
  credentials: z
    .record(z.string(), credentialsSchema)
    .default({})
    .describe(
      'username and password per registry host (the host pulled from, after mirrors); a pull may bring its own instead (YAML only)',
    ),
  platform: z
    .string()
    .regex(/^linux\/[a-z0-9_]+(\/[a-z0-9]+)?$/, 'linux/<architecture>[/<variant>]')
    .default(hostPlatform())
    .describe(
      'which variant of a multi-platform image is pulled (default linux/amd64, linux/arm64 on an arm64 host); SANDCELL_IMAGES_PLATFORM',
    ),
  requestTimeoutMs: z
    .number()
    .int()
    .positive()
    .default(30_000)
    .describe(
      'how long one registry request may wait for its response headers, and a download may stall, ms (default 30000); SANDCELL_IMAGES_REQUEST_TIMEOUT_MS',
    ),
  retries: z
    .number()
    .int()
    .min(0)
    .max(10)
    .default(3)
    .describe(
      'retries of a registry request that failed on the network, timed out or got 429/5xx, with backoff (default 3); SANDCELL_IMAGES_RETRIES',
    ),
  maxImageMiB: z
    .number()
    .int()
    .positive()
    .default(10_240)
    .describe(
      "largest image pulled, MiB: its layers' compressed size from the manifest and their unpacked size alike (default 10240); SANDCELL_IMAGES_MAX_IMAGE_MIB",
    ),
})

/** Image pull settings with every default filled in (see {@link imagesConfigSchema}). */
export type ImagesConfig = z.output<typeof imagesConfigSchema>
