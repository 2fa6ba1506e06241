/**
 * Image references in Docker's grammar (`python:3`, `user/app`, `host:5000/a/b@sha256:…`),
 * resolved through the configured aliases and registry mirrors.
 */
import { InvalidArgumentError } from '@sandcell/shared'
import type { ImagesConfig } from './images-config.js'

/** A parsed, resolved image reference. */
export interface ImageReference {
  /** The registry host pulled from, after mirrors: `docker.io`, `127.0.0.1:5000`. */
  registry: string
  /** Slash-separated path in the registry: `library/python`, `sandcell/busybox`. */
  repository: string
  /** The tag; `latest` when neither a tag nor a digest is given. */
  tag?: string
  /** `sha256:<hex>` when the reference pins one; it wins over the tag. */
  digest?: string
  /** Canonical text: `registry/repository[:tag][@digest]`. */
  name: string
}

const dockerHub = 'docker.io'
const maxNameLength = 255

// From github.com/distribution/reference's regexp.go.
const alphanumeric = '[a-z0-9]+'
const separator = '(?:[._]|__|[-]+)'
const pathComponent = new RegExp(`^${alphanumeric}(?:${separator}${alphanumeric})*$`)
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
const domainPattern = new RegExp(
  `^(?:${domainComponent}(?:\\.${domainComponent})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?$`,
)
const tagPattern = /^[\w][\w.-]{0,127}$/
const digestPattern = /^sha256:[a-f0-9]{64}$/

/**
 * Parses `text` as Docker does: a first component with a dot, a colon or `localhost` is the
 * registry (else `docker.io`, and a one-component Docker Hub name gets `library/`); then the
 * tag, else `latest`; a digest may follow `@`. `aliases` replace the exact text first, then
 * `mirrors` replace the registry host.
 * @throws InvalidArgumentError saying what is wrong with the text
 */
export function parseImageReference(
  text: string,
  config: Partial<Pick<ImagesConfig, 'aliases' | 'mirrors'>> = {},
): ImageReference {
  const aliased = config.aliases?.[text]
  const source = aliased ?? text
  const invalid = (reason: string): InvalidArgumentError =>
    new InvalidArgumentError(
      `image reference ${JSON.stringify(text)}${aliased === undefined ? '' : ` (alias of ${JSON.stringify(source)})`} is not valid: ${reason}`,
      { details: { reference: text } },
    )
  if (source.length === 0) {
    throw invalid('it is empty')
  }
  if (/\s/.test(source)) {
    throw invalid('it contains white space')
  }
  let rest = source
  let digest: string | undefined
  const at = rest.indexOf('@')
  if (at !== -1) {
    digest = rest.slice(at + 1)
    rest = rest.slice(0, at)
    if (!digestPattern.test(digest)) {
      throw invalid(`the digest ${JSON.stringify(digest)} is not sha256:<64 hex digits>`)
    }
  }
  let tag: string | undefined
  const colon = rest.lastIndexOf(':')
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1)
    rest = rest.slice(0, colon)
    if (!tagPattern.test(tag)) {
      throw invalid(
        `the tag ${JSON.stringify(tag)} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'`,
      )
    }
  }
  if (rest.length === 0) {
    throw invalid('it names no repository')
  }
  if (rest.length > maxNameLength) {
    throw invalid(`the name is longer than ${maxNameLength} characters`)
  }
  let registry = dockerHub
  let repository = rest
  const slash = rest.indexOf('/')
  if (slash !== -1) {
    const first = rest.slice(0, slash)
    if (/[.:]/.test(first) || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first
      repository = rest.slice(slash + 1)
    }
  }
  if (!domainPattern.test(registry)) {
    throw invalid(`the registry ${JSON.stringify(registry)} is not a host name[:port]`)
  }
  if (registry === 'index.docker.io') {
    registry = dockerHub
  }
  if (registry === dockerHub && !repository.includes('/')) {
    repository = `library/${repository}`
  }
  for (const component of repository.split('/')) {
    if (!pathComponent.test(component)) {
      throw invalid(
        component !== component.toLowerCase()
          ? 'the repository name must be lowercase'
          : `the path component ${JSON.stringify(component)} must be lowercase letters and digits, separated by '.', '_', '__' or '-'`,
      )
    }
  }
  registry = config.mirrors?.[registry] ?? registry
  if (tag === undefined && digest === undefined) {
    tag = 'latest'
  }
  const name = `${registry}/${repository}${tag === undefined ? '' : `:${tag}`}${digest === undefined ? '' : `@${digest}`}`
  return {
    registry,
    repository,
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
    name,
  }
}

/** The host serving a registry's API: Docker Hub's is not `docker.io` itself. */
export function registryApiHost(registry: string): string {
  return registry === dockerHub ? 'registry-1.docker.io' : registry
}

/** Whether a registry host is loopback: spoken to over plain http whatever the config says. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[')
    ? registry.slice(0, registry.indexOf(']') + 1)
    : registry.split(':')[0]
  return host === '127.0.0.1' || host === 'localhost' || host === '[::1]'
}
