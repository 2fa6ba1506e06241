/**
 * The template builders for real, as root: the base skeleton, and the Debian image built with
 * mmdebstrap. The Debian template goes to the machine's shared test templates directory
 * (SANDCELL_TEST_TEMPLATES_DIR, default /var/tmp/sandcell-test-templates), which persists across
 * runs so that a machine builds it once (~1-2 min) and later runs and other suites reuse it; the
 * progress and concurrency checks of a real build run on that first build. Everything else
 * builds in temp dirs removed afterwards.
 */
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it, type TestContext } from 'node:test'
import { DriverError, findProcesses } from '@sandcell/shared'
import {
  assertNoLeaks,
  createTestLogger,
  snapshotLeaks,
  testTemplatesDir,
  type LeakSnapshot,
} from '@sandcell/test-utils'
import { buildDirPrefix, mountsUnder, retiredPrefix } from '../src/core/build-dir.js'
import { baseBuilderVersion, buildBaseRootfs } from '../src/templates/base-rootfs.js'
import type { TemplateBuildProgress } from '../src/templates/debian/build-progress.js'
import { placeholderResolvConf } from '../src/templates/debian/configure-rootfs.js'
import {
  buildDebianRootfs,
  debianBuilderVersion,
  type DebianRootfs,
} from '../src/templates/debian/debian-rootfs.js'
import { baseBashrc, debianRootProfile, loginProfile } from '../src/templates/login-shell.js'
import { templatePaths } from '../src/templates/template-paths.js'

const uidOffset = 100000
const needsRoot = process.getuid?.() === 0 ? false : 'needs root: chown and mmdebstrap --mode=root'
const needsMmdebstrap =
  needsRoot !== false
    ? needsRoot
    : spawnSync('mmdebstrap', ['--version']).status === 0
      ? false
      : 'needs mmdebstrap: apt-get install mmdebstrap'

let baseline: LeakSnapshot
before(() => {
  baseline = snapshotLeaks()
})
after(async () => {
  await assertNoLeaks(baseline)
})

function tempTemplatesDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'sandcell-templates-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Paths in a tree not owned by a shifted uid and gid: what a missed shift leaves. */
function unshiftedPaths(root: string): string[] {
  const out = execFileSync(
    'find',
    [
      root,
      '-xdev',
      '(',
      '!',
      '-uid',
      `+${uidOffset - 1}`,
      '-o',
      '!',
      '-gid',
      `+${uidOffset - 1}`,
      ')',
    ],
    { encoding: 'utf8' },
  )
  return out.split('\n').filter((line) => line !== '')
}

function buildDirsIn(templateDir: string): string[] {
  return existsSync(templateDir)
    ? readdirSync(templateDir).filter((name) => name.startsWith(buildDirPrefix))
    : []
}

/** The builder version a template.json records (0 when it records none). */
function builtVersion(metadataPath: string): number {
  if (!existsSync(metadataPath)) {
    return 0
  }
  const metadata: unknown = JSON.parse(readFileSync(metadataPath, 'utf8'))
  const version =
    typeof metadata === 'object' && metadata !== null && 'builderVersion' in metadata
      ? metadata.builderVersion
      : undefined
  return typeof version === 'number' ? version : 0
}

function builtMessages(lines: string[]): number {
  return lines.filter((line) => line.includes('"msg":"template built"')).length
}

