/**
 * Defects found in an operator's review of the Kubernetes world (docs/KUBERNETES.md), each
 * reproduced against the API test server and the scripted kubelet.
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { costMicros, dollars, formatDollars } from "../../src/money.js"
import type { GpuView, InferenceView } from "../../src/resources.js"
import { tmpDb } from "../helpers.js"
import { K8sWorld, START_MS, waitFor } from "./harness.js"
import type { KubeletRegion } from "./kubelet.js"
import type { KubernetesLimits } from "../../src/k8s/config.js"
import { EngineOnDriver, startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"

let world: K8sWorld | null = null
let engine: KubeEngine | null = null
let opened: EngineOnDriver | null = null
afterEach(async () => {
  if (engine !== null) stopEngine(engine)
  engine = null
  opened?.stop()
  opened = null
  await world?.close()
  world = null
})

const S = 1_000
const MIN = 60 * S
const RATE = dollars("1.60")

/**
 * An engine on a database file over a driver, and a control-plane outage that drops both
 * (`outage(until, during)`: what happens in the cluster meanwhile, at its offsets from START).
 */
const open = async (regions: ReadonlyArray<KubeletRegion>, limits: Partial<KubernetesLimits> = {}) => {
  world = await K8sWorld.start({ regions, limits })
  const w = world
  const o = (opened = await EngineOnDriver.open(w, new Map([["H100", RATE]]), tmpDb()))
  return {
    w,
    sup: () => o.sup,
    engine: () => o.current,
    moves: (prefix: string) => o.current.ledger.transitions().filter((t) => t.resource.startsWith(prefix)).map((t) => [t.at - START_MS, t.resource, t.from_state, t.to_state, t.reason]),
    rows: (resource: string) => o.current.ledger.ledgerRows().filter((r) => r.resource === resource).map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros)]),
    outage: (until_ms: number, during: ReadonlyArray<readonly [number, () => void]> = []) => o.outage(until_ms, during)
  }
}

describe("a preempted resource whose replacement was never made when the control plane stopped resumes, not fails", () => {
  it("a GPU instance: the victim's grace period outlives the control plane; capacity back during the outage: resumed at the restart, billed from Ready", async () => {
    // 1 × H100 at $1.60/h for 2 h, pods start at once, a victim takes 60 s to stop. Preempted at
    // 0:15 (heard: billing stops); the control plane stops at 0:15:30, before the victim is gone
    // (0:16), so nobody makes its replacement; capacity frees at 0:30; back at 0:40. The restarted
    // driver finds no pod: before, the reconciliation took the instance for lost (failed at 0:40,
    // refunded), though the cluster had only preempted it.
    const { w, sup, moves, rows, outage } = await open([{ name: "us-east", nodes: 1, gpus_per_node: 8, image_pull_ms: 0, container_start_ms: 0, pod_stop_ms: 60 * S }])
    expect(Either.isRight(sup().launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
    await w.advance(15 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(30 * S)
    expect((Either.getOrThrow(sup().describe("gi-1")) as GpuView).status).toBe("preempted")
    await outage(40 * MIN, [[30 * MIN, () => expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })]])
    await w.advance(0)
    expect(Either.getOrThrow(sup().describe("gi-1"))).toMatchObject({ status: "running", termination_reason: null, billable_ms: 15 * MIN })
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1"])
    // Billed 0:00–0:15, then from the restart (its replacement Ready at once) to the 2:00 deadline.
    await w.advance(122 * MIN - (w.clock.now() - START_MS))
    expect(moves("gi-1")).toEqual([
      [0, "gi-1", "pending", "loading", null],
      [0, "gi-1", "loading", "running", null],
      [15 * MIN, "gi-1", "running", "preempted", null],
      [40 * MIN, "gi-1", "preempted", "running", null],
      [120 * MIN, "gi-1", "running", "terminating", "duration_expired"],
      // Its pod takes 60 s to stop.
      [121 * MIN, "gi-1", "terminating", "terminated", "duration_expired"]
    ])
    expect(rows("gi-1")).toEqual([
      [0, "gpu_usage", "-3.20"],
      [120 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 95 * MIN))]
    ])
  })

  it("an inference replica: its replacement's create refused (503) until the control plane stopped: that replica resumes at the restart, no failover, no failure", async () => {
    const region = (name: string): KubeletRegion => ({ name, nodes: 1, gpus_per_node: 8, image_pull_ms: 0, container_start_ms: 0, pod_stop_ms: 0 })
    const { w, sup, moves, outage } = await open([region("eu-west"), region("us-east")])
    expect(Either.isRight(sup().registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))).toBe(true)
    expect(Either.isRight(sup().launchInference({ account: "acme", id: "inf-1", model: "llama" }))).toBe(true)
    await w.advance(15 * MIN)
    const refusal = w.server.inject({ method: "POST", path: "/pods", status: 503 })
    expect(w.kubelet.preempt("inf-1@us-east")).toEqual({ ok: true })
    await w.advance(5 * MIN)
    expect((Either.getOrThrow(sup().describe("inf-1")) as InferenceView).regions).toEqual([
      { region: "eu-west", status: "running" },
      { region: "us-east", status: "preempted" }
    ])
    await outage(40 * MIN, [
      [25 * MIN, () => {
        refusal.times = 0
        w.server.clearFailures()
      }],
      [30 * MIN, () => expect(w.kubelet.resume("inf-1@us-east")).toEqual({ ok: true })]
    ])
    await w.advance(0)
    expect(Either.getOrThrow(sup().describe("inf-1"))).toMatchObject({
      status: "running",
      termination_reason: null,
      regions: [
        { region: "eu-west", status: "running" },
        { region: "us-east", status: "running" }
      ]
    })
    expect(moves("inf-1@us-east")).toEqual([
      [0, "inf-1@us-east", "pending", "loading", null],
      [0, "inf-1@us-east", "loading", "running", null],
      [15 * MIN, "inf-1@us-east", "running", "preempted", null],
      [40 * MIN, "inf-1@us-east", "preempted", "running", null]
    ])
  })
})

