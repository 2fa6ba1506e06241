/**
 * Attacks on the container driver from inside a sandbox: each test tries one way out (host
 * files, processes, network, privileges, kernel surface, outliving destroy) and asserts it fails.
 */
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Sandbox } from '@sandcell/runtime'
import { sh } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createTestContainerDriver,
  snapshotLeaks,
  testLimits,
  testTemplatesDir,
  type LeakSnapshot,
  type TestDriver,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
let made: TestDriver
let sandbox: Sandbox
let debian: Sandbox

before(async () => {
  baseline = snapshotLeaks()
  made = createTestContainerDriver()
  sandbox = await made.driver.create({ template: 'base', limits: testLimits })
  debian = await made.driver.create({ template: 'debian', limits: testLimits })
})

after(async () => {
  await sandbox.destroy()
  await debian.destroy()
  await made.dispose()
  await assertNoLeaks(baseline)
})

describe('container sandbox attacks', () => {
  it('cannot see host processes', async () => {
    const result = await sh(
      sandbox,
      `ls -d /proc/[0-9]*; test -e /proc/${process.pid} && echo SEEN-HOST-PID || true`,
      {
        user: 'root',
      },
    )
    assert.doesNotMatch(result.stdout, /SEEN-HOST-PID/)
    const pids = result.stdout.split('\n').filter((line) => line.startsWith('/proc/'))
    assert.ok(pids.length < 8, `only the sandbox's own processes: ${pids.join(' ')}`)
    const init = await sh(sandbox, 'cat /proc/1/comm', { user: 'root' })
    assert.equal(init.stdout.trim(), 'bwrap')
  })

  it("cannot read the host's files by path, /proc or search", async (t) => {
    const name = `secret-${randomBytes(6).toString('hex')}`
    const secret = join('/var/tmp', name)
    writeFileSync(secret, 'host secret')
    t.after(() => rmSync(secret, { force: true }))
    const attempts = [
      `cat ${secret}`,
      `cat /proc/1/root${secret}`,
      `cat /proc/self/root${secret}`,
      `cat /.sandcell/../../..${secret}`,
      `find / -xdev -name ${name} 2>/dev/null | head -1 | grep . && echo FOUND`,
    ]
    for (const attempt of attempts) {
      const result = await sh(sandbox, `${attempt} 2>&1 || true`, { user: 'root' })
      assert.doesNotMatch(result.stdout, /host secret|FOUND/, attempt)
    }
  })

  it("cannot write the host's files", async (t) => {
    const marker = `/etc/sandcell-escape-${randomBytes(4).toString('hex')}`
    t.after(() => rmSync(marker, { force: true }))
    const inside = await sh(
      sandbox,
      `echo x > ${marker} && echo written; echo y > /usr/bin/sandcell-escape 2>&1 || echo refused`,
      {
        user: 'root',
      },
    )
    assert.match(inside.stdout, /written/, 'writes inside land in the sandbox')
    assert.match(inside.stdout, /refused/, "the host's /usr is read-only")
    assert.equal(existsSync(marker), false, 'the host /etc is untouched')
    assert.equal(existsSync('/usr/bin/sandcell-escape'), false)
  })

  it('cannot change the template it was made from', async () => {
    const python = join(testTemplatesDir, 'debian', 'rootfs', 'usr', 'bin', 'python3')
    const target = readFileSync(python)
    const before = createHash('sha256').update(target).digest('hex')
    const result = await sh(
      debian,
      'echo owned > "$(readlink -f /usr/bin/python3)" && echo overwritten',
      { user: 'root' },
    )
    assert.match(result.stdout, /overwritten/, 'root may change its own copy')
    const after = createHash('sha256').update(readFileSync(python)).digest('hex')
    assert.equal(after, before, 'the template on the host is unchanged')
  })

  it('is unprivileged on the host: its root is host uid 100000', async () => {
    const map = await sh(sandbox, 'cat /proc/self/uid_map', { user: 'root' })
    assert.match(map.stdout, /^\s*0\s+100000\s+65536\s*$/)
    const caps = await sh(sandbox, 'grep CapEff /proc/self/status', { user: 'user' })
    assert.match(caps.stdout, /CapEff:\s+0+$/m, 'a user process has no capabilities')
    const rootCaps = await sh(sandbox, 'grep CapBnd /proc/self/status', { user: 'root' })
    const bounding = BigInt(`0x${/CapBnd:\s+([0-9a-f]+)/.exec(rootCaps.stdout)?.[1] ?? '0'}`)
    const CAP_SYS_ADMIN = 21n
    const CAP_NET_ADMIN = 12n
    const CAP_SYS_PTRACE = 19n
    for (const cap of [CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE]) {
      assert.equal((bounding >> cap) & 1n, 0n, `capability ${cap} is not in the bounding set`)
    }
  })

  it('cannot create user namespaces or mount filesystems', async () => {
    const result = await sh(
      sandbox,
      'unshare -U true 2>&1 && echo USERNS; unshare -m true 2>&1 && echo MOUNTNS; mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>&1 && echo MOUNTED; true',
      { user: 'root' },
    )
    assert.doesNotMatch(result.stdout, /USERNS|MOUNTNS|MOUNTED/, result.stdout)
  })

  it('cannot reach the network: loopback only, host ports unreachable', async (t) => {
    const server = createServer((socket) => socket.end('host service'))
    await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve))
    t.after(() => server.close())
    const port = (server.address() as { port: number }).port
    const interfaces = await sh(sandbox, "awk 'NR>2 {print $1}' /proc/net/dev")
    assert.equal(interfaces.stdout.trim(), 'lo:')
    const connect = await sh(
      sandbox,
      `bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port} && cat <&3' 2>&1; bash -c 'exec 3<>/dev/tcp/10.0.2.2/${port}' 2>&1; true`,
    )
    assert.doesNotMatch(connect.stdout, /host service/)
  })

  it('cannot see /sys, block devices or the kernel log', async () => {
    const result = await sh(sandbox, 'ls /sys 2>/dev/null | wc -l; ls /dev; dmesg 2>&1 | head -1', {
      user: 'root',
    })
    const [sysCount, ...rest] = result.stdout.split('\n')
    assert.equal(sysCount?.trim(), '0', '/sys is not mounted')
    const devices = rest.join(' ')
    assert.doesNotMatch(devices, /\bloop\d|\bvd[a-z]|\bsd[a-z]|\bnvme|\bmem\b|\bkmsg\b/, devices)
    assert.doesNotMatch(result.stdout, /Linux version/, 'no kernel log')
  })

  it("cannot reach the agent's control socket as the unprivileged user", async () => {
    const result = await sh(
      sandbox,
      'ls /.sandcell/run/ 2>&1; echo > /.sandcell/run/agent.sock 2>&1; true',
    )
    assert.match(result.stdout, /Permission denied/)
  })

  it('cannot keep anything running after destroy', async () => {
    const victim = await made.driver.create({ template: 'base', limits: testLimits })
    const marker = `sandcell-survivor-${randomBytes(4).toString('hex')}`
    await sh(
      victim,
      `(setsid bash -c 'trap "" TERM HUP; exec -a ${marker} sleep 600' &) ; sleep 0.2; echo started`,
      {
        user: 'root',
      },
    )
    const hostSeesIt = (): boolean => listCmdlines().some((line) => line.includes(marker))
    assert.equal(hostSeesIt(), true, 'the process ran')
    await victim.destroy()
    assert.equal(hostSeesIt(), false, 'nothing with the marker survives')
  })

  it('cannot change files through a host path it gets hold of: the upper layer is owned by the sandbox uid', async () => {
    await sh(sandbox, 'echo mine > /root/owned', { user: 'root' })
    const upper = join(made.dataDir, 'sandboxes', sandbox.id, 'disk', 'upper', 'root', 'owned')
    assert.equal(statSync(upper).uid, 100_000)
  })
})

/** Every host process's command line. */
function listCmdlines(): string[] {
  const lines: string[] = []
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      lines.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '))
    } catch {
      // Exited meanwhile.
    }
  }
  return lines
}
