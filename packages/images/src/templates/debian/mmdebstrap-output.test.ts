/** Progress from mmdebstrap's output and the lines a failure quotes, on real transcripts. */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { BuildProgressTracker, type TemplateBuildProgress } from './build-progress.js'
import { MmdebstrapOutputParser } from './mmdebstrap-output.js'

/** A successful build's output, cut down to 3 base and 2 requested packages (lines verbatim). */
const successTranscript = `I: automatically chosen mode: root
I: chroot architecture amd64 is equal to the host's architecture
I: finding correct signed-by value...
I: automatically chosen format: directory
I: running apt-get update...
Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 Packages [8790 kB]
Fetched 9417 kB in 2s (4579 kB/s)
Reading package lists...
I: downloading packages with apt...
Reading package lists...
Building dependency tree...
Calculating upgrade...
The following NEW packages will be installed:
  base-files bash libc6
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
Need to get 38.0 MB of archives.
After this operation, 164 MB of additional disk space will be used.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9+deb12u14 [2759 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 base-files amd64 12.4+deb12u15 [70.9 kB]
Get:3 http://security.debian.org/debian-security bookworm-security/main amd64 bash amd64 5.2.15-2+b13 [1491 kB]
/usr/bin/dpkg --status-fd 11 --no-triggers --unpack --auto-deconfigure /tmp/x/var/cache/apt/archives/libc6_2.36-9+deb12u14_amd64.deb
I: extracting archives...
I: installing essential packages...
(Reading database ... 0 files and directories currently installed.)
Preparing to unpack .../libc6_2.36-9+deb12u14_amd64.deb ...
Unpacking libc6:amd64 (2.36-9+deb12u14) ...
dpkg: regarding .../bash_5.2.15-2+b13_amd64.deb containing bash, pre-dependency problem:
 bash pre-depends on libc6 (>= 2.36)
  libc6:amd64 is unpacked, but has never been configured.
dpkg: warning: ignoring pre-dependency problem!
Unpacking base-files (12.4+deb12u15) ...
Unpacking bash (5.2.15-2+b13) ...
Setting up libc6:amd64 (2.36-9+deb12u14) ...
Setting up base-files (12.4+deb12u15) ...
Setting up bash (5.2.15-2+b13) ...
update-alternatives: using /usr/bin/mawk to provide /usr/bin/awk (awk) in auto mode
I: running --essential-hook in shell: sh -c 'printf ...' exec /tmp/x
I: installing remaining packages inside the chroot...
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  nodejs python3.11
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 114 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 python3.11 amd64 3.11.2-6+deb12u9 [573 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 nodejs amd64 18.20.4+dfsg-1~deb12u3 [320 kB]
Fetched 114 MB in 4s (27.0 MB/s)
debconf: delaying package configuration, since apt-utils is not installed
Selecting previously unselected package python3.11.
Preparing to unpack .../python3.11_3.11.2-6+deb12u9_amd64.deb ...
Unpacking python3.11 (3.11.2-6+deb12u9) ...
Selecting previously unselected package nodejs.
Unpacking nodejs (18.20.4+dfsg-1~deb12u3) ...
Setting up python3.11 (3.11.2-6+deb12u9) ...
Setting up nodejs (18.20.4+dfsg-1~deb12u3) ...
Processing triggers for libc-bin (2.36-9+deb12u14) ...
I: running --customize-hook in shell: sh -c 'chroot "$1" groupadd --gid 1000 user' exec /tmp/x
I: cleaning package lists and apt cache...
Reading package lists...
I: success in 68.1 seconds`

/** Output of a build whose mirror refused connections. */
const failureTranscript = `I: chroot architecture amd64 is equal to the host's architecture
I: finding correct signed-by value...
I: running apt-get update...
Ign:1 http://127.0.0.1:9/debian bookworm InRelease
Err:1 http://127.0.0.1:9/debian bookworm InRelease
  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
Reading package lists...
E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)
E: Some index files failed to download. They have been ignored, or old ones used instead.
E: apt-get update --error-on=any -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed
I: main() received signal PIPE: waiting for setup...
E: mmdebstrap failed to run`

