import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { fileSignature, fileSignatureLength } from './file-signature.js'

const token = 'secret-token'

describe('fileSignature', () => {
  it("matches the e2b SDK's v1 signature for known inputs", () => {
    assert.equal(
      fileSignature('/home/user/a.txt', 'read', 'user', token),
      'v1_powbkN3fI7yRlWaB5Ui2dRUwVP8UZprfSGludREq8sk',
    )
    assert.equal(
      fileSignature('/x', 'write', '', token, 1700000000),
      'v1_L6A4SRZ0oFQjRy0gxMPDfHLOt9uTGfJK0JIe2kbGyz4',
    )
  })

  it('drops the base64 padding and always has the same length', () => {
    const signature = fileSignature('/x', 'write', '', token, 1700000000)
    assert.ok(!signature.endsWith('='))
    assert.equal(signature.length, fileSignatureLength)
  })

  it('signs the expiration', () => {
    assert.notEqual(
      fileSignature('/x', 'write', '', token, 1),
      fileSignature('/x', 'write', '', token, 2),
    )
  })
})
