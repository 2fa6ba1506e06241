/** What the proxy knows of each sandbox (its target) and the registry it asks on every request. */

/** A sandbox as the proxy sees it: where its agent and ports are, and what guards them. */
export interface ProxyTarget {
  sandboxId: string
  /**
   * Host path of the sandbox agent's Unix socket; empty while the sandbox is paused keeping its
   * filesystem only (no agent runs, and a resume makes a new one).
   */
  socketPath: string
  /** The sandbox's envd access token (the agent itself enforces it; the proxy uses it only to
   * find the sandbox a signed /files URL was made for). */
  envdAccessToken: string
  state: 'running' | 'paused'
  /** Traffic to this sandbox resumes it when it is paused (E2B's autoResume). */
  autoResume: boolean
  /** Where the sandbox's own TCP ports are reached; absent when it has loopback only. */
  portAddress?: string
  /**
   * Required (header `e2b-traffic-access-token`) on every port but envd's when set: E2B's
   * `allowPublicTraffic: false`.
   */
  trafficAccessToken?: string
  /** Host header sent to the sandbox's ports instead of the client's (`${PORT}` replaced). */
  maskRequestHost?: string
  /** Ports whose service speaks TLS: the proxy connects with TLS (certificate unchecked). */
  httpsPorts?: readonly number[]
}

/** Read access to the sandboxes the server manages; kept current by the sandbox service. */
export interface ProxyRegistry {
  /** The sandbox with this id, or undefined when the server has none (killed, never existed). */
  get(sandboxId: string): ProxyTarget | undefined
  /** Every sandbox, for matching a signed URL that names no sandbox. */
  list(): Iterable<ProxyTarget>
  /** Resumes a paused sandbox (for autoResume); resolves once it runs again. */
  resume(sandboxId: string): Promise<void>
}
