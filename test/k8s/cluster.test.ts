/**
 * The Kubernetes driver (`KubernetesCluster`) against the API test server, through the real
 * @kubernetes/client-node, with the scripted kubelet on the stepped virtual clock. Each test
 * checks the world after the fact: the objects the server stores, the events the engine was
 * given (with their instants), and what the port's synchronous reads answer.
 */
import { Effect } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { kubernetesConfig } from "../../src/k8s/config.js"
import { kubernetesClusterLayer } from "../../src/k8s/world.js"
import { Cluster } from "../../src/services.js"
import type { ClusterEvent, VolumeSpec } from "../../src/cluster.js"
import { claimNameOf, podNamesOf } from "../../src/k8s/names.js"
import { podStateOf, podStoppedAt, workloadPhaseOf, type WorkloadMemory } from "../../src/k8s/podState.js"
import { K8sWorld, START_MS, runUntilReady, startWithDriver, waitFor, workloadSpec } from "./harness.js"

let world: K8sWorld | null = null
afterEach(async () => {
  await world?.close()
  world = null
})

const spec = workloadSpec

/** Seconds after the start, for readable event lists. */
const t = (s: number): number => START_MS + s * 1000
const S = 1000

const open = async (options: Parameters<typeof K8sWorld.start>[0] = {}) => {
  const started = await startWithDriver(options)
  world = started.w
  return started
}

const running = runUntilReady

describe("the Kubernetes driver creates the right pods", () => {
  it("one pod per GPU instance: deterministic name, labels, nvidia.com/gpu, region selector, preemptible class, no service account token", async () => {
    const { w, d } = await open()
    d.createWorkload(spec({ image: "acme/train:3" }))
    await w.settle()
    const [pod, ...rest] = w.pods()
    expect(rest).toEqual([])
    expect(pod!.metadata.name).toBe("eco-gi-1")
    expect(pod!.metadata.labels).toEqual({
      "ecolink.io/managed": "true",
      "ecolink.io/resource": "gi-1",
      "ecolink.io/account": "acme",
      "ecolink.io/region": "us-east",
      "ecolink.io/workload": "eco-gi-1",
      "ecolink.io/node-index": "0"
    })
    expect(pod!.metadata.annotations).toEqual({
      "ecolink.io/workload": "eco-gi-1",
      "ecolink.io/resource": "gi-1",
      "ecolink.io/account": "acme",
      "ecolink.io/region": "us-east",
      "ecolink.io/node-count": "1"
    })
    expect(pod!.spec).toMatchObject({
      restartPolicy: "Never",
      priorityClassName: "ecolink-preemptible",
      nodeSelector: { "topology.kubernetes.io/region": "us-east" },
      tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
      terminationGracePeriodSeconds: 30,
      // The customer's container gets no service account token (found by review).
      automountServiceAccountToken: false,
      containers: [{ name: "workload", image: "acme/train:3", resources: { requests: { "nvidia.com/gpu": "2" }, limits: { "nvidia.com/gpu": "2" } } }]
    })
    expect(pod!.spec.volumes).toBeUndefined()
  })

  it("a GPU cluster is node_count pods, loading when the last has started and running when the last is Ready", async () => {
    const { w, d, events } = await open()
    d.createWorkload(spec({ name: "eco-gc-1", resource: "gc-1", gpu_count: 8, node_count: 2 }))
    await w.advance(90 * S)
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.labels!["ecolink.io/node-index"], p.spec.nodeName])).toEqual([
      ["eco-gc-1-0", "0", "us-east-node-0"],
      ["eco-gc-1-1", "1", "us-east-node-1"]
    ])
    expect(events).toEqual([
      { type: "pod.loading", resource: "gc-1", at: t(60) },
      { type: "pod.running", resource: "gc-1", at: t(90), started_at: t(60) }
    ])
  })

  it("an inference replica: a DNS-safe pod name, the instance's Service, mounted volumes, the default priority", async () => {
    const { w, d, events } = await open()
    // The scheduler places no pod before its claims exist (the storage tests below show it waiting).
    d.ensureVolume({ id: "fs-1", account: "acme", kind: "shared_fs", size_gb: 500, region: "us-east" })
    d.createWorkload(spec({ name: "eco-inf-1@us-east", resource: "inf-1@us-east", gpu_count: 1, service: "inf-1", volumes: ["fs-1"] }))
    await w.advance(90 * S)
    const [pod] = w.pods()
    expect(pod!.metadata.name).toBe(podNamesOf("eco-inf-1@us-east", 1)[0])
    expect(pod!.metadata.name).toMatch(/^eco-inf-1-us-east-[0-9a-f]{8}$/)
    expect(pod!.metadata.labels).toMatchObject({ "ecolink.io/resource": "inf-1", "ecolink.io/instance": "inf-1" })
    expect(pod!.metadata.annotations).toMatchObject({ "ecolink.io/resource": "inf-1@us-east", "ecolink.io/service": "inf-1" })
    expect(pod!.spec.priorityClassName).toBeUndefined()
    expect(pod!.spec.volumes).toEqual([{ name: "eco-fs-1", persistentVolumeClaim: { claimName: "eco-fs-1" } }])
    expect(pod!.spec.containers[0].volumeMounts).toEqual([{ name: "eco-fs-1", mountPath: "/mnt/fs-1" }])
    expect(pod!.spec.containers[0].ports).toEqual([{ name: "http", containerPort: 8000 }])
    expect(pod!.spec.containers[0].readinessProbe).toEqual({ httpGet: { path: "/health", port: "http" }, periodSeconds: 5 })
    const services = w.server.objects("services", w.namespace)
    expect(services.map((s) => [s.metadata.name, s.spec.selector, s.spec.ports])).toEqual([["eco-inf-1", { "ecolink.io/instance": "inf-1" }, [{ name: "http", port: 8000, targetPort: 8000 }]]])
    expect(events.map((e) => e.type)).toEqual(["pod.loading", "pod.running"])

    d.deleteWorkload("eco-inf-1@us-east")
    await w.advance(0)
    expect(w.pods()).toEqual([])
    expect(w.server.objects("services", w.namespace)).toEqual([])
    expect(events.at(-1)).toEqual({ type: "pod.deleted", resource: "inf-1@us-east", at: t(90) })
    expect(d.get("eco-inf-1@us-east")).toBeUndefined()
  })

  it("a duplicate create makes one pod: twice from one driver, and from a second control plane at once (409 = already exists)", async () => {
    const { w, d } = await open()
    const other = await w.driver()
    d.createWorkload(spec())
    d.createWorkload(spec())
    other.createWorkload(spec())
    await w.advance(90 * S)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1"])
    const posts = w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/pods"))
    expect(posts.length).toBe(2) // one from each control plane; the second was refused with 409
    expect(w.reports.filter((r) => r.kind === "request_failed")).toEqual([])
    expect(d.get("eco-gi-1")).toEqual({ name: "eco-gi-1", resource: "gi-1", phase: "running", started_at: t(60) })
    expect(other.get("eco-gi-1")).toEqual({ name: "eco-gi-1", resource: "gi-1", phase: "running", started_at: t(60) })
    // A control plane that finds the pod already there does not even ask.
    const third = await w.driver()
    third.createWorkload(spec())
    await w.settle()
    expect(w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/pods")).length).toBe(2)
  })
})

