/** The sandcell client: one object holding the server's URL, the API key and a connection pool. */
import {
  createProxiedEnvdClient,
  type EnvdClientOptions,
  type EnvdTarget,
  type ProxiedEnvdClient,
} from '@sandcell/envd-client'
import { createHttpClient } from './http.js'
import { createRunApi, type RunApi } from './run.js'
import { createSandboxesApi, type SandboxesApi } from './sandboxes.js'
import { createTemplatesApi, type TemplatesApi } from './templates.js'

export interface SandcellClientOptions {
  /** The server, e.g. `http://127.0.0.1:3000` (the control plane and the envd proxy). */
  apiUrl: string
  /** Sent as `X-API-KEY`; without it the server answers 401. */
  apiKey?: string | undefined
  /** Aborts every request of this client, envd RPCs included. */
  signal?: AbortSignal | undefined
  /**
   * Deadline of one control-plane request, ms (creating a sandbox may build its template).
   * @default 120000
   */
  requestTimeoutMs?: number | undefined
}

export interface SandcellClient {
  /** The server's URL, normalised (no trailing slash). */
  readonly apiUrl: string
  readonly sandboxes: SandboxesApi
  /** One-shot runs (Piston's execute API) and the server's languages. */
  readonly run: RunApi
  /** Built templates: list, get, delete, tags, build status and logs. */
  readonly templates: TemplatesApi
  /**
   * Clients for a sandbox's envd (process, filesystem, files) through the server. Needs the
   * sandbox's `envdAccessToken`, which create, connect and get return.
   */
  envd(sandbox: EnvdTarget, options?: EnvdClientOptions): ProxiedEnvdClient
  /** Closes the client's connections; envd clients are closed by their own `close()`. */
  close(): Promise<void>
}

/** @throws InvalidArgumentError when `apiUrl` is not an http(s) URL. */
export function createSandcellClient(options: SandcellClientOptions): SandcellClient {
  const http = createHttpClient({
    serverUrl: options.apiUrl,
    apiKey: options.apiKey,
    signal: options.signal,
    requestTimeoutMs: options.requestTimeoutMs ?? 120_000,
  })
  return {
    apiUrl: http.serverUrl,
    sandboxes: createSandboxesApi(http),
    run: createRunApi(http),
    templates: createTemplatesApi(http),
    envd: (sandbox, envdOptions = {}) =>
      createProxiedEnvdClient(http.serverUrl, sandbox, { ...envdOptions, signal: options.signal }),
    close: () => http.close(),
  }
}