describe('base template', { skip: needsRoot }, () => {
  // The bound catches a build that copies /usr (seconds), not a few ms of a busy machine.
  it('builds a shifted skeleton without copying the host (well under a second)', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const started = performance.now()
    const base = await buildBaseRootfs({ templatesDir, log: createTestLogger() })
    const elapsedMs = performance.now() - started
    t.diagnostic(`built in ${elapsedMs.toFixed(1)} ms`)
    assert.ok(elapsedMs < 500, `took ${elapsedMs.toFixed(1)} ms`)

    const root = base.rootfsDir
    assert.equal(root, templatePaths(templatesDir, 'base').rootfsDir)
    assert.deepEqual(unshiftedPaths(root), [])
    assert.equal(statSync(join(root, 'home/user')).uid, uidOffset + 1000)
    assert.equal(statSync(join(root, 'root')).mode & 0o7777, 0o700)
    assert.equal(statSync(join(root, 'tmp')).mode & 0o7777, 0o1777)
    assert.equal(statSync(join(root, 'var/tmp')).mode & 0o7777, 0o1777)
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8')
    assert.match(passwd, /^root:x:0:0:root:\/root:\/bin\/bash$/m)
    assert.match(passwd, /^user:x:1000:1000::\/home\/user:\/bin\/bash$/m)
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'sandbox\n')
    assert.match(readFileSync(join(root, 'etc/nsswitch.conf'), 'utf8'), /^passwd:\s+files$/m)
    for (const dir of ['usr', 'proc', 'dev', 'sys', 'run']) {
      assert.deepEqual(readdirSync(join(root, dir)), [], `${dir} is an empty mount point`)
    }
    assert.deepEqual(buildDirsIn(join(templatesDir, 'base')), [])
  })

  it('mirrors the host: links where it has merged /usr, mount points where it has not', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const base = await buildBaseRootfs({ templatesDir, log: createTestLogger() })
    assert.equal(base.hostBinds[0], '/usr')
    for (const name of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
      const host = lstatSync(`/${name}`, { throwIfNoEntry: false })
      const ours = lstatSync(join(base.rootfsDir, name), { throwIfNoEntry: false })
      if (host === undefined) {
        assert.equal(ours, undefined, `/${name} is absent on the host`)
      } else if (host.isSymbolicLink()) {
        assert.equal(readlinkSync(join(base.rootfsDir, name)), readlinkSync(`/${name}`))
        assert.ok(!base.hostBinds.includes(`/${name}`))
      } else {
        assert.ok(ours?.isDirectory())
        assert.ok(base.hostBinds.includes(`/${name}`))
      }
    }
    for (const bind of base.hostBinds) {
      assert.ok(existsSync(bind), `${bind} exists on the host`)
      assert.ok(lstatSync(join(base.rootfsDir, bind)).isSymbolicLink() === false)
    }
  })

  it('mirrors a host without merged /usr from its layout', async (t) => {
    const host = join(tempTemplatesDir(t), 'host')
    mkdirSync(join(host, 'bin'), { recursive: true })
    mkdirSync(join(host, 'sbin'))
    mkdirSync(join(host, 'usr/lib'), { recursive: true })
    symlinkSync('usr/lib', join(host, 'lib'))
    mkdirSync(join(host, 'etc/alternatives'), { recursive: true })
    writeFileSync(join(host, 'etc/ld.so.cache'), '')
    const templatesDir = tempTemplatesDir(t)
    const base = await buildBaseRootfs({ templatesDir, hostRoot: host, log: createTestLogger() })
    assert.deepEqual(base.hostBinds, [
      '/usr',
      '/bin',
      '/sbin',
      '/etc/alternatives',
      '/etc/ld.so.cache',
    ])
    assert.equal(readlinkSync(join(base.rootfsDir, 'lib')), 'usr/lib')
    assert.deepEqual(readdirSync(join(base.rootfsDir, 'bin')), [])
    assert.equal(existsSync(join(base.rootfsDir, 'lib64')), false)
    assert.equal(existsSync(join(base.rootfsDir, 'etc/ssl/certs')), false)
  })

  it('returns the existing build at once', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const log = createTestLogger()
    const first = await buildBaseRootfs({ templatesDir, log })
    const started = performance.now()
    const second = await buildBaseRootfs({ templatesDir, log })
    const elapsedMs = performance.now() - started
    assert.deepEqual(second, first)
    assert.ok(elapsedMs < 5, `took ${elapsedMs.toFixed(2)} ms`)
    assert.equal(builtMessages(log.lines), 1)
  })

  it('builds once for concurrent callers', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const log = createTestLogger()
    const results = await Promise.all(
      Array.from({ length: 5 }, () => buildBaseRootfs({ templatesDir, log })),
    )
    for (const result of results) {
      assert.deepEqual(result, results[0])
    }
    assert.equal(builtMessages(log.lines), 1)
    assert.deepEqual(buildDirsIn(join(templatesDir, 'base')), [])
  })

  it('removes a stale build a crash left, and never offers it as the template', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const stale = join(templatesDir, 'base', `${buildDirPrefix}crashed`)
    mkdirSync(join(stale, 'etc'), { recursive: true })
    writeFileSync(join(stale, 'etc/passwd'), 'half written')
    const base = await buildBaseRootfs({ templatesDir, log: createTestLogger() })
    assert.equal(existsSync(stale), false)
    assert.match(readFileSync(join(base.rootfsDir, 'etc/passwd'), 'utf8'), /^user:/m)
  })

  it('has login-shell files that start no process and keep the given PATH', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const { rootfsDir } = await buildBaseRootfs({ templatesDir, log: createTestLogger() })
    assert.equal(readFileSync(join(rootfsDir, 'etc/profile'), 'utf8'), loginProfile)
    assert.equal(readFileSync(join(rootfsDir, 'etc/bash.bashrc'), 'utf8'), baseBashrc)
    assert.equal(statSync(join(rootfsDir, 'etc/profile')).uid, uidOffset)
  })

  it('rebuilds a template of an older builder version and keeps the old tree aside', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const log = createTestLogger()
    const paths = templatePaths(templatesDir, 'base')
    await buildBaseRootfs({ templatesDir, log })
    const metadata = JSON.parse(readFileSync(paths.metadataPath, 'utf8')) as Record<string, unknown>
    writeFileSync(paths.metadataPath, JSON.stringify({ ...metadata, builderVersion: 1 }))
    rmSync(join(paths.rootfsDir, 'etc/profile'))

    const rebuilt = await buildBaseRootfs({ templatesDir, log })
    assert.equal(rebuilt.rootfsDir, paths.rootfsDir)
    assert.ok(existsSync(join(rebuilt.rootfsDir, 'etc/profile')))
    const recorded = JSON.parse(readFileSync(paths.metadataPath, 'utf8')) as Record<string, unknown>
    assert.equal(recorded.builderVersion, baseBuilderVersion)
    const retired = readdirSync(paths.templateDir).filter((name) => name.startsWith(retiredPrefix))
    assert.equal(retired.length, 1)
    assert.equal(existsSync(join(paths.templateDir, retired[0] ?? '', 'etc/profile')), false)
    assert.equal(builtMessages(log.lines), 2)
  })

  it('refuses a build made for another uid offset', async (t) => {
    const templatesDir = tempTemplatesDir(t)
    await buildBaseRootfs({ templatesDir, log: createTestLogger() })
    await assert.rejects(
      buildBaseRootfs({ templatesDir, uidOffset: 200000, log: createTestLogger() }),
      (err: unknown) => err instanceof DriverError && /uid offset 100000/.test(err.message),
    )
  })
})