describe("pod status becomes the engine's events", () => {
  it("pending, then loading when the containers start, then running when Ready, stamped with the engine clock", async () => {
    const { w, d, events } = await open()
    d.createWorkload(spec())
    expect(d.get("eco-gi-1")).toEqual({ name: "eco-gi-1", resource: "gi-1", phase: "pending", started_at: null })
    await w.advance(59 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("pending")
    expect(events).toEqual([])
    await w.advance(1 * S)
    expect(d.get("eco-gi-1")).toEqual({ name: "eco-gi-1", resource: "gi-1", phase: "loading", started_at: t(60) })
    await w.advance(30 * S)
    expect(d.list()).toEqual([{ name: "eco-gi-1", resource: "gi-1", phase: "running", started_at: t(60) }])
    expect(events).toEqual([
      { type: "pod.loading", resource: "gi-1", at: t(60) },
      { type: "pod.running", resource: "gi-1", at: t(90), started_at: t(60) }
    ])
  })

  it("a pod that fails (phase Failed) fails its workload; deleting it ends with pod.deleted once it is gone", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    w.kubelet.fail("gi-1")
    await w.settle()
    expect(d.phaseOf("eco-gi-1")).toBe("failed")
    d.deleteWorkload("eco-gi-1")
    d.deleteWorkload("eco-gi-1") // idempotent
    await w.advance(0)
    expect(w.pods()).toEqual([])
    expect(events.slice(2)).toEqual([
      { type: "pod.failed", resource: "gi-1", at: t(90) },
      { type: "pod.deleted", resource: "gi-1", at: t(90) }
    ])
    expect(w.server.requests.filter((r) => r.method === "DELETE").length).toBe(1)
  })

  it("maps pod objects as documented (pure)", () => {
    const pod = (status: Record<string, unknown>) => podStateOf({ status } as never)
    expect(pod({ phase: "Pending", conditions: [{ type: "PodScheduled", status: "True" }] })).toBe("pending")
    expect(pod({ phase: "Running", conditions: [{ type: "Ready", status: "False" }] })).toBe("started")
    expect(pod({ phase: "Running", conditions: [{ type: "Ready", status: "True" }] })).toBe("ready")
    expect(pod({ phase: "Running", conditions: [{ type: "Ready", status: "True" }, { type: "DisruptionTarget", status: "True", reason: "PreemptionByScheduler" }] })).toBe("disrupted")
    expect(pod({ phase: "Failed", reason: "Preempting" })).toBe("disrupted")
    expect(pod({ phase: "Failed", reason: "Evicted" })).toBe("failed")
    expect(pod({ phase: "Succeeded" })).toBe("failed")
    const m = (phase: WorkloadMemory["phase"], preempted = false, lost = false): WorkloadMemory => ({ phase, preempted, lost })
    expect(workloadPhaseOf(["ready", "started"], m("pending"))).toEqual({ phase: "loading", preempted: false })
    expect(workloadPhaseOf(["ready", "pending"], m("pending"))).toEqual({ phase: "pending", preempted: false })
    expect(workloadPhaseOf(["disrupted"], m("pending"))).toEqual({ phase: "pending", preempted: false })
    expect(workloadPhaseOf(["disrupted", "ready"], m("running"))).toEqual({ phase: "preempted", preempted: true })
    expect(workloadPhaseOf(["missing"], m("preempted", true))).toEqual({ phase: "preempted", preempted: true })
    expect(workloadPhaseOf(["started"], m("preempted", true))).toEqual({ phase: "preempted", preempted: true })
    expect(workloadPhaseOf(["ready"], m("preempted", true))).toEqual({ phase: "running", preempted: false })
    expect(workloadPhaseOf(["started"], m("running"))).toEqual({ phase: "running", preempted: false })
    expect(workloadPhaseOf(["ready", "failed"], m("running"))).toEqual({ phase: "failed", preempted: false })
    expect(workloadPhaseOf(["ready"], m("running", false, true))).toEqual({ phase: "failed", preempted: false })
  })
})

