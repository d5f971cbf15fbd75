/**
 * The invariant checker catches what it claims to: each test takes the facts of a clean run,
 * breaks one thing the way a bug would, and expects exactly the matching invariant to fire.
 */
import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { checkInvariants, type RunFacts } from "../sim/invariants.js"
import { apiRequestMicros, nearestHalfUp, POLICY_PARTIAL_HOLD_MIN_MS, POLICY_REARM_MARGIN_MS, SPEC_API_AGGREGATION_MS, SPEC_BALANCE_WARNING_MINUTES, SPEC_BILLABLE_STATES, SPEC_DURATION_WARNING_MINUTES, SPEC_INFERENCE_CYCLE_MS, SPEC_STORAGE_DAY_MS, SPEC_WATCHDOG_LAG_MS, usageMicros } from "../sim/oracle.js"
import { REARM_MARGIN_MS } from "../src/lowBalance.js"
import { AGGREGATION_WINDOW_MS, REQUEST_COST_MIN_MICROS } from "../src/metering.js"
import * as policy from "../src/policy.js"
import { at, HOUR, launch, run, START, timelineFile, tmpDb } from "./helpers.js"

const clean = (): RunFacts =>
  run(
    timelineFile([
      launch(),
      { at: "PT30M", do: "extend", id: "gi-1", hours: 1 },
      { at: "PT1H", do: "preempt", id: "gi-1" },
      { at: "PT1H10M", do: "resume", id: "gi-1" },
      launch({ id: "gi-2" }),
      { at: "PT1H", do: "terminate", id: "gi-2" }
    ])
  ).facts

const fired = (facts: RunFacts) => [...new Set(checkInvariants(facts).map((v) => v.invariant))].sort()

