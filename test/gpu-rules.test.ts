/**
 * SPEC §3, rule by rule, through the whole engine (timeline → supervisor → machines →
 * SQLite ledger), with the exact rows, states and texts a user would see.
 */
import { Effect, Runtime } from "effect"
import { describe, expect, it } from "vitest"
import { VirtualClock } from "../src/clock.js"
import { extendAnswer } from "../src/answers.js"
import { dollars } from "../src/money.js"
import { SimCluster } from "../sim/cluster.js"
import { startSimEngine, stopEngine } from "../sim/runner.js"
import { at, HOUR, launch, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"
import { LOST_BEFORE_DEADLINE, LOST_FAILURE, LOST_PREEMPT_AND_RESUME, THREE_LOST } from "./lostEvents.js"

const ledger = (r: ReturnType<typeof run>) => r.output.ledger.map((row) => [row.at, row.kind, row.amount, row.balance_after, row.resource])
const texts = (r: ReturnType<typeof run>) => r.output.notifications.map((n) => [n.at, n.severity, n.kind, n.text])
const moves = (r: ReturnType<typeof run>) => r.output.transitions.map((t) => [t.at, t.from, t.to, t.reason])

describe("holds at launch and extend (the seeds' worked examples)", () => {
  it("holds $3.20 for 1 GPU × $1.60/h × 2 h and answers an extend of 3 h with additional_cost 4.80", () => {
    // Proves the manual's two numbers through the engine API itself, not a timeline.
    const clock = new VirtualClock(Date.parse(START))
    const cluster = new SimCluster(clock, [{ name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 0, image_pull_jitter_ms: 0, container_start_ms: 0, pod_stop_ms: 0, pull_failure_probability: 0, preemption_mean_interval_ms: 0, preemption_duration_ms: 0 }], 7)
    const engine = startSimEngine({ db: ":memory:", clock, cluster, gpu_rates: new Map([["H100", dollars("1.60")]]) })
    const runSync = Runtime.runSync(engine.runtime)
    runSync(engine.sup.openAccount("acme"))
    runSync(engine.sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))
    const view = runSync(engine.sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2 }))
    expect(view.status).toBe("pending")
    expect(engine.ledger.ledgerRows().map((r) => [r.kind, r.amount_micros, r.balance_after_micros])).toEqual([
      ["adjustment", 100_000_000n, 100_000_000n],
      ["gpu_usage", -3_200_000n, 96_800_000n]
    ])
    clock.advanceTo(Date.parse(START) + 30 * MIN, (_, fire) => engine.sup.unitOfWork(fire))
    const extended = runSync(engine.sup.extend("gi-1", 3))
    expect(extended.additional_cost_micros).toBe(4_800_000n)
    expect(extended.new_balance_micros).toBe(92_000_000n)
    expect(extended.deadline_at).toBe(Date.parse(START) + 5 * HOUR)
    expect(JSON.stringify(extendAnswer(extended))).toBe('{"additional_cost":4.8,"new_balance":92}')
    const refused = runSync(Effect.either(engine.sup.extend("gi-1", 0)))
    expect(refused._tag === "Left" && refused.left._tag).toBe("ValidationError")
    stopEngine(engine)
  })

  it("refuses a launch the balance cannot cover with 402 and writes nothing", () => {
    // Proves SPEC §2: a refused hold changes nothing (no row, no resource, same balance).
    const r = run(timelineFile([launch({ estimated_duration_hours: 4 })], { accounts: { acme: { balance: "5.00" } } }))
    expect(r.output.rejected).toEqual([
      { at: at(0), event: 0, do: "launch_gpu_instance", status: 402, error: "insufficient_balance", message: "balance $5.00 cannot cover $6.40" }
    ])
    expect(ledger(r)).toEqual([[at(0), "adjustment", "5.00", "5.00", null]])
    expect(r.output.resources).toEqual({})
    expect(r.output.accounts).toEqual({ acme: { balance: "5.00" } })
  })

  it("refuses more GPUs than one node has with 400 gpu_count exceeds GPUs per node", () => {
    // Proves the admission rule of SPEC §3 and that the refusal holds nothing.
    const r = run(timelineFile([launch({ gpu_count: 9 })]))
    expect(r.output.rejected).toEqual([
      { at: at(0), event: 0, do: "launch_gpu_instance", status: 400, error: "gpu_count_exceeds_node", message: "gpu_count exceeds GPUs per node" }
    ])
    expect(ledger(r)).toHaveLength(1)
  })

  it("holds node_count × gpu_count GPUs for a cluster and refuses more nodes than the region has", () => {
    // Proves the cluster hold: 3 h × $2.49 × 2 nodes × 8 GPUs = $119.52.
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "launch_gpu_cluster", account: "acme", id: "gc-1", gpu: "H100", node_count: 2, gpu_count: 8, region: "us-east", estimated_duration_hours: 3 },
          { at: "PT0S", do: "launch_gpu_cluster", account: "acme", id: "gc-2", gpu: "H100", node_count: 3, gpu_count: 1, region: "us-east", estimated_duration_hours: 1 }
        ],
        { catalog: { gpus: { H100: { hourly_rate: "2.49" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }, accounts: { acme: { balance: "200.00" } } }
      )
    )
    expect(ledger(r).slice(0, 2)).toEqual([
      [at(0), "adjustment", "200.00", "200.00", null],
      [at(0), "gpu_usage", "-119.52", "80.48", "gc-1"]
    ])
    expect(r.output.rejected.map((x) => [x.status, x.error])).toEqual([[400, "node_count_exceeds_region"]])
    expect(r.output.resources["gc-1"]).toMatchObject({ kind: "gpu_cluster", status: "terminated", termination_reason: "duration_expired", node_count: 2, gpu_count: 8 })
    // A cluster's own notices call it a cluster; the termination text is the manual's.
    expect(r.output.notifications.filter((n) => n.resource === "gc-1").map((n) => n.text)).toEqual([
      "Cluster gc-1 reaches its duration in 30 minutes and will be terminated. Extend it to keep it running.",
      "Cluster gc-1 reaches its duration in 20 minutes and will be terminated. Extend it to keep it running.",
      "Cluster gc-1 reaches its duration in 10 minutes and will be terminated. Extend it to keep it running.",
      "Cluster gc-1 reaches its duration in 5 minutes and will be terminated. Extend it to keep it running.",
      "Cluster gc-1 reaches its duration in 1 minute and will be terminated. Extend it to keep it running.",
      "Instance terminated — duration reached."
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })
})