describe("preemption and resumption", () => {
  it("DisruptionTarget → pod.preempted; the victim goes, a replacement of the same name waits, and is running once Ready", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    expect(w.kubelet.preempt("gi-1")).toEqual({ ok: true })
    await w.advance(0)
    expect(d.phaseOf("eco-gi-1")).toBe("preempted")
    const [replacement, ...none] = w.pods()
    expect(none).toEqual([])
    expect(replacement!.metadata.uid).not.toBe("00000000-0000-4000-8000-000000000001")
    expect(replacement!.metadata.annotations!["ecolink.io/replacement"]).toBe("1")
    expect(replacement!.spec.nodeName).toBeUndefined()
    await w.advance(600 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("preempted")
    expect(w.kubelet.resume("gi-1")).toEqual({ ok: true })
    await w.advance(29 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("preempted") // started on the warm node, not Ready yet
    await w.advance(1 * S)
    expect(events.slice(2)).toEqual([
      { type: "pod.preempted", resource: "gi-1", at: t(90) },
      { type: "pod.running", resource: "gi-1", at: t(720), started_at: t(60) }
    ])
    expect(w.reports.filter((r) => r.kind === "pod_replaced")).toEqual([{ kind: "pod_replaced", at: t(90), workload: "eco-gi-1", pod: "eco-gi-1" }])
  })

  it("kubelet preemption (phase Failed, reason Preempting): the driver deletes the victim and creates its replacement", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    w.server.update("pods", w.namespace, "eco-gi-1", (o) => (o.status = { ...o.status, phase: "Failed", reason: "Preempting", message: "Preempted in order to admit critical pod" }))
    await w.advance(0)
    expect(events.at(-1)).toEqual({ type: "pod.preempted", resource: "gi-1", at: t(90) })
    expect(w.server.requests.filter((r) => r.method === "DELETE").map((r) => r.path)).toEqual([`/api/v1/namespaces/${w.namespace}/pods/eco-gi-1`])
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.annotations!["ecolink.io/replacement"]])).toEqual([["eco-gi-1", "1"]])
  })

  it("a preempted workload deleted by the engine: its pending replacement goes and pod.deleted follows, with no look-up of its own delete", async () => {
    // Also proves the driver's own delete of a pending pod, carried out at once (a DELETED with
    // no deletionTimestamp, as a label removed by hand looks), costs no GET: the driver asked
    // for it (`deleteAsked`). Before, each such delete was followed by a look-up by name.
    const { w, d, events } = await open()
    await running(w, d)
    w.kubelet.preempt("gi-1")
    await w.advance(0)
    const gets = () => w.server.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods/eco-gi-1")).length
    const before = gets()
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(w.pods()).toEqual([])
    expect(events.map((e) => e.type)).toEqual(["pod.loading", "pod.running", "pod.preempted", "pod.deleted"])
    expect(w.kubelet.free("us-east")).toEqual([8, 8])
    expect(gets() - before).toBe(0)
  })
})

describe("a stop always completes", () => {
  it("a pod whose kubelet never confirms its graceful delete is deleted again with no grace after pod_force_delete_after_ms", async () => {
    const { w, d, events } = await open({ limits: { pod_force_delete_after_ms: 10 * 60 * S } })
    await running(w, d)
    w.kubelet.silence("us-east")
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.deletionTimestamp])).toEqual([["eco-gi-1", "2026-03-01T00:02:00Z"]])
    // The watchdog repeats the delete every tick; before the limit it changes nothing.
    await w.advance(300 * S)
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    const deletes = () => w.server.requests.filter((r) => r.method === "DELETE").map((r) => r.query.gracePeriodSeconds ?? "default")
    expect(deletes()).toEqual(["default"])
    expect(events.map((e) => e.type)).toEqual(["pod.loading", "pod.running"])
    await w.advance(300 * S)
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(deletes()).toEqual(["default", "0"])
    expect(w.pods()).toEqual([])
    expect(events.at(-1)).toEqual({ type: "pod.deleted", resource: "gi-1", at: t(90 + 600) })
  })
})

describe("a pod deleted behind our back", () => {
  it("is handled, not ignored: the workload failed (pod.failed), no pod is recreated, and deleting it completes", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    w.kubelet.lose("gi-1")
    await w.settle()
    expect(d.get("eco-gi-1")).toEqual({ name: "eco-gi-1", resource: "gi-1", phase: "failed", started_at: t(60) })
    expect(w.pods()).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([{ kind: "pod_lost", at: t(90), workload: "eco-gi-1", pod: "eco-gi-1" }])
    d.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(events.slice(2)).toEqual([
      { type: "pod.failed", resource: "gi-1", at: t(90) },
      { type: "pod.deleted", resource: "gi-1", at: t(90) }
    ])
    expect(d.list()).toEqual([])
  })
})