describe("the invariant checker", () => {
  it("passes a clean run", () => {
    // Proves the baseline the mutations below start from is clean.
    expect(checkInvariants(clean())).toEqual([])
  })

  it("catches a balance that the rows do not explain (1)", () => {
    // Proves conservation: a wallet credited without a row.
    const f = clean()
    const accounts = f.accounts.map((a) => ({ ...a, balance_micros: a.balance_micros + 1n }))
    expect(fired({ ...f, accounts })).toEqual([1])
    // Named with account and time (the end of the run, where the final state shows it), in dollars.
    expect(checkInvariants({ ...f, accounts })[0]).toMatchObject({
      account: "acme",
      at: new Date(f.end_ms).toISOString(),
      message: expect.stringMatching(/^ledger rows sum to \$\d+\.\d+, the wallet holds \$\d+\.\d+$/)
    })
  })

  it("catches a refund paid twice (1, 2)", () => {
    // Proves settle-once: a second refund row for the same hold.
    const f = clean()
    const refund = f.rows.find((r) => r.kind === "refund")!
    const last = f.rows[f.rows.length - 1]!
    const dup = { ...refund, id: last.id + 1, balance_after_micros: last.balance_after_micros + refund.amount_micros }
    const accounts = f.accounts.map((a) => ({ ...a, balance_micros: a.balance_micros + refund.amount_micros }))
    expect(fired({ ...f, rows: [...f.rows, dup], accounts })).toEqual([1, 2])
  })

  it("catches a settlement whose parts do not add up to the hold (2)", () => {
    // Proves consumed + refunded == held is checked per hold.
    const f = clean()
    const holds = f.holds.map((h, i) => (i === 0 ? { ...h, refunded_micros: (h.refunded_micros ?? 0n) + 1n } : h))
    expect(fired({ ...f, holds })).toEqual([2])
  })

  it("catches billing for preempted time (3)", () => {
    // Proves consumption is recomputed from the transitions log, not trusted.
    const f = clean()
    const transitions = f.transitions.filter((t) => !(t.resource === "gi-1" && (t.to_state === "preempted" || t.from_state === "preempted")))
    // Without the preemption in the log, 10 more minutes look billable than were billed; and
    // the world's own log shows the pod preempted while the engine's says running.
    expect(fired({ ...f, transitions })).toEqual([3, 7])
  })

  it("catches a consumption one micro off billable time × rate, rounded once half up (3)", () => {
    // Proves the rounding is checked exactly, not within a micro: gi-2 consumed one micro more and
    // was refunded one less, its rows and balances in step, so only the amount itself is wrong.
    const f = clean()
    const hold = f.holds.find((h) => h.resource === "gi-2")!
    const refund = f.rows.find((r) => r.hold_id === hold.id && r.kind === "refund")!
    const holds = f.holds.map((h) => (h === hold ? { ...h, consumed_micros: h.consumed_micros! + 1n, refunded_micros: h.refunded_micros! - 1n } : h))
    const rows = f.rows.map((r) => (r.id < refund.id || r.account !== refund.account ? r : { ...r, amount_micros: r === refund ? r.amount_micros - 1n : r.amount_micros, balance_after_micros: r.balance_after_micros - 1n }))
    const accounts = f.accounts.map((a) => (a.id === refund.account ? { ...a, balance_micros: a.balance_micros - 1n } : a))
    expect(checkInvariants({ ...f, holds, rows, accounts }).map((v) => [v.invariant, v.resource, v.message])).toEqual([
      [3, "gi-2", "consumed $1.600001, but 3600000 ms billable × rate × 1 GPUs is $1.60"]
    ])
  })

  it("catches billing while the world had the pod preempted, though the engine's log agrees with its billing (7)", () => {
    // Proves the check against the world's log: the shape of a stop the engine learned late and
    // logged late (its transitions and its charge agree), here the world preempting gi-1 five
    // minutes before the engine's log says it did.
    const f = clean()
    const world = new Map(f.world_phases!)
    const log = world.get("gi-1")!
    const preempt = log.findIndex((w) => w.phase === "preempted")
    world.set("gi-1", log.map((w, i) => (i === preempt ? { ...w, at: w.at - 5 * 60_000 } : w)))
    expect(checkInvariants({ ...f, world_phases: world })).toEqual([
      {
        invariant: 7,
        name: "no_run_past_deadline",
        account: "acme",
        resource: "gi-1",
        at: "2026-03-01T00:55:00.000Z",
        message: "billed from 2026-03-01T00:55:00.000Z while its pod was preempted (the world's log)"
      }
    ])
  })

  it("catches a hold placed on a balance that could not cover it (4, 5)", () => {
    // Proves admission is checked from the ledger: a hold row that drives the balance below 0.
    const f = clean()
    const shift = 200_000_000n
    const rows = f.rows.map((r) => (r.account === "acme" ? { ...r, amount_micros: r.kind === "adjustment" ? r.amount_micros - shift : r.amount_micros, balance_after_micros: r.balance_after_micros - shift } : r))
    const accounts = f.accounts.map((a) => ({ ...a, balance_micros: a.balance_micros - shift }))
    expect(fired({ ...f, rows, accounts })).toEqual([4, 5])
  })

  it("catches a warning sent out of order (6)", () => {
    // Proves threshold order per deadline: swap the 30- and 20-minute warnings' thresholds.
    const f = clean()
    const warnings = f.notifications.filter((n) => n.kind === "duration_warning" && n.resource === "gi-1")
    const [first, second] = warnings
    const notifications = f.notifications.map((n) => (n === first ? { ...n, data: second!.data, at: second!.at } : n === second ? { ...n, data: first!.data, at: first!.at } : n))
    expect(fired({ ...f, notifications })).toEqual([6])
  })

  it("catches a duration warning that was owed and never sent (6)", () => {
    // Proves presence: drop gi-1's 10-minute warning for its final deadline (3 h after start).
    const f = clean()
    const ten = f.notifications.find((n) => n.kind === "duration_warning" && n.resource === "gi-1" && JSON.parse(n.data ?? "{}").minutes === 10)!
    const violations = checkInvariants({ ...f, notifications: f.notifications.filter((n) => n !== ten) })
    expect(violations.map((v) => [v.invariant, v.resource, v.at, v.message])).toEqual([
      [6, "gi-1", new Date(ten.at).toISOString(), expect.stringMatching(/^no 10-minute warning for the deadline \d{4}-\d\d-\d\dT/)]
    ])
    // A warning due before a user's terminate is owed too; gi-2 was stopped at 1 h of its 2 h,
    // before any threshold, so it owes none.
    expect(f.notifications.filter((n) => n.kind === "duration_warning" && n.resource === "gi-2")).toEqual([])
  })

  it("catches an instance that ran past its deadline (7)", () => {
    // Proves the deadline check: move the stop five minutes later than the deadline allows.
    const f = clean()
    const transitions = f.transitions.map((t) => (t.resource === "gi-1" && (t.to_state === "terminating" || t.to_state === "terminated") ? { ...t, at: t.at + 5 * 60_000 } : t))
    expect(fired({ ...f, transitions })).toContain(7)
  })

  it("catches a deadline stop late within the watchdog lag, and an overage, where no outage explains them (7, 4)", () => {
    // Proves the simulator's deadline is exact: its alarm has no lag unless the engine was down
    // (found by mutation: a deadline alarm 30 s late, with its overage row, passed every check).
    const facts = run(
      timelineFile([launch({ estimated_duration_hours: 1 })], { until: "PT2H" })
    ).facts
    expect(checkInvariants(facts)).toEqual([])
    const late = facts.transitions.map((t) => (t.resource === "gi-1" && (t.to_state === "terminating" || t.to_state === "terminated") ? { ...t, at: t.at + 30_000 } : t))
    expect(checkInvariants({ ...facts, transitions: late }).map((v) => [v.invariant, v.message])).toContainEqual([7, "stopped for duration_expired at 2026-03-01T01:00:30.000Z, deadline 2026-03-01T01:00:00.000Z, no outage"])
    const overage = facts.holds.map((h) => (h.resource === "gi-1" ? { ...h, overage_micros: 13_333n } : h))
    expect(checkInvariants({ ...facts, holds: overage }).map((v) => [v.invariant, v.message])).toContainEqual([4, "overage $0.013333 with no outage at the deadline"])
    // With the engine down across the deadline, the lag is allowed again.
    expect(checkInvariants({ ...facts, transitions: late, engine_down: [{ from_ms: facts.start_ms + 59 * 60_000, to_ms: facts.start_ms + 61 * 60_000 }] }).filter((v) => v.message.includes("no outage"))).toEqual([])
  })
})

