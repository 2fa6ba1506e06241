export { startServer } from './server.js'
export type { StartServerOptions, StartedServer } from './server.js'
export { loadServerConfig } from './config/load.js'
export { runConfigSchema, serverConfigSchema } from './config/schema.js'
export type { ServerConfig } from './config/schema.js'
export { LanguageCatalog, versionMatches } from './run/language-catalog.js'
export type { LanguageStatus, ResolvedLanguage } from './run/language-catalog.js'
export {
  defaultLanguagesFile,
  expandCommand,
  loadLanguages,
  parseLanguages,
} from './run/languages.js'
export type { LanguageConfig } from './run/languages.js'
export { validateFiles, fileNameProblem } from './run/run-files.js'
export type { RunFile, WireFile } from './run/run-files.js'
export { RunControl, RunService, runDirectory } from './run/run-service.js'
export type {
  RunHooks,
  RunRequest,
  RunResult,
  RunSettings,
  StageResult,
  StageStatus,
} from './run/run-service.js'
