/** Host checks both microVM drivers make before their first VM: tools on PATH, probe results. */
import { standardPath } from '@sandcell/shared'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { ProbeResult } from '../../driver.js'

/** What is wrong for each `[tool, Debian package]` not found in the standard PATH. */
export function missingTools(needed: readonly (readonly [string, string])[]): string[] {
  const path = standardPath.split(':')
  const problems: string[] = []
  for (const [tool, pkg] of needed) {
    if (!path.some((dir) => dir.length > 0 && existsSync(join(dir, tool)))) {
      problems.push(`${tool} is missing: apt-get install ${pkg}`)
    }
  }
  return problems
}

export function toProbeResult(problems: string[], details: Record<string, string>): ProbeResult {
  const result: ProbeResult = { usable: problems.length === 0, details }
  if (problems.length > 0) {
    result.reason = problems.join('; ')
  }
  return result
}