describe('debian template', { skip: needsMmdebstrap }, () => {
  const paths = templatePaths(testTemplatesDir, 'debian')
  let debian: DebianRootfs

  it(
    'builds Debian 12 once per machine, concurrent callers sharing the build',
    { timeout: 15 * 60_000 },
    async (t) => {
      const fresh =
        !existsSync(paths.rootfsDir) || builtVersion(paths.metadataPath) < debianBuilderVersion
      const log = createTestLogger()
      const reports: TemplateBuildProgress[][] = [[], []]
      const started = performance.now()
      const [first, second] = await Promise.all(
        reports.map((mine) =>
          buildDebianRootfs({
            templatesDir: testTemplatesDir,
            log,
            onProgress: (progress) => mine.push(progress),
          }),
        ),
      )
      const elapsedMs = performance.now() - started
      assert.ok(first !== undefined && second !== undefined)
      debian = first
      assert.deepEqual(second, first)
      if (!fresh) {
        t.diagnostic(
          `reused the build in ${testTemplatesDir} (${elapsedMs.toFixed(0)} ms); progress and ` +
            'concurrency were checked when it was built',
        )
        assert.deepEqual(reports, [[], []])
        return
      }
      t.diagnostic(`built in ${(elapsedMs / 1000).toFixed(1)} s`)
      assert.equal(builtMessages(log.lines), 1)
      const builder = reports.find((mine) => mine.some((p) => p.phase === 'installing'))
      const waiter = reports.find((mine) => mine !== builder)
      assert.ok(builder !== undefined && waiter !== undefined)
      assert.ok(waiter.length > 0 && waiter.every((p) => p.phase === 'waiting'))
      assertGoodProgress(builder)
    },
  )

  it('has python3, node, gcc, g++, make, git and curl where Debian puts them', () => {
    const root = debian.rootfsDir
    for (const tool of ['python3', 'pip3', 'node', 'gcc', 'g++', 'make', 'git', 'curl', 'bash']) {
      assert.ok(existsSync(join(root, 'usr/bin', tool)), `/usr/bin/${tool} exists`)
    }
    // Running them (read-only: --version writes nothing) proves their libraries are there. git
    // is left out: it wants /dev/null, which the template leaves to the sandbox's own /dev.
    for (const [tool, pattern] of [
      ['python3', /^Python 3\.11\./],
      ['node', /^v18\./],
      ['gcc', /^gcc .*12\./],
      ['curl', /^curl 7\./],
    ] as const) {
      const out = execFileSync('chroot', [root, `/usr/bin/${tool}`, '--version'], {
        encoding: 'utf8',
      })
      assert.match(out, pattern)
    }
  })

  it('has user 1000 and the sandbox basics', () => {
    const root = debian.rootfsDir
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8')
    assert.match(passwd, /^user:x:1000:1000::\/home\/user:\/bin\/bash$/m)
    assert.match(passwd, /^root:x:0:0:root:\/root:\/bin\/bash$/m)
    assert.match(readFileSync(join(root, 'etc/group'), 'utf8'), /^user:x:1000:$/m)
    const home = statSync(join(root, 'home/user'))
    assert.equal(home.uid, uidOffset + 1000)
    assert.equal(home.mode & 0o7777, 0o755)
    assert.ok(existsSync(join(root, 'home/user/.bashrc')))
    assert.equal(readFileSync(join(root, 'etc/profile'), 'utf8'), loginProfile)
    assert.equal(readFileSync(join(root, 'root/.profile'), 'utf8'), debianRootProfile)
    assert.equal(statSync(join(root, 'root')).mode & 0o7777, 0o700)
    assert.equal(statSync(join(root, 'tmp')).mode & 0o7777, 0o1777)
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'sandbox\n')
    assert.match(readFileSync(join(root, 'etc/hosts'), 'utf8'), /^127\.0\.1\.1\tsandbox$/m)
    assert.equal(readFileSync(join(root, 'etc/resolv.conf'), 'utf8'), placeholderResolvConf)
    assert.equal(existsSync(join(root, 'etc/machine-id')), false)
    assert.deepEqual(readdirSync(join(root, 'dev')), [])
    assert.deepEqual(readdirSync(join(root, 'var/lib/apt/lists')), ['partial'])
    assert.deepEqual(readdirSync(join(root, 'var/cache/apt')), ['archives'])
    assert.deepEqual(readdirSync(join(root, 'usr/share/man')), [])
  })

  it('is shifted into the sandbox id range', () => {
    const root = debian.rootfsDir
    // stat follows /usr/bin/python3 -> python3.11: the file itself is owned by sandbox root.
    assert.equal(statSync(join(root, 'usr/bin/python3')).uid, uidOffset)
    assert.equal(statSync(join(root, 'usr/bin/python3')).gid, uidOffset)
    assert.deepEqual(unshiftedPaths(root), [])
    // chown clears setuid; the shift put it back.
    assert.equal(statSync(join(root, 'usr/bin/passwd')).mode & 0o7777, 0o4755)
  })

  it('records what it built in template.json', () => {
    const metadata: unknown = JSON.parse(readFileSync(paths.metadataPath, 'utf8'))
    assert.deepEqual(metadata, debian.metadata)
    const {
      suite,
      debianVersion,
      installed,
      uidOffset: offset,
      sizeBytes,
      fileCount,
    } = debian.metadata
    assert.equal(suite, 'bookworm')
    assert.match(debianVersion, /^12\./)
    assert.equal(offset, uidOffset)
    assert.ok(installed.some((pkg) => pkg.startsWith('python3=')))
    assert.ok(installed.some((pkg) => pkg.startsWith('nodejs=')))
    assert.ok(sizeBytes > 200e6 && sizeBytes < 1e9, `${sizeBytes} bytes`)
    assert.ok(fileCount > 5000, `${fileCount} files`)
  })

  it('returns at once when already built', async () => {
    const started = performance.now()
    const again = await buildDebianRootfs({
      templatesDir: testTemplatesDir,
      log: createTestLogger(),
    })
    const elapsedMs = performance.now() - started
    assert.deepEqual(again, debian)
    assert.ok(elapsedMs < 100, `took ${elapsedMs.toFixed(1)} ms`)
  })

  it('leaves nothing behind when aborted mid-install', { timeout: 5 * 60_000 }, async (t) => {
    const templatesDir = tempTemplatesDir(t)
    const controller = new AbortController()
    const reason = new Error('test aborts the build')
    const reports: TemplateBuildProgress[] = []
    await assert.rejects(
      buildDebianRootfs({
        templatesDir,
        log: createTestLogger(),
        signal: controller.signal,
        onProgress: (progress) => {
          reports.push(progress)
          // dpkg is running in the chroot now, with mmdebstrap's mounts in place.
          if (progress.phase === 'installing' && progress.done >= 10) {
            controller.abort(reason)
          }
        },
      }),
      (err: unknown) => err === reason,
    )
    assert.ok(reports.some((p) => p.phase === 'installing'))
    const { templateDir, rootfsDir, lockPath } = templatePaths(templatesDir, 'debian')
    assert.deepEqual(buildDirsIn(templateDir), [])
    assert.equal(existsSync(rootfsDir), false)
    assert.equal(existsSync(lockPath), false)
    assert.deepEqual(mountsUnder(templatesDir), [])
    assert.deepEqual(findProcesses(templatesDir), [])
  })

  it(
    'fails with a DriverError quoting apt when the mirror is unreachable',
    { timeout: 120_000 },
    async (t) => {
      const templatesDir = tempTemplatesDir(t)
      await assert.rejects(
        buildDebianRootfs({
          templatesDir,
          // Port 9 (discard) is closed: apt gets "connection refused" at once.
          mirrors: ['http://127.0.0.1:9/debian'],
          log: createTestLogger(),
        }),
        (err: unknown) => {
          assert.ok(err instanceof DriverError)
          assert.match(err.message, /mmdebstrap failed/)
          assert.match(err.message, /Could not connect to 127\.0\.0\.1:9/)
          assert.match(err.message, /reachable from this host/)
          assert.match(err.message, /build\.log/)
          return true
        },
      )
      const { templateDir, rootfsDir } = templatePaths(templatesDir, 'debian')
      assert.deepEqual(buildDirsIn(templateDir), [])
      assert.equal(existsSync(rootfsDir), false)
    },
  )
})

