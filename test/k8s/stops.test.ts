/**
 * A stop the engine learns of late is billed only up to when it happened, in the Kubernetes
 * world as in the simulated one (SPEC §9.7: nothing is billed while preempted or failed). The
 * driver dates a stop from the pod's own record when it learns of it late (a `DisruptionTarget`
 * condition's `lastTransitionTime`, a container's `state.terminated.finishedAt`), and keeps every
 * stop it saw for `firstStopAt`, so the reconciler can date a stop whose event the engine missed.
 *
 * Two kinds of proof: the watch itself late (a re-opened stream, a relist after 410 Gone), which
 * only this world has, with the exact ledger rows; and the simulated world's own dated-stop
 * timelines (lost events, an outage), which must give the same ledger, notifications and
 * transitions here, with the refund each of them pins.
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { costMicros, dollars, formatDollars } from "../../src/money.js"
import type { GpuView, InferenceView } from "../../src/resources.js"
import { checkInvariants } from "../../sim/invariants.js"
import { collectFacts, runTimeline } from "../../sim/runner.js"
import type { Timeline } from "../../sim/timeline.js"
import { at as iso, decode, HOUR, launch, MIN, START, timelineFile, tmpDb } from "../helpers.js"
import { K8sWorld, START_MS, TWO_REGIONS_AT_ONE_DOLLAR, waitFor } from "./harness.js"
import { expectSameAsSimulated, runTimelineInKubernetes, startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"
import { LOST_BEFORE_DEADLINE, LOST_FAILURE, LOST_PREEMPT_AND_RESUME, THREE_LOST } from "../lostEvents.js"

let world: K8sWorld | null = null
let engine: KubeEngine | null = null
afterEach(async () => {
  if (engine !== null) stopEngine(engine)
  await world?.close()
  world = null
  engine = null
})

/**
 * SPEC §9's invariant checker over what the run left in SQLite so far: it recomputes billable
 * time from the transitions alone, so a transition logged where billing did not end is caught.
 */
const violations = () => checkInvariants(collectFacts(engine!.ledger, { start_ms: START_MS, until_ms: world!.clock.now() } as Timeline))

/** The API server drops every watch; resolves once the driver waits to re-open (WATCH_DOWN_MS). */
const dropWatch = async (w: K8sWorld, driver: Awaited<ReturnType<K8sWorld["driver"]>>): Promise<void> => {
  w.server.dropWatches({ abrupt: true })
  await waitFor(driver, () => driver.watchState === "backoff")
}

const RATE = dollars("1.60")
/** The watch stays down this long once dropped: long enough for a stop to be worth money. */
const WATCH_DOWN_MS = 4 * MIN

/** One GPU instance (1 × H100 at $1.60/h, 2 h: a $3.20 hold), billed from 0:01:00 (pull 60 s, then loading). */
const open = async () => {
  world = await K8sWorld.start({ limits: { pods_watch_backoff_ms_min: WATCH_DOWN_MS, pods_watch_backoff_ms_max: WATCH_DOWN_MS } })
  const driver = await world.driver()
  engine = startEngine({ db: ":memory:", clock: world.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]) })
  const sup = engine.sup.sync
  expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
  expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
  expect(
    Either.isRight(sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))
  ).toBe(true)
  const w = world
  const e = engine
  return {
    w,
    driver,
    sup,
    view: () => Either.getOrThrow(sup.describe("gi-1")) as GpuView,
    rows: () => e.ledger.ledgerRows().map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros), r.resource]),
    moves: () => e.ledger.transitions().filter((t) => t.resource === "gi-1").map((t) => [t.at - START_MS, t.from_state, t.to_state, t.reason]),
    notices: () => e.ledger.notifications().map((n) => [n.at - START_MS, n.kind])
  }
}

/**
 * One inference instance: two replicas (eu-west, us-east) of 1 × H100 at $1.60/h, a $76.80
 * hold, billed from 0:01:00 (pull 60 s, then loading), or from 0:00 with `instant` pods.
 */
