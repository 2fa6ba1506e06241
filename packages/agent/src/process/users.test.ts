import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { createUserDirectory, parseGroup, parsePasswd } from './users.js'

describe('parsePasswd', () => {
  it('reads name, uid, gid, home and shell', () => {
    const users = parsePasswd(
      'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1001:User,,,:/home/user:/bin/zsh\n',
    )
    assert.deepEqual(users.get('root'), {
      name: 'root',
      uid: 0,
      gid: 0,
      home: '/root',
      shell: '/bin/bash',
    })
    assert.deepEqual(users.get('user'), {
      name: 'user',
      uid: 1000,
      gid: 1001,
      home: '/home/user',
      shell: '/bin/zsh',
    })
  })

  it('defaults an empty shell to /bin/sh and an empty home to /', () => {
    assert.deepEqual(parsePasswd('svc:x:5:5:::\n').get('svc'), {
      name: 'svc',
      uid: 5,
      gid: 5,
      home: '/',
      shell: '/bin/sh',
    })
  })

  it('skips comments, blank, short and non-numeric lines, and keeps the first duplicate', () => {
    const users = parsePasswd(
      '# comment\n\nbad:x:1\nbad2:x:a:0::/:/bin/sh\ndup:x:1:1::/one:/bin/sh\ndup:x:2:2::/two:/bin/sh\n',
    )
    assert.deepEqual([...users.keys()], ['dup'])
    assert.equal(users.get('dup')?.home, '/one')
  })
})

describe('parseGroup', () => {
  it('maps gid to name', () => {
    const groups = parseGroup('root:x:0:\nusers:x:100:alice,bob\nbroken\n')
    assert.equal(groups.get(0), 'root')
    assert.equal(groups.get(100), 'users')
    assert.equal(groups.size, 2)
  })
})

describe('createUserDirectory', () => {
  it('looks users up, names ids, and picks up changes to the files', () => {
    const root = mkdtempSync(join(tmpdir(), 'users-'))
    try {
      mkdirSync(join(root, 'etc'))
      writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n')
      writeFileSync(join(root, 'etc/group'), 'root:x:0:\n')
      const directory = createUserDirectory(root)
      assert.equal(directory.lookup('root').uid, 0)
      assert.throws(
        () => directory.lookup('late'),
        (err: unknown) => err instanceof InvalidArgumentError && /"late"/.test(err.message),
      )
      assert.equal(directory.userName(4242), '4242')
      assert.equal(directory.groupName(0), 'root')
      writeFileSync(
        join(root, 'etc/passwd'),
        'root:x:0:0::/root:/bin/sh\nlate:x:4242:4242::/home/late:/bin/sh\n',
      )
      assert.equal(directory.lookup('late').home, '/home/late')
      assert.equal(directory.userName(4242), 'late')
    } finally {
      rmSync(root, { recursive: true, force: true })
    }
  })
})
