import assert from 'node:assert/strict'
import { tmpdir } from 'node:os'
import { describe, it } from 'node:test'
import { networkFilesystemName, networkFilesystemOf } from './network-mounts.js'

describe('networkFilesystemName', () => {
  it('names the network file systems envd refuses to watch', () => {
    assert.equal(networkFilesystemName(0x6969), 'nfs')
    assert.equal(networkFilesystemName(0xff534d42), 'cifs')
    assert.equal(networkFilesystemName(0x517b), 'smb')
    assert.equal(networkFilesystemName(0xfe534d42), 'smb2')
    assert.equal(networkFilesystemName(0x65735546), 'fuse')
  })

  it('recognises a magic number that arrives sign-extended', () => {
    assert.equal(networkFilesystemName(0xff534d42 | 0), 'cifs')
  })

  it('treats local file systems as local', () => {
    assert.equal(networkFilesystemName(0xef53), undefined) // ext4
    assert.equal(networkFilesystemName(0x794c7630), undefined) // overlayfs
    assert.equal(networkFilesystemName(0x01021994), undefined) // tmpfs
  })

  it('finds the temp directory on a local file system', () => {
    assert.equal(networkFilesystemOf(tmpdir()), undefined)
  })
})