describe("the invariant checker, on inference instances", () => {
  it("catches a cycle hold that is not the manual's size (5)", () => {
    // Proves hold sizes are checked for inference too: the first cycle's hold is exactly the
    // full one, and a renewal never holds more than that.
    const example = JSON.parse(readFileSync(new URL("../sim/examples/inference-partial-hold.json", import.meta.url), "utf8"))
    const facts = run(example).facts
    expect(checkInvariants(facts)).toEqual([])
    const resize = (index: number, by: bigint): RunFacts => {
      const holds = facts.holds.filter((h) => h.resource === "ii-1").sort((a, b) => a.placed_at - b.placed_at)
      const id = holds[index]!.id
      return { ...facts, holds: facts.holds.map((h) => (h.id === id ? { ...h, held_micros: h.held_micros + by } : h)) }
    }
    expect(checkInvariants(resize(0, -1n)).filter((v) => v.invariant === 5).map((v) => v.message)).toEqual([
      "cycle hold hold:ii-1:1 of $307.599983; a full one is $307.599984"
    ])
    expect(checkInvariants(resize(1, 307_599_984n)).filter((v) => v.invariant === 5).map((v) => v.message)).toEqual([
      "cycle hold hold:ii-1:2 of $379.599984; a full one is $307.599984"
    ])
  })

  it("catches a partial renewal hold that leaves part of the balance unheld (5)", () => {
    // Proves SPEC §4's "partial (all of the balance)": the seeds' $72 renewal holding $71.999999
    // (found by mutation: it passed every check).
    const example = JSON.parse(readFileSync(new URL("../sim/examples/inference-partial-hold.json", import.meta.url), "utf8"))
    const facts = run(example).facts
    const partial = facts.holds.filter((h) => h.resource === "ii-1").sort((a, b) => a.placed_at - b.placed_at)[1]!
    const rows = facts.rows.map((r) => (r.hold_id === partial.id && r.kind === "gpu_usage" && r.at === partial.placed_at ? { ...r, amount_micros: r.amount_micros + 1n, balance_after_micros: r.balance_after_micros + 1n } : r))
    const holds = facts.holds.map((h) => (h.id === partial.id ? { ...h, held_micros: h.held_micros - 1n } : h))
    expect(checkInvariants({ ...facts, rows, holds }).filter((v) => v.invariant === 5).map((v) => v.message)).toEqual([
      `partial hold ${partial.id} of $71.999999 left $0.000001 unheld`
    ])
  })
})

