/**
 * Defects found in review of the Kubernetes driver, each reproduced against the API test
 * server and the scripted kubelet: a refused delete re-sent without end, a standby driver that
 * writes, a replacement whose create gave up, a node clock behind the engine's, a standby that
 * remembers every workload the leader deleted, a request that never answers, and one that
 * was abandoned at its timeout but never cancelled.
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import type { KubernetesLimits } from "../../src/k8s/config.js"
import { dollars } from "../../src/money.js"
import type { GpuView } from "../../src/resources.js"
import { kubeTime } from "./apiServer.js"
import { K8sWorld, START_MS, runUntilReady, startWithDriver, waitFor, workloadSpec } from "./harness.js"
import { startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"

let world: K8sWorld | null = null
let engine: KubeEngine | null = null
afterEach(async () => {
  if (engine !== null) stopEngine(engine)
  engine = null
  await world?.close()
  world = null
})

/** An engine on a leader's driver with one running H100 instance `gi-1` (billing from 0:01:30). */
const withEngine = async (options: { readonly pod_stop_ms: number; readonly standby: boolean; readonly limits?: Partial<KubernetesLimits> }) => {
  world = await K8sWorld.start({ regions: [{ name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 60_000, container_start_ms: 30_000, pod_stop_ms: options.pod_stop_ms }], ...(options.limits === undefined ? {} : { limits: options.limits }) })
  const w = world
  const standby = options.standby ? await w.driver() : null
  const leader = await w.driver()
  engine = startEngine({ db: ":memory:", clock: w.clock, cluster: leader, gpu_rates: new Map([["H100", dollars("1.60")]]) })
  const sup = engine.sup.sync
  expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
  expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
  const launch = (id: string) => expect(Either.isRight(sup.launchGpu({ account: "acme", id, kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
  launch("gi-1")
  return { w, leader, standby, sup, launch, view: (id = "gi-1") => Either.getOrThrow(sup.describe(id)) as GpuView }
}

const spec = workloadSpec

const t = (s: number): number => START_MS + s * 1000
const S = 1000
const MIN = 60 * S

const open = async (options: Parameters<typeof K8sWorld.start>[0] = {}) => {
  const started = await startWithDriver(options)
  world = started.w
  return started
}

const running = runUntilReady

const deletes = (w: K8sWorld): number => w.server.requests.filter((r) => r.method === "DELETE" && r.path.includes("/pods/")).length

describe("a refused pod delete is not re-sent in a loop", () => {
  it("a delete refused 403 is sent once per deleteWorkload (the watchdog's tick), not again from the driver's own events", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    const refusal = w.server.inject({ method: "DELETE", path: "/pods/", status: 403, times: 1_000 })
    d.deleteWorkload("eco-gi-1")
    await w.advance(10 * MIN)
    expect(deletes(w)).toBe(1)
    expect(w.reports.filter((r) => r.kind === "request_failed")).toEqual([{ kind: "request_failed", at: t(90), what: "delete pod eco-gi-1", status: 403, final: true }])
    // The next watchdog tick asks again: one more delete, refused again.
    d.deleteWorkload("eco-gi-1")
    await w.advance(5 * MIN)
    expect(deletes(w)).toBe(2)
    // The policy is lifted: the next ask deletes the pod, and the delete completes.
    refusal.times = 0
    w.server.clearFailures()
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(deletes(w)).toBe(3)
    expect(w.pods()).toEqual([])
    expect(events.at(-1)).toEqual({ type: "pod.deleted", resource: "gi-1", at: t(90 + 15 * 60) })
  })

  it("a delete answered 404 while the cache is behind (a watch gap) means gone: one delete, pod.deleted once the watch replays the pod's end, no pod_lost", async () => {
    const { w, d, events } = await open({ limits: { pods_watch_backoff_ms_min: 4 * MIN, pods_watch_backoff_ms_max: 4 * MIN } })
    await running(w, d)
    w.server.dropWatches({ abrupt: true })
    await waitFor(d, () => d.watchState === "backoff")
    // The pod goes while nobody watches (the cache still shows it running).
    w.kubelet.lose("gi-1")
    await w.settle()
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(deletes(w)).toBe(1)
    // Gone, but how it ended (a preemption in the gap?) only its last version, which the watch
    // replays, can tell: the engine settles at pod.deleted, so it waits for that.
    expect(events.map((e) => e.type)).toEqual(["pod.loading", "pod.running"])
    // The watch comes back and delivers the pod's DELETED (nothing dates a stop: it vanished
    // without a record of one): the deletion concludes, nothing is rebuilt from it.
    await w.advance(5 * MIN)
    expect(d.watchState).toBe("watching")
    expect(events.at(-1)).toEqual({ type: "pod.deleted", resource: "gi-1", at: t(90 + 240) })
    expect(d.list()).toEqual([])
    expect(deletes(w)).toBe(1)
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
  }, 30_000)
})

describe("a standby's driver is passive: it writes nothing until an engine subscribes", () => {
  it("an instance terminated by the leader while preempted: the standby's driver creates no replacement for it", async () => {
    const { w, sup, view } = await withEngine({ pod_stop_ms: 30 * S, standby: true })
    await w.advance(60 * MIN)
    w.kubelet.preempt("gi-1") // the victim terminates for 30 s
    await w.advance(10 * S)
    expect(view().status).toBe("preempted")
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    await w.advance(MIN)
    expect(view().status).toBe("terminated")
    // Capacity frees: a replacement, had anyone created one, would be placed and run now.
    w.kubelet.resume("gi-1")
    await w.advance(2 * MIN)
    expect(w.pods()).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_replaced")).toEqual([])
  })

  it("a passive driver sees a preemption and writes nothing; subscribed, it creates the replacement it owes and deletes a kubelet-preempted pod", async () => {
    world = await K8sWorld.start()
    const w = world
    const leader = await w.driver()
    leader.subscribe(() => {})
    leader.createWorkload(spec())
    leader.createWorkload(spec({ name: "eco-gi-2", resource: "gi-2" }))
    await w.advance(90 * S)
    // The leader stops (its engine gone, the driver stopped); a standby's driver watches on.
    leader.stop()
    const standby = await w.driver()
    const requests = () => w.server.requests.filter((r) => r.method !== "GET").length
    const before = requests()
    w.kubelet.preempt("gi-1") // DisruptionTarget, then deleted: a replacement is owed
    w.server.update("pods", w.namespace, "eco-gi-2", (o) => (o.status = { ...o.status, phase: "Failed", reason: "Preempting", message: "Preempted in order to admit critical pod" }))
    await w.advance(MIN)
    expect(requests()).toBe(before)
    expect(standby.phaseOf("eco-gi-1")).toBe("preempted")
    expect(standby.phaseOf("eco-gi-2")).toBe("preempted")
    expect(w.pods().map((p) => [p.metadata.name, p.status?.phase])).toEqual([["eco-gi-2", "Failed"]])
    // An engine subscribes (this replica now leads): the driver does what it owes.
    standby.subscribe(() => {})
    await w.advance(0)
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.annotations!["ecolink.io/replacement"]])).toEqual([
      ["eco-gi-1", "1"],
      ["eco-gi-2", "1"]
    ])
  })
})

