/** The Debian builder's checks of its inputs, before anything runs. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError, createSilentLogger } from '@sandcell/shared'
import { buildDebianRootfs } from './debian-rootfs.js'

describe('buildDebianRootfs', () => {
  const log = createSilentLogger()

  it('rejects a package name that is not one', async () => {
    for (const bad of ['--force-yes', 'a,b', 'Python3', '']) {
      await assert.rejects(
        buildDebianRootfs({ templatesDir: '/nonexistent', packages: [bad], log }),
        InvalidArgumentError,
      )
    }
  })

  it('rejects a mirror that is not an apt source', async () => {
    for (const bad of ['--variant=extract', 'deb.debian.org', '']) {
      await assert.rejects(
        buildDebianRootfs({ templatesDir: '/nonexistent', mirrors: [bad], log }),
        InvalidArgumentError,
      )
    }
  })
})