describe("the invariant checker, on a partial renewal beside per-minute API usage", () => {
  // An inference instance (1 GPU × $1/h, one replica: a full hold of $24) on $30 renews at
  // 24 h on $6 less what the minutes ending at and after the renewal still owe.
  const file = timelineFile(
    [
      { at: "PT0S", do: "register_model", account: "acme", model: "m", source: "platform", gpu: "H100", gpu_count: 1 },
      { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "m" },
      { at: "PT23H59M30S", do: "api_request", account: "acme", model: "tok", input_tokens: 1_000_000 },
      { at: "PT24H", do: "api_request", account: "acme", model: "tok", input_tokens: 1_000_000 }
    ],
    {
      until: "PT30H",
      api_usage_rows: "per_minute",
      catalog: {
        gpus: { H100: { hourly_rate: "1.00" } },
        regions: { "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } },
        models: { tok: { input_per_1m_tokens: "0.15" } }
      },
      accounts: { acme: { balance: "30.00" } }
    }
  )

  it("counts the minute whose row is posted at the renewal's own instant as pending (5)", () => {
    // Proves the checker agrees with the engine's "renewals admit against the balance less
    // usage still pending": the minute 23:59's row is posted at 24:00, after the renewal, and
    // was reported as $0.30 left unheld (the checker counted only rows after the instant).
    const { facts, output } = run(file)
    const partial = facts.rows.find((r) => r.description.startsWith("Partial hold for ii-1"))!
    expect([partial.amount_micros, partial.balance_after_micros]).toEqual([-5_700_000n, 300_000n])
    expect(output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("counts a minute that a restart at the renewal's instant lost as pending (5)", () => {
    // Proves a row lost with the engine's memory (docs/POLICY.md: only a minute the engine was
    // dropped in may lose its row) does not make the renewal before it look short.
    const { output } = run(file, { db: tmpDb(), restartAt: [Date.parse(START) + 24 * HOUR] })
    expect(output.ledger.filter((r) => r.kind === "api_usage").map((r) => r.at)).toEqual([at(24 * HOUR)])
    expect(output.invariants).toEqual({ ok: true, violations: [] })
  })
})

describe("the invariant checker, on storage", () => {
  it("catches a day a usable drive was neither charged nor suspended (3), unless no engine ran then", () => {
    // Proves storage billing is checked for completeness, not only for form: drop dr-1's
    // charge of 2026-03-03 and that midnight is reported; an outage over it excuses it.
    const example = JSON.parse(readFileSync(new URL("../sim/examples/storage.json", import.meta.url), "utf8"))
    const facts = run(example).facts
    expect(checkInvariants(facts)).toEqual([])
    const midnight = Date.parse("2026-03-03T00:00:00Z")
    const unpaid = { ...facts, rows: facts.rows.filter((r) => !(r.kind === "storage_billing" && r.resource === "dr-1" && r.at === midnight)) }
    expect(checkInvariants(unpaid).filter((v) => v.invariant === 3).map((v) => v.message)).toEqual([
      "storage dr-1 was available at 2026-03-03T00:00:00.000Z and neither charged nor suspended"
    ])
    const down = { ...unpaid, engine_down: [{ from_ms: midnight - 60_000, to_ms: midnight }] }
    expect(checkInvariants(down).filter((v) => v.invariant === 3)).toEqual([])
  })

  it("does not ask a charge of storage restored at midnight after the daily worker passed it by", () => {
    // Proves no false alarm: b-drive is suspended on 03-02; on 03-03 the worker charges a-drive,
    // which sets off auto-recharge, and the top-up it books at that same millisecond restores
    // b-drive, after the worker skipped it as suspended.
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "14.00" },
          { at: "PT1M", do: "create_drive", account: "acme", id: "a-drive", size_gb: 4, region: "us-east" },
          { at: "PT1M", do: "create_drive", account: "acme", id: "b-drive", size_gb: 10, region: "us-east" },
          { at: "PT2M", do: "set_auto_recharge", account: "acme", threshold: "5.00", amount: "10.00" },
          // $2 spent before midnight (1 h × $2/h): $12 left for $14 of storage, so b-drive is suspended.
          { at: "PT3M", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 }
        ],
        {
          until: "P2DT1H",
          accounts: { acme: { balance: "0.00" } },
          catalog: { gpus: { H100: { hourly_rate: "2.00" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }, storage: { cloud_drive: { daily_rate_per_gb: "1.00" } } }
        }
      )
    )
    const restoredAtMidnight = r.output.transitions.filter((t) => t.resource === "b-drive" && t.from === "suspended").map((t) => t.at)
    expect(restoredAtMidnight).toEqual(["2026-03-03T00:00:00.000Z"])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })
})

describe("the invariant checker, on the low-balance rules", () => {
  it("catches a credit_depleted stop nobody was warned of (6)", () => {
    // Proves "warnings are sent before the termination they warn of" is checked, not assumed.
    const example = JSON.parse(readFileSync(new URL("../sim/examples/inference-partial-hold.json", import.meta.url), "utf8"))
    const facts = run(example).facts
    expect(checkInvariants(facts)).toEqual([])
    const unwarned = { ...facts, notifications: facts.notifications.filter((n) => n.kind !== "balance_warning") }
    expect(fired(unwarned)).toEqual([6])
  })

  it("catches a low-balance warning sent after the account's last resource stopped (6)", () => {
    // Proves "before the termination they warn of" for the account's warnings too: move the
    // 1-minute warning to an hour after the only instance was stopped at $0.
    const example = JSON.parse(readFileSync(new URL("../sim/examples/low-balance.json", import.meta.url), "utf8"))
    const facts = run(example).facts
    expect(checkInvariants(facts)).toEqual([])
    const stop = facts.notifications.find((n) => n.kind === "terminated")!
    const last = facts.notifications.filter((n) => n.kind === "balance_warning").at(-1)!
    const notifications = facts.notifications.map((n) => (n === last ? { ...n, at: stop.at + 3_600_000 } : n)).sort((a, b) => a.at - b.at || a.id - b.id)
    expect(checkInvariants({ ...facts, notifications }).map((v) => [v.invariant, v.at, v.message])).toEqual([
      // What it says is not true either: nothing burns then (and the stop came without it).
      [6, new Date(stop.at + 3_600_000).toISOString(), `1-minute balance warning at ${new Date(stop.at + 3_600_000).toISOString()}, when nothing of the account burned and nothing could stop`],
      [6, new Date(stop.at - 60_000).toISOString(), `stopped for credit_depleted at ${new Date(stop.at).toISOString()}, nothing of the account changing since 2026-03-02T01:30:00.000Z, without a warning of 1 minute or less by ${new Date(stop.at - 60_000).toISOString()}`],
      [6, new Date(stop.at + 3_600_000).toISOString(), "low-balance warning sent when none of the account's resources was left to stop"]
    ])
  })

  it("keeps the warnings already sent when a top-up too small to re-arm any comes before the stop", () => {
    // Proves no false alarm: $40 covers 30 min of two replicas at $40/h each; every warning down
    // to 1 minute is sent; a $1 top-up 10 s before the end buys 45 s, above no threshold, so
    // the engine rightly sends no more warnings: at 24:30 it renews on a partial hold of the $1
    // ("0.01 more hours") and stops at 24:30:45. That top-up starts no new run-down.
    const catalog = {
      gpus: { H100: { hourly_rate: "40.00" } },
      regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }, "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
    }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" },
          { at: "PT24H29M50S", do: "top_up", account: "acme", amount: "1.00" }
        ],
        { catalog, until: "P2D", accounts: { acme: { balance: "1960.00" } } }
      )
    )
    const kinds = r.output.notifications.map((n) => [String(n.at).slice(11, 19), n.kind])
    expect(kinds.filter(([, kind]) => kind === "balance_warning").at(-1)).toEqual(["00:29:00", "balance_warning"])
    expect(kinds.slice(-2)).toEqual([["00:30:00", "partial_hold"], ["00:30:45", "terminated"]])
    expect(r.output.notifications.at(-2)?.text).toBe("$1.00 credit can cover 0.01 more hours. Recharge to continue.")
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })
})