describe("a replacement whose create gave up is asked for again", () => {
  it("an API server refusing creates (503) when the victim goes: the replacement is created on the driver's slow retry, and the instance resumes", async () => {
    const { w, leader, view } = await withEngine({ pod_stop_ms: 30 * S, standby: false })
    await w.advance(60 * MIN)
    w.kubelet.preempt("gi-1")
    await w.advance(10 * S)
    expect(view().status).toBe("preempted")
    // Five 503s: the victim is gone 30 s after the preemption, and the test limits give up
    // after 1 + 2 + 4 + 4 s.
    const failure = w.server.inject({ method: "POST", path: "/pods", status: 503, times: 5 })
    await w.advance(40 * S)
    expect(failure.times).toBe(0)
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => (r.kind === "request_failed" ? r.final : null))).toEqual([false, false, false, false, true])
    expect(w.pods()).toEqual([])
    // own_retry_ms_min (10 s) after it gave up, the driver asks again.
    await w.advance(MIN)
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.annotations!["ecolink.io/replacement"]])).toEqual([["eco-gi-1", "1"]])
    w.kubelet.resume("gi-1")
    await w.advance(2 * MIN)
    expect(leader.phaseOf("eco-gi-1")).toBe("running")
    expect(view().status).toBe("running")
  })

  it("the slow retry doubles up to own_retry_ms_max while the API server refuses, and stops once the instance is deleted", async () => {
    const { w, d } = await open({ limits: { own_retry_ms_min: 10 * S, own_retry_ms_max: 40 * S } })
    await running(w, d)
    w.server.inject({ method: "POST", path: "/pods", status: 503, times: 1_000 })
    w.kubelet.preempt("gi-1")
    await w.advance(5 * MIN)
    const failed = () => w.reports.filter((r) => r.kind === "request_failed" && r.what === "create pod eco-gi-1")
    // Each round is five attempts (1 + 2 + 4 + 4 s); the next starts 10, 20, 40, 40 s after one gave up.
    const rounds = failed().filter((_, i) => i % 5 === 0)
    expect(rounds.map((r) => (r.at - START_MS) / S)).toEqual([90, 111, 142, 193, 244, 295, 346])
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    const after = failed().length
    await w.advance(10 * MIN)
    expect(failed().length).toBe(after)
    expect(d.list()).toEqual([])
  })
})

