export * from './client.js'
export * from './sandboxes.js'
export * from './run.js'
export * from './envd.js'
export * from './errors.js'
export { encodeQuery, parseServerUrl } from './http.js'
export type {
  CreateSandboxOptions,
  ListedSandbox,
  Sandbox,
  SandboxDetail,
  SandboxLifecycle,
  SandboxMetric,
  SandboxNetwork,
  SandboxState,
  UploadedFile,
  VolumeMount,
} from './wire.js'
