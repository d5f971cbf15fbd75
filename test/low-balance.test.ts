/**
 * SPEC §7, when the balance runs low: warnings at 60/30/20 (warning) and 10/5/3/1 (critical)
 * minutes before the account's money runs out, each at its exact instant, once per
 * run-down, armed again by a top-up that lifts the account above them.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { firstStopOf, type ForeseenRenewal } from "../src/balanceMonitor.js"
import { planWarnings, zeroAt } from "../src/lowBalance.js"
import { at, HOUR, MIN, run, START, timelineFile, tmpDb } from "./helpers.js"

const catalog = {
  gpus: { H100: { hourly_rate: "1.00" } },
  regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }, "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
}
const inference = [
  { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
  { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" }
]
const warnings = (r: ReturnType<typeof run>) =>
  r.output.notifications.filter((n) => n.kind === "balance_warning").map((n) => [n.at, n.severity, (n.text as string).match(/about (\d+)/)![1]])

/** Every threshold's warning, at its instant before `zero`, in order: what `warnings` reads of a full run-down. */
const runDown = (zero: number) => [
  [at(zero - 60 * MIN), "warning", "60"],
  [at(zero - 30 * MIN), "warning", "30"],
  [at(zero - 20 * MIN), "warning", "20"],
  [at(zero - 10 * MIN), "critical", "10"],
  [at(zero - 5 * MIN), "critical", "5"],
  [at(zero - 3 * MIN), "critical", "3"],
  [at(zero - 1 * MIN), "critical", "1"]
]

/** A full run-down before `zero`, then the stop for credit_depleted at `zero`, and a clean run. */
const expectFullRunDown = (r: ReturnType<typeof run>, zero: number): void => {
  expect(warnings(r)).toEqual(runDown(zero))
  expect(r.output.notifications.at(-1)).toMatchObject({ at: at(zero), kind: "terminated", text: "Instance terminated: credit balance depleted." })
  expect(r.output.invariants.ok).toBe(true)
}