describe("a node clock behind the engine's does not backdate a stop", () => {
  /** The kubelet reports the container failed, stamped with its own clock `behind_ms` slow. */
  const failSkewed = (w: K8sWorld, behind_ms: number): void => {
    const skewed = kubeTime(w.clock.now() - behind_ms)
    w.server.update("pods", w.namespace, "eco-gi-1", (o) => {
      o.status = { ...o.status, phase: "Failed", conditions: [], containerStatuses: [{ name: "workload", ready: false, restartCount: 0, image: "x", imageID: "", state: { terminated: { exitCode: 1, reason: "Error", startedAt: skewed, finishedAt: skewed } } }] }
    })
  }

  it("a failure heard live from a node 20 min behind: billed to when it was heard (59 min), not to the node's stamp (39 min)", async () => {
    const { w, view } = await withEngine({ pod_stop_ms: 0, standby: false })
    await w.advance(60 * MIN)
    failSkewed(w, 20 * MIN)
    await w.advance(S)
    expect(view().status).toBe("failed")
    expect(view().billable_ms).toBe(59 * MIN) // billed from loading at 0:01
  })

  it("replayed after a watch gap, a skewed stop is dated no earlier than the driver's last current view (its last bookmark)", async () => {
    const { w, d, events } = await open({ limits: { pods_watch_backoff_ms_min: 4 * MIN, pods_watch_backoff_ms_max: 4 * MIN } })
    await running(w, d)
    await w.advance(510 * S)
    w.server.bookmark() // the driver's view is current at 0:10:00
    await w.settle()
    w.server.dropWatches({ abrupt: true })
    await waitFor(d, () => d.watchState === "backoff")
    await w.advance(MIN)
    failSkewed(w, 20 * MIN) // at 0:11:00, stamped 23:51:00 the day before
    await w.advance(4 * MIN)
    expect(d.watchState).toBe("watching")
    expect(events.slice(2)).toEqual([{ type: "pod.failed", resource: "gi-1", at: t(600 + 240), ended_at: t(600) }])
    expect(d.firstStopAt("eco-gi-1", t(0))).toBe(t(600))
  })

  it("after a re-opened watch's replay window, a stop is live even with no BOOKMARK from the server", async () => {
    // Found by review: a watch re-opened after a drop counted as replaying until its first
    // BOOKMARK, which an API server may never send; every stop heard live after it was then
    // dated from the node's stamp, as far back as the drop (here 0:10:00, 10 minutes early).
    const { w, d, events } = await open({ limits: { pods_watch_backoff_ms_min: MIN, pods_watch_backoff_ms_max: MIN } })
    await running(w, d)
    await w.advance(510 * S)
    w.server.dropWatches({ abrupt: true }) // at 0:10:00
    await waitFor(d, () => d.watchState === "backoff")
    await w.advance(MIN)
    expect(d.watchState).toBe("watching") // re-opened at 0:11:00, nothing to replay
    await w.advance(9 * MIN)
    failSkewed(w, 20 * MIN) // at 0:20:00, heard at once, stamped 0:00:00
    await w.advance(S)
    expect(events.slice(2)).toEqual([{ type: "pod.failed", resource: "gi-1", at: t(1200) }])
  })
})

