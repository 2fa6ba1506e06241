export * from './envd-client.js'
export * from './run-command.js'
export * from './http-errors.js'
export {
  encodeQuery,
  type AgentInit,
  type ArchiveUploadOptions,
  type ArchiveUploadResult,
  type InitOptions,
  type TransferOptions,
  type UploadData,
  type UploadedFile,
} from './agent-http.js'
