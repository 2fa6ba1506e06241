import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { ConfigError } from '@sandcell/shared'
import {
  defaultLanguagesFile,
  expandCommand,
  loadLanguages,
  parseLanguages,
  usesPlaceholder,
} from './languages.js'

const header = { apiVersion: 'sandcell/v1', kind: 'Languages' }

describe('languages file', () => {
  it('loads the shipped defaults: Python, JavaScript, Bash, C and C++ on debian, then base', () => {
    const languages = loadLanguages(defaultLanguagesFile)
    assert.deepEqual(
      languages.map((l) => l.name),
      ['python', 'javascript', 'bash', 'c', 'c++'],
    )
    for (const language of languages) {
      assert.deepEqual(language.templates, ['debian', 'base'])
    }
    const c = languages.find((l) => l.name === 'c')
    assert.deepEqual(c?.requires, ['gcc'], 'the compiled ./a.out is not looked for')
    assert.deepEqual(c?.compile?.timeoutMs, 10_000)
    assert.equal(languages[0]?.run.timeoutMs, 3000)
    assert.equal(languages[0]?.run.memoryMiB, 256)
    assert.equal(languages[0]?.processes, 64)
  })

  it('rejects a bad file with one error naming every bad path', () => {
    const document = {
      apiVersion: 'lambdo.io/v1alpha1',
      kind: 'Languages',
      languages: [
        { name: 'py', template: 'debian', main: '../main.py', run: { command: ['{{main}}'] } },
        {
          name: 'PY',
          version: 'x',
          template: [],
          main: 'a.c',
          run: { command: ['gcc', 'a{{args}}', '{{nope}}'], timeoutMs: -1 },
        },
      ],
    }
    assert.throws(
      () => parseLanguages(document, 'test.yaml'),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError)
        const problems = (err.details?.problems ?? []) as string[]
        for (const path of [
          'apiVersion',
          'languages.0.main',
          'languages.0.run.command.0',
          'languages.1.version',
          'languages.1.template',
          'languages.1.run.command.1',
          'languages.1.run.command.2',
          'languages.1.run.timeoutMs',
        ]) {
          assert.ok(
            problems.some((p) => p.startsWith(`${path}:`)),
            `${path} in ${problems.join(' | ')}`,
          )
        }
        assert.match(err.message, /^invalid languages file test\.yaml: /)
        return true
      },
    )
  })

  it('rejects a language without version or versionCommand, and names used twice', () => {
    assert.throws(
      () =>
        parseLanguages(
          {
            ...header,
            languages: [
              { name: 'a', template: 'base', main: 'a', run: { command: 'a' } },
              {
                name: 'b',
                aliases: ['A'],
                version: '1',
                template: 'base',
                main: 'b',
                run: { command: 'b' },
              },
            ],
          },
          'x',
        ),
      /languages\.0\.version: give a version or a versionCommand.*languages\.1\.aliases: "A" already names languages\[0\]/,
    )
  })

  it('reads a missing or non-YAML file as a ConfigError', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'languages-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    assert.throws(() => loadLanguages(join(dir, 'missing.yaml')), /cannot read languages file/)
    writeFileSync(join(dir, 'bad.yaml'), 'a: [1, 2\n')
    assert.throws(() => loadLanguages(join(dir, 'bad.yaml')), /is not valid YAML/)
  })

  it('splits string commands on whitespace and applies file defaults', () => {
    const [language] = parseLanguages(
      {
        ...header,
        defaults: { run: { timeoutMs: 5000 }, processes: 8 },
        languages: [
          {
            name: 'node',
            version: 'v18.2',
            template: 'base',
            main: 'm.js',
            run: { command: ' node  {{filename}} ' },
          },
        ],
      },
      'x',
    )
    assert.deepEqual(language?.run.argv, ['node', '{{filename}}'])
    assert.equal(language?.run.timeoutMs, 5000)
    assert.equal(language?.run.memoryMiB, 256)
    assert.equal(language?.processes, 8)
    assert.equal(language?.version, '18.2.0')
    assert.equal(language?.network, false, 'runs are offline unless a language says otherwise')
  })

  it('takes network per language over the file default', () => {
    const languages = parseLanguages(
      {
        ...header,
        defaults: { network: true },
        languages: ['a', 'b'].map((name) => ({
          name,
          version: '1.0',
          template: 'base',
          main: 'm',
          run: { command: 'true' },
          ...(name === 'b' ? { network: false } : {}),
        })),
      },
      'x',
    )
    assert.deepEqual(
      languages.map((l) => l.network),
      [true, false],
    )
  })
})

describe('expandCommand', () => {
  const values = {
    main: 'main.c',
    files: ['main.c', 'util.c'],
    args: ['a b', '', '$(rm -rf /)'],
    dir: '/home/user/code',
    stdin: '/home/user/.run-stdin',
    version: '12.2.0',
  }

  it('expands list placeholders into as many arguments, verbatim', () => {
    assert.deepEqual(expandCommand(['gcc', '-o', 'a.out', '{{files}}', '-lm'], values), [
      'gcc',
      '-o',
      'a.out',
      'main.c',
      'util.c',
      '-lm',
    ])
    assert.deepEqual(expandCommand(['./a.out', '{{ args }}'], values), [
      './a.out',
      'a b',
      '',
      '$(rm -rf /)',
    ])
    assert.deepEqual(expandCommand(['x', '{{args}}'], { ...values, args: [] }), ['x'])
  })

  it('replaces scalar placeholders inside arguments', () => {
    assert.deepEqual(
      expandCommand(
        ['run', '{{filename}}', '--in={{stdin}}', '{{dir}}/{{main}}@{{version}}'],
        values,
      ),
      ['run', 'main.c', '--in=/home/user/.run-stdin', '/home/user/code/main.c@12.2.0'],
    )
  })

  it('tells whether a command uses a placeholder', () => {
    assert.equal(usesPlaceholder(['sh', '-c', 'x < {{stdin}}'], 'stdin'), true)
    assert.equal(usesPlaceholder(['python3', '{{main}}'], 'stdin'), false)
  })
})