describe("dating a stop (firstStopAt)", () => {
  it("a stop heard on time is dated when heard; one heard late from its pod's record, in whole seconds; firstStopAt answers from every stop seen", async () => {
    // Proves the port's promise in this world: a preemption heard 1.4 s late (the watch was
    // down) is dated at the DisruptionTarget's second (00:01:40) and its event carries it; a
    // stop in the second billing began counts from then; a later one heard at once is dated
    // when heard, as its event is, so a missed event is billed as the heard one would be.
    const { w, d, events } = await open()
    await running(w, d)
    expect(d.firstStopAt("eco-gi-1", t(0))).toBeNull()
    await w.advance(10 * S + 400)
    w.server.dropWatches({ abrupt: true })
    await waitFor(d, () => d.watchState === "backoff")
    w.kubelet.preempt("gi-1")
    await w.advance(0)
    expect(w.pods()).toEqual([]) // the victim is gone before the watch is back: only its events tell
    await w.advance(1 * S)
    expect(events.slice(2)).toEqual([{ type: "pod.preempted", resource: "gi-1", at: t(101) + 400, ended_at: t(100) }])
    expect(d.firstStopAt("eco-gi-1", t(0))).toBe(t(100))
    expect(d.firstStopAt("eco-gi-1", t(100) + 500)).toBe(t(100) + 500)
    expect(d.firstStopAt("eco-gi-1", t(101))).toBeNull()

    w.kubelet.resume("gi-1")
    await w.advance(30 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("running")
    await w.advance(600 * S)
    w.kubelet.preempt("gi-1")
    await w.settle()
    expect(events.slice(3)).toEqual([
      { type: "pod.running", resource: "gi-1", at: t(131) + 400, started_at: t(60) },
      { type: "pod.preempted", resource: "gi-1", at: t(731) + 400 }
    ])
    expect(d.firstStopAt("eco-gi-1", t(131) + 400)).toBe(t(731) + 400)
    expect(d.firstStopAt("eco-gi-1", t(0))).toBe(t(100))
  })

  it("a new control plane dates a failure no driver saw from its container's finishedAt, and forgets it with the workload", async () => {
    // The pod fails at 00:13:00 while no driver runs; the next one lists it at 00:18:00. A
    // workload found running has no stop; a deleted one's stops go with it (bounded memory).
    const { w, d } = await open()
    await running(w, d)
    d.createWorkload(spec({ name: "eco-gi-2", resource: "gi-2" }))
    await w.advance(90 * S)
    d.stop()
    await w.advance(600 * S)
    w.kubelet.fail("gi-1")
    await w.advance(300 * S)
    const next = await w.driver()
    expect(next.phaseOf("eco-gi-1")).toBe("failed")
    expect(next.firstStopAt("eco-gi-1", t(60))).toBe(t(780))
    expect(next.firstStopAt("eco-gi-2", t(0))).toBeNull()
    next.deleteWorkload("eco-gi-1")
    await w.advance(0)
    expect(next.get("eco-gi-1")).toBeUndefined()
    expect(next.firstStopAt("eco-gi-1", t(0))).toBeNull()
  })

  it("reads a pod's stop from its own record (pure): DisruptionTarget, then the last container to finish, then a removed pod's deletion", () => {
    // The fields as data, in both shapes the driver gets them (watch strings, list Dates).
    const at = (iso: string) => Date.parse(iso)
    const pod = (status: Record<string, unknown>, metadata: Record<string, unknown> = {}) => ({ metadata, status }) as never
    const disrupted = { type: "DisruptionTarget", status: "True", reason: "PreemptionByScheduler", lastTransitionTime: "2026-03-01T00:01:40Z" }
    const terminated = (finishedAt: string | Date) => ({ name: "c", image: "", imageID: "", ready: false, restartCount: 0, state: { terminated: { exitCode: 1, finishedAt } } })
    expect(podStoppedAt(pod({ phase: "Running", conditions: [{ type: "Ready", status: "True" }, disrupted] }), false)).toBe(at("2026-03-01T00:01:40Z"))
    // A list hands the driver Dates, a watch strings: both read the same.
    expect(podStoppedAt(pod({ phase: "Failed", containerStatuses: [terminated("2026-03-01T00:02:00Z"), terminated(new Date("2026-03-01T00:02:05Z"))] }), false)).toBe(at("2026-03-01T00:02:05Z"))
    expect(podStoppedAt(pod({ phase: "Failed", conditions: [disrupted], containerStatuses: [terminated("2026-03-01T00:02:00Z")] }), false)).toBe(at("2026-03-01T00:01:40Z"))
    expect(podStoppedAt(pod({ phase: "Succeeded", containerStatuses: [terminated("2026-03-01T00:03:00Z")] }), false)).toBe(at("2026-03-01T00:03:00Z"))
    expect(podStoppedAt(pod({ phase: "Failed", reason: "Preempting" }), false)).toBeNull()
    // A container restarted in place is no stop: our pods never restart one (restartPolicy Never).
    const restarted = { name: "c", image: "", imageID: "", ready: true, restartCount: 1, state: { running: { startedAt: "2026-03-01T00:05:00Z" } }, lastState: { terminated: { exitCode: 1, finishedAt: "2026-03-01T00:04:00Z" } } }
    expect(podStoppedAt(pod({ phase: "Running", containerStatuses: [restarted] }), false)).toBeNull()
    // Removed while terminating: gone by the end of its grace period; still there, not stopped.
    const terminating = pod({ phase: "Running", conditions: [{ type: "Ready", status: "True" }] }, { deletionTimestamp: "2026-03-01T00:06:30Z", deletionGracePeriodSeconds: 30 })
    expect(podStoppedAt(terminating, true)).toBe(at("2026-03-01T00:06:30Z"))
    expect(podStoppedAt(terminating, false)).toBeNull()
    expect(podStoppedAt(pod({ phase: "Running" }), true)).toBeNull()
  })
})

describe("watch robustness", () => {
  it("a dropped stream is re-opened from the last resourceVersion after the backoff; what changed meanwhile arrives then, a stop dated from the pod's record", async () => {
    const { w, d, events } = await open()
    await running(w, d)
    const rv = d.observedResourceVersion()
    w.server.dropWatches({ abrupt: true })
    // The client notices a reset socket a moment later, in wall time.
    await waitFor(d, () => d.watchState === "backoff")
    w.kubelet.preempt("gi-1")
    await w.settle()
    expect(events.length).toBe(2) // nothing heard while the stream is down
    await w.advance(999)
    expect(events.length).toBe(2)
    await w.advance(1)
    expect(d.watchState).toBe("watching")
    // Heard a second late: the DisruptionTarget's lastTransitionTime says when it stopped.
    expect(events.slice(2)).toEqual([{ type: "pod.preempted", resource: "gi-1", at: t(91), ended_at: t(90) }])
    const watches = w.server.requests.filter((r) => r.query.watch === "true")
    expect(watches.at(-1)!.query).toMatchObject({ resourceVersion: rv, allowWatchBookmarks: "true", labelSelector: "ecolink.io/managed=true" })
    expect(w.reports.filter((r) => r.kind === "watch_restarted")).toEqual([{ kind: "watch_restarted", at: t(90), reason: "dropped", backoff_ms: 1000 }])
  })

  it("backs off exponentially up to pods_watch_backoff_ms_max while the server refuses, and resets once connected", async () => {
    const { w, d } = await open()
    w.server.inject({ method: "GET", path: "/pods", status: 500, times: 6 })
    w.server.dropWatches()
    await w.advance(60 * S)
    expect(d.watchState).toBe("watching")
    expect(w.reports.map((r) => (r.kind === "watch_restarted" ? r.backoff_ms : r.kind))).toEqual([1000, 2000, 4000, 8000, 8000, 8000, 8000])
    w.server.dropWatches()
    await w.settle()
    expect(w.reports.at(-1)).toEqual({ kind: "watch_restarted", at: w.clock.now(), reason: "dropped", backoff_ms: 1000 })
  })

  for (const expired_as of ["event", "status"] as const) {
    it(`410 Gone (${expired_as === "event" ? "an ERROR event" : "HTTP 410"}) relists and rewatches; changes missed meanwhile are reported from the diff`, async () => {
      const { w, d, events } = await open()
      await running(w, d)
      d.createWorkload(spec({ name: "eco-gi-2", resource: "gi-2" }))
      await w.settle()
      w.server.dropWatches()
      w.server.expiredAs = expired_as
      await w.settle()
      // While nobody watches, a pod vanishes and the history is compacted: only a list can tell.
      await w.advance(500)
      w.kubelet.lose("gi-1")
      w.server.compact()
      await w.advance(60 * S)
      expect(w.reports.map((r) => r.kind)).toEqual(["watch_restarted", "watch_restarted", "pod_lost", "relisted"])
      expect(w.reports[1]).toEqual({ kind: "watch_restarted", at: t(91), reason: "expired", backoff_ms: 0 })
      expect(events.slice(2)).toEqual([
        { type: "pod.failed", resource: "gi-1", at: t(91) },
        { type: "pod.loading", resource: "gi-2", at: t(150) }
      ])
      expect(d.watchConnected).toBe(true)
      const lists = w.server.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods") && r.query.watch === undefined)
      expect(lists.length).toBe(2)
    })
  }
  it("a relist refused 429 with Retry-After waits what the server asked before it lists again", async () => {
    // Proves the fix (operator review): the relist after a 410 that API Priority and Fairness
    // refused was tried again after the driver's own backoff (1 s here), not the 5 s it asked.
    const { w, d } = await open()
    await running(w, d)
    w.server.dropWatches()
    w.server.expiredAs = "status"
    w.server.inject({ method: "GET", path: "/pods", watch: false, status: 429, retryAfter: 5, times: 1 })
    await w.settle()
    // While nobody watches, a pod vanishes and the history is compacted: the watch is told 410.
    await w.advance(500)
    w.kubelet.lose("gi-1")
    w.server.compact()
    await w.advance(30 * S)
    expect(w.reports.filter((r) => r.kind === "watch_restarted").map((r) => [r.reason, (r as { backoff_ms: number }).backoff_ms])).toEqual([
      ["dropped", 1_000],
      ["expired", 0],
      ["dropped", 5_000]
    ])
    expect(d.watchConnected).toBe(true)
  })
})

describe("retries and restarts", () => {
  it("a create refused with 500 is retried after a backoff on the engine clock; one pod results", async () => {
    const { w, d } = await open()
    w.server.inject({ method: "POST", path: "/pods", status: 500, times: 2 })
    d.createWorkload(spec())
    await w.settle()
    expect(w.pods()).toEqual([])
    await w.advance(3 * S)
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1"])
    expect(w.reports).toEqual([
      { kind: "request_failed", at: t(0), what: "create pod eco-gi-1", status: 500, final: false },
      { kind: "request_failed", at: t(1), what: "create pod eco-gi-1", status: 500, final: false }
    ])
  })

  it("gives up after request_attempts_max and says so; the workload stays pending, and the driver's slow retry creates it once the API server answers", async () => {
    const { w, d } = await open()
    w.server.inject({ method: "POST", path: "/pods", status: 503 })
    d.createWorkload(spec())
    // Attempts at 0, 1, 3, 7 and 11 s (TEST_LIMITS' backoff): the last gives up.
    await w.advance(12 * S)
    expect(w.reports.map((r) => (r.kind === "request_failed" ? [r.at - START_MS, r.final] : null))).toEqual([
      [0, false],
      [1 * S, false],
      [3 * S, false],
      [7 * S, false],
      [11 * S, true]
    ])
    expect(d.phaseOf("eco-gi-1")).toBe("pending")
    expect(w.pods()).toEqual([])
    // Nobody else asks again (the reconciliation leaves a pending GPU resource to the 15-minute
    // rule): the driver tries again own_retry_ms_min (10 s) after the give-up, doubling while
    // refused, and the create goes through once the API server answers.
    w.server.clearFailures()
    await w.advance(10 * S + 90 * S)
    expect(d.phaseOf("eco-gi-1")).toBe("running")
    expect(w.reports.filter((r) => r.kind === "request_failed")).toHaveLength(5)
  })

  it("a new control plane finds the pods of the last one: workloads rebuilt from annotations, no events for what it found", async () => {
    const { w, d } = await open()
    await running(w, d)
    d.createWorkload(spec({ name: "eco-gc-1", resource: "gc-1", gpu_count: 4, node_count: 2 }))
    await w.settle()
    d.stop()
    const next = await w.driver()
    const heard: ClusterEvent[] = []
    next.subscribe((e) => heard.push(e))
    expect(next.list()).toEqual([
      { name: "eco-gc-1", resource: "gc-1", phase: "pending", started_at: null },
      { name: "eco-gi-1", resource: "gi-1", phase: "running", started_at: null }
    ])
    await w.advance(90 * S)
    expect(heard.map((e) => [e.type, e.resource])).toEqual([
      ["pod.loading", "gc-1"],
      ["pod.running", "gc-1"]
    ])
  })

  it("as an Effect layer: the cluster service is started (its cache filled) when built, and stopped with its scope", async () => {
    const { w, d } = await open()
    await running(w, d)
    const config = kubernetesConfig({ namespace: w.namespace, regions: [{ name: "us-east", nodes: 2, gpus_per_node: 8 }] })
    const seen = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const cluster = yield* Cluster
          return { list: cluster.list(), regions: cluster.regionNames() }
        }).pipe(Effect.provide(kubernetesClusterLayer(w.kubeconfig, w.clock, config)))
      )
    )
    expect(seen).toEqual({ list: [{ name: "eco-gi-1", resource: "gi-1", phase: "running", started_at: null }], regions: ["us-east"] })
  })
})

