import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { isAlwaysDenied, parseCidr, parseIpv4 } from './cidr.js'
import {
  closedPolicy,
  domainsRequireDenyAllMessage,
  egressPolicyFromE2b,
  isAddressAllowed,
  isDnsQueryAllowed,
  isDomainAllowed,
  openPolicy,
  samePolicy,
} from './egress-policy.js'

function refusal(input: Parameters<typeof egressPolicyFromE2b>[0]): string {
  try {
    egressPolicyFromE2b(input)
  } catch (err) {
    assert.ok(err instanceof InvalidArgumentError)
    return err.message
  }
  assert.fail(`accepted ${JSON.stringify(input)}`)
}

describe('cidr', () => {
  it('parses strict dotted quads and blocks, clearing host bits', () => {
    assert.equal(parseIpv4('1.2.3.4'), 0x01020304)
    for (const bad of [
      '1.2.3',
      '1.2.3.4.5',
      '01.2.3.4',
      '256.1.1.1',
      '1.2.3.-1',
      ' 1.2.3.4',
      '0x7f.0.0.1',
    ]) {
      assert.equal(parseIpv4(bad), undefined, bad)
    }
    assert.deepEqual(parseCidr('8.8.8.9/24'), { address: 0x08080800, prefix: 24 })
    assert.deepEqual(parseCidr('8.8.8.8'), { address: 0x08080808, prefix: 32 })
    for (const bad of ['8.8.8.8/33', '8.8.8.8/', '8.8.8.8/08', 'example.com']) {
      assert.equal(parseCidr(bad), undefined, bad)
    }
  })

  it('knows the ranges a sandbox never reaches', () => {
    for (const address of [
      '10.1.2.3',
      '127.0.0.1',
      '169.254.169.254',
      '172.20.0.1',
      '192.168.1.1',
      '100.64.0.1',
      '0.0.0.0',
      '224.0.0.1',
    ]) {
      assert.ok(isAlwaysDenied(parseIpv4(address) ?? -1), address)
    }
    for (const address of ['8.8.8.8', '203.0.113.10', '172.32.0.1', '192.0.2.1']) {
      assert.ok(!isAlwaysDenied(parseIpv4(address) ?? -1), address)
    }
  })
})

describe('egress policy from E2B fields', () => {
  it('normalises bare addresses to /32 and keeps domains lowercase ASCII', () => {
    const policy = egressPolicyFromE2b({
      allowOut: ['1.1.1.1', '10.1.2.3/8', 'Example.COM', '*.bücher.de', 'example.com'],
      denyOut: ['0.0.0.0/0'],
    })
    assert.deepEqual(policy, {
      allowCidrs: ['1.1.1.1/32', '10.0.0.0/8'],
      denyCidrs: ['0.0.0.0/0'],
      allowDomains: ['example.com', '*.xn--bcher-kva.de'],
    })
  })

  it('turns allowInternetAccess: false into deny-all, keeping allowOut', () => {
    assert.deepEqual(
      egressPolicyFromE2b({
        allowInternetAccess: false,
        allowOut: ['1.1.1.1'],
        denyOut: ['8.8.8.8'],
      }),
      { allowCidrs: ['1.1.1.1/32'], denyCidrs: ['0.0.0.0/0'], allowDomains: [] },
    )
    assert.deepEqual(egressPolicyFromE2b({}), openPolicy)
    assert.deepEqual(egressPolicyFromE2b({ allowInternetAccess: false }), closedPolicy)
  })

  it("rejects bad entries with E2B's messages", () => {
    assert.equal(refusal({ denyOut: ['example.com'] }), 'invalid denied CIDR example.com')
    assert.equal(refusal({ denyOut: ['0.0.0.0/8'] }), 'invalid denied CIDR 0.0.0.0/8')
    assert.equal(refusal({ denyOut: ['0.0.0.0'] }), 'invalid denied CIDR 0.0.0.0')
    assert.equal(refusal({ denyOut: ['0.1.2.3/8'] }), 'invalid denied CIDR 0.1.2.3/8')
    assert.equal(refusal({ denyOut: ['1.2.3.4/33'] }), 'invalid denied CIDR 1.2.3.4/33')
    assert.equal(
      refusal({ denyOut: ['10.0.0.0/8:22'] }),
      'invalid deny out entry "10.0.0.0/8:22": port-specific rules are not supported for egress',
    )
    assert.equal(
      refusal({ allowOut: ['8.8.8.8:80'] }),
      'invalid allow out entry "8.8.8.8:80": port-specific rules are not supported for egress',
    )
    assert.equal(refusal({ allowOut: ['999.1.1.1'] }), 'invalid allowed address 999.1.1.1')
    assert.equal(refusal({ allowOut: ['*.example.com'] }), domainsRequireDenyAllMessage)
    assert.equal(
      refusal({ allowOut: ['example.com'], denyOut: ['10.0.0.0/8'] }),
      domainsRequireDenyAllMessage,
    )
    for (const bad of [
      '*',
      '*.',
      'a..b',
      'exa mple.com',
      'localhost',
      '-a.com',
      'a*.com',
      `${'a'.repeat(64)}.com`,
    ]) {
      assert.match(
        refusal({ allowOut: [bad], denyOut: ['0.0.0.0/0'] }),
        /invalid allowed domain/,
        bad,
      )
    }
  })

  it('rejects 10,000 rules with a clear message instead of loading them', () => {
    const many = Array.from({ length: 10_000 }, (_, i) => `8.${i >> 8}.${i & 255}.0/24`)
    assert.match(refusal({ denyOut: many }), /denyOut holds 10000 entries; at most 1000/)
  })
})

