import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import {
  applyEnv,
  envFromList,
  expandVariables,
  isValidUserName,
  resolveWorkdir,
  shellQuote,
} from './build-state.js'

describe('build state', () => {
  it('expands $NAME and ${NAME} from earlier values, keeps \\$, empties unknown names', () => {
    const env = { A: 'x', PATH: '/bin' }
    assert.equal(expandVariables('$A-${A}-\\$A-$B.', env), 'x-x-$A-.')
    assert.equal(expandVariables('/opt/bin:$PATH', env), '/opt/bin:/bin')
  })

  it('applies ENV pairs in order, a later one seeing an earlier one', () => {
    const state = applyEnv({ env: { PATH: '/bin' }, user: 'root' }, [
      'HOME_BIN',
      '/opt',
      'PATH',
      '$HOME_BIN/bin:$PATH',
    ])
    assert.deepEqual(state.env, { PATH: '/opt/bin:/bin', HOME_BIN: '/opt' })
  })

  it('resolves WORKDIR against the workdir, else the user home', () => {
    assert.equal(resolveWorkdir({ env: {}, user: 'user' }, 'app'), '/home/user/app')
    assert.equal(resolveWorkdir({ env: {}, user: 'root' }, 'app'), '/root/app')
    assert.equal(resolveWorkdir({ env: {}, user: 'user', workdir: '/srv' }, '../x'), '/x')
    assert.equal(resolveWorkdir({ env: { D: '/d' }, user: 'user' }, '$D/e'), '/d/e')
  })

  it('reads image config env, quotes for sh, checks user names', () => {
    assert.deepEqual(envFromList(['A=1', 'B=x=y', 'junk', '=v']), { A: '1', B: 'x=y' })
    assert.equal(shellQuote("it's"), `'it'\\''s'`)
    assert.ok(isValidUserName('app_user-1'))
    for (const bad of ['', 'a b', '$(id)', 'x;rm', 'a'.repeat(40)]) {
      assert.ok(!isValidUserName(bad), bad)
    }
  })
})
