import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { TemplateDetail, TemplatesApi } from '@sandcell/sdk'
import { NotFoundError } from '@sandcell/shared'
import { resolveBuild, resolveTemplateId } from './template-refs.js'

const buildA = '11111111-1111-4111-8111-111111111111'
const buildB = '22222222-2222-4222-8222-222222222222'

function detail(templateId: string, alias: string, buildIds: string[]): TemplateDetail {
  return {
    templateId,
    buildId: buildIds[0] ?? '',
    names: [alias],
    aliases: [alias],
    public: false,
    buildStatus: 'ready',
    buildCount: buildIds.length,
    spawnCount: 0,
    cpuCount: 1,
    memoryMiB: 512,
    createdAt: new Date(0),
    updatedAt: new Date(0),
    builds: buildIds.map((buildId, i) => ({
      buildId,
      status: 'ready',
      createdAt: new Date(i * 1000),
      updatedAt: new Date(i * 1000),
      cpuCount: 1,
      memoryMiB: 512,
    })),
  }
}

/** Two templates as the server would answer for them: `app` by alias, `t-other` by id only. */
function fakeTemplates(): Pick<TemplatesApi, 'list' | 'get' | 'resolveName' | 'tags'> {
  const templates = [detail('t-app', 'app', [buildA, buildB]), detail('t-other', 'other', [])]
  const byId = (id: string) => {
    const found = templates.find((t) => t.templateId === id)
    if (found === undefined) {
      throw new NotFoundError(`template '${id}' not found`)
    }
    return found
  }
  return {
    list: () => Promise.resolve(templates),
    get: (id) => Promise.resolve().then(() => byId(id)),
    resolveName: (name) =>
      Promise.resolve().then(() => {
        const found = templates.find((t) => t.aliases.includes(name))
        if (found === undefined) {
          throw new NotFoundError(`template '${name}' not found`)
        }
        return { templateId: found.templateId, public: false }
      }),
    tags: (id) =>
      Promise.resolve(
        id === 't-app' ? [{ tag: 'v1', buildId: buildA, createdAt: new Date(0) }] : [],
      ),
  }
}

describe('resolveTemplateId', () => {
  it('takes a name through the aliases route, else an id', async () => {
    assert.equal(await resolveTemplateId(fakeTemplates(), 'app'), 't-app')
    assert.equal(await resolveTemplateId(fakeTemplates(), 't-other'), 't-other')
  })

  it('says when there is no such template', async () => {
    await assert.rejects(resolveTemplateId(fakeTemplates(), 'nope'), {
      name: 'NotFoundError',
      message: "template 'nope' not found",
    })
  })
})

describe('resolveBuild', () => {
  it("takes NAME as the template's newest build, NAME:TAG as the tagged one", async () => {
    assert.deepEqual(await resolveBuild(fakeTemplates(), 'app'), {
      templateId: 't-app',
      buildId: buildB,
    })
    assert.deepEqual(await resolveBuild(fakeTemplates(), 'app:v1'), {
      templateId: 't-app',
      buildId: buildA,
    })
  })

  it('finds a build id in whichever template has it', async () => {
    assert.deepEqual(await resolveBuild(fakeTemplates(), buildA.toUpperCase()), {
      templateId: 't-app',
      buildId: buildA,
    })
    await assert.rejects(
      resolveBuild(fakeTemplates(), '33333333-3333-4333-8333-333333333333'),
      /build 33333333-.* not found/,
    )
  })

  it('says which tag or build is missing', async () => {
    await assert.rejects(
      resolveBuild(fakeTemplates(), 'app:v2'),
      /template 'app' has no finished build tagged 'v2'/,
    )
    await assert.rejects(resolveBuild(fakeTemplates(), 'other'), /template 'other' has no builds/)
    await assert.rejects(resolveBuild(fakeTemplates(), 'nope:v1'), /template 'nope' not found/)
  })
})
