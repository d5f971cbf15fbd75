/**
 * `npm run sim` refuses a bad command line before it runs anything: exit 2 and one line on
 * stderr naming the option, never a stack trace, and no output on stdout.
 */
import { spawnSync } from "node:child_process"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { launch, timelineFile, tmpDb } from "./helpers.js"

const ROOT = join(import.meta.dirname, "..")
const sim = (...args: string[]) => spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "sim.ts"), ...args], { cwd: ROOT, encoding: "utf8" })

/** A good timeline file (one launch, until P1D) in a fresh directory; returns its path. */
const goodFile = (): string => {
  const path = join(tmpDb().replace(/ledger\.sqlite$/, ""), "good.json")
  writeFileSync(path, JSON.stringify(timelineFile([launch()])))
  return path
}

/** Exit 2 with exactly one line on stderr that contains `message`, and nothing on stdout. */
const expectRefused = (out: ReturnType<typeof sim>, message: string): void => {
  expect({ status: out.status, stdout: out.stdout, lines: out.stderr.trimEnd().split("\n").length }).toEqual({ status: 2, stdout: "", lines: 1 })
  expect(out.stderr).toContain(message)
}

describe("npm run sim --db", () => {
  it("refuses :memory: with a restart or an outage, and takes it alone", () => {
    // Proves F1: an in-memory ledger dies with its engine, so a drill on it was a stack trace (exit 1).
    const path = goodFile()
    expectRefused(sim(path, "--db", ":memory:", "--restart-at", "PT1H"), "--db :memory: cannot be used with --restart-at or --outage")
    expectRefused(sim(path, "--db", ":memory:", "--outage", "PT1H/PT10M"), "--db :memory: cannot be used with --restart-at or --outage")
    expect(sim(path, "--db", ":memory:").status).toBe(0)
  })

  it("refuses an empty name", () => {
    // Proves F2: SQLite gives "" a temporary database per connection; it used to pass the checks.
    expectRefused(sim(goodFile(), "--db", ""), "--db must name a file")
  })
})
