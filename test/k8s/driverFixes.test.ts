/**
 * Defects found in review of the Kubernetes driver, each reproduced against the API test
 * server and the scripted kubelet: a refused delete re-sent without end, a standby driver that
 * writes, a replacement whose create gave up, a node clock behind the engine's, a standby that
 * remembers every workload the leader deleted, a request that never answers.
 */
import { afterEach, describe, expect, it } from "vitest"
import type { ClusterEvent, WorkloadSpec } from "../../src/cluster.js"
import type { KubernetesCluster } from "../../src/k8s/cluster.js"
import { K8sWorld, START_MS, waitFor } from "./harness.js"

let world: K8sWorld | null = null
afterEach(async () => {
  await world?.close()
  world = null
})

const spec = (over: Partial<WorkloadSpec> = {}): WorkloadSpec => ({
  name: "eco-gi-1",
  resource: "gi-1",
  account: "acme",
  region: "us-east",
  gpu: "H100",
  gpu_count: 2,
  node_count: 1,
  image: null,
  volumes: [],
  service: null,
  ...over
})

const t = (s: number): number => START_MS + s * 1000
const S = 1000
const MIN = 60 * S

const open = async (options: Parameters<typeof K8sWorld.start>[0] = {}): Promise<{ w: K8sWorld; d: KubernetesCluster; events: ClusterEvent[] }> => {
  world = await K8sWorld.start(options)
  const d = await world.driver()
  const events: ClusterEvent[] = []
  d.subscribe((e) => events.push(e))
  return { w: world, d, events }
}

const running = async (w: K8sWorld, d: KubernetesCluster, s: WorkloadSpec = spec()): Promise<void> => {
  d.createWorkload(s)
  await w.advance(90 * S)
  expect(d.phaseOf(s.name)).toBe("running")
}

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

  it("a delete answered 404 while the cache is behind (a watch gap) means gone: one delete, pod.deleted, no pod_lost when the watch catches up", async () => {
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
    expect(events.at(-1)).toEqual({ type: "pod.deleted", resource: "gi-1", at: t(90) })
    expect(d.list()).toEqual([])
    // The watch comes back and delivers the pod's DELETED: nothing is rebuilt from it.
    await w.advance(5 * MIN)
    expect(d.watchState).toBe("watching")
    expect(d.list()).toEqual([])
    expect(deletes(w)).toBe(1)
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
  }, 30_000)
})
