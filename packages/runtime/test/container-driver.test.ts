/** The driver contract on the container driver, with both built-in templates. */
import { after, before } from 'node:test'
import { runDriverContract } from '@sandcell/test-utils/contract'
import {
  assertNoLeaks,
  createTestContainerDriver,
  snapshotLeaks,
  testLimits,
  type LeakSnapshot,
} from '@sandcell/test-utils'

let baseline: LeakSnapshot
before(() => {
  baseline = snapshotLeaks()
})
after(async () => {
  await assertNoLeaks(baseline)
})

for (const template of ['base', 'debian']) {
  runDriverContract({
    name: `container (${template})`,
    template,
    limits: testLimits,
    createDriver: () => createTestContainerDriver(),
  })
}
