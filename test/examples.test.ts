/**
 * The shipped example timelines run clean and deterministic, and `npm run sim` behaves as
 * TIMELINE.md promises: the JSON contract with --json, exit 0 when every invariant holds,
 * 1 naming invariant, account, resource and time when one breaks, 2 on a bad file.
 */
import { spawnSync } from "node:child_process"
import { readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { launch, run, timelineFile, tmpDb } from "./helpers.js"

const ROOT = join(import.meta.dirname, "..")
const EXAMPLES = join(ROOT, "sim", "examples")
const examples = readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).sort()
const sim = (...args: string[]) => spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "sim.ts"), ...args], { cwd: ROOT, encoding: "utf8" })

describe("sim/examples", () => {
  it("ships the seeds' worked examples and more", () => {
    expect(examples).toEqual(expect.arrayContaining(["seed-hold-and-extend.json", "preemption.json", "refusals.json", "watchdog.json", "gpu-cluster.json", "user-terminate-refund.json"]))
  })
  for (const name of examples) {
    it(`${name} keeps every invariant and is deterministic`, () => {
      // Proves each example is a clean, repeatable run.
      const file = JSON.parse(readFileSync(join(EXAMPLES, name), "utf8"))
      const first = run(file)
      expect(first.output.invariants).toEqual({ ok: true, violations: [] })
      expect(JSON.stringify(run(file).output)).toBe(JSON.stringify(first.output))
    })
  }
})

describe("npm run sim", () => {
  it("prints the JSON contract of TIMELINE.md and exits 0 for the seeds' example", () => {
    // Proves the CLI end to end: $3.20 held at launch, $4.80 more on the 3-hour extend.
    const out = sim(join(EXAMPLES, "seed-hold-and-extend.json"), "--json")
    expect(out.status).toBe(0)
    const json = JSON.parse(out.stdout)
    expect(Object.keys(json)).toEqual(["ledger", "notifications", "transitions", "rejected", "accounts", "account_totals", "resources", "invariants"])
    expect(json.ledger.slice(1).map((r: Record<string, unknown>) => [r.kind, r.amount, r.balance_after, r.resource])).toEqual([
      ["gpu_usage", "-3.20", "96.80", "gi-1"],
      ["gpu_usage", "-4.80", "92.00", "gi-1"]
    ])
    expect(json.resources["gi-1"]).toMatchObject({ kind: "gpu_instance", status: "terminated", termination_reason: "duration_expired" })
    expect(json.invariants).toEqual({ ok: true, violations: [] })
  })

  it("prints a readable summary by default", () => {
    const out = sim(join(EXAMPLES, "preemption.json"))
    expect(out.status).toBe(0)
    expect(out.stdout).toContain("running → preempted")
    expect(out.stdout).toContain("Invariants: all hold")
  })

  it("checks determinism against a second run with the same outage", () => {
    // Proves --outage runs twice the same way: the second run used to have no outage, so the
    // 503s and the missed midnight charge of the first made it "not deterministic" (exit 1).
    const out = sim(join(EXAMPLES, "storage.json"), "--outage", "PT27H50M/PT20M")
    expect(out.stdout).toContain("Invariants: all hold")
    expect(out.status).toBe(0)
  })

  it("exits 1 and names invariant, account, resource and time when one breaks", () => {
    // Proves a broken invariant is loud: an outage past the deadline on a $0 balance.
    const dir = tmpDb().replace(/ledger\.sqlite$/, "")
    const path = join(dir, "outage.json")
    writeFileSync(path, JSON.stringify(timelineFile([launch()], { accounts: { acme: { balance: "3.20" } } })))
    const out = sim(path, "--db", join(dir, "ledger.sqlite"), "--outage", "PT1H52M/PT20M")
    expect(out.status).toBe(1)
    expect(out.stdout).toContain("#7 no_run_past_deadline  account=acme resource=gi-1 at=2026-03-01T02:12:00.000Z: ran 720000 ms past its deadline 2026-03-01T02:00:00.000Z")
  })

  it("exits 2 with the path of every problem in a bad timeline", () => {
    const dir = tmpDb().replace(/ledger\.sqlite$/, "")
    const path = join(dir, "bad.json")
    writeFileSync(path, JSON.stringify({ ...timelineFile([launch({ at: "two hours" })]), seed: "x" }))
    const out = sim(path)
    expect(out.status).toBe(2)
    expect(out.stderr).toContain("seed: Expected number, actual \"x\"")
    expect(out.stderr).toContain("events.0.at: an ISO-8601 duration after start (PT2H) or an instant (2026-03-01T02:00:00Z)")
  })

  it("exits 2 naming the problem for input that used to vanish, crash or be accepted", () => {
    // Proves the review's cases: an account key that is not an id (was dropped, exit 0), an
    // event after until (was never run, and nothing said), a field its kind does not have (a
    // typo launched without the storage), a negative storage price, an opening balance above
    // a wallet's limit (was a stack trace), a --db file that exists (a stack trace), an
    // --outage with a third part (ignored).
    const dir = tmpDb().replace(/ledger\.sqlite$/, "")
    const write = (name: string, file: unknown): string => {
      const path = join(dir, name)
      writeFileSync(path, JSON.stringify(file))
      return path
    }
    const good = timelineFile([launch()]) as { events: Array<Record<string, unknown>>; catalog: Record<string, unknown> }
    const cases: Array<[string, unknown, string]> = [
      ["key.json", { ...good, accounts: { "Acme Corp": { balance: "1.00" } } }, "accounts.Acme Corp: an id of letters, digits, '.', '_' or '-' (at most 63)"],
      ["until.json", { ...good, until: "PT1H", events: [...good.events, { at: "PT2H", do: "terminate", id: "gi-1" }] }, "events.1.at: after until (2026-03-01T01:00:00.000Z); lengthen until or remove the event"],
      ["typo.json", timelineFile([launch({ filesystem: ["fs-1"] })]), "events.0.filesystem: is unexpected"],
      ["rate.json", { ...good, catalog: { ...good.catalog, storage: { cloud_drive: { daily_rate_per_gb: "-0.004" } } } }, "catalog.storage.cloud_drive.daily_rate_per_gb: not negative"],
      ["rich.json", { ...good, accounts: { acme: { balance: "1000000000.01" } } }, "accounts.acme.balance: at most $1000000000.00 (a wallet's limit)"]
    ]
    for (const [name, file, message] of cases) {
      const out = sim(write(name, file))
      expect([name, out.status, out.stderr]).toEqual([name, 2, expect.stringContaining(message)])
    }
    const path = write("good.json", good)
    const db = join(dir, "ledger.sqlite")
    expect(sim(path, "--db", db).status).toBe(0)
    expect(sim(path, "--db", db)).toMatchObject({ status: 2, stderr: `--db ${db}: exists: the simulator writes a fresh ledger; remove it or name another file\n` })
    expect(sim(path, "--outage", "PT1H/PT10M/PT5M")).toMatchObject({ status: 2, stderr: expect.stringContaining("--outage PT1H/PT10M/PT5M: expected AT/DURATION") })
  })

  it("exits 2 with usage when no file is given", () => {
    const out = sim()
    expect(out.status).toBe(2)
    expect(out.stderr).toContain("usage: npm run sim --")
  })
})