describe('decisions', () => {
  const policy = egressPolicyFromE2b({
    allowOut: ['example.com', '*.example.org', '1.1.1.1'],
    denyOut: ['0.0.0.0/0'],
  })

  it('matches a domain exactly and a wildcard below its apex only', () => {
    assert.ok(isDomainAllowed(policy, 'example.com'))
    assert.ok(isDomainAllowed(policy, 'EXAMPLE.com.'))
    assert.ok(!isDomainAllowed(policy, 'www.example.com'))
    assert.ok(!isDomainAllowed(policy, 'evilexample.com'))
    assert.ok(isDomainAllowed(policy, 'a.example.org'))
    assert.ok(isDomainAllowed(policy, 'a.b.example.org'))
    assert.ok(!isDomainAllowed(policy, 'example.org'))
    assert.ok(!isDomainAllowed(policy, 'evilexample.org'))
    assert.ok(!isDomainAllowed(policy, 'example.org.evil'))
  })

  it('lets allow beat deny for addresses', () => {
    assert.ok(isAddressAllowed(policy, parseIpv4('1.1.1.1') ?? 0))
    assert.ok(!isAddressAllowed(policy, parseIpv4('8.8.8.8') ?? 0))
    assert.ok(isAddressAllowed(openPolicy, parseIpv4('8.8.8.8') ?? 0))
  })

  it('answers DNS only for allowed names when all traffic is denied, and never for addresses only', () => {
    assert.ok(isDnsQueryAllowed(openPolicy, 'anything.test'))
    assert.ok(isDnsQueryAllowed(policy, 'example.com'))
    assert.ok(!isDnsQueryAllowed(policy, 'exfiltrate.attacker.test'))
    assert.ok(
      !isDnsQueryAllowed(
        egressPolicyFromE2b({ allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'] }),
        'example.com',
      ),
    )
    assert.ok(!isDnsQueryAllowed(closedPolicy, 'example.com'))
  })

  it('compares policies regardless of entry order', () => {
    assert.ok(
      samePolicy(
        egressPolicyFromE2b({ denyOut: ['1.1.1.1', '2.2.2.2'] }),
        egressPolicyFromE2b({ denyOut: ['2.2.2.2', '1.1.1.1'] }),
      ),
    )
    assert.ok(!samePolicy(openPolicy, closedPolicy))
  })
})