const openInference = async (options: { readonly balance?: string; readonly instant?: boolean } = {}) => {
  const pull_ms = options.instant === true ? 0 : 60_000
  const region = (name: string) => ({ name, nodes: 2, gpus_per_node: 8, image_pull_ms: pull_ms, container_start_ms: options.instant === true ? 0 : 30_000, pod_stop_ms: 0 })
  world = await K8sWorld.start({ regions: [region("eu-west"), region("us-east")], limits: { pods_watch_backoff_ms_min: WATCH_DOWN_MS, pods_watch_backoff_ms_max: WATCH_DOWN_MS } })
  const w = world
  const driver = await w.driver()
  engine = startEngine({ db: ":memory:", clock: w.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]) })
  const e = engine
  const sup = e.sup.sync
  expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
  expect(Either.isRight(sup.credit("acme", "adjustment", dollars(options.balance ?? "100.00"), "Opening balance"))).toBe(true)
  expect(Either.isRight(sup.registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))).toBe(true)
  expect(Either.isRight(sup.launchInference({ account: "acme", id: "inf-1", model: "llama" }))).toBe(true)
  return {
    w,
    driver,
    sup,
    view: () => Either.getOrThrow(sup.describe("inf-1")) as InferenceView,
    rows: () => e.ledger.ledgerRows().filter((r) => r.resource === "inf-1").map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros)]),
    /** Transitions of the instance and its replicas (`inf-1@<region>`). */
    moves: () => e.ledger.transitions().filter((t) => t.resource.startsWith("inf-1")).map((t) => [t.at - START_MS, t.resource, t.from_state, t.to_state, t.reason]),
    notices: () => e.ledger.notifications().map((n) => [n.at - START_MS, n.kind]),
    /** Cycle `n`'s hold: open, or settled with consumed + refunded = held. */
    holdOf: (n: number) => {
      const h = e.ledger.hold(`hold:inf-1:${n}`)!
      if (h.status === "open") return [h.status, h.settled_at, h.consumed_micros, h.refunded_micros]
      expect(h.consumed_micros! - h.overage_micros! + h.refunded_micros!).toBe(h.held_micros)
      return [h.status, h.settled_at! - START_MS, formatDollars(h.consumed_micros!), formatDollars(h.refunded_micros!)]
    }
  }
}

describe("a stop the watch delivers late is billed to the pod's own record of it", () => {
  it("a preemption heard on a watch re-opened 4 minutes later: billed to the DisruptionTarget's instant, notified when heard", async () => {
    // The watch drops at 1:00:00 and is back at 1:04:00; the pod is preempted at 1:01:00 and
    // its victim gone at once. Heard at 1:04, billed to 1:01: 60 min of GPU ($1.60), not 63 min.
    const { w, driver, sup, view, rows, moves, notices } = await open()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    w.kubelet.preempt("gi-1")
    await w.advance(3 * MIN)
    expect(driver.watchConnected).toBe(true)
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 60 * MIN })
    expect(moves().slice(2)).toEqual([[61 * MIN, "running", "preempted", null]])
    expect(notices()).toEqual([[64 * MIN, "preempted"]])
    await w.advance(6 * MIN)
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(rows()).toEqual([
      [0, "adjustment", "100.00", null],
      [0, "gpu_usage", "-3.20", "gi-1"],
      [70 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 60 * MIN)), "gi-1"]
    ])
    expect(rows()[2]![2]).toBe("1.60")
  })

  it("a failure found by the relist after 410 Gone: billed to its container's finishedAt, settled when found", async () => {
    // The watch drops at 1:00:00, the pod fails at 1:01:00 and the history is compacted: the
    // watch re-opened at 1:04:00 gets 410, the relist finds the Failed pod. 60 min billed, not 63.
    const { w, driver, view, rows, moves } = await open()
    await w.advance(60 * MIN)
    w.server.dropWatches()
    await waitFor(driver, () => driver.watchState === "backoff")
    await w.advance(1 * MIN)
    w.kubelet.fail("gi-1")
    w.server.compact()
    await w.advance(3 * MIN)
    expect(w.reports.filter((r) => r.kind === "relisted").map((r) => r.at - START_MS)).toEqual([64 * MIN])
    expect(view()).toMatchObject({ status: "failed", termination_reason: "failed", billable_ms: 60 * MIN })
    expect(moves().slice(2)).toEqual([[61 * MIN, "running", "failed", "failed"]])
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [64 * MIN, "refund", "1.60", "gi-1"]
    ])
  })

  it("an inference replica's preemption heard late: that replica billed to its DisruptionTarget, the other to the end", async () => {
    // Two replicas (us-east, eu-west) of 1 × H100 at $1.60/h: a $76.80 hold. us-east is
    // preempted at 1:01 while the watch is down (heard at 1:04); the instance is deleted at
    // 1:10. Billed: eu-west 69 min, us-east 60 min (not 63): 129 min, $3.44.
    const { w, driver, sup, rows } = await openInference()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("inf-1@us-east")).toEqual({ ok: true })
    await w.advance(9 * MIN)
    expect(engine!.ledger.transitions().filter((t) => t.resource === "inf-1@us-east").map((t) => [t.at - START_MS, t.to_state]).at(-1)).toEqual([61 * MIN, "preempted"])
    expect(Either.isRight(sup.terminate("inf-1"))).toBe(true)
    await w.advance(0)
    expect(rows()).toEqual([
      [0, "gpu_usage", "-76.80"],
      [70 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 129 * MIN))]
    ])
    expect(rows()[1]![2]).toBe("73.36")
  })
})

