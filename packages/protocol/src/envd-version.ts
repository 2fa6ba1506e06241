/** The envd protocol facts clients rely on: version we implement, ports, headers. */

/**
 * The envd version this agent reports. The e2b SDK enables features by it (0.3.0 stdin,
 * 0.4.0 default user, 0.5.2 CloseStdin, 0.5.7 octet-stream upload); report the highest one
 * whose features are all implemented.
 */
export const envdVersion = '0.5.7'

/** Port the e2b SDK addresses envd on (`E2b-Sandbox-Port`). */
export const envdPort = 49983

export const envdHeaders = {
  accessToken: 'x-access-token',
  sandboxId: 'e2b-sandbox-id',
  sandboxPort: 'e2b-sandbox-port',
  keepalivePingInterval: 'keepalive-ping-interval',
} as const

/** Users every sandbox has; `user` is the e2b default. */
export const defaultUser = 'user'
