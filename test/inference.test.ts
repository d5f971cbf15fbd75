/**
 * SPEC §4, user inference instances, through the whole engine: the model registry, the 24 h
 * hold per cycle, renewal (full, partial, stop), failover, user terminate, and recovery.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { at, HOUR, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"

const twoRegions = {
  gpus: { H100: { hourly_rate: "1.00" } },
  regions: {
    "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" },
    "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }
  }
}
const register = { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }
const launchII = (extra: Record<string, unknown> = {}) => ({ at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama", ...extra })
const file = (events: Record<string, unknown>[], extra: Record<string, unknown> = {}) => timelineFile([register, ...events], { catalog: twoRegions, until: "P3D", ...extra })
const rows = (r: ReturnType<typeof run>) => r.output.ledger.slice(1).map((x) => [x.at, x.kind, x.amount, x.balance_after])

describe("a world event naming an inference instance", () => {
  it("without a region is refused for the region it needs, not as an instance with no pod", () => {
    // Proves a preempt, resume or pod_fail that names a running instance but not the region of
    // a replica says what is missing: it was 409 no_pod "no pod runs for ii-1" while the
    // instance ran. A GPU instance, and an id no one launched, are refused as before.
    const r = run(
      file([
        launchII(),
        { at: "PT1H", do: "preempt", id: "ii-1" },
        { at: "PT1H", do: "resume", id: "ii-1" },
        { at: "PT1H", do: "pod_fail", id: "ii-1" },
        { at: "PT1H", do: "preempt", id: "nope" },
        { at: "PT2H", do: "preempt", id: "ii-1", region: "us-east" }
      ])
    )
    const needs = (kind: string) => ({ status: 400, error: "region_required", message: `ii-1 is an inference instance: ${kind} hits one replica, so name its region (eu-west, us-east)` })
    expect(r.output.rejected.map(({ event, status, error, message }) => ({ event, status, error, message }))).toEqual([
      { event: 2, ...needs("preempt") },
      { event: 3, ...needs("resume") },
      { event: 4, ...needs("pod_fail") },
      { event: 5, status: 409, error: "no_pod", message: "no pod runs for nope" }
    ])
    expect(r.output.transitions.filter((t) => t.at === at(2 * HOUR)).map((t) => [t.resource, t.to])).toEqual([["ii-1@us-east", "preempted"]])
  })

  it("in miss_pod_events without a replica is refused, not taken for a watch that then misses nothing", () => {
    // Proves `miss_pod_events` naming the instance (its pod events are its replicas', `ii-1@us-east`)
    // says so: it was taken without a word, and the watch then missed nothing.
    const r = run(file([launchII(), { at: "PT1H", do: "miss_pod_events", id: "ii-1", count: 1 }]))
    expect(r.output.rejected.map(({ event, status, error, message }) => ({ event, status, error, message }))).toEqual([
      { event: 2, status: 400, error: "region_required", message: "ii-1 is an inference instance: its pod events are its replicas', so name one (ii-1@eu-west, ii-1@us-east)" }
    ])
  })
})

describe("the 24-hour cycle", () => {
  it("renews on the seeds' $72 balance with a partial hold of all of it, covering 5.6 h, then stops", () => {
    // Proves the manual's example: full hold $307.60 (307.599984 in micros), partial $72, 5.6 h.
    const example = JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "inference-partial-hold.json"), "utf8"))
    const r = run(example)
    expect(rows(r).slice(0, 2)).toEqual([
      [at(0), "gpu_usage", "-307.599984", "72.00"],
      [at(24 * HOUR), "gpu_usage", "-72.00", "0.00"]
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.severity, n.kind, n.text])).toEqual([
      ["warning", "partial_hold", "$72.00 credit can cover 5.6 more hours. Recharge to continue."],
      ["critical", "terminated", "Instance terminated: credit balance depleted."]
    ])
    // The partial hold covers 72 / (307.599984 / 24) h = 20,223,668 ms, and is consumed whole
    // but for one micro-dollar of rounding, refunded; dust too small to renew on stops it.
    const stopAt = 24 * HOUR + 20_223_668
    expect(rows(r).slice(2)).toEqual([[at(stopAt), "refund", "0.000001", "0.000001"]])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "terminated", termination_reason: "credit_depleted", cycle: 2 })
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("serves requests to the instance during a partial hold that took the balance to $0, until it stops", () => {
    // Proves the manual: "The instance runs until the partial hold is consumed", and its only
    // cause of "402 on my own user inference instance" is that it was stopped for credit: once
    // stopped, 402 insufficient_balance.
    const example = JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "inference-partial-hold.json"), "utf8"))
    const call = (at: string) => ({ at, do: "api_request", account: "acme", model: "llama-3-70b:ii-1", input_tokens: 100, output_tokens: 10 })
    const r = run({ ...example, events: [...example.events, call("PT25H"), call("PT30H")] })
    expect(r.output.rejected.filter((x) => x.do === "api_request").map((x) => [x.at, x.status, x.error])).toEqual([[at(30 * HOUR), 402, "insufficient_balance"]])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "terminated", termination_reason: "credit_depleted" })
    expect(r.output.invariants.ok).toBe(true)
  })

  it("writes only the next hold's row after exactly 24 h at full use", () => {
    // Proves SPEC §4: "Exactly 24 h at full use: only the gpu_usage −next_hold row."
    const r = run(file([launchII()], { until: "PT25H", accounts: { acme: { balance: "200.00" } } }))
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "152.00"],
      [at(24 * HOUR), "gpu_usage", "-48.00", "104.00"]
    ])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "running", cycle: 2, regions: { "eu-west": "running", "us-east": "running" } })
  })

  it("refunds the unused part of a cycle before the next hold, billing only running replicas", () => {
    // Proves failover billing: one replica fails at 6 h; 24 + 6 replica-hours consumed of 48.
    const r = run(file([launchII(), { at: "PT6H", do: "pod_fail", id: "ii-1", region: "us-east" }], { until: "PT25H", accounts: { acme: { balance: "200.00" } } }))
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "152.00"],
      [at(24 * HOUR), "refund", "18.00", "170.00"],
      [at(24 * HOUR), "gpu_usage", "-48.00", "122.00"]
    ])
    expect(r.output.transitions.filter((t) => t.resource === "ii-1@us-east").map((t) => [t.at, t.from, t.to])).toContainEqual([at(6 * HOUR), "running", "failed"])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "running", regions: { "eu-west": "running", "us-east": "failed" } })
  })

  it("after a failover, renews on a partial hold that lasts as long as the replica left takes to consume it", () => {
    // Proves "a partial hold runs until consumed" with one replica failed: $35 covers 35 h of
    // the one replica left (not 17.5 h of two), in one partial cycle, then the instance stops.
    const r = run(file([launchII(), { at: "PT1H", do: "pod_fail", id: "ii-1", region: "us-east" }], { until: "P3D", accounts: { acme: { balance: "60.00" } } }))
    // 24 h of eu-west and 1 h of us-east consumed $25 of the $48 hold: $23 comes back.
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "12.00"],
      [at(24 * HOUR), "refund", "23.00", "35.00"],
      [at(24 * HOUR), "gpu_usage", "-35.00", "0.00"]
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.kind, n.text])).toEqual([
      [at(24 * HOUR), "partial_hold", "$35.00 credit can cover 35.0 more hours. Recharge to continue."],
      [at(59 * HOUR), "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.transitions.filter((t) => t.resource === "ii-1").map((t) => [t.at, t.to, t.reason]).slice(-2)).toEqual([
      [at(59 * HOUR), "terminating", "credit_depleted"],
      [at(59 * HOUR), "terminated", "credit_depleted"]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("runs a partial hold until the replicas billing it consume it: a replica that cannot start does not halve it", () => {
    // Proves the window counts the replicas billing, not those that might: us-east is full (a
    // GPU instance holds all its GPUs), so only eu-west runs; $36 covers 36 h of it, in one
    // partial cycle with one notice (it used to say 18.0 hours and renew on ever smaller holds).
    const full = { ...twoRegions, regions: { ...twoRegions.regions, "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
    const hog = { at: "PT0S", do: "launch_gpu_instance", account: "big", id: "hog", gpu: "H100", gpu_count: 8, region: "us-east", estimated_duration_hours: 120 }
    const r = run(timelineFile([hog, register, launchII()], { catalog: full, until: "P4D", accounts: { acme: { balance: "60.00" }, big: { balance: "1000.00" } } }))
    const acme = r.output.ledger.filter((x) => x.account === "acme").slice(1).map((x) => [x.at, x.kind, x.amount, x.balance_after])
    expect(acme).toEqual([
      [at(0), "gpu_usage", "-48.00", "12.00"],
      [at(24 * HOUR), "refund", "24.00", "36.00"],
      [at(24 * HOUR), "gpu_usage", "-36.00", "0.00"]
    ])
    expect(r.output.notifications.filter((n) => n.account === "acme" && n.kind !== "balance_warning").map((n) => [n.at, n.kind, n.text])).toEqual([
      [at(24 * HOUR), "partial_hold", "$36.00 credit can cover 36.0 more hours. Recharge to continue."],
      [at(60 * HOUR), "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("moves a partial hold's end when a replica starts billing it: consumed, not overrun", () => {
    // Proves the end follows the billing: us-east is preempted from 23 h, so the $13 partial
    // hold at 24 h covers 13 h of eu-west alone; us-east resumes at 30 h, 6 of the 13 are
    // consumed, and the other 7 replica-hours last the two replicas 3.5 h: the instance stops
    // at 33.5 h with its hold consumed, not at 37 h with $7 of overage.
    const r = run(file([launchII(), { at: "PT23H", do: "preempt", id: "ii-1", region: "us-east" }, { at: "PT30H", do: "resume", id: "ii-1", region: "us-east" }], { until: "P4D", accounts: { acme: { balance: "60.00" } } }))
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "12.00"],
      [at(24 * HOUR), "refund", "1.00", "13.00"],
      [at(24 * HOUR), "gpu_usage", "-13.00", "0.00"]
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.kind, n.text])).toEqual([
      [at(24 * HOUR), "partial_hold", "$13.00 credit can cover 13.0 more hours. Recharge to continue."],
      [at(33.5 * HOUR), "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("keeps a partial hold nothing consumes, unrenewed, until a replica bills again", () => {
    // Proves a partial cycle with no replica billing waits: both replicas preempted at
    // 29:58:30 with 3 replica-minutes of the $12 hold left used to renew a $0.05 hold every
    // 1.5 minutes (1,681 notices over 42 h). Now: one partial notice, no more rows, cycle 2.
    const both = (at: string) => ["us-east", "eu-west"].map((region) => ({ at, do: "preempt", id: "ii-1", region }))
    const r = run(file([launchII(), ...both("PT29H58M30S")], { until: "P3D", accounts: { acme: { balance: "60.00" } } }))
    expect(r.output.notifications.filter((n) => n.kind === "partial_hold").map((n) => [n.at, n.text])).toEqual([[at(24 * HOUR), "$12.00 credit can cover 6.0 more hours. Recharge to continue."]])
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "12.00"],
      [at(24 * HOUR), "gpu_usage", "-12.00", "0.00"]
    ])
    expect(r.output.resources["ii-1"]).toMatchObject({ cycle: 2, cycle_hold: "12.00" })
    expect(r.output.invariants.ok).toBe(true)
  })

  it("ends a partial cycle once, at the end a preemption found at its end moved", () => {
    // Proves the cycle end looks at the pods and then waits for the end they give: us-east's
    // preemption at 30:00:30 (event missed) moves the $12.07 hold's end from 30:02:06 to
    // 30:03:42; the cycle used to end at 30:02:06 anyway and renew on $0.026667 of dust.
    const r = run(file([launchII(), { at: "PT30H0M10S", do: "miss_pod_events", id: "ii-1@us-east", count: 1 }, { at: "PT30H0M30S", do: "preempt", id: "ii-1", region: "us-east" }], { until: "P4D", accounts: { acme: { balance: "60.07" } } }))
    expect(r.output.notifications.filter((n) => n.kind === "partial_hold")).toHaveLength(1)
    expect(r.output.notifications.filter((n) => n.kind === "terminated").map((n) => n.at)).toEqual([at(30 * HOUR + 3 * MIN + 42_000)])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("bills a replica until its instance stops, however late its deletion is logged (the checker agrees)", () => {
    // Proves the checker's world rule for replicas: us-east's deletion event is missed and
    // logged at the 6:05 tick, but billing ended at the 6:01 terminate, as the refund shows.
    const r = run(file([launchII(), { at: "PT5H", do: "miss_pod_events", id: "ii-1@us-east", count: 1 }, { at: "PT6H1M", do: "terminate", id: "ii-1" }], { until: "P1D", accounts: { acme: { balance: "60.00" } } }))
    expect(rows(r).at(-1)).toEqual([at(6 * HOUR + MIN), "refund", "35.966667", "47.966667"])
    expect(r.output.transitions.filter((t) => t.resource === "ii-1@us-east").at(-1)).toMatchObject({ at: at(6 * HOUR + 5 * MIN), to: "deleted" })
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("stops with credit_depleted at a cycle boundary when the balance is $0", () => {
    // Proves the $0 rule: no partial hold, no partial notice, pods killed, the manual's text.
    const r = run(file([launchII()], { accounts: { acme: { balance: "48.00" } } }))
    expect(rows(r)).toEqual([[at(0), "gpu_usage", "-48.00", "0.00"]])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => n.text)).toEqual(["Instance terminated: credit balance depleted."])
    expect(r.output.transitions.filter((t) => t.resource === "ii-1").map((t) => [t.at, t.to, t.reason]).slice(-2)).toEqual([
      [at(24 * HOUR), "terminating", "credit_depleted"],
      [at(24 * HOUR), "terminated", "credit_depleted"]
    ])
  })
})

describe("a partial hold of a little credit", () => {
  it("renews on a balance worth less than a minute of a large instance, not stopping it with money left", () => {
    // Proves the seed's "> $0: partial hold — whatever the balance covers": 2 × 8 GPUs at
    // $6.408333/h burn $102.533328/h; $1.50 is left after the first cycle, 52.665 s of it. It
    // used to stop at 24:00 "for credit" with $1.50 unspent (a one-minute dust floor); only
    // less than one second's worth is dust now.
    const big = { at: "PT0S", do: "register_model", account: "acme", model: "big", source: "huggingface", gpu: "H100", gpu_count: 8 }
    const catalog = { ...twoRegions, gpus: { H100: { hourly_rate: "6.408333" } } }
    const r = run(
      timelineFile([big, launchII({ model: "big" })], { catalog, until: "P2D", accounts: { acme: { balance: "2462.299872" } } })
    )
    const stop = 24 * HOUR + 52_665
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-2460.799872", "1.50"],
      [at(24 * HOUR), "gpu_usage", "-1.50", "0.00"],
      // The window is rounded down to the millisecond; what that millisecond's part did not use comes back.
      [at(stop), "refund", "0.000023", "0.000023"]
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.text])).toEqual([
      [at(24 * HOUR), "$1.50 credit can cover 0.01 more hours. Recharge to continue."],
      [at(stop), "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "terminated", termination_reason: "credit_depleted", cycle: 2 })
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("says how many hours to two decimals when it covers less than a tenth of one, never 0.0", () => {
    // Proves the notice: $0.10 at $2/h covers 3 minutes, "0.05 more hours" (it read "0.0").
    const r = run(file([launchII()], { until: "P2D", accounts: { acme: { balance: "48.10" } } }))
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.text])).toEqual([
      [at(24 * HOUR), "$0.10 credit can cover 0.05 more hours. Recharge to continue."],
      [at(24 * HOUR + 3 * MIN), "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.ledger.find((x) => x.kind === "gpu_usage" && x.at === at(24 * HOUR))?.description).toContain("covers 0.05 h")
  })
})

describe("requests to a stopped instance", () => {
  // acme's ii-1 has $48: one full cycle of two replicas at $1.00/h, so its 24 h boundary finds
  // $0 and stops it with credit_depleted; its pods take 5 min to go (still `terminating`).
  // beta runs its own ii-2 of its own "llama" and terminates it at 1 h.
  const slowStop = {
    gpus: { H100: { hourly_rate: "1.00" } },
    regions: {
      "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S", pod_stop: "PT5M" },
      "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S", pod_stop: "PT5M" }
    }
  }
  const call = (at: string, account: string, model: string) => ({ at, do: "api_request", account, model, input_tokens: 100, output_tokens: 10 })
  const timeline = timelineFile(
    [
      register,
      launchII(),
      { ...register, account: "beta" },
      launchII({ account: "beta", id: "ii-2" }),
      { at: "PT1H", do: "terminate", id: "ii-2" },
      call("PT2H", "beta", "llama:ii-2"),
      // At the boundary's very instant the request, an input, comes before the engine's cycle end.
      call("PT24H", "acme", "llama:ii-1"),
      call("PT24H1M", "acme", "llama:ii-1"),
      call("PT24H10M", "acme", "llama:ii-1"),
      call("PT25H", "acme", "other:ii-1"),
      call("PT25H", "beta", "llama:ii-1"),
      call("PT25H", "beta", "llama:ii-9")
    ],
    { catalog: slowStop, until: "P2D", accounts: { acme: { balance: "48.00" }, beta: { balance: "100.00" } } }
  )
  const CREDIT_DEPLETED = "instance ii-1 of model llama was stopped because the credit balance was depleted (credit_depleted): add credit, then launch a new instance of llama"
  const expected = [
    [at(2 * HOUR), "beta", 404, "model_not_found", "model llama:ii-2 not found"],
    [at(24 * HOUR + MIN), "acme", 402, "insufficient_balance", CREDIT_DEPLETED],
    [at(24 * HOUR + 10 * MIN), "acme", 402, "insufficient_balance", CREDIT_DEPLETED],
    [at(25 * HOUR), "acme", 404, "model_not_found", "model other:ii-1 not found"],
    [at(25 * HOUR), "beta", 404, "model_not_found", "model llama:ii-1 not found"],
    [at(25 * HOUR), "beta", 404, "model_not_found", "model llama:ii-9 not found"]
  ]
  const apiRefusals = (r: ReturnType<typeof run>) =>
    r.output.rejected.filter((x) => x.do === "api_request").map((x) => [x.at, (timeline["events"] as Array<Record<string, unknown>>)[x.event]!["account"], x.status, x.error, x.message])

  it("answers 402 insufficient_balance, saying why, for the caller's own instance stopped at $0 at its 24 h boundary; 404 otherwise", () => {
    // Proves the manual's "402 on my own user inference instance. Cause: balance hit $0 on the
    // previous 24h cycle; instance was terminated … Restore balance and launch again": while
    // the instance is stopping (24:01) and once stopped (24:10). A user-terminated instance, a
    // wrong name, and another account's instance (answered word for word as an unknown id: no
    // leak of its existence or state) stay 404. Refusals write nothing.
    const r = run(timeline)
    expect(r.output.transitions.filter((t) => t.resource === "ii-1").map((t) => [t.at, t.to, t.reason]).slice(-2)).toEqual([
      [at(24 * HOUR), "terminating", "credit_depleted"],
      [at(24 * HOUR + 5 * MIN), "terminated", "credit_depleted"]
    ])
    expect(apiRefusals(r)).toEqual(expected)
    expect(r.output.ledger.filter((x) => x.kind === "api_usage")).toEqual([])
    expect(r.output.accounts.acme).toEqual({ balance: "0.00" })
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("answers the same after an engine restart, from the stopped instance's stored snapshot", () => {
    // Proves the stop reason survives a restart: the lookup of a finished instance reads its record.
    const r = run(timeline, { db: tmpDb(), restartAt: [24 * HOUR + 2 * MIN, 24 * HOUR + 6 * MIN].map((d) => Date.parse(START) + d) })
    expect(apiRefusals(r)).toEqual(expected)
  })
})

describe("launch, terminate and the registry", () => {
  it("settles to the millisecond on a user terminate, refunding the rest", () => {
    // Proves DELETE: 2 replicas × $1.00 × 1 h 30 min 10 s = $3.005556 consumed of $48.
    const r = run(file([launchII(), { at: "PT1H30M10S", do: "terminate", id: "ii-1" }], { accounts: { acme: { balance: "100.00" } } }))
    const stop = 90 * MIN + 10_000
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "52.00"],
      [at(stop), "refund", "44.994444", "96.994444"]
    ])
    expect(r.output.notifications.map((n) => n.text)).toEqual(["Instance terminated at your request."])
  })

  it("refuses a launch the balance cannot cover (402), an unknown model (404), and deleting a model in use (409)", () => {
    // Proves the refusals change nothing, and a model can be deleted once its instance is gone.
    const r = run(
      file(
        [
          launchII({ id: "too-poor" }),
          { at: "PT1M", do: "top_up", account: "acme", amount: "100.00" },
          launchII({ at: "PT2M", id: "nope", model: "unknown" }),
          launchII({ at: "PT3M" }),
          { at: "PT4M", do: "delete_model", account: "acme", model: "llama" },
          { at: "PT5M", do: "terminate", id: "ii-1" },
          { at: "PT6M", do: "delete_model", account: "acme", model: "llama" },
          { at: "PT7M", do: "register_model", account: "acme", model: "fs-model", source: "shared_fs", gpu: "H100", gpu_count: 1 }
        ],
        { accounts: { acme: { balance: "10.00" } } }
      )
    )
    expect(r.output.rejected.map((x) => [x.event, x.status, x.error])).toEqual([
      [1, 402, "insufficient_balance"],
      [3, 404, "model_not_found"],
      [5, 409, "invalid_state"],
      [8, 400, "filesystem_required"]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("fails the instance when its last replica fails, refunding what did not run", () => {
    // Proves failover has an end: both regions down → failed, settled, pods deleted.
    const r = run(
      file([launchII(), { at: "PT1H", do: "region_down", region: "us-east" }, { at: "PT2H", do: "region_down", region: "eu-west" }], {
        accounts: { acme: { balance: "100.00" } }
      })
    )
    // 1 h × 2 replicas + 1 h × 1 replica = 3 replica-hours of 48 held.
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "52.00"],
      [at(2 * HOUR), "refund", "45.00", "97.00"]
    ])
    expect(r.output.resources["ii-1"]).toMatchObject({ status: "failed", termination_reason: "failed" })
    // Each move into failed names its reason, a replica's as an instance's.
    expect(r.output.transitions.filter((t) => t.to === "failed").map((t) => [t.at, t.resource, t.reason])).toEqual([
      [at(HOUR), "ii-1@us-east", "failed"],
      [at(2 * HOUR), "ii-1@eu-west", "failed"],
      [at(2 * HOUR), "ii-1", "failed"]
    ])
    // The notice says why: every replica stopped, not "its pod".
    expect(r.output.notifications.filter((n) => n.kind === "terminated").map((n) => [n.at, n.severity, n.text])).toEqual([
      [at(2 * HOUR), "critical", "Instance failed: every replica stopped unexpectedly. Unused credit was refunded."]
    ])
  })
})

describe("the registry and the instance's status", () => {
  it("shows an instance whose every replica is preempted as preempted, not pending, and keeps its model", () => {
    // Proves the instance's status follows its replicas: preempted (it has run and waits for
    // capacity) until one resumes, and deleting the model it uses is refused meanwhile.
    const r = run(
      file([
        launchII(),
        { at: "PT1H", do: "preempt", id: "ii-1", region: "eu-west" },
        { at: "PT2H", do: "preempt", id: "ii-1", region: "us-east" },
        { at: "PT2H30M", do: "delete_model", account: "acme", model: "llama" },
        { at: "PT3H", do: "resume", id: "ii-1", region: "us-east" }
      ], { until: "PT4H", accounts: { acme: { balance: "100.00" } } })
    )
    expect(r.output.transitions.filter((t) => t.resource === "ii-1").map((t) => [t.at, t.from, t.to])).toEqual([
      [at(0), "pending", "loading"],
      [at(0), "loading", "running"],
      [at(2 * HOUR), "running", "preempted"],
      [at(3 * HOUR), "preempted", "running"]
    ])
    expect(r.output.rejected.map((x) => [x.at, x.status, x.error, x.message])).toEqual([
      [at(2 * HOUR + 30 * MIN), 409, "invalid_state", "model llama is in use by instance ii-1; delete the instance first"]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("names the same instance in a model's 409 with or without a restart: the smallest id", () => {
    // Proves the answer does not hang on the order actors were loaded (launch order before a
    // restart, id order after one): ii-b launched first, ii-a is named either way.
    const events = [
      { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-b", model: "llama" },
      { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-a", model: "llama" },
      { at: "PT2H", do: "delete_model", account: "acme", model: "llama" }
    ]
    const timeline = file(events, { until: "PT3H", accounts: { acme: { balance: "200.00" } } })
    const straight = run(timeline)
    const restarted = run(timeline, { db: tmpDb(), restartAt: [Date.parse(START) + HOUR] })
    expect(straight.output.rejected.map((x) => x.message)).toEqual(["model llama is in use by instance ii-a; delete the instance first"])
    expect(JSON.stringify(restarted.output)).toBe(JSON.stringify(straight.output))
  })

  it("refuses a shared_fs model on a cloud drive as a launch does (400), and a filesystem named for another source", () => {
    // Proves the wrong kind is a 400 wrong_storage_kind, not a 404 as if the drive did not exist.
    const storage = { storage: { cloud_drive: { daily_rate_per_gb: "0.10" }, shared_fs: { daily_rate_per_gb: "0.10" } } }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "create_drive", account: "acme", id: "dr-1", size_gb: 10, region: "us-east" },
          { at: "PT0S", do: "create_filesystem", account: "acme", id: "fs-1", size_gb: 10, region: "us-east" },
          { at: "PT1M", do: "register_model", account: "acme", model: "on-drive", source: "shared_fs", filesystem: "dr-1", gpu: "H100", gpu_count: 1 },
          { at: "PT1M", do: "register_model", account: "acme", model: "hf", source: "huggingface", filesystem: "fs-1", gpu: "H100", gpu_count: 1 },
          { at: "PT1M", do: "register_model", account: "acme", model: "on-fs", source: "shared_fs", filesystem: "fs-1", gpu: "H100", gpu_count: 1 }
        ],
        { catalog: { ...twoRegions, ...storage }, until: "PT1H", accounts: { acme: { balance: "100.00" } } }
      )
    )
    expect(r.output.rejected.map((x) => [x.event, x.status, x.error, x.message])).toEqual([
      [2, 400, "wrong_storage_kind", "dr-1 is not a shared filesystem"],
      [3, 400, "unexpected_filesystem", "a huggingface model does not name a filesystem; only a shared_fs model does"]
    ])
  })
})

describe("a model on a shared filesystem", () => {
  it("runs one replica in the filesystem's region with the filesystem mounted, and releases it on terminate", () => {
    // Proves SPEC §4's shared_fs source: 1 replica, hold = rate × GPUs × 1 × 24, fs in_use (409 to delete).
    const r = run(
      file(
        [
          { at: "PT0S", do: "create_filesystem", account: "acme", id: "fs-w", size_gb: 100, region: "eu-west" },
          { at: "PT1M", do: "register_model", account: "acme", model: "weights", source: "shared_fs", filesystem: "fs-w", gpu: "H100", gpu_count: 2 },
          { at: "PT2M", do: "launch_inference_instance", account: "acme", id: "ii-fs", model: "weights" },
          { at: "PT3M", do: "delete_storage", id: "fs-w" },
          { at: "PT1H2M", do: "terminate", id: "ii-fs" },
          { at: "PT1H3M", do: "delete_storage", id: "fs-w" }
        ],
        { catalog: { ...twoRegions, storage: { shared_fs: { daily_rate_per_gb: "0.006" } } }, until: "PT2H", accounts: { acme: { balance: "100.00" } } }
      )
    )
    expect(rows(r)).toEqual([
      [at(2 * MIN), "gpu_usage", "-48.00", "52.00"],
      [at(62 * MIN), "refund", "46.00", "98.00"]
    ])
    expect(r.output.rejected.map((x) => [x.event, x.status, x.message])).toEqual([[4, 409, "fs-w is attached to ii-fs; terminate the instance, then delete it"]])
    expect(r.output.resources["ii-fs"]).toMatchObject({ regions: { "eu-west": "deleted" }, termination_reason: "user_requested" })
    expect(r.output.resources["fs-w"]).toMatchObject({ status: "deleted" })
    expect(r.output.invariants.ok).toBe(true)
  })
})

describe("recovery", () => {
  it("finishes with the same output when the engine restarts mid-cycle and during a partial hold", () => {
    // Proves rehydration of an instance with its replica children from the snapshot.
    const example = JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "inference-partial-hold.json"), "utf8"))
    const straight = run(example)
    const restarted = run(example, { db: tmpDb(), restartAt: [5 * HOUR, 24 * HOUR, 26 * HOUR].map((d) => Date.parse(START) + d) })
    expect(JSON.stringify(restarted.output)).toBe(JSON.stringify(straight.output))
  })

  it("bills a replica preempted during an engine outage only up to its preemption", () => {
    // Proves a stop the engine learns of late is dated by the world, as for GPU instances: the
    // eu-west replica is preempted at 2:00 while the engine is down (1:50 to 2:50); 2 h of it and
    // 4 h of us-east are billed (refund $42 of $48), the same as with the engine up throughout,
    // and its transition is logged at 2:00 (reason reconciled).
    const events = [launchII(), { at: "PT2H", do: "preempt", id: "ii-1", region: "eu-west" }, { at: "PT4H", do: "terminate", id: "ii-1" }]
    const up = run(file(events))
    const down = run(file(events), { db: tmpDb(), outages: [{ at_ms: Date.parse(START) + 110 * MIN, duration_ms: HOUR }] })
    expect(rows(down)).toEqual([
      [at(0), "gpu_usage", "-48.00", "52.00"],
      [at(4 * HOUR), "refund", "42.00", "94.00"]
    ])
    expect(rows(down)).toEqual(rows(up))
    expect(down.output.transitions.filter((t) => t.resource === "ii-1@eu-west" && t.to === "preempted").map((t) => [t.at, t.reason])).toEqual([[at(2 * HOUR), "reconciled"]])
    expect(down.output.invariants.ok).toBe(true)
  })

  it("unbills a replica's preemption and resume that both fell inside an engine outage", () => {
    // Proves the interruption check for replicas: us-east preempted at 1:30 and resumed at 2:00
    // while the engine is down (1:00 to 3:00); at 3:00 the replica is billed up to 1:30 and from
    // 3:00 (the resume is billed from when the engine learns it), so 4 h + 2.5 h = $6.50 of
    // $48 is consumed.
    const events = [launchII(), { at: "PT1H30M", do: "preempt", id: "ii-1", region: "us-east" }, { at: "PT2H", do: "resume", id: "ii-1", region: "us-east" }, { at: "PT4H", do: "terminate", id: "ii-1" }]
    const r = run(file(events), { db: tmpDb(), outages: [{ at_ms: Date.parse(START) + HOUR, duration_ms: 2 * HOUR }] })
    expect(rows(r)).toEqual([
      [at(0), "gpu_usage", "-48.00", "52.00"],
      [at(4 * HOUR), "refund", "41.50", "93.50"]
    ])
    expect(r.output.transitions.filter((t) => t.resource === "ii-1@us-east" && t.reason === "reconciled").map((t) => [t.at, t.to])).toEqual([
      [at(90 * MIN), "preempted"],
      [at(3 * HOUR), "running"]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })
})
