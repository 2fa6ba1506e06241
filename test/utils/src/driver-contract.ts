/**
 * The behaviour every driver must show, written once and run against each driver
 * (`runDriverContract` from each driver's integration test). Uses real sandboxes only.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, before, after } from 'node:test'
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  SandboxDeadError,
  TemplateNotFoundError,
  delay,
} from '@sandcell/shared'
import { runCommand, type RunCommandOptions, type RunCommandResult } from '@sandcell/envd-client'
import type { Driver, Sandbox, SandboxLimits, SandboxSpec } from '@sandcell/runtime'

export interface DriverContractOptions {
  name: string
  /**
   * A fresh driver over a fresh data dir, how to dispose of both, and (when the driver can)
   * how to open a second driver over the same data dir, as a restarted server would.
   */
  createDriver(): ContractDriver | Promise<ContractDriver>
  template: string
  limits: SandboxLimits
  /** Checks run after every test that created sandboxes (leak assertions). */
  afterEach?(): Promise<void>
  /** Reason to skip the whole suite on this host, e.g. "no KVM: TCG only". */
  skip?: string
}

export interface ContractDriver {
  driver: Driver
  dispose: () => Promise<void>
  reopen?: () => Driver
}

export interface CollectedRun extends RunCommandResult {
  stdout: string
  stderr: string
}

/** Runs a command and collects its output as text. */
export async function run(sandbox: Sandbox, options: RunCommandOptions): Promise<CollectedRun> {
  const stdout: Buffer[] = []
  const stderr: Buffer[] = []
  const result = await runCommand(sandbox.connect(), {
    ...options,
    onStdout: (chunk) => stdout.push(Buffer.from(chunk)),
    onStderr: (chunk) => stderr.push(Buffer.from(chunk)),
  })
  return {
    ...result,
    stdout: Buffer.concat(stdout).toString('utf8'),
    stderr: Buffer.concat(stderr).toString('utf8'),
  }
}

/** Runs `sh -c script` as the given user. */
export function sh(
  sandbox: Sandbox,
  script: string,
  options: Partial<RunCommandOptions> = {},
): Promise<CollectedRun> {
  return run(sandbox, { cmd: '/bin/sh', args: ['-c', script], ...options })
}

