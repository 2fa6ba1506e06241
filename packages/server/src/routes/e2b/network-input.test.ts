import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { closedPolicy, openPolicy } from '@sandcell/network'
import { parseCreateNetwork, parseNetworkUpdate } from './network-input.js'

const on = { enabled: true, internet: true }
const offByDefault = { enabled: true, internet: false }

describe('network input', () => {
  it('opens the internet by default and closes it on request', () => {
    assert.deepEqual(parseCreateNetwork(undefined, undefined, on), {
      egress: openPolicy,
      record: null,
      allowInternetAccess: null,
    })
    assert.deepEqual(parseCreateNetwork(undefined, false, on).egress, closedPolicy)
  })

  it('keeps a server whose default is offline closed unless the client says true', () => {
    assert.deepEqual(parseCreateNetwork(undefined, undefined, offByDefault).egress, closedPolicy)
    assert.deepEqual(parseCreateNetwork(undefined, true, offByDefault).egress, openPolicy)
    assert.deepEqual(
      parseCreateNetwork({ allowOut: ['1.1.1.1'] }, undefined, offByDefault).egress,
      { allowCidrs: ['1.1.1.1/32'], denyCidrs: ['0.0.0.0/0'], allowDomains: [] },
    )
  })

  it('refuses to promise reachability where networking is off', () => {
    const off = { enabled: false, internet: true }
    assert.doesNotThrow(() => parseCreateNetwork(undefined, undefined, off))
    assert.doesNotThrow(() => parseCreateNetwork(undefined, false, off))
    assert.throws(() => parseCreateNetwork(undefined, true, off), /networking is off/)
    assert.throws(
      () => parseCreateNetwork({ allowOut: ['1.1.1.1'] }, undefined, off),
      /networking is off/,
    )
  })

  it('checks the ingress fields', () => {
    assert.throws(
      () => parseCreateNetwork({ maskRequestHost: 'bad host' }, undefined, on),
      /maskRequestHost must be an ASCII host/,
    )
    assert.throws(
      () => parseCreateNetwork({ maskRequestHost: 'hôte.example.com' }, undefined, on),
      /maskRequestHost/,
    )
    assert.doesNotThrow(() =>
      parseCreateNetwork({ maskRequestHost: 'custom.example.com:${PORT}' }, undefined, on),
    )
    assert.throws(
      () => parseCreateNetwork({ httpsPorts: [49983] }, undefined, on),
      /may not list envd's port/,
    )
    assert.doesNotThrow(
      () => parseCreateNetwork({ rules: {} }, undefined, on),
      'empty rules are fine',
    )
  })

  it('replaces egress whole on update and keeps the ingress settings', () => {
    const current = {
      allowOut: ['1.1.1.1'],
      allowPublicTraffic: false,
      maskRequestHost: 'h:${PORT}',
    }
    const update = parseNetworkUpdate({ denyOut: ['8.8.8.8'] }, current, on)
    assert.deepEqual(update.record, {
      allowPublicTraffic: false,
      maskRequestHost: 'h:${PORT}',
      denyOut: ['8.8.8.8'],
    })
    assert.deepEqual(update.egress, { allowCidrs: [], denyCidrs: ['8.8.8.8/32'], allowDomains: [] })
    assert.deepEqual(parseNetworkUpdate({}, current, on).egress, openPolicy)
  })
})