describe("storage: one PersistentVolumeClaim per drive or shared filesystem", () => {
  const drive = (over: Partial<VolumeSpec> = {}): VolumeSpec => ({ id: "dr-1", account: "acme", kind: "cloud_drive", size_gb: 100, region: "us-east", ...over })
  const filesystem = (over: Partial<VolumeSpec> = {}): VolumeSpec => drive({ id: "fs-1", kind: "shared_fs", size_gb: 500, ...over })
  const claims = (w: K8sWorld) => w.server.objects("persistentvolumeclaims", w.namespace)
  const claimRequests = (w: K8sWorld) => w.server.requests.filter((r) => r.path.includes("/persistentvolumeclaims")).map((r) => `${r.method} ${r.path.split("/").at(-1)}`)
  const failures = (w: K8sWorld) => w.reports.filter((r) => r.kind === "request_failed")

  it("ensureVolume creates the claim the pods mount: its name, labels, size in Gi, access mode and StorageClass by kind", async () => {
    const { w, d } = await open()
    d.ensureVolume(drive())
    // Recorded at once; carried out over HTTP.
    expect(d.volumeState("dr-1")).toBe("creating")
    await w.settle()
    d.ensureVolume(filesystem())
    await w.settle()
    expect(claims(w)).toEqual([
      {
        apiVersion: "v1",
        kind: "PersistentVolumeClaim",
        metadata: {
          name: "eco-dr-1",
          namespace: "ecolink",
          uid: "00000000-0000-4000-8000-000000000001",
          resourceVersion: "1",
          creationTimestamp: "2026-03-01T00:00:00Z",
          generation: 1,
          finalizers: ["kubernetes.io/pvc-protection"],
          labels: { "ecolink.io/managed": "true", "ecolink.io/resource": "dr-1", "ecolink.io/account": "acme", "ecolink.io/region": "us-east" },
          annotations: { "ecolink.io/resource": "dr-1", "ecolink.io/account": "acme", "ecolink.io/region": "us-east" }
        },
        spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "100Gi" } }, volumeMode: "Filesystem", storageClassName: "ecolink-cloud-drive" },
        status: { phase: "Pending" }
      },
      {
        apiVersion: "v1",
        kind: "PersistentVolumeClaim",
        metadata: {
          name: "eco-fs-1",
          namespace: "ecolink",
          uid: "00000000-0000-4000-8000-000000000002",
          resourceVersion: "2",
          creationTimestamp: "2026-03-01T00:00:00Z",
          generation: 1,
          finalizers: ["kubernetes.io/pvc-protection"],
          labels: { "ecolink.io/managed": "true", "ecolink.io/resource": "fs-1", "ecolink.io/account": "acme", "ecolink.io/region": "us-east" },
          annotations: { "ecolink.io/resource": "fs-1", "ecolink.io/account": "acme", "ecolink.io/region": "us-east" }
        },
        spec: { accessModes: ["ReadWriteMany"], resources: { requests: { storage: "500Gi" } }, volumeMode: "Filesystem", storageClassName: "ecolink-shared-fs" },
        status: { phase: "Pending" }
      }
    ])
    expect([d.volumeState("dr-1"), d.volumeState("fs-1"), d.volumeState("other")]).toEqual(["created", "created", undefined])
    expect(failures(w)).toEqual([])
  })

  it("a pod mounts the very claims ensureVolume created, an engine id that is no DNS label included, and runs", async () => {
    const { w, d } = await open()
    d.ensureVolume(drive({ id: "Drive_7" }))
    d.ensureVolume(filesystem())
    await running(w, d, spec({ volumes: ["Drive_7", "fs-1"] }))
    const names = claims(w).map((c) => c.metadata.name)
    expect(names).toEqual([claimNameOf("Drive_7"), "eco-fs-1"].sort())
    expect(claimNameOf("Drive_7")).toMatch(/^eco-drive-7-[0-9a-f]{8}$/)
    expect(claims(w).find((c) => c.metadata.name === claimNameOf("Drive_7"))!.metadata.annotations).toEqual({ "ecolink.io/resource": "Drive_7", "ecolink.io/account": "acme", "ecolink.io/region": "us-east" })
    const [pod] = w.pods()
    expect(pod!.spec.volumes).toEqual([
      { name: claimNameOf("Drive_7"), persistentVolumeClaim: { claimName: claimNameOf("Drive_7") } },
      { name: "eco-fs-1", persistentVolumeClaim: { claimName: "eco-fs-1" } }
    ])
    expect(pod!.spec.containers[0].volumeMounts).toEqual([
      { name: claimNameOf("Drive_7"), mountPath: "/mnt/Drive_7" },
      { name: "eco-fs-1", mountPath: "/mnt/fs-1" }
    ])
  })

  it("the StorageClass of each kind comes from the configuration; null leaves it to the cluster's default class", async () => {
    const { w, d } = await open({ config: { cloud_drive_storage_class: null, shared_fs_storage_class: "nfs-client" } })
    d.ensureVolume(drive())
    d.ensureVolume(filesystem())
    await w.settle()
    expect(claims(w).map((c) => [c.metadata.name, c.spec])).toEqual([
      ["eco-dr-1", { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "100Gi" } }, volumeMode: "Filesystem" }],
      ["eco-fs-1", { accessModes: ["ReadWriteMany"], resources: { requests: { storage: "500Gi" } }, volumeMode: "Filesystem", storageClassName: "nfs-client" }]
    ])
  })

  it("a duplicate ensure is one claim and no error: twice at once, again later, and from a second control plane (409 = it exists)", async () => {
    const { w, d } = await open()
    const other = await w.driver()
    d.ensureVolume(drive())
    d.ensureVolume(drive()) // a create is under way: nothing more to send
    other.ensureVolume(drive())
    await w.settle()
    d.ensureVolume(drive()) // level-triggered: asked again, answered 409
    await w.settle()
    expect(claims(w).map((c) => [c.metadata.name, c.metadata.uid])).toEqual([["eco-dr-1", "00000000-0000-4000-8000-000000000001"]])
    expect(claimRequests(w)).toEqual(["POST persistentvolumeclaims", "POST persistentvolumeclaims", "POST persistentvolumeclaims"])
    expect(failures(w)).toEqual([])
    expect([d.volumeState("dr-1"), other.volumeState("dr-1")]).toEqual(["created", "created"])
  })

  it("deleteVolume deletes the claim; deleting it again, or a claim this driver never created, is fine (404)", async () => {
    const { w, d } = await open()
    d.ensureVolume(drive())
    await w.settle()
    d.deleteVolume("dr-1")
    expect(d.volumeState("dr-1")).toBe("deleting")
    await w.settle()
    expect(claims(w)).toEqual([])
    expect(d.volumeState("dr-1")).toBeUndefined()
    d.deleteVolume("dr-1")
    await w.settle()
    d.deleteVolume("dr-9")
    await w.settle()
    expect(claimRequests(w)).toEqual(["POST persistentvolumeclaims", "DELETE eco-dr-1", "DELETE eco-dr-1", "DELETE eco-dr-9"])
    expect(failures(w)).toEqual([])
    expect(d.volumeState("dr-9")).toBeUndefined()
  })

  it("the last command wins: a delete while the create is in flight, an ensure while the delete is", async () => {
    const { w, d } = await open()
    d.ensureVolume(drive())
    d.deleteVolume("dr-1")
    await w.settle()
    expect(claims(w)).toEqual([])
    d.ensureVolume(drive({ id: "dr-2" }))
    await w.settle()
    d.deleteVolume("dr-2")
    d.ensureVolume(drive({ id: "dr-2", size_gb: 200 }))
    await w.settle()
    expect(claims(w).map((c) => [c.metadata.name, c.spec.resources.requests.storage])).toEqual([["eco-dr-2", "200Gi"]])
    // One request at a time per claim, in the order asked: the server never sees them cross.
    expect(claimRequests(w)).toEqual(["POST persistentvolumeclaims", "DELETE eco-dr-1", "POST persistentvolumeclaims", "DELETE eco-dr-2", "POST persistentvolumeclaims"])
    expect(d.volumeState("dr-2")).toBe("created")
  })

  it("a pod whose claim is missing waits Unschedulable, and is placed the moment the claim is created", async () => {
    const { w, d, events } = await open()
    d.createWorkload(spec({ volumes: ["dr-1"] }))
    await w.advance(300 * S)
    expect(d.podsOf("eco-gi-1")).toEqual([{ pod: "eco-gi-1", state: "pending", node: null, reason: 'Unschedulable: 0/2 nodes are available: persistentvolumeclaim "eco-dr-1" not found.' }])
    d.ensureVolume(drive())
    await w.advance(90 * S)
    expect(events).toEqual([
      { type: "pod.loading", resource: "gi-1", at: t(360) },
      { type: "pod.running", resource: "gi-1", at: t(390), started_at: t(360) }
    ])
  })

  it("a create refused 429 with Retry-After is retried no sooner than the server asked, and a wait past retry_after_ms_max is cut to it", async () => {
    // Proves the fix (operator review): the driver retried a 429 of API Priority and Fairness
    // after its own backoff (1 s, then 2 s here) whatever the server's Retry-After said, adding
    // load to an API server that had asked for less.
    const { w, d } = await open({ limits: { retry_after_ms_max: 20_000 } })
    const posts = () => w.server.requests.filter((r) => r.method === "POST" && r.path.endsWith("/persistentvolumeclaims")).length
    w.server.inject({ method: "POST", path: "/persistentvolumeclaims", status: 429, retryAfter: 7, times: 2 })
    d.ensureVolume(drive())
    const counts: number[] = []
    for (const s of [6, 7, 13, 14]) {
      await w.advance(t(s) - w.clock.now())
      counts.push(posts())
    }
    // The first create at 0 s, its retries at 7 s and 14 s (not at 1 s and 3 s).
    expect(counts).toEqual([1, 2, 2, 3])
    expect(failures(w)).toEqual([0, 7].map((s) => ({ kind: "request_failed", at: t(s), what: "create persistentvolumeclaim eco-dr-1", status: 429, final: false })))
    await w.advance(10 * S)
    expect(claims(w).map((c) => c.metadata.name)).toEqual(["eco-dr-1"])

    // An hour asked for: the retry comes after retry_after_ms_max (20 s), not after an hour.
    w.server.inject({ method: "POST", path: "/persistentvolumeclaims", status: 429, retryAfter: 3_600, times: 1 })
    d.ensureVolume(drive({ id: "dr-2" }))
    await w.advance(19 * S)
    expect(posts()).toBe(4)
    await w.advance(2 * S)
    expect(posts()).toBe(5)
    await w.advance(10 * S)
    expect(claims(w).map((c) => c.metadata.name)).toEqual(["eco-dr-1", "eco-dr-2"])
  })

  it("a create that fails is retried on the engine clock; one that gave up is asked again with the next workload mounting it", async () => {
    const { w, d } = await open()
    w.server.inject({ method: "POST", path: "/persistentvolumeclaims", status: 503 })
    d.ensureVolume(drive())
    await w.advance(60 * S)
    expect(failures(w)).toEqual(
      [0, 1, 3, 7, 11].map((s, i) => ({ kind: "request_failed", at: t(s), what: "create persistentvolumeclaim eco-dr-1", status: 503, final: i === 4 }))
    )
    expect(d.volumeState("dr-1")).toBe("create_failed")
    expect(claims(w)).toEqual([])
    w.server.clearFailures()
    d.createWorkload(spec({ volumes: ["dr-1"] }))
    await w.advance(90 * S)
    expect(claims(w).map((c) => c.metadata.name)).toEqual(["eco-dr-1"])
    expect(d.volumeState("dr-1")).toBe("created")
    expect(d.phaseOf("eco-gi-1")).toBe("running")
  })

  it("a claim a pod still mounts is kept until the pod is gone (pvc-protection); the driver's delete is done when accepted", async () => {
    const { w, d } = await open()
    d.ensureVolume(drive())
    await running(w, d, spec({ volumes: ["dr-1"] }))
    d.deleteWorkload("eco-gi-1")
    d.deleteVolume("dr-1")
    await w.settle()
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.deletionTimestamp])).toEqual([["eco-gi-1", "2026-03-01T00:02:00Z"]])
    expect(claims(w).map((c) => [c.metadata.name, c.metadata.deletionTimestamp, c.metadata.finalizers])).toEqual([["eco-dr-1", "2026-03-01T00:01:30Z", ["kubernetes.io/pvc-protection"]]])
    expect(d.volumeState("dr-1")).toBeUndefined()
    await w.advance(0)
    expect(w.pods()).toEqual([])
    expect(claims(w)).toEqual([])
    expect(failures(w)).toEqual([])
  })
})
