/**
 * Every timeline under test/regressions/ (shrunk property-test failures and hand-kept bug
 * reproductions) runs on every `npm test`: all invariants hold, every resource reaches a
 * state it can rest in, and two runs are byte-identical.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { run, tmpDb } from "./helpers.js"

const DIR = join(import.meta.dirname, "regressions")
const files = readdirSync(DIR).filter((f) => f.endsWith(".json")).sort()

describe("regression timelines", () => {
  it("exist (an empty folder would make this suite prove nothing)", () => {
    expect(files.length).toBeGreaterThan(0)
  })
  for (const name of files) {
    it(name, () => {
      // Proves the bug the file reproduces stays fixed.
      const { _why, _restart_after_minutes, ...file } = JSON.parse(readFileSync(join(DIR, name), "utf8")) as Record<string, unknown>
      const first = run(file)
      // A case found with a restart (the payments property) replays it: the same ledger.
      if (typeof _restart_after_minutes === "number") {
        const restarted = run(file, { db: tmpDb(), restartAt: [Date.parse(String(file["start"])) + _restart_after_minutes * 60_000] })
        expect(restarted.output.invariants).toEqual({ ok: true, violations: [] })
        expect(JSON.stringify(restarted.output.ledger)).toBe(JSON.stringify(first.output.ledger))
      }
      expect(first.output.invariants).toEqual({ ok: true, violations: [] })
      for (const [id, r] of Object.entries(first.output.resources)) {
        if (r.status === "terminating") expect.fail(`${id} is still terminating at the end of the run`)
      }
      expect(JSON.stringify(run(file).output)).toBe(JSON.stringify(first.output))
    })
  }
})