describe("an inference replica's pod deleted out from under it", () => {
  it("kubectl delete pod: that replica failed, the other serves; its failure fails the instance, settled once, no hold renewed", async () => {
    // us-east's pod is deleted at 1:00 by hand (no DisruptionTarget: no preemption, no
    // replacement), eu-west's fails at 1:10. As for a GPU instance whose pod vanishes, the
    // replica has failed: failover to eu-west, then the last failure fails the instance.
    // Billed: us-east 59 min, eu-west 69 min: 128 min of a $76.80 hold, and no second cycle.
    const { w, view, rows, moves, notices, holdOf } = await openInference()
    await w.advance(60 * MIN)
    const pod = w.pods().find((p) => p.metadata.annotations!["ecolink.io/resource"] === "inf-1@us-east")!.metadata.name
    expect(w.server.deletePod(w.namespace, pod)).toBeDefined()
    await w.advance(10 * MIN)
    expect(view()).toMatchObject({ status: "running", regions: [{ region: "eu-west", status: "running" }, { region: "us-east", status: "failed" }] })
    expect(w.kubelet.fail("inf-1@eu-west")).toEqual({ ok: true })
    await w.advance(26 * HOUR)
    expect(view()).toMatchObject({ status: "failed", termination_reason: "failed" })
    expect(moves().slice(6)).toEqual([
      [60 * MIN, "inf-1@us-east", "running", "failed", "failed"],
      [70 * MIN, "inf-1@eu-west", "running", "failed", "failed"],
      [70 * MIN, "inf-1", "running", "failed", "failed"]
    ])
    expect(rows()).toEqual([
      [0, "gpu_usage", "-76.80"],
      [70 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 128 * MIN))]
    ])
    expect(rows()[1]![2]).toBe("73.386667")
    expect(holdOf(1)).toEqual(["settled", 70 * MIN, "3.413333", "73.386667"])
    expect(engine!.ledger.hold("hold:inf-1:2")).toBeUndefined()
    expect(notices()).toEqual([[70 * MIN, "terminated"]])
    expect(w.pods()).toEqual([])
  })
})

