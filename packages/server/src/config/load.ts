/** Loads the server's configuration once: defaults < YAML < SANDCELL_* env < flags. */
import { loadConfig } from '@sandcell/shared'
import { serverConfigSchema, type ServerConfig } from './schema.js'

export interface ServerConfigSources {
  file?: string | undefined
  env?: Record<string, string | undefined>
  flags?: Record<string, unknown>
}

/** @throws ConfigError listing every invalid value with its source. */
export function loadServerConfig(sources: ServerConfigSources = {}): Readonly<ServerConfig> {
  return loadConfig({ schema: serverConfigSchema, ...sources })
}
