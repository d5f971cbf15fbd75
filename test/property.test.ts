/**
 * Property test: random timelines of mixed fleets (GPU instances and clusters, inference
 * instances, drives and filesystems, `/v1` traffic, top-ups, region outages; see
 * arbitraries.ts) keep every SPEC §9 invariant, and the same timeline gives byte-identical
 * output twice. A failing case is
 * shrunk by fast-check and saved under test/regressions/, where regressions.test.ts runs it
 * from then on. PROPERTY_RUNS=2000 npm test runs more.
 */
import { createHash } from "node:crypto"
import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { timelineArb } from "./arbitraries.js"
import { breathe, run } from "./helpers.js"

const RUNS = Number(process.env.PROPERTY_RUNS ?? 200)
const REGRESSIONS = join(import.meta.dirname, "regressions")

/** Why a timeline fails, or null: the invariant violations, or a difference between two runs. */
export const failureOf = (file: unknown): string | null => {
  const first = run(file)
  if (!first.output.invariants.ok) return JSON.stringify(first.output.invariants.violations, null, 2)
  const second = run(file)
  if (JSON.stringify(second.output) !== JSON.stringify(first.output)) return "two runs of the same timeline differ"
  return null
}

describe("random timelines", () => {
  it(`keep every invariant and are deterministic (${RUNS} runs)`, async () => {
    const result = await fc.check(
      fc.asyncProperty(timelineArb, async (file) => {
        await breathe()
        return failureOf(file) === null
      }),
      { numRuns: RUNS }
    )
    if (result.failed && result.counterexample !== null) {
      const file = result.counterexample[0]
      const name = `property-${createHash("sha256").update(JSON.stringify(file)).digest("hex").slice(0, 12)}.json`
      mkdirSync(REGRESSIONS, { recursive: true })
      writeFileSync(join(REGRESSIONS, name), `${JSON.stringify(file, null, 2)}\n`)
      expect.fail(`saved test/regressions/${name} (seed ${result.seed}, path ${result.counterexamplePath}):\n${failureOf(file) ?? String(result.errorInstance)}`)
    }
    expect(result.failed).toBe(false)
  })
})