describe("a stop asked for while the watch is down settles once the driver has heard the gap", () => {
  /** The instance's one hold: open, or settled with consumed + refunded = held. */
  const holdOf = () => {
    const h = engine!.ledger.hold("hold:gi-1")!
    if (h.status === "open") return [h.status, h.settled_at, h.consumed_micros, h.refunded_micros]
    expect(h.consumed_micros! - h.overage_micros! + h.refunded_micros!).toBe(h.held_micros)
    return [h.status, h.settled_at! - START_MS, formatDollars(h.consumed_micros!), formatDollars(h.refunded_micros!)]
  }

  it("preempted at 1:01 unseen, terminated at 1:02: billed to the DisruptionTarget (60 min), settled when the watch is back (1:04)", async () => {
    // The watch drops at 1:00:00 and is back at 1:04:00; the pod is preempted at 1:01:00 (its
    // victim gone at once) and the user terminates at 1:02:00, while the driver still shows it
    // running. Settled at the terminate, the stop would bill 61 min ($1.626667) for a pod that
    // held its GPUs 60; the hold waits for pod.deleted, which the replayed gap dates.
    const { w, driver, sup, view, rows, moves, notices } = await open()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(1 * MIN)
    expect(driver.phaseOf("eco-gi-1")).toBe("running")
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(view()).toMatchObject({ status: "terminating", termination_reason: "user_requested" })
    expect(holdOf()).toEqual(["open", null, null, null])
    await w.advance(2 * MIN)
    expect(driver.watchConnected).toBe(true)
    expect(view()).toMatchObject({ status: "terminated", termination_reason: "user_requested", billable_ms: 60 * MIN })
    expect(rows()).toEqual([
      [0, "adjustment", "100.00", null],
      [0, "gpu_usage", "-3.20", "gi-1"],
      [64 * MIN, "refund", "1.60", "gi-1"]
    ])
    expect(holdOf()).toEqual(["settled", 64 * MIN, "1.60", "1.60"])
    // The transitions say what was billed (SPEC §9.3): the pod held its GPU to 1:01, so the
    // instance is logged preempted from then to the terminate (logged at 1:02 when asked, the
    // stop learned at 1:04). Before, running until 1:02: 61 billable minutes by the log.
    expect(moves().slice(2)).toEqual([
      [61 * MIN, "running", "preempted", null],
      [62 * MIN, "preempted", "terminating", "user_requested"],
      [64 * MIN, "terminating", "terminated", "user_requested"]
    ])
    expect(violations()).toEqual([])
    expect(notices()).toEqual([[64 * MIN, "terminated"]])
    expect(w.pods()).toEqual([])
  })

  it("preempted at 1:59 unseen, the 2:01 deadline in the gap: billed to the DisruptionTarget (118 min), settled when the watch is back", async () => {
    // Billing from 0:01 gives a 2:01 deadline. The watch drops at 1:58 and is back at 2:02; the
    // pod is preempted at 1:59. The deadline finds the pod running as far as the driver knows:
    // settled then, it would consume the whole $3.20 for 120 min of a pod that ran 118.
    const { w, driver, view, rows, moves, notices } = await open()
    await w.advance(118 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(2 * MIN)
    expect(view()).toMatchObject({ status: "terminating", termination_reason: "duration_expired" })
    await w.advance(1 * MIN)
    expect(view()).toMatchObject({ status: "terminated", termination_reason: "duration_expired", billable_ms: 118 * MIN })
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [122 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 118 * MIN)), "gi-1"]
    ])
    expect(rows()[2]![2]).toBe("0.053333")
    expect(holdOf()).toEqual(["settled", 122 * MIN, "3.146667", "0.053333"])
    // Preempted from 1:59, stopped at the deadline: the log a watch without a gap would have
    // left (not `terminating` from 1:59, which would be a duration_expired stop before the deadline).
    expect(moves().slice(2)).toEqual([
      [119 * MIN, "running", "preempted", null],
      [121 * MIN, "preempted", "terminating", "duration_expired"],
      [122 * MIN, "terminating", "terminated", "duration_expired"]
    ])
    expect(violations()).toEqual([])
    expect(notices().filter(([, kind]) => kind !== "duration_warning")).toEqual([[122 * MIN, "terminated"]])
    // The journal says why the deadline did not settle at once, as a terminate's entry does.
    const deadline = engine!.ledger.journalEntries().find((e) => e.kind === "alarm" && (JSON.parse(e.payload as string) as { event: string }).event === "deadline")!
    expect([deadline.at - START_MS, JSON.parse(deadline.payload as string)]).toEqual([121 * MIN, { id: "gi-1", at: START_MS + 121 * MIN, event: "deadline", world_behind: true }])
  })

  it("warns of a stop in full while a terminated instance's settlement waits for the API server: its refund is not foreseen at its deadline", async () => {
    // inf-1 (2 replicas, $76.80 a cycle), gi-1 (2 h) and gi-2 (48 h, so the pooled estimate is
    // far off) hold all of $156.80. The API server fails every request from 0:30 and gi-1 is
    // terminated at 0:31: its settlement waits for pod.deleted. inf-1 cannot renew at 24:00 and
    // every threshold comes before that. The forecast used to count gi-1's unused hold back at
    // its 2:01 deadline, money that never came: one 60-minute warning at 23:44:30, then nothing.
    const region = (name: string) => ({ name, nodes: 2, gpus_per_node: 8, image_pull_ms: 0, container_start_ms: 0, pod_stop_ms: 0 })
    world = await K8sWorld.start({ regions: [region("eu-west"), region("us-east")], limits: { pods_watch_backoff_ms_min: WATCH_DOWN_MS, pods_watch_backoff_ms_max: WATCH_DOWN_MS } })
    const w = world
    const driver = await w.driver()
    engine = startEngine({ db: ":memory:", clock: w.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]) })
    const e = engine
    const sup = e.sup.sync
    sup.openAccount("acme")
    sup.credit("acme", "adjustment", dollars("156.80"), "Opening balance")
    expect(Either.isRight(sup.registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))).toBe(true)
    expect(Either.isRight(sup.launchInference({ account: "acme", id: "inf-1", model: "llama" }))).toBe(true)
    for (const [id, region, hours] of [["gi-1", "us-east", 2], ["gi-2", "eu-west", 48]] as const) {
      expect(Either.isRight(sup.launchGpu({ account: "acme", id, kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region, estimated_duration_hours: hours, image: null }))).toBe(true)
    }
    await w.advance(30 * MIN)
    w.server.inject({ status: 503, times: Infinity })
    w.server.dropWatches({ abrupt: true })
    await waitFor(driver, () => driver.watchState !== "watching")
    await w.advance(1 * MIN)
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(26 * HOUR - (w.clock.now() - START_MS))
    expect(e.ledger.hold("hold:gi-1")!.status).toBe("open")
    const warnings = e.ledger.notifications().filter((n) => n.kind === "balance_warning").map((n) => [n.at - START_MS, JSON.parse(n.data ?? "{}").minutes])
    expect(warnings).toEqual([60, 30, 20, 10, 5, 3, 1].map((m) => [24 * HOUR - m * MIN, m]))
    expect(e.ledger.transitions().filter((t) => t.resource === "inf-1" && t.to_state === "terminating").map((t) => [t.at - START_MS, t.reason])).toEqual([[24 * HOUR, "credit_depleted"]])
  })

  it("preempted unseen with a replacement owed (capacity back at once), terminated in the gap: no replacement, one settlement, billed to the preemption", async () => {
    // The victim goes at 1:01:00 and the preemptor's GPUs free at 1:01:30, so a replacement
    // would run at once; the user terminates at 1:02:00. When the watch is back the driver
    // learns of the preemption while deleting: it creates no replacement, and the hold
    // settles once, at pod.deleted, never again (later ticks, the kubelet's resume).
    const { w, driver, sup, view, rows, notices } = await open()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(30_000)
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(30_000)
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(20 * MIN)
    expect(view()).toMatchObject({ status: "terminated", billable_ms: 60 * MIN })
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [64 * MIN, "refund", "1.60", "gi-1"]
    ])
    expect(holdOf()).toEqual(["settled", 64 * MIN, "1.60", "1.60"])
    expect(notices()).toEqual([[64 * MIN, "terminated"]])
    expect(w.pods()).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_replaced" || r.kind === "pod_lost")).toEqual([])
  })

  it("preempted and seen, its replacement owed, terminated in a later gap: settled once, to the preemption", async () => {
    // Preempted at 1:01:00 with the watch up (the engine stops billing then); the watch drops at
    // 1:05:00 and the user terminates at 1:06:00, while the replacement pod waits for capacity.
    // Nothing is left to date, so the deferred settlement bills the same 60 min, once.
    const { w, driver, sup, view, rows, notices } = await open()
    await w.advance(61 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(4 * MIN)
    expect(view().status).toBe("preempted")
    expect(w.pods().map((p) => p.metadata.annotations!["ecolink.io/replacement"])).toEqual(["1"])
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(20 * MIN)
    expect(view()).toMatchObject({ status: "terminated", billable_ms: 60 * MIN })
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [69 * MIN, "refund", "1.60", "gi-1"]
    ])
    expect(holdOf()).toEqual(["settled", 69 * MIN, "1.60", "1.60"])
    expect(notices()).toEqual([
      [61 * MIN, "preempted"],
      [69 * MIN, "terminated"]
    ])
    expect(w.pods()).toEqual([])
  })
})

