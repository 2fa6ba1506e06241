export * from './client.js'
export * from './sandboxes.js'
export * from './run.js'
export * from './templates.js'
export { basicAuthorization } from '@sandcell/protocol'
export {
  encodeQuery,
  errorFromBadBody,
  errorFromNetwork,
  errorFromResponse,
  errorFromTimeout,
  routingHeaders,
  serverMessage,
  type EnvdClient,
  type EnvdClientOptions,
  type EnvdTarget,
  type ProxiedEnvdClient,
  type RequestContext,
  type TransferOptions,
  type UploadData,
  type UploadedFile,
} from '@sandcell/envd-client'
export { parseServerUrl } from './http.js'
export type {
  CreateSandboxOptions,
  ListedSandbox,
  Sandbox,
  SandboxDetail,
  SandboxLifecycle,
  SandboxMetric,
  SandboxNetwork,
  SandboxState,
  VolumeMount,
} from './wire.js'
