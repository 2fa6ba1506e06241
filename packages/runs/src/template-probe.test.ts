import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { describe, it } from 'node:test'
import { parseLanguages } from './languages.js'
import { parseProbeOutput, probeScript } from './template-probe.js'

const languages = parseLanguages(
  {
    apiVersion: 'sandcell/v1',
    kind: 'Languages',
    languages: [
      {
        name: 'sh',
        template: 'base',
        main: 'main.sh',
        requires: ['sh', "no-such-tool-'quoted'"],
        versionCommand: ['echo', 'sh version 5.2.15(1)-release'],
        run: { command: ['sh', '{{main}}'] },
      },
      {
        name: 'fixed',
        version: '1.0.0',
        versionCommand: ['false'],
        template: 'base',
        main: 'main.x',
        run: { command: ['sh', '{{main}}'] },
      },
    ],
  },
  'test.yaml',
)

describe('template probe', () => {
  it('finds missing commands and versions per language, quoting what it runs', () => {
    const output = execFileSync('/bin/sh', ['-c', probeScript(languages)], { encoding: 'utf8' })
    const findings = parseProbeOutput(languages, output)
    const [sh, fixed] = languages
    assert.ok(sh !== undefined && fixed !== undefined)
    assert.deepEqual(findings.get(sh), {
      missing: ["no-such-tool-'quoted'"],
      version: '5.2.15',
      versionOutput: 'sh version 5.2.15(1)-release\n',
    })
    // A fixed version is not asked for.
    assert.deepEqual(findings.get(fixed), {
      missing: [],
      version: undefined,
      versionOutput: '',
    })
  })

  it('ignores output before the first marker and markers of unknown languages', () => {
    const findings = parseProbeOutput(languages, 'noise\n@@language 7\n@@missing gcc\n')
    assert.equal(findings.size, 0)
  })
})