describe("a pod the engine asked for, whose create gave up, is created on the driver's slow retry", () => {
  /** The API server refuses every pod create (503) for the first `brownout_ms`. */
  const brownout = async (brownout_ms: number) => {
    // The driver's production backoffs: 250 ms doubling, five attempts.
    const o = await open([{ name: "us-east", nodes: 1, gpus_per_node: 8, image_pull_ms: 60 * S, container_start_ms: 30 * S, pod_stop_ms: 0 }], { request_backoff_ms_min: 250, request_backoff_ms_max: 10_000 })
    const refusal = o.w.server.inject({ method: "POST", path: "/pods", status: 503 })
    o.w.clock.schedule(START_MS + brownout_ms, () => {
      refusal.times = 0
      o.w.server.clearFailures()
    })
    return o
  }
  const creates = (w: K8sWorld) => w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/pods")).length

  it("a GPU instance launched during a 10 s API server restart: its pod comes on the slow retry and runs (before: never created, failed at 0:20)", async () => {
    // Five creates in 3.75 s (backoff 250 ms doubling), all refused: the create gives up. The
    // reconciliation leaves a pending GPU resource to the 15-minute rule, so nothing asked again,
    // and the watchdog failed the instance at 0:20, refunded in full: a launch lost to a brown-out.
    const { w, sup, moves, rows } = await brownout(10 * S)
    expect(Either.isRight(sup().launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
    await w.advance(30 * MIN)
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => [r.at - START_MS, r.kind === "request_failed" && r.final])).toEqual([
      [0, false],
      [250, false],
      [750, false],
      [1_750, false],
      [3_750, true]
    ])
    // Tried again own_retry_ms_min (10 s) after it gave up, once the API server answers.
    expect(creates(w)).toBe(6)
    expect(Either.getOrThrow(sup().describe("gi-1"))).toMatchObject({ status: "running", started_at: START_MS + 73_750 })
    expect(moves("gi-1")).toEqual([
      [73_750, "gi-1", "pending", "loading", null],
      [103_750, "gi-1", "loading", "running", null]
    ])
    await w.advance(3 * 60 * MIN)
    expect(Either.getOrThrow(sup().describe("gi-1"))).toMatchObject({ status: "terminated", termination_reason: "duration_expired", billable_ms: 120 * MIN })
    expect(rows("gi-1")).toEqual([[0, "gpu_usage", "-3.20"]])
  })

  it("an inference replica launched then: it runs (before: pending for ever, a full hold taken and given back every day)", async () => {
    const { w, sup } = await brownout(10 * S)
    expect(Either.isRight(sup().registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))).toBe(true)
    expect(Either.isRight(sup().launchInference({ account: "acme", id: "inf-1", model: "llama" }))).toBe(true)
    await w.advance(30 * MIN)
    expect(Either.getOrThrow(sup().describe("inf-1"))).toMatchObject({ status: "running", regions: [{ region: "us-east", status: "running" }] })
    expect(w.pods()).toHaveLength(1)
  })

  it("one still refused when the engine stops the instance is not created again: deleted, nothing runs", async () => {
    const { w, sup, engine: current } = await brownout(30 * MIN)
    expect(Either.isRight(sup().launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
    await w.advance(1 * MIN)
    const tried = creates(w)
    expect(Either.isRight(sup().terminate("gi-1"))).toBe(true)
    await w.advance(60 * MIN)
    expect(Either.getOrThrow(sup().describe("gi-1"))).toMatchObject({ status: "terminated", billable_ms: 0 })
    expect(rows_refund(current())).toEqual([[1 * MIN, "refund", "3.20"]])
    expect(creates(w)).toBe(tried)
    expect(w.pods()).toEqual([])
  })
})

const rows_refund = (e: KubeEngine) => e.ledger.ledgerRows().filter((r) => r.kind === "refund").map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros)])