export function runDriverContract(options: DriverContractOptions): void {
  describe(`driver contract: ${options.name}`, { skip: options.skip ?? false }, () => {
    let driver: Driver
    let dispose: () => Promise<void>
    let reopen: (() => Driver) | undefined
    const live = new Set<Sandbox>()

    const create = async (overrides: Partial<SandboxSpec> = {}): Promise<Sandbox> => {
      const sandbox = await driver.create({
        template: options.template,
        limits: options.limits,
        ...overrides,
      })
      live.add(sandbox)
      return sandbox
    }
    const destroyAll = async (): Promise<void> => {
      await Promise.allSettled([...live].map((s) => s.destroy({ reason: 'test done' })))
      live.clear()
      await options.afterEach?.()
    }

    let snapshotRoot = ''
    before(async () => {
      snapshotRoot = mkdtempSync(join(tmpdir(), 'sandcell-snapshots-'))
      const made = await options.createDriver()
      driver = made.driver
      dispose = made.dispose
      reopen = made.reopen
      await driver.prepareTemplate(options.template)
    })
    after(async () => {
      await destroyAll()
      await dispose()
      rmSync(snapshotRoot, { recursive: true, force: true })
    })

    it('reports itself usable on this host', async () => {
      const probe = await driver.probe()
      assert.equal(probe.usable, true, probe.reason)
    })

    it('runs a command and returns its output and exit code', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      assert.equal(sandbox.state, 'running')
      const ok = await sh(sandbox, 'echo hello; echo oops >&2')
      assert.equal(ok.stdout, 'hello\n')
      assert.equal(ok.stderr, 'oops\n')
      assert.equal(ok.exitCode, 0)
      const failed = await sh(sandbox, 'exit 3')
      assert.equal(failed.exitCode, 3)
    })

    it('reports 128 + signal for a process killed by a signal', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const killed = await sh(sandbox, 'kill -KILL $$')
      assert.equal(killed.exitCode, 137)
      assert.equal(killed.outcome.signal, 'SIGKILL')
    })

    it('feeds stdin to the process and closes it', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const echoed = await run(sandbox, {
        cmd: '/bin/cat',
        stdin: Buffer.from('line one\nline two\n'),
      })
      assert.equal(echoed.stdout, 'line one\nline two\n')
      const empty = await run(sandbox, { cmd: '/bin/cat' })
      assert.equal(empty.stdout, '')
    })

    it('runs as the requested user with env and cwd', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const asUser = await sh(sandbox, 'id -u; echo $HOME; pwd; echo $GREETING', {
        envs: { GREETING: 'hi' },
      })
      assert.equal(asUser.stdout, '1000\n/home/user\n/home/user\nhi\n')
      const asRoot = await sh(sandbox, 'id -u; pwd', { user: 'root', cwd: '/tmp' })
      assert.equal(asRoot.stdout, '0\n/tmp\n')
    })

    it('rejects a command that does not exist with NotFoundError', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      await assert.rejects(run(sandbox, { cmd: '/no/such/program' }), NotFoundError)
      assert.equal((await sh(sandbox, 'true')).exitCode, 0, 'the sandbox still works')
    })

    it('kills a command at its deadline and says so', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const started = Date.now()
      const slow = await sh(sandbox, 'sleep 30', { timeoutMs: 300 })
      assert.equal(slow.timedOut, true)
      assert.equal(slow.exitCode, 137)
      assert.ok(Date.now() - started < 10_000)
    })

    it('rejects an unknown template and impossible limits before creating anything', async () => {
      await assert.rejects(
        driver.create({ template: 'no-such-template', limits: options.limits }),
        TemplateNotFoundError,
      )
      await assert.rejects(
        driver.create({ template: options.template, limits: { ...options.limits, memoryMiB: 1 } }),
        (err: unknown) => err instanceof InvalidArgumentError && /memoryMiB/.test(err.message),
      )
      await assert.rejects(
        driver.create({
          template: options.template,
          limits: { ...options.limits, cpus: 0, pids: -1 },
        }),
        (err: unknown) =>
          err instanceof InvalidArgumentError &&
          /cpus/.test(err.message) &&
          /pids/.test(err.message),
      )
    })

    it('pauses every process in place and resumes them with files kept', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const ticker = sh(
        sandbox,
        'i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.01; done; echo done',
        {
          timeoutMs: 60_000,
        },
      )
      await waitFor(
        async () =>
          (await sh(sandbox, 'cat /tmp/tick 2>/dev/null || echo 0')).stdout.trim() !== '0',
      )
      await sandbox.pause()
      assert.equal(sandbox.state, 'paused')
      assert.throws(() => sandbox.connect(), FailedPreconditionError)
      await assert.rejects(sandbox.pause(), FailedPreconditionError)
      const stats = await sandbox.stats()
      await delay(300)
      const statsLater = await sandbox.stats()
      assert.equal(statsLater.cpuUsageUs, stats.cpuUsageUs, 'no CPU used while paused')
      await sandbox.resume()
      assert.equal(sandbox.state, 'running')
      const result = await ticker
      assert.equal(result.stdout, 'done\n')
      assert.equal((await sh(sandbox, 'cat /tmp/tick')).stdout, '400\n')
    })

    it('applies new limits to a live sandbox and reports usage', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const stats = await sandbox.stats()
      assert.ok(stats.memoryBytes > 0)
      assert.ok(stats.pids >= 1)
      assert.ok(
        stats.diskTotalBytes > 0 && stats.diskTotalBytes <= options.limits.diskMiB * 1024 * 1024,
      )
      await sandbox.setLimits({ ...options.limits, memoryMiB: options.limits.memoryMiB + 64 })
      assert.equal(
        (await sandbox.stats()).memoryLimitBytes,
        (options.limits.memoryMiB + 64) * 1024 * 1024,
      )
      assert.equal(sandbox.info.limits.memoryMiB, options.limits.memoryMiB + 64)
    })

    it('cannot exceed its memory limit: the hog is killed, the sandbox lives', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      // Grows a shell variable until the kernel kills it; no interpreter needed.
      const hog = await sh(
        sandbox,
        'x=abcdefghijklmnopqrstuvwxyz0123456789; while :; do x="$x$x"; done',
        {
          timeoutMs: 60_000,
        },
      )
      assert.equal(hog.exitCode, 137, `killed by SIGKILL (${hog.status})`)
      assert.ok((await sandbox.stats()).oomKills >= 1, 'the kill was the memory limit')
      assert.equal((await sh(sandbox, 'echo alive')).stdout, 'alive\n')
    })

    it('cannot exceed its process limit: a fork bomb is contained', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      // pids counts threads: the agent's own are the floor to come back to.
      const idlePids = (await sandbox.stats()).pids
      // The bomb runs until its deadline; the kill goes to its whole process group at once.
      const bomb = await sh(sandbox, 'b() { b | b & }; b; sleep 30', { timeoutMs: 3000 })
      assert.equal(bomb.timedOut, true)
      assert.ok((await sandbox.stats()).pids <= options.limits.pids)
      await waitFor(async () => (await sandbox.stats()).pids <= idlePids + 2, 20_000)
      assert.equal((await sh(sandbox, 'echo alive')).stdout, 'alive\n')
    })

    it('cannot write past its disk size: the write fails with ENOSPC', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      const mib = options.limits.diskMiB + 16
      const fill = await sh(sandbox, `dd if=/dev/zero of=/home/user/big bs=1M count=${mib} 2>&1`, {
        timeoutMs: 60_000,
      })
      assert.notEqual(fill.exitCode, 0)
      assert.match(fill.stdout, /No space left on device/)
      const stats = await sandbox.stats()
      assert.ok(stats.diskUsedBytes <= stats.diskTotalBytes)
      assert.equal((await sh(sandbox, 'rm /home/user/big && echo freed')).stdout, 'freed\n')
    })

    it("keeps sandboxes apart: a new sandbox never sees another one's files or processes", async (t) => {
      t.after(destroyAll)
      const first = await create()
      await sh(first, 'echo secret > /tmp/mine; (sleep 60 &) ; echo ok', { user: 'root' })
      const second = await create()
      assert.equal(
        (await sh(second, 'cat /tmp/mine 2>&1 || echo absent')).stdout.trim().endsWith('absent'),
        true,
      )
      const ps = await sh(second, 'ls /proc | grep -E "^[0-9]+$" | wc -l')
      assert.ok(Number(ps.stdout.trim()) < 10, `sees only its own few processes: ${ps.stdout}`)
      assert.equal(
        (await sh(second, 'pgrep -x sleep || echo none', { user: 'root' })).stdout.trim(),
        'none',
      )
    })

    it('destroys idempotently, refuses later calls, and leaves nothing running', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      await sh(sandbox, 'trap "" TERM; (trap "" TERM; sleep 300) & echo started', { user: 'root' })
      await sandbox.destroy()
      await sandbox.destroy()
      assert.equal(sandbox.state, 'destroyed')
      assert.throws(() => sandbox.connect(), SandboxDeadError)
      await assert.rejects(sandbox.pause(), SandboxDeadError)
      await assert.rejects(sandbox.stats(), SandboxDeadError)
      const reason = await sandbox.ended
      assert.equal(typeof reason.reason, 'string')
    })

    it('notices a sandbox that dies on its own and cleans it up', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      // Killing the agent (the shell's parent) from within ends the sandbox, as a crash would.
      await sh(sandbox, 'kill -KILL $PPID', { user: 'root' }).catch(() => undefined)
      const reason = await withDeadline(sandbox.ended, 10_000, 'sandbox end')
      assert.match(reason.reason, /exit/)
      await waitFor(() => Promise.resolve(sandbox.state === 'destroyed'))
      assert.throws(() => sandbox.connect(), SandboxDeadError)
    })

    it('snapshots a sandbox without stopping it and starts new sandboxes from the snapshot', async (t) => {
      t.after(destroyAll)
      const original = await create()
      await sh(
        original,
        'echo kept > /home/user/note; mkdir -p /home/user/dir && echo deep > /home/user/dir/f',
      )
      const dir = join(snapshotRoot, `snap-${original.id}`)
      const snapshot = await original.snapshot({ dir })
      t.after(() => rmSync(dir, { recursive: true, force: true }))
      assert.equal(snapshot.template, options.template)
      assert.equal(original.state, 'running')
      assert.equal(
        (await sh(original, 'echo after > /home/user/later; cat /home/user/note')).stdout,
        'kept\n',
      )
      await original.destroy()
      const [first, second] = await Promise.all([
        create({ fromSnapshot: snapshot }),
        create({ fromSnapshot: snapshot }),
      ])
      for (const copy of [first, second]) {
        assert.ok(copy !== undefined)
        const files = await sh(
          copy,
          'cat /home/user/note /home/user/dir/f; ls /home/user/later 2>&1 || true',
        )
        assert.match(files.stdout, /^kept\ndeep\n.*No such file/s)
      }
      // Copies are independent of each other.
      await sh(first, 'echo mine > /home/user/note')
      assert.equal((await sh(second, 'cat /home/user/note')).stdout, 'kept\n')
    })

    it('keeps a paused sandbox paused across a snapshot', async (t) => {
      t.after(destroyAll)
      const sandbox = await create()
      await sandbox.pause()
      const dir = join(snapshotRoot, `snap-${sandbox.id}`)
      t.after(() => rmSync(dir, { recursive: true, force: true }))
      await sandbox.snapshot({ dir })
      assert.equal(sandbox.state, 'paused')
      await sandbox.resume()
      assert.equal((await sh(sandbox, 'echo ok')).stdout, 'ok\n')
    })

    it('shuts a sandbox down keeping its disk, and boots it again with the same id', async (t) => {
      t.after(destroyAll)
      const original = await create()
      const bootId = 'cat /proc/sys/kernel/random/boot_id'
      const before = (await sh(original, bootId)).stdout
      await sh(original, 'mkdir -p /home/user/kept && echo files > /home/user/kept/f')
      const started = await sh(
        original,
        'sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /home/user/kept/pid; cat /home/user/kept/pid',
      )
      const alive = `grep -qs sleep /proc/$(cat /home/user/kept/pid)/cmdline && echo alive || echo gone`
      assert.equal((await sh(original, alive)).stdout, 'alive\n', started.stdout)
      const dir = join(snapshotRoot, `shut-${original.id}`)
      t.after(() => rmSync(dir, { recursive: true, force: true }))
      const saved = await original.shutDown({ dir })
      assert.equal(original.state, 'destroyed')
      assert.equal(saved.memory, false)
      assert.equal(saved.template, options.template)
      const again = await create({ id: original.id, fromSnapshot: saved })
      assert.equal(again.id, original.id)
      assert.equal((await sh(again, 'cat /home/user/kept/f')).stdout, 'files\n')
      assert.equal((await sh(again, alive)).stdout, 'gone\n', 'no process outlives a shut-down')
      const after = (await sh(again, bootId)).stdout
      assert.match(after, /^[0-9a-f-]{36}\n$/)
      assert.notEqual(after, before, 'a new boot')
    })

    it('is adopted by a new driver instance over the same data dir, paused state kept', async (t) => {
      t.after(destroyAll)
      if (reopen === undefined) {
        t.skip('driver cannot be reopened')
        return
      }
      const running = await create({ labels: { owner: 'contract' } })
      await sh(running, 'echo kept > /tmp/kept')
      const paused = await create()
      await paused.pause()
      const reopened = reopen()
      const adopted = await reopened.adopt()
      const again = adopted.find((s) => s.id === running.id)
      const pausedAgain = adopted.find((s) => s.id === paused.id)
      assert.ok(again !== undefined && pausedAgain !== undefined, 'both sandboxes adopted')
      for (const s of adopted) {
        live.add(s)
      }
      assert.deepEqual(again.info.labels, { owner: 'contract' })
      assert.equal(again.state, 'running')
      assert.equal((await sh(again, 'cat /tmp/kept')).stdout, 'kept\n')
      assert.equal(pausedAgain.state, 'paused')
      await pausedAgain.resume()
      assert.equal((await sh(pausedAgain, 'echo alive')).stdout, 'alive\n')
      await reopened.close()
    })
  })
}

/** Polls `check` until it holds, failing after `timeoutMs`. */
export async function waitFor(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${timeoutMs} ms`)
    }
    await delay(20)
  }
}

export async function withDeadline<T>(
  promise: Promise<T>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not happen within ${timeoutMs} ms`)),
      timeoutMs,
    )
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}