describe("the deadline", () => {
  it("stops the instance at started_at + duration, warns at 30/20/10/5/1 min, settles the hold", () => {
    // Proves deadline from started_at (first entry into loading), the warnings' instants and
    // severities, the auto-stop reason and text, and that exactly 2 h of use refunds nothing.
    const r = run(
      timelineFile([launch()], { catalog: { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT1M", container_start: "PT30S" } } } })
    )
    const started = 1 * MIN
    const deadline = started + 2 * HOUR
    expect(moves(r)).toEqual([
      [at(started), "pending", "loading", null],
      [at(started + 30_000), "loading", "running", null],
      [at(deadline), "running", "terminating", "duration_expired"],
      [at(deadline), "terminating", "terminated", "duration_expired"]
    ])
    const warn = (m: number) => `Instance gi-1 reaches its duration in ${m} ${m === 1 ? "minute" : "minutes"} and will be terminated. Extend it to keep it running.`
    expect(texts(r)).toEqual([
      [at(deadline - 30 * MIN), "warning", "duration_warning", warn(30)],
      [at(deadline - 20 * MIN), "warning", "duration_warning", warn(20)],
      [at(deadline - 10 * MIN), "critical", "duration_warning", warn(10)],
      [at(deadline - 5 * MIN), "critical", "duration_warning", warn(5)],
      [at(deadline - 1 * MIN), "critical", "duration_warning", warn(1)],
      [at(deadline), "info", "terminated", "Instance terminated — duration reached."]
    ])
    // Billed 2 h exactly: the hold is consumed whole, no refund row, no overage row.
    expect(ledger(r)).toEqual([
      [at(0), "adjustment", "100.00", "100.00", null],
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"]
    ])
    expect(r.output.resources["gi-1"]).toMatchObject({ status: "terminated", termination_reason: "duration_expired", started_at: at(started), deadline_at: at(deadline) })
    expect(r.output.invariants.ok).toBe(true)
  })

  it("moves the deadline on extend and arms every warning again for the new one", () => {
    // Proves SPEC §3: "An extension moves the deadline; thresholds are armed again for it."
    const r = run(timelineFile([launch(), { at: "PT1H45M", do: "extend", id: "gi-1", hours: 1 }]))
    const warnings = r.output.notifications.filter((n) => n.kind === "duration_warning").map((n) => [n.at, (n.text as string).match(/in (\d+)/)![1]])
    expect(warnings).toEqual([
      [at(90 * MIN), "30"],
      [at(100 * MIN), "20"],
      [at(150 * MIN), "30"],
      [at(160 * MIN), "20"],
      [at(170 * MIN), "10"],
      [at(175 * MIN), "5"],
      [at(179 * MIN), "1"]
    ])
    expect(moves(r)[2]).toEqual([at(3 * HOUR), "running", "terminating", "duration_expired"])
    expect(ledger(r).slice(1)).toEqual([
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"],
      [at(105 * MIN), "gpu_usage", "-1.60", "95.20", "gi-1"]
    ])
  })

  it("keeps the old deadline when an extend is refused for balance, and refuses extending a terminated instance with 409", () => {
    // Proves "402 if not covered (the old deadline stands)" and "cannot be extended (409)".
    const r = run(
      timelineFile([launch(), { at: "PT10M", do: "extend", id: "gi-1", hours: 2 }, { at: "PT2H5M", do: "extend", id: "gi-1", hours: 1 }], {
        accounts: { acme: { balance: "5.00" } }
      })
    )
    expect(r.output.rejected.map((x) => [x.at, x.status, x.error])).toEqual([
      [at(10 * MIN), 402, "insufficient_balance"],
      [at(125 * MIN), 409, "instance_not_active"]
    ])
    expect(moves(r)[2]).toEqual([at(2 * HOUR), "running", "terminating", "duration_expired"])
    expect(ledger(r).map((x) => x[1])).toEqual(["adjustment", "gpu_usage"])
  })
})

describe("stopping", () => {
  it("refunds exactly the unused hold when the user terminates, billing loading and running time", () => {
    // Proves billable time (loading + running, not pending) and the refund to the micro:
    // 2 GPUs × $1.60 × 1 h billed of 4 h held → $9.60 back.
    const r = run(
      timelineFile([launch({ gpu_count: 2, estimated_duration_hours: 4 }), { at: "PT1H1M", do: "terminate", id: "gi-1" }], {
        catalog: { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT1M", container_start: "PT30S" } } },
        accounts: { acme: { balance: "20.00" } }
      })
    )
    expect(ledger(r)).toEqual([
      [at(0), "adjustment", "20.00", "20.00", null],
      [at(0), "gpu_usage", "-12.80", "7.20", "gi-1"],
      [at(61 * MIN), "refund", "9.60", "16.80", "gi-1"]
    ])
    expect(texts(r)).toEqual([[at(61 * MIN), "info", "terminated", "Instance terminated at your request."]])
    expect(r.output.resources["gi-1"]).toMatchObject({ status: "terminated", termination_reason: "user_requested" })
  })

  it("settles once when the user and the deadline stop the instance at the same instant", () => {
    // Proves the compare-and-swap of the stop: two stoppers, one settlement, one notice. (The
    // second terminate, after the first's pod stopped at once, finds the instance terminated.)
    const r = run(timelineFile([launch(), { at: "PT2H", do: "terminate", id: "gi-1" }, { at: "PT2H", do: "terminate", id: "gi-1" }]))
    expect(r.output.rejected.map((x) => [x.event, x.status, x.error])).toEqual([[2, 409, "instance_not_active"]])
    expect(moves(r).slice(2)).toEqual([
      [at(2 * HOUR), "running", "terminating", "user_requested"],
      [at(2 * HOUR), "terminating", "terminated", "user_requested"]
    ])
    expect(r.output.notifications.filter((n) => n.kind === "terminated")).toHaveLength(1)
    expect(r.facts.holds).toMatchObject([{ status: "settled", held_micros: 3_200_000n, consumed_micros: 3_200_000n, refunded_micros: 0n, overage_micros: 0n }])
    expect(ledger(r).map((x) => x[1])).toEqual(["adjustment", "gpu_usage"])
  })

  it("fails a pod that dies while loading and refunds everything but the loading time", () => {
    // Proves failed from loading: 5 min billed of 2 h held at $1.60/h → $3.066667 back.
    const r = run(
      timelineFile([launch(), { at: "PT5M", do: "pod_fail", id: "gi-1" }], {
        catalog: { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT10M" } } }
      })
    )
    expect(moves(r)).toEqual([
      [at(0), "pending", "loading", null],
      [at(5 * MIN), "loading", "failed", "failed"]
    ])
    expect(ledger(r).slice(2)).toEqual([[at(5 * MIN), "refund", "3.066667", "99.866667", "gi-1"]])
    expect(texts(r)).toEqual([[at(5 * MIN), "critical", "terminated", "Instance failed: its pod stopped unexpectedly. Unused credit was refunded."]])
  })
})

describe("preemption", () => {
  it("stops billing while preempted, notifies both ways, and does not move the deadline", () => {
    // Proves SPEC §3 preemption: 110 of 120 minutes billed → $2.933333 consumed of $8.00 held.
    const r = run(
      timelineFile([
        launch(),
        { at: "PT30M", do: "extend", id: "gi-1", hours: 3 },
        { at: "PT1H", do: "preempt", id: "gi-1" },
        { at: "PT1H10M", do: "resume", id: "gi-1" },
        { at: "PT2H", do: "terminate", id: "gi-1" }
      ])
    )
    expect(texts(r)).toEqual([
      [at(HOUR), "warning", "preempted", "Instance gi-1 was preempted: a higher-priority workload took its GPU. It resumes when capacity frees."],
      [at(70 * MIN), "info", "resumed", "Instance gi-1 resumed: capacity freed and it is running again."],
      [at(2 * HOUR), "info", "terminated", "Instance terminated at your request."]
    ])
    expect(ledger(r).slice(3)).toEqual([[at(2 * HOUR), "refund", "5.066667", "97.066667", "gi-1"]])
    expect(r.output.resources["gi-1"]).toMatchObject({ deadline_at: at(5 * HOUR) })
    expect(r.facts.holds[0]).toMatchObject({ held_micros: 8_000_000n, consumed_micros: 2_933_333n, refunded_micros: 5_066_667n })
  })
})

describe("the watchdog", () => {
  const file = timelineFile(
    [
      { at: "PT0S", do: "miss_pod_events", id: "healed", count: 2 },
      launch({ id: "healed", gpu_count: 4 }),
      launch({ id: "fills-node", gpu_count: 4 }),
      launch({ at: "PT1M", id: "no-room", gpu_count: 2, estimated_duration_hours: 1 })
    ],
    {
      until: "PT3H",
      catalog: { gpus: { A100: { hourly_rate: "1.20" } }, regions: { "eu-west": { nodes: 1, gpus_per_node: 8, image_pull: "PT2M", container_start: "PT1M" } } },
      accounts: { acme: { balance: "100.00" } }
    }
  )
  const eu = (events: Record<string, unknown>[]) => events.map((e) => ("gpu" in e ? { ...e, gpu: "A100", region: "eu-west" } : e))

  it("heals a pending instance whose pod runs, fails one with no pod after 15 minutes, refunding it in full", () => {
    // Proves SPEC §3's watchdog: checks every 5 min, acts only past 15 min pending.
    const r = run({ ...file, events: eu(file.events as Record<string, unknown>[]) })
    expect(moves(r).filter((m) => m[1] === "pending")).toEqual([
      [at(2 * MIN), "pending", "loading", null],
      [at(20 * MIN), "pending", "running", "watchdog_healed"],
      [at(20 * MIN), "pending", "failed", "failed"]
    ])
    expect(ledger(r).filter((x) => x[4] === "no-room")).toEqual([
      [at(MIN), "gpu_usage", "-2.40", "78.40", "no-room"],
      [at(20 * MIN), "refund", "2.40", "80.80", "no-room"]
    ])
    // Its notice says why: the watchdog's rule, not a pod that stopped.
    expect(texts(r).filter((n) => n[2] === "terminated" && n[0] === at(20 * MIN))).toEqual([
      [at(20 * MIN), "critical", "terminated", "Instance failed: its pod did not start within 15 minutes. Unused credit was refunded."]
    ])
    // The healed instance is billed from the heal: 2 h from +20 min.
    expect(r.output.resources["healed"]).toMatchObject({ status: "terminated", started_at: at(20 * MIN), deadline_at: at(140 * MIN) })
    expect(r.output.invariants.ok).toBe(true)
  })
})

describe("the reconciler on every watchdog tick", () => {
  it("heals a lost pod-failed event at the next 5-minute mark, billing only up to the pod's failure", () => {
    // Proves level-triggered reconciliation: the pod failed at 1:02, its event was lost, the
    // tick at 1:05 sees the failed pod, fails the instance and settles 1 h 2 min of a 2 h hold:
    // the world dates the failure, so the 3 minutes the engine did not know of are not billed.
    // The transition is logged at 1:02 (what was billed), the refund row at 1:05 (when booked).
    const file = timelineFile(LOST_FAILURE)
    const r = run(file)
    expect(moves(r)).toEqual([
      [at(0), "pending", "loading", null],
      [at(0), "loading", "running", null],
      [at(62 * MIN), "running", "failed", "failed"]
    ])
    expect(ledger(r)).toEqual([
      [at(0), "adjustment", "100.00", "100.00", null],
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"],
      [at(65 * MIN), "refund", "1.546667", "98.346667", "gi-1"]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("unbills a preemption and resume the engine never saw, from the preemption until it learns of it", () => {
    // Proves the interruption check: both pod events of a preemption at 1:01 and a resume at
    // 1:04 are lost; the tick at 1:05 finds the pod running but stopped since billing began
    // (the world's firstStopAt), logs the preemption at 1:01 and the resume at 1:05, and
    // 1 h 26 min of 1 h 30 min is billed (refund $0.906667 of $3.20).
    const r = run(
      timelineFile(LOST_PREEMPT_AND_RESUME)
    )
    expect(moves(r).slice(2, 4)).toEqual([
      [at(61 * MIN), "running", "preempted", "reconciled"],
      [at(65 * MIN), "preempted", "running", "reconciled"]
    ])
    expect(ledger(r).filter((x) => x[4] === "gi-1")).toEqual([
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"],
      [at(90 * MIN), "refund", "0.906667", "97.706667", "gi-1"]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("dates a stop found late at the first of several unseen stops, and takes a preemption and resume seen together for what they are", () => {
    // Proves the review's two cases. Three lost events (preempted 1:01, resumed 1:02, preempted
    // 1:03): billed to 1:01, not 1:03 (61 min of a 4 h hold). A preemption and a resume at the
    // same instant, both seen: nothing is invented at the next tick, 3 h are billed.
    const unseen = run(
      timelineFile(THREE_LOST)
    )
    expect(ledger(unseen).filter((x) => x[4] === "gi-1").at(-1)).toEqual([at(3 * HOUR), "refund", "4.773333", "98.373333", "gi-1"])
    expect(unseen.output.invariants.ok).toBe(true)
    const together = run(
      timelineFile([
        launch({ estimated_duration_hours: 4 }),
        { at: "PT1H", do: "preempt", id: "gi-1" },
        { at: "PT1H", do: "resume", id: "gi-1" },
        { at: "PT3H", do: "terminate", id: "gi-1" }
      ])
    )
    expect(moves(together).filter((m) => m[3] === "reconciled")).toEqual([])
    expect(ledger(together).filter((x) => x[4] === "gi-1").at(-1)).toEqual([at(3 * HOUR), "refund", "1.60", "95.20", "gi-1"])
  })

  it("looks at the pod before a deadline settles it: a preemption missed at 1:57 is not billed to 2:00", () => {
    // Proves the deadline reconciles first (the deadline and the watchdog tick share 2:00, and
    // the deadline's alarm fires first): 1 h 57 min of a 2 h hold is billed, refund $0.08.
    const r = run(timelineFile(LOST_BEFORE_DEADLINE))
    expect(ledger(r).filter((x) => x[4] === "gi-1")).toEqual([
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"],
      [at(120 * MIN), "refund", "0.08", "96.88", "gi-1"]
    ])
    expect(r.output.invariants.ok).toBe(true)
  })

  it("bills a preemption or a failure the engine learned of only after an outage up to when it happened", () => {
    // Proves the same dating across an engine outage (00:20 to 01:00, and 00:50 to 01:30): a pod
    // preempted at 00:30 is billed 30 min, not the 60 min until the engine came back; a pod
    // that died at 00:55, before its 01:00 deadline, is billed 55 min and charged no overage.
    const preempted = run(timelineFile([launch(), { at: "PT30M", do: "preempt", id: "gi-1" }, { at: "PT1H10M", do: "terminate", id: "gi-1" }]), {
      db: tmpDb(),
      outages: [{ at_ms: Date.parse(START) + 20 * MIN, duration_ms: 40 * MIN }]
    })
    expect(ledger(preempted).filter((x) => x[4] === "gi-1")).toEqual([
      [at(0), "gpu_usage", "-3.20", "96.80", "gi-1"],
      [at(70 * MIN), "refund", "2.40", "99.20", "gi-1"]
    ])
    expect(moves(preempted)[2]).toEqual([at(30 * MIN), "running", "preempted", "reconciled"])
    expect(preempted.output.invariants.ok).toBe(true)
    const died = run(timelineFile([launch({ estimated_duration_hours: 1 }), { at: "PT55M", do: "pod_fail", id: "gi-1" }]), {
      db: tmpDb(),
      outages: [{ at_ms: Date.parse(START) + 50 * MIN, duration_ms: 40 * MIN }]
    })
    expect(ledger(died).filter((x) => x[4] === "gi-1")).toEqual([
      [at(0), "gpu_usage", "-1.60", "98.40", "gi-1"],
      [at(90 * MIN), "refund", "0.133333", "98.533333", "gi-1"]
    ])
    expect(moves(died).at(-1)).toEqual([at(55 * MIN), "running", "failed", "failed"])
    expect(died.output.invariants.ok).toBe(true)
  })

  it("deletes a pod that no live resource owns at the next watchdog tick, and journals it", () => {
    // Proves the orphan sweep: a pod left behind (a crashed controller's create, say) is
    // deleted at the next 5-minute tick, named in the journal, and bills no one.
    const clock = new VirtualClock(Date.parse(START))
    const cluster = new SimCluster(clock, [{ name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 0, image_pull_jitter_ms: 0, container_start_ms: 0, pod_stop_ms: 0, pull_failure_probability: 0, preemption_mean_interval_ms: 0, preemption_duration_ms: 0 }], 7)
    const engine = startSimEngine({ db: ":memory:", clock, cluster, gpu_rates: new Map([["H100", dollars("1.60")]]) })
    cluster.createWorkload({ name: "eco-ghost", resource: "ghost", account: "nobody", region: "us-east", gpu: "H100", gpu_count: 8, node_count: 1, image: null, volumes: [], service: null })
    clock.advanceTo(Date.parse(START) + 4 * MIN, (_, fire) => engine.sup.unitOfWork(fire))
    expect(cluster.phaseOf("eco-ghost")).toBe("running")
    clock.advanceTo(Date.parse(START) + 6 * MIN, (_, fire) => engine.sup.unitOfWork(fire))
    expect(cluster.phaseOf("eco-ghost")).toBeUndefined()
    expect(engine.ledger.journalEntries().filter((j) => j.kind === "orphan_deleted").map((j) => [j.at, j.payload])).toEqual([
      [Date.parse(START) + 5 * MIN, '{"name":"eco-ghost","resource":"ghost","phase":"running"}']
    ])
    expect(engine.ledger.ledgerRows()).toEqual([])
    stopEngine(engine)
  })
})

describe("credit depleted", () => {
  it("terminates with credit_depleted a GPU that outran its hold during an outage on a $0 balance", () => {
    // Proves SPEC §7's Decision for GPUs, the late-warning rule, and that the checker names
    // the overrun and the negative balance (they are real: the control plane was down).
    const file = timelineFile([launch()], { accounts: { acme: { balance: "3.20" } } })
    const r = run(file, { db: tmpDb(), outages: [{ at_ms: Date.parse(START) + 112 * MIN, duration_ms: 20 * MIN }] })
    expect(moves(r).slice(2)).toEqual([
      [at(132 * MIN), "running", "terminating", "credit_depleted"],
      [at(132 * MIN), "terminating", "terminated", "credit_depleted"]
    ])
    expect(texts(r).filter((t) => t[2] !== "balance_warning").map((t) => [t[0], t[3]]).slice(-2)).toEqual([
      [at(110 * MIN), "Instance gi-1 reaches its duration in 10 minutes and will be terminated. Extend it to keep it running."],
      [at(132 * MIN), "Instance terminated: credit balance depleted."]
    ])
    expect(ledger(r).slice(2)).toEqual([[at(132 * MIN), "gpu_usage", "-0.32", "-0.32", "gi-1"]])
    expect(r.output.invariants.violations.map((v) => [v.invariant, v.resource])).toEqual([
      [4, "gi-1"],
      [7, "gi-1"]
    ])
  })

  it("stops a late deadline as duration_expired and charges the overage when the balance covers it", () => {
    // Proves the overage row (gpu_usage −x) of a settlement past the hold.
    const r = run(timelineFile([launch()]), { db: tmpDb(), outages: [{ at_ms: Date.parse(START) + 112 * MIN, duration_ms: 20 * MIN }] })
    expect(moves(r)[2]).toEqual([at(132 * MIN), "running", "terminating", "duration_expired"])
    expect(ledger(r).slice(2)).toEqual([[at(132 * MIN), "gpu_usage", "-0.32", "96.48", "gi-1"]])
    expect(r.facts.holds[0]).toMatchObject({ held_micros: 3_200_000n, consumed_micros: 3_520_000n, refunded_micros: 0n, overage_micros: 320_000n })
  })

  it("refuses inputs with 503 while the control plane is down", () => {
    // Proves an outage refuses, rather than loses or half-applies, what arrives meanwhile.
    const r = run(timelineFile([launch(), { at: "PT1H", do: "terminate", id: "gi-1" }]), { db: tmpDb(), outages: [{ at_ms: Date.parse(START) + 50 * MIN, duration_ms: 20 * MIN }] })
    expect(r.output.rejected.map((x) => [x.at, x.status, x.error])).toEqual([[at(HOUR), 503, "engine_unavailable"]])
    expect(r.output.resources["gi-1"]).toMatchObject({ termination_reason: "duration_expired" })
  })
})
