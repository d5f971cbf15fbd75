/**
 * A pod gone while no control plane watched it (a relist after a watch gap whose history was
 * compacted, the first list after an engine outage), whose last version the driver saw (if any)
 * says nothing of its stop, is dated and named from the cluster's Events (docs/KUBERNETES.md,
 * "Dating a stop"): the scheduler's `Preempted` (or an eviction) is a preemption, billed to the
 * event and resumed on a replacement, as the simulated world has it; the kubelet's `Killing` alone
 * is a loss billed to the end of its grace period; no Event at all is a loss billed until found,
 * as before. Events name their pod by uid (names are reused): an earlier pod's never count.
 *
 * Three kinds of proof: the rules as data (`podEvents.ts`), the API test server's Events as the
 * real API server serves them to @kubernetes/client-node, and the engine's ledger in both worlds.
 */
import { CoreV1Api, KubeConfig, type CoreV1Event } from "@kubernetes/client-node"
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { eventInstant, podEndOf, podStopEventOf, type PodStopEvent } from "../../src/k8s/podEvents.js"
import { costMicros, dollars, formatDollars } from "../../src/money.js"
import type { GpuView } from "../../src/resources.js"
import { runTimeline } from "../../sim/runner.js"
import { at as iso, decode, launch, MIN, START, timelineFile, tmpDb } from "../helpers.js"
import type { KubernetesLimits } from "../../src/k8s/config.js"
import { KubeApiServer, writeKubeconfig } from "./apiServer.js"
import { K8sWorld, START_MS, TWO_REGIONS_AT_ONE_DOLLAR, waitFor } from "./harness.js"
import { EngineOnDriver, expectSameAsSimulated, runTimelineInKubernetes } from "./timelineWorld.js"

let world: K8sWorld | null = null
let opened: EngineOnDriver | null = null
let server: KubeApiServer | null = null
afterEach(async () => {
  opened?.stop()
  await world?.close()
  await server?.close()
  world = null
  opened = null
  server = null
})

const NS = "ecolink"
const RATE = dollars("1.60")
/** The watch stays down this long once dropped. */
const WATCH_DOWN_MS = 4 * MIN
/** Our pods' `terminationGracePeriodSeconds` (the driver's default `termination_grace_s`). */
const GRACE_MS = 30_000

/** A core/v1 Event as a list delivers it (Times as Dates, a MicroTime as its string), about `pod`. */
const event = (pod: { name: string; uid?: string }, reason: string, over: Partial<CoreV1Event> = {}): CoreV1Event =>
  ({
    metadata: { name: `${pod.name}.1`, namespace: NS },
    involvedObject: { kind: "Pod", namespace: NS, name: pod.name, ...(pod.uid === undefined ? {} : { uid: pod.uid }) },
    reason,
    type: "Normal",
    ...over
  }) as CoreV1Event

