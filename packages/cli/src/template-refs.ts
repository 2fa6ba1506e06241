/**
 * What the template commands accept as a reference, resolved against the server: a template by
 * name or id, and a build by `NAME` (its newest build), `NAME:TAG` (the build the tag names) or
 * its build id.
 */
import type { TemplatesApi } from '@sandcell/sdk'
import { NotFoundError } from '@sandcell/shared'

type Templates = Pick<TemplatesApi, 'list' | 'get' | 'resolveName' | 'tags'>

const buildIdPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/**
 * A template's id from its name, through the aliases route (E2B's `Template.exists`); a name
 * that is no alias may still be a template id.
 * @throws NotFoundError when it is neither
 */
export async function resolveTemplateId(templates: Templates, nameOrId: string): Promise<string> {
  try {
    return (await templates.resolveName(nameOrId)).templateId
  } catch (err) {
    if (!(err instanceof NotFoundError)) {
      throw err
    }
  }
  try {
    return (await templates.get(nameOrId)).templateId
  } catch (err) {
    throw err instanceof NotFoundError
      ? new NotFoundError(`template '${nameOrId}' not found`, { cause: err })
      : err
  }
}

export interface BuildRef {
  templateId: string
  buildId: string
}

/**
 * The build a reference names: a build id, `NAME:TAG` (the ready build the tag names) or `NAME`
 * (the template's newest build, whatever its status: the one a person asking for logs wants).
 * @throws NotFoundError naming what is missing
 */
export async function resolveBuild(templates: Templates, reference: string): Promise<BuildRef> {
  if (buildIdPattern.test(reference)) {
    const buildId = reference.toLowerCase()
    for (const summary of await templates.list()) {
      const detail = await templates.get(summary.templateId)
      if (detail.builds.some((build) => build.buildId === buildId)) {
        return { templateId: detail.templateId, buildId }
      }
    }
    throw new NotFoundError(`build ${reference} not found`)
  }
  const colon = reference.lastIndexOf(':')
  const name = colon === -1 ? reference : reference.slice(0, colon)
  const templateId = await resolveTemplateId(templates, name)
  if (colon !== -1) {
    const tag = reference.slice(colon + 1)
    const tagged = (await templates.tags(templateId)).find((entry) => entry.tag === tag)
    if (tagged === undefined) {
      throw new NotFoundError(`template '${name}' has no finished build tagged '${tag}'`)
    }
    return { templateId, buildId: tagged.buildId }
  }
  // Stable: builds made in the same millisecond keep the server's order.
  const newest = (await templates.get(templateId)).builds
    .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime())
    .at(-1)
  if (newest === undefined) {
    throw new NotFoundError(`template '${name}' has no builds`)
  }
  return { templateId, buildId: newest.buildId }
}
