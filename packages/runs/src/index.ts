export { LanguageCatalog, versionMatches } from './language-catalog.js'
export type { LanguageStatus, ResolvedLanguage } from './language-catalog.js'
export { defaultLanguagesFile, expandCommand, loadLanguages, parseLanguages } from './languages.js'
export type { LanguageConfig } from './languages.js'
export { validateFiles, fileNameProblem } from './run-files.js'
export type { RunFile, WireFile } from './run-files.js'
export { RunControl, RunService, runDirectory } from './run-service.js'
export type {
  RunHooks,
  RunRequest,
  RunResult,
  RunSettings,
  StageResult,
  StageStatus,
} from './run-service.js'
export { runConfigSchema } from './run-config.js'
export type { RunConfig } from './run-config.js'