describe("an inference instance stopped while the watch is down settles once each replica's pod.deleted has come", () => {
  it("one replica preempted at 1:01 unseen, terminated at 1:02: us-east billed to 1:01, eu-west to 1:02, settled when the watch is back (1:04)", async () => {
    // The watch drops at 1:00:00 and is back at 1:04:00; us-east is preempted at 1:01:00 (its
    // victim gone at once) and the user terminates at 1:02:00, while the driver still shows both
    // replicas running. Settled at the terminate, the cycle would bill us-east 61 min for a pod
    // that held its GPU 60 (122 min in all, refund $73.546667 at 1:02); it waits for each
    // replica's pod.deleted instead: us-east's dates the preemption, eu-west's none.
    const { w, driver, sup, view, rows, moves, notices, holdOf } = await openInference()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("inf-1@us-east")).toEqual({ ok: true })
    await w.advance(1 * MIN)
    expect(driver.phaseOf("eco-inf-1@us-east")).toBe("running")
    expect(Either.isRight(sup.terminate("inf-1"))).toBe(true)
    await w.advance(0)
    expect(view()).toMatchObject({ status: "terminating", termination_reason: "user_requested" })
    expect(holdOf(1)).toEqual(["open", null, null, null])
    await w.advance(2 * MIN)
    expect(driver.watchConnected).toBe(true)
    expect(view()).toMatchObject({ status: "terminated", termination_reason: "user_requested" })
    expect(rows()).toEqual([
      [0, "gpu_usage", "-76.80"],
      [64 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 121 * MIN))]
    ])
    expect(holdOf(1)).toEqual(["settled", 64 * MIN, "3.226667", "73.573333"])
    expect(moves().slice(6)).toEqual([
      [62 * MIN, "inf-1", "running", "terminating", "user_requested"],
      // us-east's replayed DELETED (it went at the preemption) comes before eu-west's. Each
      // replica is logged out where its billing ended (SPEC §9.3: the cycle settles at 1:04):
      // us-east at its preemption, eu-west at the terminate. Before, both ran to 1:04 by the log.
      [61 * MIN, "inf-1@us-east", "running", "deleted", null],
      [62 * MIN, "inf-1@eu-west", "running", "deleted", null],
      [64 * MIN, "inf-1", "terminating", "terminated", "user_requested"]
    ])
    expect(violations()).toEqual([])
    expect(notices()).toEqual([[64 * MIN, "terminated"]])
    expect(w.pods()).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_replaced" || r.kind === "pod_lost")).toEqual([])
  })

  it("terminated in a gap in which nothing stopped: billed to the terminate, and the transitions say so though the cycle settles at 1:04", async () => {
    // The cycle's hold settles when the watch is back (1:04); the replicas' pods went then too,
    // but billing ended at the terminate (1:02). Logged at their deletion, both replicas were
    // running until 1:04 by the transitions: 126 billable minutes against 122 consumed.
    const { w, driver, sup, rows, moves, holdOf } = await openInference()
    await w.advance(60 * MIN)
    await dropWatch(w, driver)
    await w.advance(2 * MIN)
    expect(Either.isRight(sup.terminate("inf-1"))).toBe(true)
    await w.advance(2 * MIN)
    expect(holdOf(1)).toEqual(["settled", 64 * MIN, formatDollars(costMicros(RATE, 1, 122 * MIN)), formatDollars(dollars("76.80") - costMicros(RATE, 1, 122 * MIN))])
    expect(rows().at(-1)).toEqual([64 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 122 * MIN))])
    expect(moves().slice(6)).toEqual([
      [62 * MIN, "inf-1", "running", "terminating", "user_requested"],
      [62 * MIN, "inf-1@eu-west", "running", "deleted", null],
      [62 * MIN, "inf-1@us-east", "running", "deleted", null],
      [64 * MIN, "inf-1", "terminating", "terminated", "user_requested"]
    ])
    expect(violations()).toEqual([])
  })

  it("one replica preempted at 23:59 unseen, the 24:00 cycle end stops it for credit in the gap: billed to the preemption, settled when the watch is back", async () => {
    // A $76.80 balance, both replicas billing from 0:00: the first cycle's end finds $0 to renew
    // on and stops the instance (credit_depleted). The watch drops at 23:58 and is back at 24:02;
    // us-east is preempted at 23:59. Settled at the cycle end, the whole $76.80 is consumed for
    // a replica that held its GPU a minute less; settled at the pods' deletion, $0.026667 of it
    // comes back.
    const { w, driver, view, rows, moves, notices, holdOf } = await openInference({ balance: "76.80", instant: true })
    await w.advance(24 * HOUR - 2 * MIN)
    await dropWatch(w, driver)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("inf-1@us-east")).toEqual({ ok: true })
    await w.advance(1 * MIN)
    expect(view()).toMatchObject({ status: "terminating", termination_reason: "credit_depleted" })
    expect(holdOf(1)).toEqual(["open", null, null, null])
    await w.advance(2 * MIN)
    expect(view()).toMatchObject({ status: "terminated", termination_reason: "credit_depleted" })
    expect(rows()).toEqual([
      [0, "gpu_usage", "-76.80"],
      [24 * HOUR + 2 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 2 * 24 * HOUR - 1 * MIN))]
    ])
    expect(holdOf(1)).toEqual(["settled", 24 * HOUR + 2 * MIN, "76.773333", "0.026667"])
    expect(engine!.ledger.hold("hold:inf-1:2")).toBeUndefined()
    expect(moves().slice(-4)).toEqual([
      [24 * HOUR, "inf-1", "running", "terminating", "credit_depleted"],
      // us-east's replayed DELETED (it went at the preemption) comes before eu-west's; each is
      // logged out where its billing ended.
      [24 * HOUR - 1 * MIN, "inf-1@us-east", "running", "deleted", null],
      [24 * HOUR, "inf-1@eu-west", "running", "deleted", null],
      [24 * HOUR + 2 * MIN, "inf-1", "terminating", "terminated", "credit_depleted"]
    ])
    expect(violations()).toEqual([])
    expect(notices().filter(([, kind]) => kind === "terminated")).toEqual([[24 * HOUR + 2 * MIN, "terminated"]])
    expect(w.pods()).toEqual([])
  })
})

