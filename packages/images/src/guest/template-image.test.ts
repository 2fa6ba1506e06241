/** The cache names of template images: what makes a VM image of a template new. */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { templateImageKey } from './template-image.js'

const root = mkdtempSync(join(tmpdir(), 'sandcell-template-image-'))
after(() => rmSync(root, { recursive: true, force: true }))

function dir(name: string): string {
  const path = join(root, name)
  mkdirSync(path, { recursive: true })
  return path
}

const buildA = '6a1f7f4e-2b0c-4c4e-9a59-6f3b1c2d4e5f'
const buildB = '0d9c8b7a-6f5e-4d3c-8b2a-1f0e9d8c7b6a'

describe('templateImageKey', () => {
  const base = dir('base/rootfs')
  const layer = dir('layers/one/tree')
  const other = dir('layers/two/tree')
  const source = (name: string, lowerDirs: string[]): Parameters<typeof templateImageKey>[0] => ({
    name,
    lowerDirs,
    uidOffset: 100_000,
    withBusybox: true,
  })

  it('names a built template by its layers: a rebuild on the same layers shares the image', () => {
    const key = templateImageKey(source(buildA, [layer, base]))
    assert.match(key, /^built-[0-9a-f]{16}$/)
    assert.equal(templateImageKey(source(buildB, [layer, base])), key)
  })

  it('makes a new image when the layers of a build differ', () => {
    const key = templateImageKey(source(buildA, [layer, base]))
    assert.notEqual(templateImageKey(source(buildA, [other, base])), key)
    assert.notEqual(templateImageKey(source(buildA, [other, layer, base])), key)
    assert.notEqual(templateImageKey(source(buildA, [base])), key)
  })

  it('keeps naming a built-in by its name', () => {
    assert.match(templateImageKey(source('base', [base])), /^base-[0-9a-f]{16}$/)
  })
})
