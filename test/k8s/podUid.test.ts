/**
 * Pod names are reused: a preemption victim's replacement has its name. Every delete the driver
 * sends for a pod it has seen carries that pod's uid as a precondition, so a stale view of the
 * victim (a watch gap, a retried delete) never deletes the replacement; and events about a pod
 * known to be gone are not taken for the pod now bearing its name.
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import type { ClusterEvent, WorkloadSpec } from "../../src/cluster.js"
import { dollars } from "../../src/money.js"
import type { GpuView } from "../../src/resources.js"
import type { KubeObject } from "./apiServer.js"
import { K8sWorld, START_MS, waitFor, workloadSpec } from "./harness.js"
import { startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"

let world: K8sWorld | null = null
let engine: KubeEngine | null = null
afterEach(async () => {
  if (engine !== null) stopEngine(engine)
  engine = null
  await world?.close()
  world = null
})

const S = 1000
const MIN = 60 * S
const t = (s: number): number => START_MS + s * 1000

const spec = (over: Partial<WorkloadSpec> = {}): WorkloadSpec => workloadSpec({ gpu_count: 1, ...over })

/** What another control plane creates for a victim: the same pod (name, labels, spec), a new object. */
const replacementOf = (victim: KubeObject): KubeObject => {
  const spec = { ...victim.spec }
  delete spec.nodeName
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: victim.metadata.name, namespace: victim.metadata.namespace, labels: { ...victim.metadata.labels }, annotations: { ...victim.metadata.annotations, "ecolink.io/replacement": "1" } },
    spec
  }
}

/** The kubelet preempted the pod to admit a critical one: it stays Failed until deleted. */
const kubeletPreempt = (w: K8sWorld, name: string): void => {
  w.server.update("pods", w.namespace, name, (o) => (o.status = { ...o.status, phase: "Failed", reason: "Preempting", message: "Preempted in order to admit critical pod" }))
}

describe("a delete of a pod the driver has seen carries its uid", () => {
  it("a stale victim (its delete retried across a watch gap while another control plane replaced it) does not delete the replacement: the instance runs on, billed for its GPU time", async () => {
    world = await K8sWorld.start({ limits: { pods_watch_backoff_ms_min: 4 * MIN, pods_watch_backoff_ms_max: 4 * MIN } })
    const w = world
    const d = await w.driver()
    engine = startEngine({ db: ":memory:", clock: w.clock, cluster: d, gpu_rates: new Map([["H100", dollars("1.60")]]) })
    const sup = engine.sup.sync
    expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
    expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
    expect(Either.isRight(sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
    const view = () => Either.getOrThrow(sup.describe("gi-1")) as GpuView
    await w.advance(60 * MIN)
    expect(view().status).toBe("running")

    // The kubelet preempts the pod; the driver's delete of the victim meets an API server
    // answering 503 and waits to be retried.
    const failure = w.server.inject({ method: "DELETE", path: "/pods/", status: 503, times: 1_000 })
    kubeletPreempt(w, "eco-gi-1")
    await w.advance(0)
    expect(view().status).toBe("preempted")
    const victim = w.pods()[0]!
    // The watch drops; while the driver does not watch, another control plane removes the
    // victim and creates its replacement, of the same name.
    w.server.dropWatches({ abrupt: true })
    await waitFor(d, () => d.watchState === "backoff")
    w.server.remove("pods", w.namespace, "eco-gi-1")
    w.server.create("pods", w.namespace, replacementOf(victim))
    failure.times = 0
    // The driver's retried delete (its cache still shows the victim) meets the replacement.
    await w.advance(2 * MIN)
    expect(w.pods()).toHaveLength(1)
    const [replacement] = w.pods()
    expect(replacement?.metadata.uid).not.toBe(victim.metadata.uid)
    expect(replacement?.metadata.deletionTimestamp).toBeUndefined()
    // The watch comes back, replays the victim's DELETED and the replacement's life: running.
    await w.advance(4 * MIN)
    expect(d.watchState).toBe("watching")
    expect(d.phaseOf("eco-gi-1")).toBe("running")
    expect(w.pods().map((p) => [p.metadata.uid, p.metadata.deletionTimestamp ?? null])).toEqual([[replacement!.metadata.uid, null]])
    expect(view().status).toBe("running")
    // Billed from loading at 0:01 to the preemption at 1:00, and again from when the driver
    // heard the replacement run (its watch back at 1:04) to now (1:06).
    expect(view().billable_ms).toBe(59 * MIN + 2 * MIN)
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
  }, 30_000)

  it("a DELETE whose uid precondition fails (409) leaves the pod of that name alone and takes the one meant as gone; replayed events about it are ignored", async () => {
    world = await K8sWorld.start({ limits: { pods_watch_backoff_ms_min: 4 * MIN, pods_watch_backoff_ms_max: 4 * MIN } })
    const w = world
    const d = await w.driver()
    const events: ClusterEvent[] = []
    d.subscribe((e) => events.push(e))
    d.createWorkload(spec())
    await w.advance(90 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("running")
    const victim = w.pods()[0]!
    // Nobody watches; the pod is replaced under the same name behind the driver's back.
    w.server.dropWatches({ abrupt: true })
    await waitFor(d, () => d.watchState === "backoff")
    w.server.remove("pods", w.namespace, "eco-gi-1")
    w.server.create("pods", w.namespace, replacementOf(victim))
    // The engine deletes the workload: the delete for the uid the cache shows is refused 409,
    // and the pod of that name, the workload's too, is deleted by name.
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(w.server.requests.filter((r) => r.method === "DELETE").length).toBe(2)
    expect(w.pods()).toEqual([])
    // Done when the watch shows the pod gone: it comes back at 0:05:30 and replays the victim's
    // DELETED (ignored: known gone), then the replacement's ADDED and DELETED.
    expect(d.list().map((x) => x.name)).toEqual(["eco-gi-1"])
    await w.advance(5 * MIN)
    expect(d.watchState).toBe("watching")
    expect(d.list()).toEqual([])
    expect(events.slice(2)).toEqual([{ type: "pod.deleted", resource: "gi-1", at: t(330) }])
    expect(w.reports.filter((r) => r.kind === "pod_lost" || r.kind === "pod_replaced")).toEqual([])
  }, 30_000)
})