describe("the invariant checker, on what the low-balance warnings say", () => {
  const example = (): RunFacts => run(JSON.parse(readFileSync(new URL("../sim/examples/low-balance.json", import.meta.url), "utf8"))).facts
  /** A GPU-only account: $0.04 holds 4 h of one GPU at $0.01/h and leaves $0, so the money runs out at the deadline. */
  const gpuOnly = (): RunFacts =>
    run(
      timelineFile([launch({ estimated_duration_hours: 4 })], {
        catalog: { gpus: { H100: { hourly_rate: "0.01" } }, regions: { "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } },
        accounts: { acme: { balance: "0.04" } },
        until: "PT5H"
      })
    ).facts
  const warningAt = (f: RunFacts, minutes: number) => f.notifications.find((n) => n.kind === "balance_warning" && JSON.parse(n.data ?? "{}").minutes === minutes)!
  const moved = (f: RunFacts, minutes: number, by_ms: number): RunFacts => {
    const w = warningAt(f, minutes)
    return { ...f, notifications: f.notifications.map((n) => (n === w ? { ...n, at: n.at + by_ms } : n)).sort((a, b) => a.at - b.at || a.id - b.id) }
  }
  const dropped = (f: RunFacts, minutes: number): RunFacts => ({ ...f, notifications: f.notifications.filter((n) => n !== warningAt(f, minutes)) })
  const seen = (f: RunFacts) => checkInvariants(f).map((v) => [v.invariant, v.at, v.message])

  it("passes warnings sent exactly as the money runs down, with and without inference", () => {
    // Proves no false alarm: each warning of the GPU-only account lands m minutes before its
    // deadline, where the hold runs out; the example's before the partial hold runs out.
    const f = gpuOnly()
    expect(f.notifications.filter((n) => n.kind === "balance_warning").map((n) => new Date(n.at).toISOString().slice(11, 19))).toEqual(["03:00:00", "03:30:00", "03:40:00", "03:50:00", "03:55:00", "03:57:00", "03:59:00"])
    expect(checkInvariants(f)).toEqual([])
    expect(checkInvariants(example())).toEqual([])
  })

  it("catches a warning a minute late where the money is in the wallet and the holds (6)", () => {
    // Proves (a) and (c): at 03:31 nothing changed, so the 30-minute warning can only be an alarm,
    // and the pooled money runs out at 04:00, 29 minutes later; 03:00 to 03:31 is not 60 − 30 minutes.
    expect(seen(moved(gpuOnly(), 30, 60_000))).toEqual([
      [6, "2026-03-01T03:31:00.000Z", "30-minute balance warning at 2026-03-01T03:31:00.000Z, but at the burn then the money runs out at 2026-03-01T04:00:00.000Z, 1740000 ms later"],
      [6, "2026-03-01T03:31:00.000Z", "30-minute balance warning at 2026-03-01T03:31:00.000Z after the 60-minute one at 2026-03-01T03:00:00.000Z, nothing of the account changing between"],
      [6, "2026-03-01T03:40:00.000Z", "20-minute balance warning at 2026-03-01T03:40:00.000Z after the 30-minute one at 2026-03-01T03:31:00.000Z, nothing of the account changing between"]
    ])
  })

  it("catches a warning late before a credit stop: the money held lasts less than it says (6)", () => {
    // Proves (a) with inference and (b): the partial hold of $1 at 25:30 burns at $2/h; at 25:41 it
    // lasts 19 minutes, and the 20-minute moment of the stop at 26:00 passed unwarned.
    expect(seen(moved(example(), 20, 60_000))).toEqual([
      [6, "2026-03-02T01:41:00.000Z", "20-minute balance warning at 2026-03-02T01:41:00.000Z, but the wallet and the running holds last to 2026-03-02T02:00:00.000Z, only 1140000 ms"],
      [6, "2026-03-02T01:50:00.000Z", "10-minute balance warning at 2026-03-02T01:50:00.000Z after the 20-minute one at 2026-03-02T01:41:00.000Z, nothing of the account changing between"],
      [6, "2026-03-02T01:40:00.000Z", "stopped for credit_depleted at 2026-03-02T02:00:00.000Z, nothing of the account changing since 2026-03-02T01:30:00.000Z, without a warning of 20 minutes or less by 2026-03-02T01:40:00.000Z"]
    ])
  })

  it("catches a threshold skipped on the way to a credit stop (6)", () => {
    // Proves (b) and (c): without the 5-minute warning, 01:55 passed unwarned, and 3 follows 10.
    expect(seen(dropped(example(), 5))).toEqual([
      [6, "2026-03-02T01:57:00.000Z", "3-minute balance warning at 2026-03-02T01:57:00.000Z after the 10-minute one at 2026-03-02T01:50:00.000Z, nothing of the account changing between"],
      [6, "2026-03-02T01:55:00.000Z", "stopped for credit_depleted at 2026-03-02T02:00:00.000Z, nothing of the account changing since 2026-03-02T01:30:00.000Z, without a warning of 5 minutes or less by 2026-03-02T01:55:00.000Z"]
    ])
  })

  it("catches a threshold a top-up re-armed and the engine then skipped (6)", () => {
    // Proves (d): the $1 top-up at 01:05 (a credit alone at its instant) lifts the account to a
    // run-out at 02:00, 55 minutes on, so it re-arms 30; the stop at 02:00 then owes a 30-minute
    // warning after the top-up. Dropped, the 30-minute one before the top-up does not stand for
    // it. The checker plays the renewal at 01:30 itself: the partial hold's end there renews on
    // the $1 (a cycle end alone would bound the run-out at 01:30, 25 minutes on, re-arming only 20).
    const f = example()
    const rearmed = f.notifications.filter((n) => n.kind === "balance_warning" && JSON.parse(n.data ?? "{}").minutes === 30).at(-1)!
    expect(new Date(rearmed.at).toISOString()).toBe("2026-03-02T01:30:00.000Z")
    expect(seen({ ...f, notifications: f.notifications.filter((n) => n !== rearmed) })).toEqual([
      [6, "2026-03-02T01:30:00.000Z", "stopped for credit_depleted at 2026-03-02T02:00:00.000Z, nothing of the account changing since 2026-03-02T01:30:00.000Z, without a warning of 30 minutes or less between the credit at 2026-03-02T01:05:00.000Z that re-armed it and 2026-03-02T01:30:00.000Z"]
    ])
  })

  it("catches a threshold a top-up re-armed and the engine then skipped, with two inference instances (6)", () => {
    // Proves (d) beyond one instance: ii-a and ii-b each hold $48 a day ($1/h × 2 replicas), and
    // leave $0.50; ii-a's partial renewal at 24:00 would stop it at 24:15, so 60 minutes are
    // warned at 23:15. The $60 top-up at 23:40 (a credit alone at its instant) re-arms 60: ii-a
    // renews in full at 24:00 ($12.50 left) and ii-b at 24:30 on a partial hold of $12.50 that
    // ends at 06:45, seven hours on. The stop at 06:45 then owes a 60-minute warning after the
    // top-up. The checker plays both renewals; it used to bound the run-out by the first cycle
    // end (24:00, 20 minutes on), re-arming nothing, so the 60-minute warning of 23:15 stood for
    // the stop and one skipped at 05:45 passed.
    const catalog = {
      gpus: { H100: { hourly_rate: "1.00" } },
      regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }, "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
    }
    const f = run(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "m", source: "huggingface", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-a", model: "m" },
          { at: "PT30M", do: "launch_inference_instance", account: "acme", id: "ii-b", model: "m" },
          { at: "PT23H40M", do: "top_up", account: "acme", amount: "60.00" }
        ],
        { catalog, until: "P2DT1H", accounts: { acme: { balance: "96.50" } } }
      )
    ).facts
    expect(checkInvariants(f)).toEqual([])
    const sixties = f.notifications.filter((n) => n.kind === "balance_warning" && JSON.parse(n.data ?? "{}").minutes === 60).map((n) => new Date(n.at).toISOString())
    expect(sixties).toEqual(["2026-03-01T23:15:00.000Z", "2026-03-02T05:45:00.000Z", "2026-03-02T23:00:00.000Z"])
    const rearmed = f.notifications.find((n) => n.at === Date.parse("2026-03-02T05:45:00Z"))!
    expect(seen({ ...f, notifications: f.notifications.filter((n) => n !== rearmed) })).toEqual([
      [6, "2026-03-02T05:45:00.000Z", "stopped for credit_depleted at 2026-03-02T06:45:00.000Z, nothing of the account changing since 2026-03-02T00:30:00.000Z, without a warning of 60 minutes or less between the credit at 2026-03-01T23:40:00.000Z that re-armed it and 2026-03-02T05:45:00.000Z"]
    ])
  })

  it("owes nothing for a moment before the account's last change, nor where the engine was down", () => {
    // Proves the limits of (b): a warning dropped before the $1 top-up at 01:05 (the 60-minute one)
    // is not asked for by the stop, only by the order check it already had; an outage over the
    // 5-minute moment excuses it.
    const f = example()
    expect(seen(dropped(f, 60))).toEqual([])
    const down = { ...dropped(f, 5), engine_down: [{ from_ms: Date.parse("2026-03-02T01:54:00Z"), to_ms: Date.parse("2026-03-02T01:56:00Z") }] }
    expect(seen(down)).toEqual([])
  })
})

