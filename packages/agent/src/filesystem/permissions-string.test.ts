import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { formatPermissions } from './permissions-string.js'

describe('formatPermissions', () => {
  it('formats regular files, directories and links like ls -l', () => {
    assert.equal(formatPermissions(0o100644), '-rw-r--r--')
    assert.equal(formatPermissions(0o040755), 'drwxr-xr-x')
    assert.equal(formatPermissions(0o120777), 'lrwxrwxrwx')
    assert.equal(formatPermissions(0o100000), '----------')
  })

  it('shows setuid, setgid and sticky bits with and without execute', () => {
    assert.equal(formatPermissions(0o104755), '-rwsr-xr-x')
    assert.equal(formatPermissions(0o102745), '-rwxr-Sr-x')
    assert.equal(formatPermissions(0o041777), 'drwxrwxrwt')
    assert.equal(formatPermissions(0o041776), 'drwxrwxrwT')
  })

  it('marks devices, fifos and sockets', () => {
    assert.equal(formatPermissions(0o020666)[0], 'c')
    assert.equal(formatPermissions(0o060660)[0], 'b')
    assert.equal(formatPermissions(0o010644)[0], 'p')
    assert.equal(formatPermissions(0o140755)[0], 's')
  })
})