describe("a standby's driver does not keep every workload the leader deleted", () => {
  it("keeps at most passive_gone_workloads_max whose pods are all gone, the newest; a workload with pods is kept", async () => {
    const { w, sup, standby, leader, launch } = await withEngine({ pod_stop_ms: 0, standby: true, limits: { passive_gone_workloads_max: 2 } })
    for (let i = 2; i <= 7; i++) launch(`gi-${i}`)
    await w.advance(10 * MIN)
    for (let i = 1; i <= 6; i++) {
      expect(Either.isRight(sup.terminate(`gi-${i}`))).toBe(true)
      await w.advance(S)
    }
    await w.advance(10 * MIN)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-7"])
    expect(leader.list().map((x) => x.name)).toEqual(["eco-gi-7"])
    expect(standby!.list().map((x) => x.name)).toEqual(["eco-gi-5", "eco-gi-6", "eco-gi-7"])
  })

  it("keeps a workload whose replacement it owes past the bound, until that is an hour overdue", async () => {
    // Found by review: with more gone workloads than the bound (a mass preemption while the
    // leader dies), the oldest was forgotten with its replacement owed; the next leader found
    // no pods and failed the instance instead of resuming it.
    const { w, standby, launch } = await withEngine({ pod_stop_ms: 0, standby: true, limits: { passive_gone_workloads_max: 1 } })
    launch("gi-2")
    launch("gi-3")
    await w.advance(10 * MIN)
    stopEngine(engine!)
    engine = null
    for (const id of ["gi-1", "gi-2"]) expect(w.kubelet.preempt(id)).toEqual({ ok: true })
    await w.advance(1 * MIN)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-3"])
    expect(standby!.list().map((x) => [x.name, x.phase])).toEqual([
      ["eco-gi-1", "preempted"],
      ["eco-gi-2", "preempted"],
      ["eco-gi-3", "running"]
    ])
    // An hour on, those replacements are long overdue (a leader that lived on would have made
    // them): the next workload to go past the bound lets them be forgotten, and the bound holds.
    await w.advance(60 * MIN)
    expect(w.kubelet.preempt("gi-3")).toEqual({ ok: true })
    await w.advance(1 * MIN)
    expect(standby!.list().map((x) => [x.name, x.phase])).toEqual([["eco-gi-3", "preempted"]])
  })
})

describe("a request the API server never answers", () => {
  it("times out after request_timeout_ms on the engine clock, frees its pod, and is retried: one pod results", async () => {
    const { w, d } = await open({ limits: { request_timeout_ms: 10 * S } })
    w.server.inject({ method: "POST", path: "/pods", status: 0, hang: true, times: 1 })
    d.createWorkload(spec())
    const posts = () => w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/pods")).length
    for (let i = 0; i < 500 && posts() === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(posts()).toBe(1)
    // The world never settles while a request hangs: step the clock past the timeout without waiting.
    const settle = w.clock.settle
    w.clock.settle = async () => {}
    await w.clock.advance(10 * S)
    w.clock.settle = settle
    await w.advance(2 * S)
    expect(posts()).toBe(2)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1"])
    expect(w.reports.filter((r) => r.kind === "request_failed")).toEqual([{ kind: "request_failed", at: t(10), what: "create pod eco-gi-1", status: null, final: false }])
    await w.advance(90 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("running")
  }, 20_000)

  it("cancels the HTTP request when it times out: the API server sees every hung connection closed", async () => {
    // Found by review: a request past request_timeout_ms counted as failed and was retried, but
    // its HTTP request was never cancelled, so its connection stayed open. While the API server
    // hung, every timeout left up to requests_in_flight_max more open connections, without bound.
    const { w, d } = await open({ limits: { request_timeout_ms: 10 * S } })
    w.server.inject({ method: "POST", path: "/pods", status: 0, hang: true, times: 3 })
    for (const id of ["gi-1", "gi-2", "gi-3"]) d.createWorkload(spec({ name: `eco-${id}`, resource: id, gpu_count: 1 }))
    const realTime = async (holds: () => boolean): Promise<void> => {
      for (let i = 0; i < 500 && !holds(); i++) await new Promise((resolve) => setTimeout(resolve, 10))
    }
    await realTime(() => w.server.hung.requests === 3)
    expect(w.server.hung).toEqual({ requests: 3, closed: 0 })
    // The world never settles while a request hangs: step the clock without waiting. Just before
    // the timeout the connections are open: nothing else closes them.
    const settle = w.clock.settle
    w.clock.settle = async () => {}
    await w.clock.advance(10 * S - 1)
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(w.server.hung).toEqual({ requests: 3, closed: 0 })
    await w.clock.advance(1)
    w.clock.settle = settle
    await realTime(() => w.server.hung.closed === 3)
    expect(w.server.hung).toEqual({ requests: 3, closed: 3 })
    // The retries are answered: one pod each, as without the cancel.
    await w.advance(2 * S)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1", "eco-gi-2", "eco-gi-3"])
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => r.kind === "request_failed" && [r.at, r.what, r.status, r.final])).toEqual([
      [t(10), "create pod eco-gi-1", null, false],
      [t(10), "create pod eco-gi-2", null, false],
      [t(10), "create pod eco-gi-3", null, false]
    ])
  }, 20_000)
})