describe("what the cluster's Events say of a pod's end, as data", () => {
  it("reads the scheduler's Preempted (a MicroTime string), the kubelet's Killing (Dates), the taint manager's mark but not its cancel; any other reason or kind says nothing", () => {
    const pod = { name: "eco-gi-1", uid: "u-2" }
    const preempted = event(pod, "Preempted", { eventTime: "2026-03-01T00:30:00.250000Z" as unknown as Date, firstTimestamp: null as unknown as Date, lastTimestamp: null as unknown as Date, action: "Preempting" })
    expect(podStopEventOf(preempted)).toEqual({ pod: "eco-gi-1", uid: "u-2", kind: "preempted", at: Date.parse("2026-03-01T00:30:00.250Z") })
    // A repeated kill (a series) is dated at its first occurrence.
    const killing = event(pod, "Killing", { firstTimestamp: new Date("2026-03-01T00:31:00Z"), lastTimestamp: new Date("2026-03-01T00:33:00Z"), count: 2, message: "Stopping container workload" })
    expect(podStopEventOf(killing)).toEqual({ pod: "eco-gi-1", uid: "u-2", kind: "killed", at: Date.parse("2026-03-01T00:31:00Z") })
    expect(eventInstant(event(pod, "Killing", { series: { count: 3, lastObservedTime: "2026-03-01T00:40:00.000000Z" as unknown as Date }, eventTime: "2026-03-01T00:35:00.000000Z" as unknown as Date }))).toBe(Date.parse("2026-03-01T00:35:00Z"))
    // The taint manager names no uid, and writes the same reason when it cancels.
    const mark = event({ name: "eco-gi-1" }, "TaintManagerEviction", { message: "Marking for deletion Pod ecolink/eco-gi-1", firstTimestamp: new Date("2026-03-01T00:32:00Z") })
    expect(podStopEventOf(mark)).toEqual({ pod: "eco-gi-1", uid: null, kind: "preempted", at: Date.parse("2026-03-01T00:32:00Z") })
    expect(podStopEventOf({ ...mark, message: "Cancelling deletion of Pod ecolink/eco-gi-1" })).toBeNull()
    for (const reason of ["Evicted", "Preempting"]) expect(podStopEventOf(event(pod, reason, { firstTimestamp: new Date(START_MS) }))?.kind).toBe("preempted")
    for (const quiet of [event(pod, "Started", { firstTimestamp: new Date(START_MS) }), event(pod, "Killing"), { ...killing, involvedObject: { ...killing.involvedObject, kind: "Node" } }]) expect(podStopEventOf(quiet)).toBeNull()
  })

  it("a pod's end: an event of another uid is another pod's; one without a uid (or for a pod whose uid is unknown) counts only from `since`; a preemption wins, a kill alone ends its grace period later", () => {
    const t = (min: number) => START_MS + min * MIN
    const stop = (uid: string | null, kind: PodStopEvent["kind"], min: number): PodStopEvent => ({ pod: "eco-gi-1", uid, kind, at: t(min) })
    const mine = { name: "eco-gi-1", uid: "u-2", grace_ms: GRACE_MS }
    // The victim before it (u-1) was preempted: its replacement (u-2) was only killed.
    expect(podEndOf([stop("u-1", "preempted", 30), stop("u-1", "killed", 30), stop("u-2", "killed", 61)], mine, t(60))).toEqual({ kind: "killed", at: t(61) + GRACE_MS })
    expect(podEndOf([stop("u-2", "killed", 61), stop("u-2", "preempted", 61.5)], mine, t(60))).toEqual({ kind: "preempted", at: t(61.5) })
    expect(podEndOf([stop("u-1", "preempted", 61)], mine, t(60))).toBeNull()
    expect(podEndOf([stop("u-2", "preempted", 61)], { ...mine, name: "eco-gi-2" }, t(60))).toBeNull()
    // No uid on one side: only what came from `since` on (an earlier pod of the name was gone by then).
    expect(podEndOf([stop(null, "preempted", 59)], mine, t(60))).toBeNull()
    expect(podEndOf([stop(null, "preempted", 60)], mine, t(60))).toEqual({ kind: "preempted", at: t(60) })
    expect(podEndOf([stop("u-1", "preempted", 30), stop("u-2", "killed", 61)], { ...mine, uid: null }, t(40))).toEqual({ kind: "killed", at: t(61) + GRACE_MS })
  })
})