describe("the invariant checker, on API usage", () => {
  const apiCatalog = {
    gpus: { H100: { hourly_rate: "1.60" } },
    regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } },
    models: { chat: { input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" }, speak: { per_second: "0.000003" }, draw: { per_image: "0.04" } }
  }
  const apiRun = (rows: "per_request" | "per_minute"): RunFacts =>
    run(
      timelineFile(
        [
          // 1,200 × $0.15 + 301 × $0.60 per 1M = 360.6 micros: rounds up to $0.000361.
          { at: "PT10S", do: "api_request", account: "acme", model: "chat", input_tokens: 1_200, output_tokens: 301 },
          { at: "PT20S", do: "api_request", account: "acme", model: "chat", input_tokens: 3, output_tokens: 0 },
          // 0.5 s × $0.000003 = 1.5 micros: exactly half, rounds up to 2.
          { at: "PT30S", do: "api_request", account: "acme", model: "speak", seconds: 0.5 },
          { at: "PT1M5S", do: "api_request", account: "acme", model: "draw", images: 2 }
        ],
        { catalog: apiCatalog, until: "PT5M", api_usage_rows: rows }
      )
    ).facts
  /** The facts with the first `api_usage` row of `model` debiting `by` micros more (balances follow). */
  const misprice = (f: RunFacts, model: string, by: bigint): RunFacts => {
    const row = f.rows.find((r) => r.kind === "api_usage" && r.resource === model)!
    const rows = f.rows.map((r) => (r.id < row.id || r.account !== row.account ? r : { ...r, amount_micros: r.id === row.id ? r.amount_micros - by : r.amount_micros, balance_after_micros: r.balance_after_micros - by }))
    const accounts = f.accounts.map((a) => (a.id === row.account ? { ...a, balance_micros: a.balance_micros - by } : a))
    return { ...f, rows, accounts }
  }

  it("passes rows that are what their requests cost, per request and per minute", () => {
    // Proves no false alarm: the rounding half up (360.6 → 361, 1.5 → 2) and the floor of one micro (0.45 → 1).
    const perRequest = apiRun("per_request")
    expect(perRequest.rows.filter((r) => r.kind === "api_usage").map((r) => [r.resource, r.amount_micros])).toEqual([
      ["chat", -361n],
      ["chat", -1n],
      ["speak", -2n],
      ["draw", -80_000n]
    ])
    expect(checkInvariants(perRequest)).toEqual([])
    const perMinute = apiRun("per_minute")
    expect(perMinute.rows.filter((r) => r.kind === "api_usage").map((r) => [r.resource, r.amount_micros])).toEqual([
      ["chat", -362n],
      ["speak", -2n],
      ["draw", -80_000n]
    ])
    expect(checkInvariants(perMinute)).toEqual([])
  })

  it("catches a row one micro off its requests' cost, in either mode (3)", () => {
    // Proves the amount is recomputed, not summed: conservation alone balances a wrong row.
    expect(checkInvariants(misprice(apiRun("per_request"), "speak", -1n)).map((v) => [v.invariant, v.resource, v.message])).toEqual([
      [3, "speak", "api_usage rows for speak at 2026-03-01T00:00:30.000Z: $0.000001; its 1 request price to $0.000002"]
    ])
    expect(checkInvariants(misprice(apiRun("per_minute"), "chat", 1n)).map((v) => [v.invariant, v.resource, v.message])).toEqual([
      [3, "chat", "api_usage rows for chat at 2026-03-01T00:01:00.000Z: $0.000363; its 2 requests price to $0.000362"]
    ])
  })

  it("catches a row no request made, and a request whose row is missing (3)", () => {
    // Proves the rows are matched to requests both ways: by account, model and instant.
    const f = apiRun("per_request")
    const draw = f.rows.find((r) => r.kind === "api_usage" && r.resource === "draw")!
    const moved = { ...f, rows: f.rows.map((r) => (r === draw ? { ...r, at: r.at + 1_000 } : r)) }
    expect(checkInvariants(moved).map((v) => v.message)).toEqual([
      "api_usage rows for draw at 2026-03-01T00:01:05.000Z: none; its 1 request price to $0.08",
      "api_usage rows for draw at 2026-03-01T00:01:06.000Z: $0.08; its 0 requests price to none"
    ])
  })

  it("catches a request admitted that the engine must refuse: a unit without a price (3)", () => {
    // Proves the checker prices from the catalog itself: images sent to a token-priced model cost nothing it can name.
    const f = apiRun("per_request")
    const requests = [...f.api_usage!.requests, { at: f.start_ms + 40_000, account: "acme", model: "chat", images: 1 }]
    expect(checkInvariants({ ...f, api_usage: { ...f.api_usage!, requests } }).map((v) => v.message)).toEqual([
      "request to chat admitted, but it used images, which the model has no price for"
    ])
  })

  it("lets a per-minute row be missing only where the engine stopped inside its minute", () => {
    // Proves the restart excuse is narrow: the open minute's usage is lost with the engine's memory (docs/ENGINE.md).
    const f = apiRun("per_minute")
    const speak = f.rows.find((r) => r.kind === "api_usage" && r.resource === "speak")!
    const rows = f.rows.filter((r) => r !== speak).map((r) => (r.id > speak.id && r.account === speak.account ? { ...r, balance_after_micros: r.balance_after_micros - speak.amount_micros } : r))
    const accounts = f.accounts.map((a) => ({ ...a, balance_micros: a.balance_micros - speak.amount_micros }))
    const lost = { ...f, rows, accounts }
    expect(checkInvariants(lost).map((v) => v.message)).toEqual(["api_usage rows for speak at 2026-03-01T00:01:00.000Z: none; its 1 request price to $0.000002"])
    expect(checkInvariants({ ...lost, api_usage: { ...lost.api_usage!, engine_stops_ms: [f.start_ms + 45_000] } })).toEqual([])
    // A stop after the minute's row was due excuses nothing.
    expect(checkInvariants({ ...lost, api_usage: { ...lost.api_usage!, engine_stops_ms: [f.start_ms + 61_000] } })).toHaveLength(1)
  })
})