function parse(transcript: string): TemplateBuildProgress[] {
  const reports: TemplateBuildProgress[] = []
  const parser = new MmdebstrapOutputParser(new BuildProgressTracker((p) => reports.push(p)))
  for (const line of transcript.split('\n')) {
    parser.line(line)
  }
  return reports
}

/** Consecutive reports of the same phase and total: one occurrence of a phase. */
function occurrences(reports: TemplateBuildProgress[]): TemplateBuildProgress[][] {
  const runs: TemplateBuildProgress[][] = []
  for (const report of reports) {
    const last = runs.at(-1)?.at(-1)
    if (last !== undefined && last.phase === report.phase && last.total === report.total) {
      runs.at(-1)?.push(report)
    } else {
      runs.push([report])
    }
  }
  return runs
}

describe('MmdebstrapOutputParser', () => {
  it('walks through the phases mmdebstrap announces, in order', () => {
    const phases = occurrences(parse(successTranscript)).map((run) => run[0]?.phase)
    assert.deepEqual(phases, [
      'resolving',
      'downloading',
      'extracting',
      'installing',
      'resolving',
      'downloading',
      'installing',
      'configuring',
    ])
  })

  it('counts downloads and dpkg steps against the packages apt resolved', () => {
    const countable = occurrences(parse(successTranscript))
      .map((run) => run.at(-1))
      .filter((last) => last !== undefined && last.total > 0)
    assert.deepEqual(
      countable.map((last) => [last?.phase, last?.done, last?.total, last?.unit]),
      [
        ['downloading', 3, 3, 'packages'],
        ['installing', 6, 6, 'steps'],
        ['downloading', 2, 2, 'packages'],
        ['installing', 4, 4, 'steps'],
      ],
    )
  })

  it('reports monotonic progress, per phase and overall', () => {
    const reports = parse(successTranscript)
    for (const run of occurrences(reports)) {
      for (let i = 1; i < run.length; i++) {
        assert.ok(
          (run[i]?.done ?? 0) >= (run[i - 1]?.done ?? 0),
          `done went back in ${run[0]?.phase}`,
        )
      }
    }
    for (let i = 1; i < reports.length; i++) {
      assert.ok(
        (reports[i]?.fraction ?? 0) >= (reports[i - 1]?.fraction ?? 0),
        'fraction went back',
      )
    }
    assert.ok((reports.at(-1)?.fraction ?? 1) <= 1)
  })

  it('names the package being worked on', () => {
    const messages = parse(successTranscript).map((report) => report.message)
    assert.ok(messages.includes('Unpacking libc6:amd64'))
    assert.ok(messages.includes('Setting up nodejs'))
    assert.ok(messages.includes('bash (of 38.0 MB)'))
  })

  it('quotes the lines that say why a build failed, without the noise', () => {
    const parser = new MmdebstrapOutputParser(new BuildProgressTracker())
    for (const line of failureTranscript.split('\n')) {
      parser.line(line)
    }
    assert.deepEqual(parser.summary(), [
      'Err:1 http://127.0.0.1:9/debian bookworm InRelease',
      '  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)',
      'E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)',
      'E: Some index files failed to download. They have been ignored, or old ones used instead.',
      'E: apt-get update --error-on=any -oAPT::Status-Fd=<$fd> -oDpkg::Use-Pty=false failed',
      'E: mmdebstrap failed to run',
    ])
  })

  it('keeps dpkg chatter out of a failure summary', () => {
    const parser = new MmdebstrapOutputParser(new BuildProgressTracker())
    for (const line of successTranscript.split('\n')) {
      parser.line(line)
    }
    assert.deepEqual(parser.summary(), [
      'debconf: delaying package configuration, since apt-utils is not installed',
    ])
  })
})