describe("the API test server keeps Events as the API server does", () => {
  it("lists them for @kubernetes/client-node by an involvedObject field selector (an unsupported field is 400), in chunks, and forgets them after the event TTL", async () => {
    let now = START_MS
    server = await KubeApiServer.start({ now: () => now })
    const kc = new KubeConfig()
    kc.loadFromFile(writeKubeconfig(server, { namespace: NS }))
    const core = kc.makeApiClient(CoreV1Api)
    const about = (kind: string, name: string, reason: string) =>
      server!.recordEvent(NS, { involvedObject: { kind, namespace: NS, name, uid: `uid-${name}`, apiVersion: "v1" }, reason, message: "", type: "Normal", firstTimestamp: "2026-03-01T00:00:00Z", lastTimestamp: "2026-03-01T00:00:00Z", count: 1 })
    about("Pod", "eco-gi-1", "Killing")
    about("Pod", "eco-gi-2", "Preempted")
    about("Node", "node-1", "NodeNotReady")
    const pods = await core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.kind=Pod" })
    expect(pods.items.map((e) => [e.involvedObject.name, e.involvedObject.uid, e.reason, e.firstTimestamp])).toEqual([
      ["eco-gi-1", "uid-eco-gi-1", "Killing", new Date("2026-03-01T00:00:00Z")],
      ["eco-gi-2", "uid-eco-gi-2", "Preempted", new Date("2026-03-01T00:00:00Z")]
    ])
    expect(pods.items[0]!.metadata.name).toMatch(/^eco-gi-1\.[0-9a-f]+$/)
    expect((await core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.uid=uid-eco-gi-2" })).items.map((e) => e.reason)).toEqual(["Preempted"])
    const refused = await core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.labels=x" }).then(
      () => null,
      (e: { code?: number; body?: string }) => [e.code, JSON.parse(e.body ?? "{}").message]
    )
    expect(refused).toEqual([400, "field label not supported: involvedObject.labels"])
    const first = await core.listNamespacedEvent({ namespace: NS, limit: 2 })
    expect(first.items.length).toBe(2)
    const rest = await core.listNamespacedEvent({ namespace: NS, limit: 2, _continue: first.metadata!._continue! })
    expect([...first.items, ...rest.items].map((e) => e.involvedObject.name)).toEqual(["eco-gi-1", "eco-gi-2", "node-1"])
    expect(rest.metadata?._continue).toBeUndefined()
    now = START_MS + 60 * MIN
    expect((await core.listNamespacedEvent({ namespace: NS })).items).toEqual([])
  })

  it("selects by reason, ANDs comma-joined selectors, reads `source` as its component, and pages a selection in name order across `continue` (a bad token 400, a compacted one 410), as the API server does", async () => {
    server = await KubeApiServer.start({ now: () => START_MS })
    const kc = new KubeConfig()
    kc.loadFromFile(writeKubeconfig(server, { namespace: NS }))
    const core = kc.makeApiClient(CoreV1Api)
    const about = (kind: string, name: string, reason: string, component = "kubelet") =>
      server!.recordEvent(NS, { involvedObject: { kind, namespace: NS, name, apiVersion: "v1" }, reason, message: "", source: { component }, type: "Normal", firstTimestamp: "2026-03-01T00:00:00Z" })
    // Written out of name order: a list gives them in name order all the same.
    for (const name of ["pod-c", "pod-a", "pod-e", "pod-b", "pod-d"]) about("Pod", name, "Killing")
    for (const name of ["pod-a", "pod-b", "pod-c"]) about("Pod", name, "Started")
    about("Pod", "pod-f", "Preempted", "default-scheduler")
    about("Node", "node-1", "Killing")
    const names = (list: { items: CoreV1Event[] }) => list.items.map((e) => `${e.involvedObject.name}/${e.reason}`)
    expect(names(await core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.kind=Pod,reason=Preempted" }))).toEqual(["pod-f/Preempted"])
    expect(names(await core.listNamespacedEvent({ namespace: NS, fieldSelector: "reason=Killing" }))).toEqual(["node-1/Killing", "pod-a/Killing", "pod-b/Killing", "pod-c/Killing", "pod-d/Killing", "pod-e/Killing"])
    expect(names(await core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.kind=Pod,reason!=Killing,source=kubelet" }))).toEqual(["pod-a/Started", "pod-b/Started", "pod-c/Started"])
    // Pages of the selection only: two of the pods' Killing at a time, the routine ones skipped.
    const selector = "involvedObject.kind=Pod,reason=Killing"
    const pages: string[][] = []
    let token: string | undefined = undefined
    do {
      const page: Awaited<ReturnType<typeof core.listNamespacedEvent>> = await core.listNamespacedEvent({ namespace: NS, fieldSelector: selector, limit: 2, _continue: token })
      pages.push(names(page))
      token = page.metadata?._continue
    } while (token !== undefined && pages.length < 10)
    expect(pages).toEqual([["pod-a/Killing", "pod-b/Killing"], ["pod-c/Killing", "pod-d/Killing"], ["pod-e/Killing"]])
    const refusal = (p: Promise<unknown>) => p.then(
      () => null,
      (e: { code?: number; body?: string }) => [e.code, JSON.parse(e.body ?? "{}").reason]
    )
    expect(await refusal(core.listNamespacedEvent({ namespace: NS, fieldSelector: "involvedObject.kind=Pod,message=x" }))).toEqual([400, "BadRequest"])
    expect(await refusal(core.listNamespacedEvent({ namespace: NS, fieldSelector: "reason" }))).toEqual([400, "BadRequest"])
    expect(await refusal(core.listNamespacedEvent({ namespace: NS, limit: 2, _continue: "not-a-token" }))).toEqual([400, "BadRequest"])
    // A token names the resourceVersion of its first page: once the store is compacted past it
    // (a write, then a compaction), its snapshot is gone.
    const first = await core.listNamespacedEvent({ namespace: NS, fieldSelector: selector, limit: 2 })
    about("Pod", "pod-g", "Killing")
    server.compact()
    expect(await refusal(core.listNamespacedEvent({ namespace: NS, fieldSelector: selector, limit: 2, _continue: first.metadata!._continue! }))).toEqual([410, "Expired"])
  })
})

/** The engine on a database file over a driver, its ledger read back as it stands, and an outage that drops both. */
const open = async (limits: Partial<KubernetesLimits> = {}) => {
  world = await K8sWorld.start({ limits: { pods_watch_backoff_ms_min: WATCH_DOWN_MS, pods_watch_backoff_ms_max: WATCH_DOWN_MS, ...limits } })
  const w = world
  const o = (opened = await EngineOnDriver.open(w, new Map([["H100", RATE]]), tmpDb()))
  const sup = () => o.sup
  // 1 × H100 at $1.60/h for 2 h: a $3.20 hold, billed from 0:01:00 (pull 60 s, then loading).
  expect(
    Either.isRight(sup().launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))
  ).toBe(true)
  return {
    w,
    driver: () => o.driver,
    sup,
    view: () => Either.getOrThrow(sup().describe("gi-1")) as GpuView,
    rows: () => o.current.ledger.ledgerRows().map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros), r.resource]),
    moves: () => o.current.ledger.transitions().filter((t) => t.resource === "gi-1").map((t) => [t.at - START_MS, t.from_state, t.to_state, t.reason]),
    notices: () => o.current.ledger.notifications().map((n) => [n.at - START_MS, n.kind]),
    outage: (until_ms: number, during: ReadonlyArray<readonly [number, () => void]> = []) => o.outage(until_ms, during),
    /** The watch drops now; it re-opens `WATCH_DOWN_MS` later (a relist if the history was compacted meanwhile). */
    gap: async () => {
      w.server.dropWatches({ abrupt: true })
      await waitFor(o.driver, () => o.driver.watchState === "backoff")
    }
  }
}

/** The refund of the $3.20 hold after `billed_ms` of GPU time. */
const refundAfter = (billed_ms: number): string => formatDollars(dollars("3.20") - costMicros(RATE, 1, billed_ms))

describe("a pod preempted while no control plane ran is a preemption, dated when it happened", () => {
  /** Runs a timeline file with an outage in both worlds; they must agree. Returns the simulated run, for exact rows. */
  const same = async (file: unknown, outages: ReadonlyArray<{ at_ms: number; duration_ms: number }>) => {
    const timeline = decode(file)
    const sim = runTimeline(timeline, { db: tmpDb(), outages })
    const k8s = await runTimelineInKubernetes(timeline, { db: tmpDb(), outages })
    try {
      expectSameAsSimulated(k8s, sim)
      // The replacement the victim was owed, made once the engine was back.
      expect(k8s.world.reports.filter((r) => r.kind === "pod_replaced" || r.kind === "pod_lost").map((r) => [r.kind, r.at - START_MS])).toEqual([["pod_replaced", 60 * MIN]])
    } finally {
      await k8s.finish()
    }
    expect(sim.output.invariants).toEqual({ ok: true, violations: [] })
    return sim
  }
  /** The engine down from 0:20 to 1:00. */
  const down = [{ at_ms: Date.parse(START) + 20 * MIN, duration_ms: 40 * MIN }]

  it("docs/KUBERNETES.md's example: preempted at 0:30 of a 0:20–1:00 outage, resumed at 1:10: billed 30 + 50 min and resumed, as in the simulated world (not failed at 1:00, billed 60)", async () => {
    const r = await same(timelineFile([launch(), { at: "PT30M", do: "preempt", id: "gi-1" }, { at: "PT1H10M", do: "resume", id: "gi-1" }]), down)
    expect(r.output.transitions.filter((t) => t.resource === "gi-1").map((t) => [t.at, t.to, t.reason])).toEqual([
      [iso(0), "loading", null],
      [iso(0), "running", null],
      [iso(30 * MIN), "preempted", "reconciled"],
      [iso(70 * MIN), "running", null],
      [iso(120 * MIN), "terminating", "duration_expired"],
      [iso(120 * MIN), "terminated", "duration_expired"]
    ])
    expect(r.output.ledger.filter((x) => x.resource === "gi-1").map((x) => [x.at, x.kind, x.amount])).toEqual([
      [iso(0), "gpu_usage", "-3.20"],
      [iso(120 * MIN), "refund", refundAfter(80 * MIN)]
    ])
    expect(refundAfter(80 * MIN)).toBe("1.066667")
  })

  it("an inference replica preempted during the outage: that replica billed to its preemption and resumed, the other billed throughout, as in the simulated world", async () => {
    // Two replicas at $1.00/h (a $48 hold): eu-west bills 90 min, us-east 30 + 20 min.
    const catalog = TWO_REGIONS_AT_ONE_DOLLAR
    const r = await same(
      timelineFile(
        [
          { at: "PT0S", do: "register_model", account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 },
          { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "llama" },
          { at: "PT30M", do: "preempt", id: "ii-1", region: "us-east" },
          { at: "PT1H10M", do: "resume", id: "ii-1", region: "us-east" },
          { at: "PT1H30M", do: "terminate", id: "ii-1" }
        ],
        { catalog, until: "PT3H" }
      ),
      down
    )
    expect(r.output.ledger.filter((x) => x.kind === "refund").map((x) => [x.at, x.amount])).toEqual([[iso(90 * MIN), "45.666667"]])
  })

  it("a pod deleted by hand during an outage (the kubelet's Killing, no preemption): a loss billed to the end of its grace period, not until the engine is back", async () => {
    // Billed from 0:01; the engine is down from 0:50 to 1:30; `kubectl delete pod` at 1:00.
    const { w, view, rows, moves, outage } = await open()
    await w.advance(50 * MIN)
    await outage(90 * MIN, [[60 * MIN, () => w.server.deletePod(w.namespace, "eco-gi-1")]])
    expect(view()).toMatchObject({ status: "failed", termination_reason: "failed", billable_ms: 59.5 * MIN })
    expect(moves().slice(2)).toEqual([[60.5 * MIN, "running", "failed", "failed"]])
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [90 * MIN, "refund", refundAfter(59.5 * MIN), "gi-1"]
    ])
  })

  it("a pod gone during an outage with no Event (a lost node): a loss billed until the engine found it, as before", async () => {
    const { w, view, rows, moves, outage } = await open()
    await w.advance(50 * MIN)
    await outage(90 * MIN, [[60 * MIN, () => w.kubelet.lose("gi-1")]])
    expect(view()).toMatchObject({ status: "failed", billable_ms: 89 * MIN })
    expect(moves().slice(2)).toEqual([[90 * MIN, "running", "failed", "failed"]])
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [90 * MIN, "refund", refundAfter(89 * MIN), "gi-1"]
    ])
  })

  it("the Preempted of an earlier pod of the same name is not its replacement's: the replacement deleted by hand in an outage is a loss, dated by its own kill", async () => {
    // Preempted at 0:30 with the engine up (its Events stay an hour), resumed at 0:40 (Ready at
    // 0:40:30); the engine is down from 0:50 to 1:20 and the replacement deleted at 1:00. The
    // victim's Preempted names the same pod name and is still kept at 1:20: taken for the
    // replacement's, the instance would be preempted and billed nothing since 0:40:30.
    const { w, view, rows, notices, outage } = await open()
    await w.advance(30 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(10 * MIN)
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(10 * MIN)
    expect(view().status).toBe("running")
    await outage(80 * MIN, [[60 * MIN, () => w.server.deletePod(w.namespace, "eco-gi-1")]])
    expect(w.server.objects("events", w.namespace).filter((e) => e.reason === "Preempted").length).toBe(1)
    expect(view()).toMatchObject({ status: "failed", billable_ms: 29 * MIN + 20 * MIN })
    expect(rows().slice(2)).toEqual([[80 * MIN, "refund", refundAfter(49 * MIN), "gi-1"]])
    expect(notices().filter(([, kind]) => kind !== "duration_warning")).toEqual([
      [30 * MIN, "preempted"],
      [40.5 * MIN, "resumed"],
      [80 * MIN, "terminated"]
    ])
  })
})

