import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { Command } from 'commander'
import { createLogger } from '@sandcell/shared'
import { loadCliConfig } from '../config.js'
import { templateBuildCommand } from './template-build.js'

/** The build command's parse of `args`, its action replaced so nothing is built. */
function parse(args: string[]): { dir: unknown; flags: Record<string, unknown> } {
  const command: Command = templateBuildCommand({
    config: () => loadCliConfig({ env: {}, flags: {} }),
    log: () => createLogger({ level: 'silent' }),
  })
    .exitOverride()
    .configureOutput({ writeErr: () => undefined })
    .action(() => undefined)
  command.parse(args, { from: 'user' })
  return { dir: command.processedArgs[0], flags: command.opts() }
}

describe('template build arguments', () => {
  it('defaults to the current directory, its Dockerfile and the cache', () => {
    const { dir, flags } = parse([])
    assert.equal(dir, '.')
    assert.deepEqual(flags, { tag: [], cache: true })
  })

  it('takes every option', () => {
    const { dir, flags } = parse([
      '-f',
      'build/Dockerfile.dev',
      '--name',
      'app:v2',
      '--tag',
      'prod',
      '--tag',
      'stable,latest',
      '--no-cache',
      '--cpu',
      '2',
      '--memory-mb',
      '1024',
      'src',
    ])
    assert.equal(dir, 'src')
    assert.deepEqual(flags, {
      file: 'build/Dockerfile.dev',
      name: 'app:v2',
      tag: ['prod', 'stable', 'latest'],
      cache: false,
      cpu: 2,
      memoryMb: 1024,
    })
  })

  it('rejects counts that are not positive integers and a second directory', () => {
    assert.throws(() => parse(['--cpu', '1.5']), /--cpu must be a positive integer/)
    assert.throws(() => parse(['--memory-mb', '0']), /--memory-mb must be a positive integer/)
    assert.throws(() => parse(['a', 'b']), /too many arguments/)
  })
})