/** What a progress bar needs: per phase monotonic and complete, overall monotonic to 1. */
function assertGoodProgress(reports: TemplateBuildProgress[]): void {
  const phases = new Set(reports.map((p) => p.phase))
  for (const phase of [
    'resolving',
    'downloading',
    'installing',
    'configuring',
    'shifting',
  ] as const) {
    assert.ok(phases.has(phase), `saw ${phase}`)
  }
  let run: TemplateBuildProgress[] = []
  const checkRun = (): void => {
    const last = run.at(-1)
    if (last !== undefined && last.total > 0) {
      assert.equal(last.done, last.total, `${last.phase} ended at ${last.done}/${last.total}`)
    }
  }
  for (const [i, report] of reports.entries()) {
    const previous = reports[i - 1]
    assert.ok(report.done >= 0 && (report.total === 0 || report.done <= report.total))
    if (previous !== undefined) {
      assert.ok(report.fraction >= previous.fraction, `fraction went back at ${i}`)
    }
    if (
      previous !== undefined &&
      previous.phase === report.phase &&
      previous.total === report.total
    ) {
      assert.ok(report.done >= previous.done, `${report.phase} went back at ${i}`)
    } else {
      checkRun()
      run = []
    }
    run.push(report)
  }
  checkRun()
  assert.equal(reports.at(-1)?.fraction, 1)
  // Both apt passes were counted, and the shift counted files.
  const counted = reports.filter((p) => p.total > 0)
  assert.ok(counted.some((p) => p.phase === 'downloading' && p.unit === 'packages'))
  assert.ok(counted.some((p) => p.phase === 'installing' && p.unit === 'steps' && p.total > 100))
  assert.ok(counted.some((p) => p.phase === 'shifting' && p.unit === 'files' && p.total > 5000))
}
