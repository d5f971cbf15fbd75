/**
 * `npm run sim` refuses a bad command line before it runs anything: exit 2 and one line on
 * stderr naming the option, never a stack trace, and no output on stdout.
 */
import { spawnSync } from "node:child_process"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { runTimeline } from "../sim/runner.js"
import { decode, launch, timelineFile, tmpDb } from "./helpers.js"

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

describe("npm run sim --restart-at and --outage", () => {
  it("refuses a drill outside the run or inside an outage, instead of skipping or moving it", () => {
    // Proves F10: a restart after until was dropped and the run exited 0, a crash drill that
    // never happened reported as passed; one inside an outage silently happened later.
    const path = goodFile()
    expectRefused(sim(path, "--restart-at", "P99D"), "--restart-at P99D: after the run's end (until 2026-03-02T00:00:00.000Z), so it would never happen")
    expectRefused(sim(path, "--outage", "P2D/PT10M"), "--outage P2D/PT10M: after the run's end")
    expectRefused(sim(path, "--restart-at", "2026-02-28T00:00:00Z"), "--restart-at 2026-02-28T00:00:00Z: before the run's start (2026-03-01T00:00:00.000Z)")
    expectRefused(sim(path, "--outage", "PT1H/PT1H", "--restart-at", "PT1H30M"), "--restart-at PT1H30M: inside --outage PT1H/PT1H, while the engine is already down")
    // At the very end, and right as an outage ends, a drill still happens.
    expect(sim(path, "--outage", "PT1H/PT1H", "--restart-at", "PT2H", "--restart-at", "P1D").status).toBe(0)
  })

  it("makes the runner refuse such a drill too", () => {
    // Proves a library caller cannot get a vacuous crash drill either.
    const timeline = decode(timelineFile([launch()]))
    expect(() => runTimeline(timeline, { db: tmpDb(), restartAt: [timeline.until_ms + 1] })).toThrow(/after the run's end/)
  })
})

describe("npm run sim on a bad file", () => {
  it("prints each problem on one line of its own, naming the file and the field", () => {
    // Proves a bad file's problems are one self-contained line each (no header line to pair
    // them with), and that nothing runs: no ledger path, no output.
    const path = join(tmpDb().replace(/ledger\.sqlite$/, ""), "bad.json")
    writeFileSync(path, JSON.stringify({ ...timelineFile([launch({ gpu_cont: 1 })]), untill: "PT1H" }))
    const out = sim(path)
    expect({ status: out.status, stdout: out.stdout, stderr: out.stderr }).toEqual({
      status: 2,
      stdout: "",
      stderr: `${path}: untill: is unexpected (known: start, seed, until, catalog, payments, api_usage_rows, accounts, events)\n${path}: events.0.gpu_cont: is unexpected\n`
    })
  })
})