describe("a pod watch that hangs is cut and re-opened, so the cache never freezes while the driver says it watches", () => {
  /** One GPU instance (1 × H100 at $1.60/h, 2 h), billed from 0:01:00, on a driver whose watch ends every 5 min at most. */
  const running = async () => {
    world = await K8sWorld.start({ limits: { pods_watch_timeout_s: 300, request_timeout_ms: 30 * S } })
    const w = world
    const driver = await w.driver()
    engine = startEngine({ db: ":memory:", clock: w.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]) })
    const sup = engine.sup.sync
    expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
    expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
    expect(Either.isRight(sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
    const e = engine
    return {
      w,
      driver,
      view: () => Either.getOrThrow(sup.describe("gi-1")) as GpuView,
      moves: () => e.ledger.transitions().filter((t) => t.resource === "gi-1").map((t) => [t.at - START_MS, t.from_state, t.to_state, t.reason]),
      cuts: () => w.reports.filter((r) => r.kind === "request_failed" && r.what.startsWith("watch pods")).map((r) => [r.at - START_MS, r.kind === "request_failed" ? r.what : ""])
    }
  }

  it("a half-open stream (the server's end gone, nothing more comes, no close): cut once the server's timeoutSeconds has passed; the preemption in it heard then, billed to when it happened", async () => {
    // The watch opened at 0:00 asks the server to end it by 0:05:00; the test server's own end
    // is on the wall clock and never comes here, so the driver cuts it at 0:05:30 (timeout +
    // request_timeout_ms) and re-opens it 1 s later (its backoff), as it does every 5.5 min.
    // Frozen at 0:20, the stream then open (since 0:16:33) is cut at 0:22:03; the preemption at
    // 0:21 is replayed then.
    // Before, a frozen stream was waited on for ever: the preemption never heard, the instance
    // billed to its deadline, never resumed.
    const { w, driver, view, moves, cuts } = await running()
    await w.advance(20 * MIN)
    expect(w.server.freezeWatches()).toBe(1)
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(30 * S)
    expect(view().status).toBe("running")
    await w.advance(2 * MIN)
    expect(driver.watchConnected).toBe(true)
    expect(cuts().at(-1)).toEqual([22 * MIN + 3 * S, "watch pods (open past its timeout)"])
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 20 * MIN })
    expect(moves().slice(2)).toEqual([[21 * MIN, "running", "preempted", null]])
    // Its replacement is made, and runs once capacity frees.
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(2 * MIN)
    expect(view().status).toBe("running")
  })

  it("a re-open the API server never answers: given up after request_timeout_ms and tried again; the preemption in the gap heard, billed to when it happened", async () => {
    // Dropped at 0:20 (re-opened after 1 s), that re-open hangs: no headers, no error. Before,
    // the driver waited on it for ever, `watching` and not behind: nothing more was heard.
    const { w, driver, view, moves, cuts } = await running()
    await w.advance(20 * MIN)
    w.server.inject({ method: "GET", path: "/pods", query: { watch: "true" }, status: 200, hang: true, times: 1 })
    w.server.dropWatches({ abrupt: true })
    await waitFor(driver, () => driver.watchState === "backoff")
    await w.advance(10 * S)
    expect(driver.watchState).toBe("watching")
    expect(driver.watchConnected).toBe(false)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(30 * S)
    expect(driver.watchConnected).toBe(true)
    // Given up 30 s after it was sent (20:01, its backoff after the drop).
    expect(cuts().filter(([, what]) => what === "watch pods (no answer)")).toEqual([[20 * MIN + 31 * S, "watch pods (no answer)"]])
    // The hung request's connection was closed, not left open.
    expect(w.server.hung).toEqual({ requests: 1, closed: 1 })
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 19 * MIN + 10 * S })
    expect(moves().slice(2)).toEqual([[20 * MIN + 10 * S, "running", "preempted", null]])
  })
})