describe("a pod gone in a watch gap whose history was compacted (a relist) is dated and named from its Events", () => {
  it("preempted in the gap: a preemption billed to the scheduler's Preempted, its replacement made at the relist and resumed (not a loss billed until found)", async () => {
    // The watch drops at 1:00 and is back at 1:04 with 410: the relist finds the victim (preempted
    // at 1:01) gone, its last known version running. Resumed at 1:10 (Ready at 1:10:30), terminated
    // at 1:30: billed 0:01–1:01 and 1:10:30–1:30, 79.5 min.
    const { w, driver, sup, view, rows, moves, notices, gap } = await open()
    await w.advance(60 * MIN)
    await gap()
    await w.advance(1 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    w.server.compact()
    await w.advance(3 * MIN)
    expect(w.reports.filter((r) => r.kind === "relisted").map((r) => r.at - START_MS)).toEqual([64 * MIN])
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 60 * MIN })
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.annotations!["ecolink.io/replacement"]])).toEqual([["eco-gi-1", "1"]])
    expect(driver().firstStopAt("eco-gi-1", START_MS + 60 * MIN)).toBe(START_MS + 61 * MIN)
    await w.advance(6 * MIN)
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(20 * MIN)
    expect(Either.isRight(sup().terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(moves().slice(2)).toEqual([
      [61 * MIN, "running", "preempted", null],
      [70.5 * MIN, "preempted", "running", null],
      [90 * MIN, "running", "terminating", "user_requested"],
      [90 * MIN, "terminating", "terminated", "user_requested"]
    ])
    expect(notices().filter(([, kind]) => kind !== "duration_warning")).toEqual([
      [64 * MIN, "preempted"],
      [70.5 * MIN, "resumed"],
      [90 * MIN, "terminated"]
    ])
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [90 * MIN, "refund", refundAfter(79.5 * MIN), "gi-1"]
    ])
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
  })

  it("deleted by hand in the gap, after an earlier pod of its name was preempted: a loss billed to the end of its own kill's grace period; the earlier pod's Preempted is ignored (another uid)", async () => {
    // Preempted at 0:30 and resumed at 0:40 (Ready 0:40:30) with the watch up; the watch drops at
    // 1:00, the replacement is deleted at 1:01 (Killing at 1:01, grace 30 s), the relist at 1:04.
    const { w, view, rows, moves, gap } = await open()
    await w.advance(30 * MIN)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(10 * MIN)
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(20 * MIN)
    await gap()
    await w.advance(1 * MIN)
    expect(w.server.deletePod(w.namespace, "eco-gi-1")).toBeDefined()
    w.server.compact()
    await w.advance(3 * MIN)
    expect(view()).toMatchObject({ status: "failed", billable_ms: 29 * MIN + 21 * MIN })
    expect(moves().slice(-1)).toEqual([[61.5 * MIN, "running", "failed", "failed"]])
    expect(rows().slice(2)).toEqual([[64 * MIN, "refund", refundAfter(50 * MIN), "gi-1"]])
    expect(w.pods()).toEqual([])
  })

  it("an Event dated before the driver's last current view (a clock behind) moves the stop back to that view, no further", async () => {
    // The driver's view is current at 1:00 (a BOOKMARK), then the watch drops. At 1:01 the pod
    // goes, and the scheduler's Event about it says 0:30: had it happened then, the driver would
    // have heard of it. Billed to 1:00 (59 min), a preemption; not to 0:30, nor to the 1:04 relist.
    const { w, driver, view, moves, gap } = await open()
    await w.advance(60 * MIN)
    const current = new Promise<void>((resolve) => {
      const off = driver().onProgress(() => {
        off()
        resolve()
      })
    })
    expect(w.server.bookmark()).toBe(1)
    await current
    await gap()
    await w.advance(1 * MIN)
    const pod = w.pods()[0]!
    w.server.recordEvent(w.namespace, {
      involvedObject: { kind: "Pod", namespace: w.namespace, name: pod.metadata.name, uid: pod.metadata.uid!, apiVersion: "v1" },
      reason: "Preempted",
      message: "Preempted by pod 1 on node us-east-node-0",
      firstTimestamp: null,
      lastTimestamp: null,
      eventTime: "2026-03-01T00:30:00.000000Z",
      type: "Normal"
    })
    expect(w.kubelet.lose("gi-1")).toEqual({ ok: true })
    w.server.compact()
    await w.advance(3 * MIN)
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 59 * MIN })
    expect(moves().slice(2)).toEqual([[60 * MIN, "running", "preempted", null]])
  })

  it("its Events expired or never written (a forced delete): a loss billed until the relist found it, as before", async () => {
    const { w, view, rows, gap } = await open()
    await w.advance(60 * MIN)
    await gap()
    await w.advance(1 * MIN)
    expect(w.kubelet.lose("gi-1")).toEqual({ ok: true })
    w.server.compact()
    await w.advance(3 * MIN)
    expect(view()).toMatchObject({ status: "failed", billable_ms: 63 * MIN })
    expect(rows().slice(2)).toEqual([[64 * MIN, "refund", refundAfter(63 * MIN), "gi-1"]])
  })

  it("asks for the Events once per relist that finds a pod gone unexplained, not per pod, and not when nothing is", async () => {
    const { w, gap } = await open()
    const lists = () => w.server.requests.filter((r) => r.method === "GET" && r.path.endsWith("/events")).map((r) => r.query)
    // The first list (at start) always reads them: a new control plane does not know what went.
    // One round: a list per stop reason, preemptions first, each a page of at most 500.
    const round = ["Preempted", "Preempting", "Evicted", "TaintManagerEviction", "Killing"].map((reason) => ({ fieldSelector: `involvedObject.kind=Pod,reason=${reason}`, limit: "500" }))
    expect(lists()).toEqual(round)
    await w.advance(60 * MIN)
    await gap()
    // Something else changes in the gap (a Service of another's), and the history is compacted.
    w.server.create("services", w.namespace, { metadata: { name: "other" }, spec: { ports: [{ port: 80 }] } })
    w.server.compact()
    await w.advance(WATCH_DOWN_MS)
    expect(w.reports.filter((r) => r.kind === "relisted").length).toBe(1)
    expect(lists()).toEqual(round)
    await gap()
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    w.server.compact()
    await w.advance(WATCH_DOWN_MS)
    expect(lists()).toEqual([...round, ...round])
  })
})