describe("the simulated world's dated stops, in the Kubernetes world", () => {
  /** Runs a timeline file in both worlds; they must agree. Returns the simulated run, for exact rows. */
  const same = async (file: unknown, drill: { readonly outages?: ReadonlyArray<{ at_ms: number; duration_ms: number }> } = {}) => {
    const timeline = decode(file)
    // An outage needs a database file per world: each engine restarts on its own.
    const options = () => (drill.outages === undefined ? {} : { db: tmpDb(), outages: drill.outages })
    const sim = runTimeline(timeline, options())
    const k8s = await runTimelineInKubernetes(timeline, options())
    try {
      expectSameAsSimulated(k8s, sim)
    } finally {
      await k8s.finish()
    }
    expect(sim.output.invariants).toEqual({ ok: true, violations: [] })
    return sim
  }
  const refunds = (r: ReturnType<typeof runTimeline>, id = "gi-1") => r.output.ledger.filter((x) => x.kind === "refund" && x.resource === id).map((x) => [x.at, x.amount])

  it("a pod failure whose event was lost: billed to the failure (1:02), not to the 1:05 tick that found it", async () => {
    // The reconciler's stoppedSince: the driver saw the failure at 1:02 though the engine did not.
    const r = await same(timelineFile(LOST_FAILURE))
    expect(refunds(r)).toEqual([[iso(65 * MIN), "1.546667"]])
  })

  it("a preemption and resume whose events were both lost: the gap from the preemption (1:01) to the 1:05 tick is not billed", async () => {
    // The reconciler's interruptedAt: running as the engine thinks, but the driver saw a stop
    // since billing began (the victim's) and a replacement pod that runs now.
    const r = await same(
      timelineFile(LOST_PREEMPT_AND_RESUME)
    )
    expect(r.output.transitions.filter((t) => t.resource === "gi-1" && t.reason === "reconciled").map((t) => [t.at, t.to])).toEqual([
      [iso(61 * MIN), "preempted"],
      [iso(65 * MIN), "running"]
    ])
    expect(refunds(r)).toEqual([[iso(90 * MIN), "0.906667"]])
  })

  it("three lost events (preempted, resumed on a replacement pod, preempted again): billed to the first stop", async () => {
    // firstStopAt answers the first of several stops since billing began: 61 min of a 4 h hold.
    const r = await same(
      timelineFile(THREE_LOST)
    )
    expect(refunds(r)).toEqual([[iso(3 * HOUR), "4.773333"]])
  })

  it("a preemption missed at 1:57: the 2:00 deadline looks at the pod first and bills to 1:57", async () => {
    // Reconciler.reconcileOne before the deadline settles: 1 h 57 min of 2 h, refund $0.08.
    const r = await same(timelineFile(LOST_BEFORE_DEADLINE))
    expect(refunds(r)).toEqual([[iso(120 * MIN), "0.08"]])
  })

  it("an inference replica preempted and resumed unseen: its gap is not billed, the other replica's time is", async () => {
    // Two replicas at $1.00/h: eu-west bills 90 min, us-east 61 + 25 min; 176 min of a $48 hold.
    const catalog = TWO_REGIONS_AT_ONE_DOLLAR
    const r = await same(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" },
          { at: "PT1H", do: "miss_pod_events", id: "ii-1@us-east", count: 2 },
          { at: "PT1H1M", do: "preempt", id: "ii-1", region: "us-east" },
          { at: "PT1H4M", do: "resume", id: "ii-1", region: "us-east" },
          { at: "PT1H30M", do: "terminate", id: "ii-1" }
        ],
        { catalog, until: "PT3H" }
      )
    )
    expect(refunds(r, "ii-1")).toEqual([[iso(90 * MIN), "45.066667"]])
  })

  it("a pod that fails during an engine outage (a new driver lists it): billed to its container's finishedAt (0:55), no overage", async () => {
    // The new driver was not running when the pod failed: only the pod's record can date it.
    const r = await same(timelineFile([launch({ estimated_duration_hours: 1 }), { at: "PT55M", do: "pod_fail", id: "gi-1" }]), {
      outages: [{ at_ms: Date.parse(START) + 50 * MIN, duration_ms: 40 * MIN }]
    })
    expect(refunds(r)).toEqual([[iso(90 * MIN), "0.133333"]])
    expect(r.output.transitions.filter((t) => t.resource === "gi-1").at(-1)).toMatchObject({ at: iso(55 * MIN), to: "failed" })
  })
})
