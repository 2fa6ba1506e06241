/** The envd protocol facts clients rely on: version we implement, ports, headers. */

/**
 * The envd version this agent reports. The e2b SDK (2.51) enables features by it: 0.1.4
 * recursive watch, 0.3.0 stdin option, 0.4.0 default user, 0.5.2 CloseStdin, 0.5.7 octet-stream
 * upload, 0.6.2 file metadata, 0.6.3 entries in watch events, 0.6.4 watches on network mounts,
 * and nothing above. Report the highest one whose features are all implemented.
 */
export const envdVersion = '0.6.4'

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
