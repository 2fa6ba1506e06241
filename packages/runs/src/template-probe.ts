/**
 * The probe a template's sandbox runs for the languages that may use it: one shell script that
 * reports, per language, the commands it lacks and its version command's output; and reading
 * that output back.
 */
import { normalizeVersion, type LanguageConfig } from './languages.js'

/** What probing one template found for one language. */
export interface TemplateFinding {
  missing: string[]
  version: string | undefined
  versionOutput: string
}

/** Single-quotes an argument for sh. */
function shellQuote(arg: string): string {
  return `'${arg.replace(/'/g, `'\\''`)}'`
}

/** The probe script: a marker per language, then missing commands and version output. */
export function probeScript(languages: readonly LanguageConfig[]): string {
  const lines: string[] = []
  for (const [index, language] of languages.entries()) {
    lines.push(`echo '@@language ${index}'`)
    for (const command of language.requires) {
      lines.push(
        `command -v ${shellQuote(command)} >/dev/null 2>&1 || echo ${shellQuote(`@@missing ${command}`)}`,
      )
    }
    if (language.versionCommand !== undefined && language.version === undefined) {
      lines.push(`${language.versionCommand.map(shellQuote).join(' ')} </dev/null 2>&1`)
    }
  }
  return lines.join('\n')
}

/** Reads the probe script's output back into findings per language. */
export function parseProbeOutput(
  languages: readonly LanguageConfig[],
  output: string,
): Map<LanguageConfig, TemplateFinding> {
  const findings = new Map<LanguageConfig, TemplateFinding>()
  let current: TemplateFinding | undefined
  for (const line of output.split('\n')) {
    const marker = /^@@language (\d+)$/.exec(line)
    if (marker !== null) {
      const language = languages[Number(marker[1])]
      current = { missing: [], version: undefined, versionOutput: '' }
      if (language !== undefined) {
        findings.set(language, current)
      }
      continue
    }
    if (current === undefined) {
      continue
    }
    if (line.startsWith('@@missing ')) {
      current.missing.push(line.slice('@@missing '.length))
    } else if (line.trim() !== '') {
      current.versionOutput += `${line}\n`
      current.version ??= normalizeVersion(line)
    }
  }
  return findings
}