describe("low-balance warnings", () => {
  it("fire at the exact instants before the money runs out, in threshold order", () => {
    // Proves exact instants: $48 + $3 runs out at 25.5 h at $2/h (a $3 partial covers 1.5 h).
    const r = run(timelineFile(inference, { catalog, until: "P2D", accounts: { acme: { balance: "51.00" } } }))
    const zero = 24 * HOUR + 90 * MIN
    expectFullRunDown(r, zero)
  })

  it("count what a cycle's hold gives back at its end: no warnings a day early after a failover", () => {
    // Proves the run-down includes the refund a cycle end brings: $48 is all held at launch,
    // but with us-east failed at 1 h, $23 of the hold comes back at 24 h and renews a partial
    // hold that eu-west consumes by 47 h. The warnings come before 47 h, not before 24 h.
    const r = run(timelineFile([...inference, { at: "PT1H", do: "pod_fail", id: "ii-1", region: "us-east" }], { catalog, until: "P3D", accounts: { acme: { balance: "48.00" } } }))
    const zero = 47 * HOUR
    expectFullRunDown(r, zero)
  })

  it("foresee the second of two renewals at one instant stopping when the first takes the whole balance", () => {
    // Proves renewals are played in the engine's order: inf-a and inf-b end their cycles at 24:01;
    // inf-a renews first, on a partial hold of everything, so inf-b has only its own refund
    // ($0.000139, half a second's worth: below a partial hold's least second) and stops. The account is warned before 24:01, not surprised by inf-b's stop.
    const oneRegion = { gpus: { H100: { hourly_rate: "1.00" } }, regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } } }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "m", source: "huggingface", gpu: "H100", gpu_count: 1 },
          { at: "PT1M", do: "launch_inference_instance", account: "acme", id: "inf-a", model: "m" },
          { at: "PT1M", do: "launch_inference_instance", account: "acme", id: "inf-b", model: "m" },
          { at: "PT1H", do: "preempt", id: "inf-a", region: "us-east" },
          { at: "PT11H", do: "resume", id: "inf-a", region: "us-east" },
          { at: "PT2H", do: "preempt", id: "inf-b", region: "us-east" },
          { at: "PT2H0M0.5S", do: "resume", id: "inf-b", region: "us-east" }
        ],
        { catalog: oneRegion, until: "P2D", accounts: { acme: { balance: "48.016" } } }
      )
    )
    const zero = 24 * HOUR + 1 * MIN
    // At 24:01 inf-a's unused $10.00 comes back and renews it on a partial hold of $10.016, 10.0 h
    // at $1/h (to 34:01:57.6): money came back, so a new run-down is warned of in full before
    // that stop too. (Before, every threshold stayed spent and inf-a stopped unwarned.)
    const partialEnd = zero + 10 * HOUR + 57_600
    expect(warnings(r).map((w) => w[0])).toEqual([
      ...[60, 30, 20, 10, 5, 3, 1].map((m) => at(zero - m * MIN)),
      ...[60, 30, 20, 10, 5, 3, 1].map((m) => at(partialEnd - m * MIN))
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.resource, n.kind, n.text])).toEqual([
      [at(zero), "inf-a", "partial_hold", "$10.016 credit can cover 10.0 more hours. Recharge to continue."],
      [at(zero), "inf-b", "terminated", "Instance terminated: credit balance depleted."],
      [at(partialEnd), "inf-a", "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("are armed again by a top-up that lifts the account above them, and not sent twice otherwise", () => {
    // Proves "each once per run-down": 60 and 30 fire, a top-up of $1 (30 more minutes) re-arms 30 only
    // (sim/examples/low-balance.json).
    const r = run(JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "low-balance.json"), "utf8")))
    const zero = 24 * HOUR + 90 * MIN
    const later = zero + 30 * MIN
    expect(warnings(r).slice(0, 4)).toEqual([
      [at(zero - 60 * MIN), "warning", "60"],
      [at(zero - 30 * MIN), "warning", "30"],
      // After the top-up at 25:05 the money lasts to 26:00: 55 minutes, so 60 stays sent.
      [at(later - 30 * MIN), "warning", "30"],
      [at(later - 20 * MIN), "warning", "20"]
    ])
    expect(warnings(r).filter((w) => w[2] === "60")).toHaveLength(1)
  })

  it("are armed again when unused credit comes back: the stop it postpones is warned of again", () => {
    // Proves a hold's refund is a credit (docs/POLICY.md): ii-1 ($2/h) cannot renew at 24:00
    // on $0.0005 (0.9 s, below a partial hold's least second), and all seven thresholds are
    // sent for that. At 23:59:30 the user terminates gi-1, whose unused $14.008333 comes back;
    // ii-1 renews on a partial hold of $14.008833 (7.0 h) and stops at 31:00:15.899. Before,
    // no warning came before that stop.
    const r = run(
      timelineFile(
        [
          ...inference,
          { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 38 },
          { at: "PT23H59M30S", do: "terminate", id: "gi-1" }
        ],
        { catalog, until: "P2D", accounts: { acme: { balance: "86.0005" } } }
      )
    )
    const first = 24 * HOUR
    const stop = 31 * HOUR + 15_899 // $14.008833 at $2/h: 7 h 0 min 15.899 s (25,215,899.4 ms, rounded down)
    const thresholds = [60, 30, 20, 10, 5, 3, 1]
    expect(warnings(r).map((w) => [w[0], w[2]])).toEqual([...thresholds.map((m) => [at(first - m * MIN), String(m)]), ...thresholds.map((m) => [at(stop - m * MIN), String(m)])])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.resource, n.text])).toEqual([
      [at(first - 30_000), "gi-1", "Instance terminated at your request."],
      [at(first), "ii-1", "$14.008833 credit can cover 7.0 more hours. Recharge to continue."],
      [at(stop), "ii-1", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("are armed again when a resource stops: the next instance's stop for credit is warned of too", () => {
    // Proves a stop for good ends a run-down (docs/POLICY.md): ii-1 and ii-2 ($2/h each) hold
    // $48 each of $156. At 24:00 ii-1 renews in full and ii-2 on a partial hold of the $12 left
    // (6 h), stops at 30:00 after its seven warnings, and ii-1 stops at 48:00 when it cannot
    // renew. Before, the thresholds stayed used after ii-2's stop: ii-1 was stopped 18 h later
    // with no warning at all (found replaying the manual's rules).
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-2", model: "llama" }
        ],
        { catalog, until: "P2DT2H", accounts: { acme: { balance: "156.00" } } }
      )
    )
    expect(warnings(r)).toEqual([...runDown(30 * HOUR), ...runDown(48 * HOUR)])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.resource, n.text])).toEqual([
      [at(24 * HOUR), "ii-2", "$12.00 credit can cover 6.0 more hours. Recharge to continue."],
      [at(30 * HOUR), "ii-2", "Instance terminated: credit balance depleted."],
      [at(48 * HOUR), "ii-1", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("are armed again when a GPU instance reaches its deadline: its warning leaves the next stop's thresholds unused", () => {
    // Proves the same for a stop at a deadline: gi-1 ($60/h, 1 h, prepaid) beside ii-1 ($2/h)
    // on $110 leaves $2; the pooled estimate warns "60 minutes" at 00:46:27.096 as gi-1's hold
    // runs down (docs/POLICY.md: a GPU instance's unconsumed hold counts as funds), and gi-1
    // stops at its deadline at 01:00. At 24:00 ii-1 renews on a partial hold of the $2 (1 h)
    // and stops at 25:00. Before, that stop got six warnings: the 60-minute one counted as sent.
    const r = run(
      timelineFile(
        [
          ...inference,
          { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "A100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 }
        ],
        { catalog: { ...catalog, gpus: { ...catalog.gpus, A100: { hourly_rate: "60.00" } } }, until: "P1DT2H", accounts: { acme: { balance: "110.00" } } }
      )
    )
    expect(warnings(r)).toEqual([[at(46 * MIN + 27_096), "warning", "60"], ...runDown(25 * HOUR)])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("may send a threshold again after a credit at the instant it was sent", () => {
    // Proves the checker orders a warning and a credit at one instant as the engine may: at
    // 00:50 a request leaves $0 beside gi-1's last 10 minutes ("10" is sent), then the
    // auto-recharge of $2 lands at 00:50 and lifts the account to 12 minutes, which arms "10"
    // again; it is sent at 00:52. Before, the checker called that a repeat in one run-down.
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "set_auto_recharge", account: "acme", threshold: "1.00", amount: "2.00" },
          { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 },
          { at: "PT50M", do: "api_request", account: "acme", model: "m", input_tokens: 5000000 }
        ],
        {
          catalog: { ...catalog, gpus: { H100: { hourly_rate: "60.00" } }, models: { m: { input_per_1m_tokens: "1.00", output_per_1m_tokens: "1.00" } } },
          until: "PT3H",
          accounts: { acme: { balance: "65.00" } }
        }
      )
    )
    expect(warnings(r).map((w) => [w[0], w[2]])).toEqual([
      [at(5 * MIN), "60"],
      [at(35 * MIN), "30"],
      [at(45 * MIN), "20"],
      [at(50 * MIN), "10"],
      [at(52 * MIN), "10"],
      [at(57 * MIN), "5"],
      [at(59 * MIN), "3"]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("settle a GPU instance's deadline before an inference cycle end at the same instant, whatever their ids", () => {
    // Proves every hold that ends at an instant is settled before any renewal at that instant:
    // ii-1's cycle ends at 24:00 on $0.02, when gi-1's deadline gives back the $5.00 its 5
    // preempted hours did not use; ii-1 renews on a partial hold of $5.02 (2.51 h at $2/h) and
    // stops at 26:30:36. Before, both alarms were keyed by id, so a GPU instance named zz-gpu
    // (after ii-1) settled a moment too late and ii-1 stopped for credit at 24:00.
    const file = (gpu: string) =>
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: gpu, gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 24 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" },
          { at: "PT1H", do: "preempt", id: gpu },
          { at: "PT6H", do: "resume", id: gpu }
        ],
        { catalog, until: "P2D", accounts: { acme: { balance: "72.02" } } }
      )
    const late = run(file("zz-gpu"))
    const early = run(file("gi-1"))
    const deadline = 24 * HOUR
    const stop = deadline + 2 * HOUR + 30 * MIN + 36_000
    expect(late.output.ledger.filter((row) => row.at === at(deadline)).map((row) => [row.kind, row.amount, row.balance_after, row.resource])).toEqual([
      ["refund", "5.00", "5.02", "zz-gpu"],
      ["gpu_usage", "-5.02", "0.00", "ii-1"]
    ])
    expect(late.output.notifications.filter((n) => n.resource === "ii-1").map((n) => [n.at, n.kind, n.text])).toEqual([
      [at(deadline), "partial_hold", "$5.02 credit can cover 2.5 more hours. Recharge to continue."],
      [at(stop), "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(warnings(late).filter((w) => (w[0] as string) > at(deadline))).toEqual(runDown(stop))
    expect(late.output.invariants).toEqual({ ok: true, violations: [] })
    // The ids no longer decide anything: the money and what the user is told differ only in
    // the GPU instance's name (the transitions and resources are listed by id).
    const story = (r: ReturnType<typeof run>) => JSON.stringify([r.output.ledger, r.output.notifications])
    expect(story(late).replaceAll("zz-gpu", "gi-1")).toBe(story(early))
  })

  it("foresee a partial hold running out when other resources' holds are pooled in", () => {
    // Proves the forecast plays a partial hold to its end: ii-1 ($2/h) renews at 24:00 on a
    // partial hold of the $1.00 left, 30 min, and stops at 24:30. gi-1's 30-hour hold keeps
    // the pooled estimate far later, so before, the forecast saw only "renews" and the first
    // warning was the 30-minute one at 24:00: the 60-minute warning never came. Now the
    // run-down is the same as without gi-1. Once ii-1 stopped, the account's money is gi-1's
    // hold alone, which runs out at its deadline (30:00): a new run-down, warned again.
    const r = run(
      timelineFile(
        [...inference, { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 30 }],
        { catalog, until: "P2D", accounts: { acme: { balance: "79.00" } } }
      )
    )
    const stop = 24 * HOUR + 30 * MIN
    expect(warnings(r)).toEqual([...runDown(stop), ...runDown(30 * HOUR)])
    expect(r.output.notifications.filter((n) => n.resource === "ii-1").map((n) => [n.at, n.kind, n.text])).toEqual([
      [at(24 * HOUR), "partial_hold", "$1.00 credit can cover 0.5 more hours. Recharge to continue."],
      [at(stop), "terminated", "Instance terminated: credit balance depleted."]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("count what a GPU instance gives back at its deadline: no warnings of a stop that never comes", () => {
    // Proves the forecast plays GPU deadlines' refunds, before the cycle ends of their instant:
    // gi-1 was preempted 5 of its 24 held hours, so its deadline at 24:00 gives back $5.00,
    // and ii-1, whose cycle ends then on $0.02, renews on a partial hold of $5.02 and stops
    // at 26:30:36. Before, the forecast saw ii-1 stop at 24:00 and sent all seven warnings
    // (the last "about 1 minute" at 23:59) for a stop that never came, then seven again.
    const r = run(
      timelineFile(
        [
          ...inference,
          { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 24 },
          { at: "PT1H", do: "preempt", id: "gi-1" },
          { at: "PT6H", do: "resume", id: "gi-1" }
        ],
        { catalog, until: "P2D", accounts: { acme: { balance: "72.02" } } }
      )
    )
    const stop = 26 * HOUR + 30 * MIN + 36_000
    expectFullRunDown(r, stop)
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning" && n.kind !== "duration_warning").map((n) => [n.at, n.resource, n.text])).toEqual([
      [at(1 * HOUR), "gi-1", "Instance gi-1 was preempted: a higher-priority workload took its GPU. It resumes when capacity frees."],
      [at(6 * HOUR), "gi-1", "Instance gi-1 resumed: capacity freed and it is running again."],
      [at(24 * HOUR), "gi-1", "Instance terminated — duration reached."],
      [at(24 * HOUR), "ii-1", "$5.02 credit can cover 2.5 more hours. Recharge to continue."],
      [at(stop), "ii-1", "Instance terminated: credit balance depleted."]
    ])
  })

  it("foresee the midnight storage charge that leaves a cycle end nothing to renew on", () => {
    // Proves the forecast charges storage at each midnight before a renewal: ii-1 ($2/h)
    // launches at 00:30 and holds $48 of $58.0005; the $10.00 charge of d-1 at 00:00 the next
    // day leaves $0.0005 (0.9 s, below a partial hold's least second), so ii-1 stops at its
    // cycle end at 24:30. Before, the forecast renewed it on $10.0005 and the warnings began at
    // the charge, with "30 minutes": no 60-minute one.
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "create_drive", account: "acme", id: "d-1", size_gb: 100, region: "us-east" },
          { at: "PT30M", do: "register_model", account: "acme", model: "llama", source: "platform", gpu: "H100", gpu_count: 1 },
          { at: "PT30M", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" }
        ],
        {
          catalog: { ...catalog, storage: { cloud_drive: { daily_rate_per_gb: "0.10" }, shared_fs: { daily_rate_per_gb: "0.10" } } },
          until: "P2D",
          accounts: { acme: { balance: "58.0005" } }
        }
      )
    )
    const stop = 24 * HOUR + 30 * MIN
    expect(warnings(r)).toEqual(runDown(stop))
    expect(r.output.ledger.slice(1).map((row) => [row.at, row.kind, row.amount, row.balance_after, row.resource])).toEqual([
      [at(30 * MIN), "gpu_usage", "-48.00", "10.0005", "ii-1"],
      [at(24 * HOUR), "storage_billing", "-10.00", "0.0005", "d-1"]
    ])
    expect(r.output.notifications.filter((n) => n.kind !== "balance_warning").map((n) => [n.at, n.resource, n.text])).toEqual([
      [at(stop), "ii-1", "Instance terminated: credit balance depleted."],
      [at(48 * HOUR), "d-1", "Storage d-1 is suspended: your credit cannot cover its daily charge. Its data is kept; recharge to use it again."]
    ])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("send only the tightest threshold when a launch starts below several at once", () => {
    // Proves the Decision: $1 of partial credit at $2/h (30 min) sends the 30-minute warning, not 60 then 30.
    expect(planWarnings(0, 30 * MIN, [], false)).toEqual({ warned: [60, 30], now: 30, next: { minutes: 20, at: 10 * MIN } })
    // Nothing burns: nothing is due, and what was sent stays sent until a credit.
    expect(planWarnings(0, null, [60], false)).toEqual({ warned: [60], now: null, next: null })
    expect(planWarnings(0, null, [60], true)).toEqual({ warned: [], now: null, next: null })
    // A longer run-down without a credit (a resource stopped) does not send 60 again.
    expect(planWarnings(0, 2 * HOUR, [60], false)).toEqual({ warned: [60], now: null, next: { minutes: 30, at: 90 * MIN } })
    expect(zeroAt(0, 3_600_000n * 2_000_000n, 2_000_000n)).toBe(3_600_000)
  })

  it("play deadlines, cycle ends, partial ends and midnight storage charges in the engine's order", () => {
    // Proves the forecast's arithmetic where no short timeline reaches: amounts in micros, a
    // $2/h instance (full hold $48, least partial $0.033334, one minute), instants in ms from the epoch.
    const cycleEnd = (id: string, ends_at: number, refund: bigint): ForeseenRenewal => ({
      kind: "cycle_end", id, ends_at, refund_micros: refund, full_micros: 48_000_000n, min_micros: 33_334n, live_hourly_micros: 2_000_000n
    })
    const deadline = (id: string, ends_at: number, refund: bigint): ForeseenRenewal => ({ kind: "deadline", id, ends_at, refund_micros: refund, full_micros: 0n, min_micros: 0n, live_hourly_micros: 0n })
    const measure = (renewals: ForeseenRenewal[], storage: bigint[] = []) => ({
      at: 0,
      burn: 2_000_000n,
      unconsumed: 0n,
      renewals,
      last_cycle_end: renewals.findLastIndex((r) => r.kind === "cycle_end"),
      storage_daily_micros: storage
    })
    // $1 renews a 30-minute partial hold at 1 h; it stops at its end, 1:30.
    expect(firstStopOf(measure([cycleEnd("ii-1", HOUR, 0n)]), 1_000_000n, 0)).toBe(HOUR + 30 * MIN)
    // A GPU deadline at 1:10 gives back $48 before that end: the instance renews in full there.
    expect(firstStopOf(measure([cycleEnd("ii-1", HOUR, 0n), deadline("zz-gpu", HOUR + 10 * MIN, 48_000_000n)]), 1_000_000n, 0)).toBeNull()
    // A deadline at the instant of a cycle end settles first, whatever the ids.
    expect(firstStopOf(measure([deadline("zz-gpu", HOUR, 48_000_000n), cycleEnd("aa", HOUR, 0n)]), 0n, 0)).toBeNull()
    // A midnight before the cycle end charges storage first ($10 of $10.02 leaves too little)...
    expect(firstStopOf(measure([cycleEnd("ii-1", 24 * HOUR + 30 * MIN, 0n)], [10_000_000n]), 10_020_000n, 30 * MIN)).toBe(24 * HOUR + 30 * MIN)
    // ...but not one at the cycle end's own instant (the storage worker runs after the alarms):
    // all $10.02 renews a partial hold, 5.01 h, and the instance stops at its end. Storage the
    // balance cannot cover is suspended, not charged: $20 is not, $5 is, $5.02 is renewed on.
    expect(firstStopOf(measure([cycleEnd("ii-1", 24 * HOUR, 0n)], [10_000_000n]), 10_020_000n, 30 * MIN)).toBe(24 * HOUR + 5 * HOUR + 36_000)
    expect(firstStopOf(measure([cycleEnd("ii-1", 24 * HOUR + 1, 0n)], [20_000_000n, 5_000_000n]), 10_020_000n, 30 * MIN)).toBe(24 * HOUR + 1 + Math.floor((5_020_000 * HOUR) / 2_000_000))
  })

  it("land on the same instants when the engine restarts between them", () => {
    // Proves the monitor's state survives a restart (no warning twice, none lost).
    const file = timelineFile(inference, { catalog, until: "P2D", accounts: { acme: { balance: "51.00" } } })
    const straight = run(file)
    const restarted = run(file, { db: tmpDb(), restartAt: [24 * HOUR + 31 * MIN, 24 * HOUR + 61 * MIN].map((d) => Date.parse(START) + d) })
    expect(JSON.stringify(restarted.output)).toBe(JSON.stringify(straight.output))
  })
})
