/**
 * E2B's template reference grammar: `[namespace/]alias[:tag]`, lower-cased and trimmed, the tag
 * `default` when none is given. sandcell has one team, so a namespace is accepted and dropped.
 */
import { InvalidArgumentError } from '@sandcell/shared'

export interface TemplateRef {
  alias: string
  tag: string
  /** Whether the text named a tag itself (an explicit `:default` counts). */
  explicitTag: boolean
}

const aliasPattern = /^[a-z0-9_-]+$/
const tagPattern = /^[a-z0-9_.-]+$/
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export const defaultTag = 'default'

/**
 * Parses a template reference.
 * @throws InvalidArgumentError saying which part is wrong
 */
export function parseTemplateRef(text: string): TemplateRef {
  const trimmed = text.trim().toLowerCase()
  const slash = trimmed.lastIndexOf('/')
  const namespace = slash === -1 ? undefined : trimmed.slice(0, slash)
  const rest = slash === -1 ? trimmed : trimmed.slice(slash + 1)
  const colon = rest.indexOf(':')
  const alias = colon === -1 ? rest : rest.slice(0, colon)
  const tag = colon === -1 ? defaultTag : rest.slice(colon + 1)
  if (namespace !== undefined && !aliasPattern.test(namespace)) {
    throw new InvalidArgumentError(
      `template name ${JSON.stringify(text)}: the namespace may hold only a-z, 0-9, "_" and "-"`,
    )
  }
  if (!aliasPattern.test(alias)) {
    throw new InvalidArgumentError(
      `template name ${JSON.stringify(text)}: the name may hold only a-z, 0-9, "_" and "-"`,
    )
  }
  assertTag(tag)
  return { alias, tag, explicitTag: colon !== -1 }
}

/** @throws InvalidArgumentError for a tag E2B would refuse */
export function assertTag(tag: string): void {
  if (!tagPattern.test(tag) || uuidPattern.test(tag)) {
    throw new InvalidArgumentError(
      `tag ${JSON.stringify(tag)} may hold only a-z, 0-9, ".", "_" and "-", and must not be a UUID`,
    )
  }
}

export function isUuid(text: string): boolean {
  return uuidPattern.test(text)
}
