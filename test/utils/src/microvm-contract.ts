/**
 * What every microVM driver shows beyond the driver contract, written once and run against each
 * VMM (`runMicroVmContract` from the qemu and firecracker tests): the guest's own kernel, a
 * kernel panic ending the sandbox, a running process kept across save, kill and restore, and a
 * built template restored with its start command already running.
 */
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Driver, Sandbox, SandboxLimits } from '@sandcell/runtime'
import { writeTestBuiltTemplate } from './built-template.js'
import { run, sh, waitFor, withDeadline, type ContractDriver } from './driver-contract.js'

export interface MicroVmContractOptions {
  name: string
  createDriver(): ContractDriver
  template: string
  limits: SandboxLimits
  /** The builds directory of the drivers `createDriver` makes, where built templates go. */
  buildsDir: string
  /** More tests on the same driver, its template prepared. */
  extra?(context: { driver: () => Driver }): void
}

/**
 * A built template (one layer over `base`) whose start command records, once, the env, user,
 * workdir and boot it ran with, then keeps running.
 */
export const startedTemplate = {
  files: { '/opt/built/hello.txt': 'from the built layer\n' },
  defaults: {
    env: { GREETING: 'hi' },
    user: 'root',
    workdir: '/opt/built',
    startCmd:
      'echo "$GREETING $(id -un) $(pwd) $(cat /proc/sys/kernel/random/boot_id)" >> /tmp/started; exec sleep 100000',
    readyCmd: 'test -s /tmp/started',
  },
}

/**
 * Checks a sandbox of `startedTemplate`: the layer's files, the defaults it keeps, and the start
 * command, which ran once, in the boot of the VM this sandbox is (or was restored from), and
 * runs on.
 * @returns the boot id of the VM the sandbox was made from
 */
export async function assertStartedTemplate(sandbox: Sandbox): Promise<string> {
  assert.deepEqual(sandbox.info.templateDefaults, startedTemplate.defaults)
  assert.equal((await sh(sandbox, 'cat /opt/built/hello.txt')).stdout, 'from the built layer\n')
  const bootId = (await sh(sandbox, 'cat /proc/sys/kernel/random/boot_id')).stdout.trim()
  assert.equal(
    (await sh(sandbox, 'cat /tmp/started')).stdout,
    `hi root /opt/built ${bootId}\n`,
    'the start command ran once, with the template env, user and workdir, in this boot',
  )
  // `[s]leep` matches the start command but not this shell's own command line.
  const sleeping = await sh(sandbox, 'ps -o args | grep -c "[s]leep 100000"')
  assert.equal(sleeping.stdout, '1\n', 'the start command still runs')
  // The agent keeps the template's env and workdir for every later command.
  assert.equal((await sh(sandbox, 'echo "$GREETING $(pwd)"')).stdout, 'hi /opt/built\n')
  return bootId
}

export function runMicroVmContract(options: MicroVmContractOptions): void {
  const { template, limits } = options
  describe(`${options.name} microVMs`, () => {
    let made: ContractDriver
    const live = new Set<Sandbox>()
    let snapshotRoot = ''
    const create = async (): Promise<Sandbox> => {
      const sandbox = await made.driver.create({ template, limits })
      live.add(sandbox)
      return sandbox
    }
    before(async () => {
      made = options.createDriver()
      snapshotRoot = mkdtempSync(join(tmpdir(), 'sandcell-snapshots-'))
      await made.driver.prepareTemplate(template)
    })
    after(async () => {
      await Promise.allSettled([...live].map((s) => s.destroy()))
      await made.dispose()
      rmSync(snapshotRoot, { recursive: true, force: true })
    })

    it("runs the guest's own kernel, not the host's", async () => {
      const uname = await sh(await create(), 'uname -r')
      assert.match(uname.stdout, /^\d+\.\d+\.\d+-\d+-cloud-amd64\n$/)
      assert.notEqual(uname.stdout.trim(), release(), 'the host kernel would mean no VM')
    })

    it('destroys a guest whose kernel panics and says so', async () => {
      const sandbox = await create()
      // The stream breaks with the VM: expected.
      await sh(sandbox, 'echo c > /proc/sysrq-trigger', { user: 'root' }).catch(() => undefined)
      const reason = await withDeadline(sandbox.ended, 60_000, 'the end of the panicked VM')
      assert.match(reason.reason, /guest kernel panicked/)
      await waitFor(() => Promise.resolve(sandbox.state === 'destroyed'))
    })

    it('keeps a running process and its memory across save, kill and restore', async () => {
      const sandbox = await create()
      // A shell counting in a variable: only the process's memory holds the count. The count
      // is renamed into place, so a reader never sees the file empty between truncate and write.
      const counting = run(sandbox, {
        cmd: '/bin/sh',
        args: [
          '-c',
          'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done',
        ],
        timeoutMs: 600_000,
      }).catch(() => undefined) // its stream breaks when the VM is killed: expected
      await waitFor(
        async () => Number((await sh(sandbox, 'cat /tmp/count 2>/dev/null || echo 0')).stdout) > 3,
        60_000,
      )
      const snapshot = await sandbox.snapshot({ dir: join(snapshotRoot, 'running') })
      assert.equal(snapshot.memory, true)
      await sandbox.destroy({ reason: 'killed on purpose' })
      await counting
      const restored = await made.driver.create({ template, limits, fromSnapshot: snapshot })
      live.add(restored)
      // `[w]hile` matches the counting shell but not this one's own command line.
      const shells = await sh(restored, 'ps -eo args | grep -c "[w]hile :"')
      assert.equal(shells.stdout, '1\n', 'the counting shell is still there')
      const first = Number((await sh(restored, 'cat /tmp/count')).stdout)
      await waitFor(
        async () => Number((await sh(restored, 'cat /tmp/count')).stdout) > first + 3,
        60_000,
      )
      const later = Number((await sh(restored, 'cat /tmp/count')).stdout)
      // It went on from where the snapshot caught it (past 3: memory intact), not from zero.
      assert.ok(first > 3 && later > first, `counted on: ${first} -> ${later}`)
    })

    describe('built templates', () => {
      let buildId = ''
      before(async () => {
        buildId = await writeTestBuiltTemplate({ buildsDir: options.buildsDir, ...startedTemplate })
      })

      it('restores a built template with its start command already running', async () => {
        const first = await made.driver.create({ template: buildId, limits })
        live.add(first)
        const bootId = await assertStartedTemplate(first)
        const second = await made.driver.create({ template: buildId, limits })
        live.add(second)
        assert.equal(
          await assertStartedTemplate(second),
          bootId,
          'both sandboxes are copies of one booted VM',
        )
        const before = Math.floor(Date.now() / 1000)
        const guest = Number((await sh(second, 'date +%s')).stdout)
        const after = Math.ceil(Date.now() / 1000)
        assert.ok(
          guest >= before - 1 && guest <= after + 1,
          `the restored guest's clock is the host's: ${guest} against ${before}..${after}`,
        )
      })
    })

    options.extra?.({ driver: () => made.driver })
  })
}