describe("in a busy namespace the driver reads only the stop Events, one list per reason, every page, at most events_listed_max in all", () => {
  /** A busy namespace in small: 40 events read in all at most, 15 a page. */
  const SMALL: Partial<KubernetesLimits> = { events_listed_max: 40, events_page_max: 15 }
  /** Events of another's pods, named before ours ("batch-…" < "eco-…"), as the kubelet writes them. */
  const others = (w: K8sWorld, pods: number, reasons: ReadonlyArray<string>) => {
    const at = new Date(w.clock.now()).toISOString().replace(/\.\d+Z$/, "Z")
    for (let i = 0; i < pods; i++) {
      const name = `batch-${String(i).padStart(3, "0")}`
      for (const reason of reasons) {
        w.server.recordEvent(w.namespace, {
          involvedObject: { kind: "Pod", namespace: w.namespace, name, uid: `uid-${name}`, apiVersion: "v1" },
          reason,
          message: "",
          source: { component: "kubelet" },
          firstTimestamp: at,
          lastTimestamp: at,
          count: 1,
          type: "Normal"
        })
      }
    }
  }
  const ROUTINE = ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
  const eventLists = (w: K8sWorld) =>
    w.server.requests
      .filter((r) => r.method === "GET" && r.path.endsWith("/events"))
      .map((r) => [r.query.fieldSelector!.replace("involvedObject.kind=Pod,reason=", ""), Number(r.query.limit), r.query.continue === undefined ? "" : "continue"])

  it("more routine events of others than events_listed_max: our pod preempted during an outage is still a preemption dated when it happened (the first page of all pod Events held none of ours)", async () => {
    // Billed from 0:01; the engine is down from 0:50 to 1:30. At 0:55 the namespace's other pods
    // write 150 routine events (30 pods × Scheduled…Started), all named before ours; at 1:00 ours
    // is preempted. A list of every pod Event cut at 40 reads only those: a loss billed to 1:30.
    const { w, view, moves, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [55 * MIN, () => others(w, 30, ROUTINE)],
      [60 * MIN, () => expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })]
    ])
    expect(w.server.objects("events", w.namespace).filter((e) => ROUTINE.includes(String(e.reason))).length).toBe(150)
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 59 * MIN })
    expect(moves().slice(2)).toEqual([[60 * MIN, "running", "preempted", "reconciled"]])
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_replaced").map((r) => r.at - START_MS)).toEqual([90 * MIN])
    // The stop Events alone are far below the bound: nothing was cut.
    expect(w.reports.filter((r) => r.kind === "events_cut")).toEqual([])
  })

  it("follows `continue` pages to our Preempted on a later page, and stops at events_listed_max events read in all (the kills of others cut)", async () => {
    // At 0:55 twenty other pods are preempted (20 Preempted, named before ours) and a hundred
    // killed; ours is preempted at 1:00. The round: Preempted in two pages (15, then 5 + ours),
    // nothing of the other preemption reasons, then Killing until 40 are read: 15, then 4.
    const { w, view, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [55 * MIN, () => others(w, 20, ["Preempted"])],
      [55 * MIN, () => others(w, 100, ["Killing"])],
      [60 * MIN, () => expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })]
    ])
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 59 * MIN })
    // The first driver's round at 0:00 read nothing; the second's, at 1:30:
    expect(eventLists(w).slice(5)).toEqual([
      ["Preempted", 15, ""],
      ["Preempted", 15, "continue"],
      ["Preempting", 15, ""],
      ["Evicted", 15, ""],
      ["TaintManagerEviction", 15, ""],
      ["Killing", 15, ""],
      ["Killing", 4, "continue"]
    ])
    // 15 + 6 Preempted, then 15 + 4 Killing: 40, the bound.
    expect(15 + 6 + 15 + 4).toBe(SMALL.events_listed_max)
  })

  it("a round that reaches the bound just as a reason's list ends reports the reasons after it as unread", async () => {
    // 39 other pods preempted and ours: the Preempted list is exactly 40, the bound, in pages of
    // 15, 15 and 10 with nothing after; the preemption is dated, and the cut names Preempting,
    // the first reason not read (found by review: it named Preempted, which was read whole).
    const { w, view, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [55 * MIN, () => others(w, 39, ["Preempted"])],
      [60 * MIN, () => expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })]
    ])
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 59 * MIN })
    expect(eventLists(w).slice(5)).toEqual([
      ["Preempted", 15, ""],
      ["Preempted", 15, "continue"],
      ["Preempted", 10, "continue"]
    ])
    expect(w.reports.filter((r) => r.kind === "events_cut")).toEqual([{ kind: "events_cut", at: START_MS + 90 * MIN, read: 40, unread_from: "Preempting" }])
  })

  it("the bound is on what is read: our pod's kill past it is not read, a loss billed until found, as with no Event", async () => {
    // Ours is deleted by hand at 1:00 (its Killing named after the hundred others' of 0:55): the
    // round stops at 40 events read, before it, and the stop is dated when found (1:30).
    const { w, view, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [55 * MIN, () => others(w, 100, ["Killing"])],
      [60 * MIN, () => w.server.deletePod(w.namespace, "eco-gi-1")]
    ])
    expect(view()).toMatchObject({ status: "failed", billable_ms: 89 * MIN })
    expect(eventLists(w).slice(5).map(([, limit]) => limit)).toEqual([15, 15, 15, 15, 15, 15, 10])
    // The operator is told the round was cut, and where (the kills' rest was not read).
    expect(w.reports.filter((r) => r.kind === "events_cut")).toEqual([{ kind: "events_cut", at: START_MS + 90 * MIN, read: 40, unread_from: "Killing" }])
  })

  it("a list that fails mid-round (503 on the kills) is reported once and ends the round; what was read before still dates the preemption", async () => {
    const { w, view, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [59 * MIN, () => void w.server.inject({ method: "GET", path: "/events", query: { fieldSelector: "involvedObject.kind=Pod,reason=Killing" }, status: 503 })],
      [60 * MIN, () => expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })]
    ])
    expect(view()).toMatchObject({ status: "preempted", billable_ms: 59 * MIN })
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => [r.at - START_MS, r.what, r.status])).toEqual([[90 * MIN, "list events", 503]])
    expect(eventLists(w).slice(5).map(([reason]) => reason)).toEqual(["Preempted", "Preempting", "Evicted", "TaintManagerEviction", "Killing"])
  })

  it("no RBAC to list events (403): one list, one report, and the pod gone is a loss billed until found, as before", async () => {
    const { w, view, outage } = await open(SMALL)
    await w.advance(50 * MIN)
    await outage(90 * MIN, [
      [59 * MIN, () => void w.server.inject({ method: "GET", path: "/events", status: 403 })],
      [60 * MIN, () => expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })]
    ])
    expect(view()).toMatchObject({ status: "failed", billable_ms: 89 * MIN })
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => [r.what, r.status])).toEqual([["list events", 403]])
    expect(eventLists(w).length).toBe(5 + 1)
  })
})
