import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { InvalidArgumentError } from '@sandcell/shared'
import { decodeContent, fileNameProblem, validateFiles } from './run-files.js'

const options = {
  mainName: 'main.py',
  maxFiles: 3,
  maxTotalBytes: 100,
  field: { list: 'files', name: 'name' },
}

describe('fileNameProblem', () => {
  it('accepts plain names and relative paths', () => {
    for (const name of ['main.py', 'src/util.py', '.hidden', 'a b/c-d_e.txt', '..a', 'a..b']) {
      assert.equal(fileNameProblem(name), undefined, name)
    }
  })

  it('rejects traversal, absolute paths, NUL, empty names and empty segments', () => {
    const cases: [string, RegExp][] = [
      ['../x', /leaves the run directory/],
      ['a/../../x', /leaves the run directory/],
      ['..', /leaves the run directory/],
      ['/etc/passwd', /absolute path/],
      ['a\0b', /control character/],
      ['a\nb', /control character/],
      ['', /is empty/],
      ['a//b', /empty or "\." path segment/],
      ['./a', /empty or "\." path segment/],
      ['a/', /empty or "\." path segment/],
      ['a\\..\\b', /backslash/],
      ['x'.repeat(256), /longer than 255/],
      [`${'a/'.repeat(600)}b`, /longer than 1024/],
    ]
    for (const [name, problem] of cases) {
      assert.match(fileNameProblem(name) ?? 'accepted', problem, JSON.stringify(name))
    }
  })
})

describe('decodeContent', () => {
  it('decodes utf8, base64 (also url-safe and wrapped) and hex', () => {
    assert.deepEqual(decodeContent('hé', undefined), Buffer.from('hé'))
    assert.deepEqual(decodeContent('AAEC/w==', 'base64'), Buffer.from([0, 1, 2, 255]))
    assert.deepEqual(decodeContent('AAEC_w', 'base64'), Buffer.from([0, 1, 2, 255]))
    assert.deepEqual(decodeContent('AAEC\n/w==', 'base64'), Buffer.from([0, 1, 2, 255]))
    assert.deepEqual(decodeContent('0001ff', 'hex'), Buffer.from([0, 1, 255]))
    assert.deepEqual(
      decodeContent('x', 'latin1'),
      Buffer.from('x'),
      'unknown means utf8, as Piston',
    )
  })

  it('refuses base64 and hex that are not', () => {
    assert.equal(decodeContent('not base64!', 'base64'), undefined)
    assert.equal(decodeContent('A', 'base64'), undefined)
    assert.equal(decodeContent('abc', 'hex'), undefined)
    assert.equal(decodeContent('zz', 'hex'), undefined)
  })
})

describe('validateFiles', () => {
  it('names unnamed files after the main file, then fileN.code, and marks sources', () => {
    const files = validateFiles(
      [
        { content: 'print(1)' },
        { content: 'x' },
        { name: 'data.bin', content: 'AA==', encoding: 'base64' },
      ],
      options,
    )
    assert.deepEqual(
      files.map((f) => [f.name, f.source, f.content.length]),
      [
        ['main.py', true, 8],
        ['file1.code', true, 1],
        ['data.bin', false, 1],
      ],
    )
  })

  it('rejects each bad input with a message naming the field as the client spelled it', () => {
    const cases: [Parameters<typeof validateFiles>[0], RegExp][] = [
      [[], /^files must hold at least one file$/],
      [
        [{ content: '' }, { content: '' }, { content: '' }, { content: '' }],
        /^files cannot exceed the configured limit of 3 files$/,
      ],
      [[{ name: '../x', content: '' }], /^files\[0\]\.name "\.\.\/x" leaves the run directory/],
      [[{ name: '/abs', content: '' }], /^files\[0\]\.name "\/abs" is an absolute path/],
      [
        [{ content: 'a' }, { name: 'main.py', content: 'b' }],
        /^files\[1\]\.name "main\.py" repeats files\[0\]\.name$/,
      ],
      [
        [{ content: 'x'.repeat(101) }],
        /^files cannot exceed the configured limit of 100 bytes in total$/,
      ],
      [[{ content: '!!', encoding: 'base64' }], /^files\[0\]\.content is not valid base64$/],
      [
        [
          { name: 'a', content: '' },
          { name: 'a/b', content: '' },
        ],
        /^files\[0\]\.name "a" is also the directory of "a\/b"$/,
      ],
    ]
    for (const [files, message] of cases) {
      assert.throws(
        () => validateFiles(files, options),
        (err: unknown) => err instanceof InvalidArgumentError && message.test(err.message),
        String(message),
      )
    }
  })

  it("uses Lambdo's field names when asked", () => {
    assert.throws(
      () =>
        validateFiles([{ name: '', content: '' }], {
          ...options,
          field: { list: 'code', name: 'filename' },
        }),
      /code\[0\]\.filename "" is empty$/,
    )
  })
})