describe("RunOptions.onPhase", () => {
  it("tells the end of the run, of the read-back and of the check, in that order, once each, with the same output", () => {
    // Proves the benchmark's phase marks: one call per phase, in order, and no effect on the run.
    const phases: string[] = []
    const file = timelineFile([launch()])
    const marked = run(file, { db: tmpDb(), onPhase: (phase) => phases.push(phase) })
    expect(phases).toEqual(["ran", "read", "checked"])
    expect(JSON.stringify(marked.output)).toBe(JSON.stringify(run(file, { db: tmpDb() }).output))
  })
})

describe("RunOptions.stepsPerCommit", () => {
  for (const name of examples) {
    it(`${name} gives the same output whatever the commit cadence`, () => {
      // Proves group commit is for speed only: the rows waiting in a batch, the open-hold and
      // balance caches and the snapshots written at each commit come out the same whether every
      // clock step commits, every third does, or the whole run is one batch (the default here).
      const file = JSON.parse(readFileSync(join(EXAMPLES, name), "utf8"))
      const whole = JSON.stringify(run(file, { db: tmpDb() }).output)
      expect(JSON.stringify(run(file, { db: tmpDb(), stepsPerCommit: 1 }).output)).toBe(whole)
      expect(JSON.stringify(run(file, { db: tmpDb(), stepsPerCommit: 3 }).output)).toBe(whole)
    })
  }
  it("refuses a cadence that is not a positive integer", () => {
    // Proves a bad option fails loudly instead of never committing (0) or committing oddly (1.5).
    const file = timelineFile([launch()])
    for (const bad of [0, -1, 1.5, Number.NaN]) expect(() => run(file, { stepsPerCommit: bad })).toThrow(/stepsPerCommit must be a positive integer/)
  })
})