describe("the invariant checker's own numbers", () => {
  it("are SPEC's, and src/policy.ts states the same", () => {
    // Proves the oracle is independent and in step: a constant changed on one side only fails here first.
    expect(SPEC_BALANCE_WARNING_MINUTES).toEqual([60, 30, 20, 10, 5, 3, 1])
    expect(policy.BALANCE_WARNINGS.map((w) => w.minutes)).toEqual(SPEC_BALANCE_WARNING_MINUTES)
    expect(policy.DURATION_WARNINGS.map((w) => w.minutes)).toEqual(SPEC_DURATION_WARNING_MINUTES)
    expect([...policy.BILLABLE_STATES]).toEqual(SPEC_BILLABLE_STATES)
    expect(policy.WATCHDOG_LAG_MS).toBe(SPEC_WATCHDOG_LAG_MS)
    expect(policy.INFERENCE_CYCLE_MS).toBe(SPEC_INFERENCE_CYCLE_MS)
    expect(policy.STORAGE_BILLING_INTERVAL_MS).toBe(SPEC_STORAGE_DAY_MS)
    expect(AGGREGATION_WINDOW_MS).toBe(SPEC_API_AGGREGATION_MS)
    expect(REQUEST_COST_MIN_MICROS).toBe(1n)
    expect(REARM_MARGIN_MS).toBe(POLICY_REARM_MARGIN_MS)
    expect(policy.INFERENCE_PARTIAL_HOLD_MIN_MS).toBe(POLICY_PARTIAL_HOLD_MIN_MS)
  })

  it("round as SPEC's rule says, whatever src/money.ts does", () => {
    // Proves the checker's rounding: nearest micro, an exact half up; a priced request never free.
    expect(nearestHalfUp(5n, 2n)).toBe(3n)
    expect(nearestHalfUp(7n, 3n)).toBe(2n)
    expect(nearestHalfUp(8n, 3n)).toBe(3n)
    expect(usageMicros(1_600_000n, 1, 1)).toBe(0n) // 0.44 micro
    expect(usageMicros(1_800_000n, 1, 1)).toBe(1n) // exactly 0.5 micro
    expect(apiRequestMicros({ input_per_1m_tokens: 20_000n }, { at: 0, account: "a", model: "m", input_tokens: 3 })).toEqual({ micros: 1n })
    expect(apiRequestMicros({ per_second: 3n }, { at: 0, account: "a", model: "m", seconds: 0.5 })).toEqual({ micros: 2n })
    expect(apiRequestMicros({ per_second: 3n }, { at: 0, account: "a", model: "m", seconds: 0.0005 })).toEqual({ unpriced: "seconds (more than 3 decimals)" })
  })
})
