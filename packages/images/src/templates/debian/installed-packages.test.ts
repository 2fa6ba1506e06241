/** Reading the installed packages from dpkg's status database. */
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { readInstalledPackages } from './installed-packages.js'

describe('readInstalledPackages', () => {
  it('lists installed packages from dpkg status, sorted, skipping removed ones', (t) => {
    const root = mkdtempSync(join(tmpdir(), 'sandcell-dpkg-'))
    t.after(() => rmSync(root, { recursive: true, force: true }))
    mkdirSync(join(root, 'var/lib/dpkg'), { recursive: true })
    writeFileSync(
      join(root, 'var/lib/dpkg/status'),
      `Package: zlib1g
Status: install ok installed
Version: 1:1.2.13.dfsg-1

Package: bash
Status: install ok installed
Priority: required
Version: 5.2.15-2+b13

Package: gone
Status: deinstall ok config-files
Version: 1.0
`,
    )
    assert.deepEqual(readInstalledPackages(root), ['bash=5.2.15-2+b13', 'zlib1g=1:1.2.13.dfsg-1'])
    assert.deepEqual(readInstalledPackages(join(root, 'missing')), [])
  })
})
