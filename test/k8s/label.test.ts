/**
 * A pod of ours taken out of the list/watch selector by hand (`kubectl label pod eco-gi-1
 * ecolink.io/managed-`): the API server reports it DELETED to a watch of `ecolink.io/managed=true`
 * (it no longer matches) and leaves it out of every selected list, though it runs on its GPUs.
 * Before, the engine took it for gone (the instance failed, its hold refunded) while the pod ran
 * on, unpaid, unseen by the orphan sweep. Now the driver looks it up by name, finds the same pod
 * (its uid) still there, puts the label back and keeps it as the instance's: the instance runs on,
 * billed for the GPUs it holds, and is stopped at its deadline with its pod
 * (docs/KUBERNETES.md, "A pod taken out of our selector").
 */
import { CoreV1Api, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node"
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { costMicros, dollars, formatDollars } from "../../src/money.js"
import type { GpuView, InferenceView } from "../../src/resources.js"
import { tmpDb } from "../helpers.js"
import { labelValue, podNamesOf } from "../../src/k8s/names.js"
import { caughtUp, K8sWorld, START_MS, workloadSpec } from "./harness.js"
import { EngineOnDriver } from "./timelineWorld.js"

let world: K8sWorld | null = null
let opened: EngineOnDriver | null = null
afterEach(async () => {
  opened?.stop()
  opened = null
  await world?.close()
  world = null
})

const S = 1_000
const MIN = 60 * S
const RATE = dollars("1.60")
const MANAGED = "ecolink.io/managed"

/**
 * 1 × H100 at $1.60/h for 2 h (a $3.20 hold) in the default region: pulled in 60 s, started in
 * 30 s, so billed from 0:01:00 (loading) to its deadline at 2:01:00.
 */
const open = async (pod_stop_ms = 0) => {
  world = await K8sWorld.start({ regions: [{ name: "us-east", nodes: 2, gpus_per_node: 8, image_pull_ms: 60_000, container_start_ms: 30_000, pod_stop_ms }] })
  const w = world
  const o = (opened = await EngineOnDriver.open(w, new Map([["H100", RATE]]), tmpDb()))
  expect(Either.isRight(o.sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
  return {
    w,
    o,
    view: () => Either.getOrThrow(o.sup.describe("gi-1")) as GpuView,
    /** What the API server holds: each pod's name, uid, managed label and deletion mark. */
    pods: () => w.pods().map((p) => [p.metadata.name, p.metadata.uid, p.metadata.labels?.[MANAGED] ?? null, p.metadata.deletionTimestamp ?? null]),
    rows: () => o.current.ledger.ledgerRows().filter((r) => r.resource === "gi-1").map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros)]),
    moves: () => o.current.ledger.transitions().filter((t) => t.resource === "gi-1").map((t) => [t.at - START_MS, t.from_state, t.to_state, t.reason])
  }
}

/** What `kubectl label pod <name> ecolink.io/managed-` sends: a JSON merge patch, from an operator's own client. */
const unlabelByHand = async (w: K8sWorld, name: string): Promise<void> => {
  const core = w.kubeConfig("operator").makeApiClient(CoreV1Api)
  await core.patchNamespacedPod({ name, namespace: w.namespace, body: { metadata: { labels: { [MANAGED]: null } } } }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch))
}

/** The instance ran its two hours: the whole hold consumed, nothing refunded, no pod left. */
const ranToItsDeadline = (t: Awaited<ReturnType<typeof open>>): void => {
  expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "duration_expired", billable_ms: 120 * MIN })
  expect(t.pods()).toEqual([])
  expect(t.rows()).toEqual([[0, "gpu_usage", "-3.20"]])
  expect(t.moves()).toEqual([
    [1 * MIN, "pending", "loading", null],
    [1.5 * MIN, "loading", "running", null],
    [121 * MIN, "running", "terminating", "duration_expired"],
    [121 * MIN, "terminating", "terminated", "duration_expired"]
  ])
}

describe("a pod whose ecolink.io/managed label is removed by hand runs for no one unpaid", () => {
  it("while the engine watches: the label is put back on the same pod, the instance runs on, billed to its deadline, and its pod is deleted then", async () => {
    const t = await open()
    const { w } = t
    await w.advance(30 * MIN)
    expect(t.view().status).toBe("running")
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    // 0:30: the operator removes the label; the engine's watch is told DELETED (no deletion mark).
    await unlabelByHand(w, "eco-gi-1")
    await w.advance(0)
    // The same pod, labelled again, not deleted; the instance still running and billed.
    expect(t.pods()).toEqual([["eco-gi-1", uid, "true", null]])
    expect(t.view()).toMatchObject({ status: "running", termination_reason: null })
    expect(t.rows()).toEqual([[0, "gpu_usage", "-3.20"]])
    expect(w.reports.filter((r) => r.kind === "pod_lost")).toEqual([])
    // The watch sees it again: at its deadline it is stopped and its pod deleted.
    await w.advance(92 * MIN)
    ranToItsDeadline(t)
  }, 30_000)

  it("while the control plane is down: the restarted driver finds the pod out of its selector, puts the label back, and the instance runs on to its deadline", async () => {
    const t = await open()
    const { w, o } = t
    await w.advance(30 * MIN)
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    // Down from 0:30 to 0:40; at 0:35 the operator removes the label (the API server's own
    // change, as the patch above makes it). The restarted driver's list shows no pod in its
    // selector: before, the reconciliation at start took the instance for lost (failed at 0:40,
    // refunded) while its pod ran on.
    await o.outage(40 * MIN, [[35 * MIN, () => void w.server.update("pods", w.namespace, "eco-gi-1", (p) => delete p.metadata.labels![MANAGED])]])
    await w.advance(0)
    expect(t.pods()).toEqual([["eco-gi-1", uid, "true", null]])
    expect(t.view()).toMatchObject({ status: "running", termination_reason: null })
    expect(t.rows()).toEqual([[0, "gpu_usage", "-3.20"]])
    await w.advance(82 * MIN)
    ranToItsDeadline(t)
  }, 30_000)

  it("a pod changed to ecolink.io/managed=false and then terminated by the user: labelled back, then deleted with its instance, billed to the terminate", async () => {
    const t = await open()
    const { w, o } = t
    await w.advance(30 * MIN)
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    const core = w.kubeConfig("operator").makeApiClient(CoreV1Api)
    await core.patchNamespacedPod({ name: "eco-gi-1", namespace: w.namespace, body: { metadata: { labels: { [MANAGED]: "false" } } } }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch))
    await w.advance(0)
    expect(t.pods()).toEqual([["eco-gi-1", uid, "true", null]])
    await w.advance(30 * MIN)
    expect(Either.isRight(o.sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(t.pods()).toEqual([])
    expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "user_requested", billable_ms: 59 * MIN })
    expect(t.rows()).toEqual([
      [0, "gpu_usage", "-3.20"],
      [60 * MIN, "refund", "1.626667"]
    ])
  }, 30_000)
})

/** What an operator's `kubectl label pod` sends: a JSON merge patch of labels (null removes one). */
const labelByHand = async (w: K8sWorld, name: string, labels: Record<string, string | null>): Promise<void> => {
  const core = w.kubeConfig("operator").makeApiClient(CoreV1Api)
  await core.patchNamespacedPod({ name, namespace: w.namespace, body: { metadata: { labels } } }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch))
}

const INSTANCE = "ecolink.io/instance"
/** The engine's workload of each replica (`podNameFor`), and so its pod's name. */
const US_EAST = podNamesOf("eco-inf-1@us-east", 1)[0]!
const EU_WEST = podNamesOf("eco-inf-1@eu-west", 1)[0]!

/**
 * One inference instance `inf-1` of acme: two replicas (eu-west, us-east) of 1 × H100 at
 * $1.60/h, a $76.80 hold for its first day, each billed from 0:01:00 (pulled in 60 s, started in
 * 30 s). Its Service `eco-inf-1` selects the replicas' pods by `ecolink.io/instance=inf-1`.
 */
const openInference = async () => {
  const region = (name: string) => ({ name, nodes: 2, gpus_per_node: 8, image_pull_ms: 60_000, container_start_ms: 30_000, pod_stop_ms: 0 })
  world = await K8sWorld.start({ regions: [region("eu-west"), region("us-east")] })
  const w = world
  const o = (opened = await EngineOnDriver.open(w, new Map([["H100", RATE]]), tmpDb()))
  expect(Either.isRight(o.sup.registerModel({ account: "acme", model: "llama", source: "huggingface", gpu: "H100", gpu_count: 1 }))).toBe(true)
  expect(Either.isRight(o.sup.launchInference({ account: "acme", id: "inf-1", model: "llama" }))).toBe(true)
  const podNames = () => w.pods().map((p) => p.metadata.name)
  return {
    w,
    o,
    view: () => Either.getOrThrow(o.sup.describe("inf-1")) as InferenceView,
    labelsOf: (name: string) => w.server.object("pods", w.namespace, name)!.metadata.labels,
    uidOf: (name: string) => w.server.object("pods", w.namespace, name)!.metadata.uid,
    podNames,
    /** The pods the instance's Service selects (its selector matched against each pod's labels): where `/v1` traffic goes. */
    served: () => {
      const services = w.server.objects("services", w.namespace)
      expect(services.map((s) => [s.metadata.name, s.spec.selector])).toEqual([["eco-inf-1", { [INSTANCE]: "inf-1" }]])
      const selector = services[0]!.spec.selector as Record<string, string>
      return w
        .pods()
        .filter((p) => Object.entries(selector).every(([k, v]) => p.metadata.labels?.[k] === v))
        .map((p) => p.metadata.name)
    },
    rows: () => o.current.ledger.ledgerRows().filter((r) => r.resource === "inf-1").map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros)]),
    relabels: () => w.reports.flatMap((r) => (r.kind === "pod_relabeled" ? [[r.at - START_MS, r.pod, r.labels]] : []))
  }
}

/** Both replicas running and served, the first day's hold and nothing else on the ledger. */
const bothServing = (t: Awaited<ReturnType<typeof openInference>>): void => {
  expect(t.view()).toMatchObject({ status: "running", regions: [{ region: "eu-west", status: "running" }, { region: "us-east", status: "running" }], termination_reason: null })
  expect(t.served()).toEqual([EU_WEST, US_EAST])
  expect(t.rows()).toEqual([[0, "gpu_usage", "-76.80"]])
}

describe("every label of ours removed or changed by hand is put back, not only ecolink.io/managed", () => {
  it("an inference replica's ecolink.io/instance removed by hand (out of its Service, billed, serving nothing): put back on the same pod, served again; a label the operator added stays", async () => {
    const t = await openInference()
    const { w, o } = t
    await w.advance(30 * MIN)
    bothServing(t)
    const uid = t.uidOf(US_EAST)
    const ours = { ...t.labelsOf(US_EAST) }
    expect(ours).toEqual({
      "ecolink.io/managed": "true",
      "ecolink.io/resource": "inf-1",
      "ecolink.io/account": "acme",
      "ecolink.io/region": "us-east",
      "ecolink.io/workload": labelValue("eco-inf-1@us-east"),
      "ecolink.io/node-index": "0",
      [INSTANCE]: "inf-1"
    })
    // 0:30: the operator removes the instance label and adds one of their own. The pod is still
    // in the engine's selector (a MODIFIED), but out of its Service: `/v1` traffic goes to
    // eu-west alone while us-east is billed as running.
    await labelByHand(w, US_EAST, { [INSTANCE]: null, team: "ml" })
    expect(t.served()).toEqual([EU_WEST])
    await w.advance(0)
    // The same pod, its label back, the operator's own label left alone: served again.
    expect(t.uidOf(US_EAST)).toBe(uid)
    expect(t.labelsOf(US_EAST)).toEqual({ ...ours, team: "ml" })
    bothServing(t)
    expect(t.relabels()).toEqual([[30 * MIN, US_EAST, [INSTANCE]]])

    // 0:40: another edit, changing labels of ours to other values (the Service's to another
    // instance's): put back at once, an edit of its own long after the last.
    await w.advance(10 * MIN)
    await labelByHand(w, US_EAST, { [INSTANCE]: "inf-2", "ecolink.io/account": "someone-else", team: "ml2" })
    expect(t.served()).toEqual([EU_WEST])
    await w.advance(0)
    expect(t.labelsOf(US_EAST)).toEqual({ ...ours, team: "ml2" })
    bothServing(t)
    expect(t.relabels().at(-1)).toEqual([40 * MIN, US_EAST, ["ecolink.io/account", INSTANCE]])
    expect(w.reports.filter((r) => r.kind === "pod_lost" || r.kind === "labels_contested")).toEqual([])

    // 1:00: terminated by the user: both replicas billed 59 min (0:01 to 1:00), the rest refunded.
    await w.advance(20 * MIN)
    expect(Either.isRight(o.sup.terminate("inf-1"))).toBe(true)
    await w.advance(0)
    expect(t.podNames()).toEqual([])
    expect(w.server.objects("services", w.namespace)).toEqual([])
    expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "user_requested" })
    expect(t.rows()).toEqual([
      [0, "gpu_usage", "-76.80"],
      [60 * MIN, "refund", formatDollars(dollars("76.80") - costMicros(RATE, 1, 118 * MIN))]
    ])
    expect(t.rows()[1]![2]).toBe("73.653333")
  }, 30_000)

  it("changed while the control plane is down: the restarted driver puts it back (what its annotations say, not what it finds), and the replica is served again", async () => {
    const t = await openInference()
    const { w, o } = t
    await w.advance(30 * MIN)
    const uid = t.uidOf(US_EAST)
    const ours = { ...t.labelsOf(US_EAST) }
    // Down from 0:30 to 0:40; at 0:35 the operator points us-east's instance label elsewhere.
    await o.outage(40 * MIN, [[35 * MIN, () => void w.server.update("pods", w.namespace, US_EAST, (p) => (p.metadata.labels![INSTANCE] = "inf-2"))]])
    await w.advance(0)
    expect(t.uidOf(US_EAST)).toBe(uid)
    expect(t.labelsOf(US_EAST)).toEqual(ours)
    bothServing(t)
    expect(t.relabels()).toEqual([[40 * MIN, US_EAST, [INSTANCE]]])
  }, 30_000)

  it("a passive driver (a standby's) leaves the labels to the leader: put back only once an engine subscribes", async () => {
    world = await K8sWorld.start()
    const w = world
    const d = await w.driver()
    const spec = workloadSpec({ name: "eco-inf-1@us-east", resource: "inf-1@us-east", service: "inf-1", gpu_count: 1 })
    d.createWorkload(spec)
    await w.advance(90 * S)
    expect(d.phaseOf(spec.name)).toBe("running")
    await labelByHand(w, US_EAST, { [INSTANCE]: null })
    const requests = d.requests_started
    await w.advance(10 * MIN)
    // It saw the change and wrote nothing: the label is still off.
    expect(d.requests_started).toBe(requests)
    expect(w.server.object("pods", w.namespace, US_EAST)!.metadata.labels![INSTANCE]).toBeUndefined()
    d.subscribe(() => {})
    await w.advance(0)
    expect(w.server.object("pods", w.namespace, US_EAST)!.metadata.labels![INSTANCE]).toBe("inf-1")
    expect(d.phaseOf(spec.name)).toBe("running")
  }, 30_000)

  it("something that keeps removing a label is not fought without bound: put back after 10 s, 20 s, 40 s, then once a minute, and said once (labels_contested); a later edit is put back at once", async () => {
    const t = await open()
    const { w } = t
    await w.advance(30 * MIN)
    const RESOURCE = "ecolink.io/resource"
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    const restoredAt = () => w.reports.flatMap((r) => (r.kind === "pod_relabeled" ? [r.at - START_MS] : []))
    const has = () => w.server.object("pods", w.namespace, "eco-gi-1")!.metadata.labels![RESOURCE] === "gi-1"
    // Another controller removes it again whenever it is back, at once.
    const undone: number[] = []
    for (let i = 0; i < 6; i++) {
      await labelByHand(w, "eco-gi-1", { [RESOURCE]: null })
      undone.push(w.clock.now() - START_MS)
      await w.advance(0)
      // Put back at once the first time; after that, only once its wait is over.
      for (let waited = 0; waited < 2 * MIN && !has(); waited += S) await w.advance(1 * S)
      expect(has()).toBe(true)
    }
    expect(undone).toEqual([30 * MIN, 30 * MIN, 30 * MIN + 10 * S, 30 * MIN + 30 * S, 30 * MIN + 70 * S, 30 * MIN + 130 * S])
    expect(restoredAt()).toEqual([30 * MIN, 30 * MIN + 10 * S, 30 * MIN + 30 * S, 30 * MIN + 70 * S, 30 * MIN + 130 * S, 30 * MIN + 190 * S])
    expect(w.reports.filter((r) => r.kind === "labels_contested").map((r) => [r.at - START_MS, r.kind === "labels_contested" ? [r.pod, r.labels, r.times] : null])).toEqual([
      [30 * MIN + 30 * S, ["eco-gi-1", [RESOURCE], 3]]
    ])
    // Left alone for 5 minutes: an edit then is a new one, put back at once.
    await w.advance(5 * MIN)
    await labelByHand(w, "eco-gi-1", { [RESOURCE]: "other" })
    await w.advance(0)
    expect(has()).toBe(true)
    expect(restoredAt().at(-1)).toBe(35 * MIN + 190 * S)
    expect(t.pods()).toEqual([["eco-gi-1", uid, "true", null]])
    expect(t.view()).toMatchObject({ status: "running", termination_reason: null })
    await w.advance(90 * MIN)
    ranToItsDeadline(t)
  }, 30_000)
})

describe("a pod removed at once (no deletionTimestamp) while its look-up by name is slow", () => {
  it("is a loss dated when its DELETED came, not when the API server answered its look-up: the instance billed to 0:30, not to the look-up's retry", async () => {
    // Proves a forced delete (the pod GC's of a dead node's pods, `kubectl delete --force
    // --grace-period=0`) of a running pod heard live is billed to when the watch told it, as
    // before the look-up: its DELETED carries no deletionTimestamp, so the driver asks the API
    // server for the pod by name first (it may only have lost its label). That GET is answered
    // 429 with Retry-After: 60 once (a busy API server): the 404 comes at 0:31, yet the GPUs
    // were freed at 0:30. Before the fix the instance failed, and was billed, to 0:31.
    const t = await open()
    const { w } = t
    await w.advance(30 * MIN)
    expect(t.view().status).toBe("running")
    w.server.inject({ method: "GET", path: "/pods/eco-gi-1", status: 429, retryAfter: 60, times: 1 })
    expect(w.kubelet.lose("gi-1")).toEqual({ ok: true })
    await w.advance(2 * MIN)
    expect(t.view()).toMatchObject({ status: "failed", termination_reason: "failed", billable_ms: 29 * MIN })
    expect(t.moves()).toEqual([
      [1 * MIN, "pending", "loading", null],
      [1.5 * MIN, "loading", "running", null],
      [30 * MIN, "running", "failed", "failed"]
    ])
    // The hold settles when the engine learns it (0:31), for the time the GPUs were held (to 0:30).
    expect(t.rows()).toEqual([
      [0, "gpu_usage", "-3.20"],
      [31 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 29 * MIN))]
    ])
    expect(t.pods()).toEqual([])
  }, 30_000)
})

describe("a pod out of our selector whose label cannot be put back", () => {
  it("while its instance is terminated: deleted anyway, by name with its uid, its end confirmed by GET; the instance terminated, billed to the terminate, and the refused relabel never looped", async () => {
    // Proves a relabel refused for good (403: a Role from before this version, without the
    // `patch` verb, or an admission policy) no longer keeps a terminated instance's pod on its
    // GPUs. Before, the deletion waited for the relabel, refused each time the engine asked
    // again: the pod ran on, unbilled, the instance stuck terminating, until an operator acted.
    // Now the pod is deleted anyway (its uid a precondition) and, out of the watch's selector,
    // its end is confirmed by GET by name: at once, then 10 s and 20 s later (its kubelet takes
    // 25 s to stop it). The relabel is not re-sent: not at once in a loop, nor later.
    const t = await open(25 * S)
    const { w, o } = t
    await w.advance(30 * MIN)
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    const count = (method: string) => w.server.requests.filter((r) => r.method === method && r.path.endsWith("/pods/eco-gi-1")).length
    w.server.inject({ method: "PATCH", path: "/pods/eco-gi-1", token: "ecolink-test-token", status: 403 })
    await unlabelByHand(w, "eco-gi-1")
    await w.advance(0)
    // The operator's own patch, then the driver's relabel, refused: the pod runs on, unlabelled,
    // its instance running and billed (it holds its GPUs).
    expect(count("PATCH")).toBe(2)
    expect(t.pods()).toEqual([["eco-gi-1", uid, null, null]])
    expect(t.view().status).toBe("running")
    // Running, the relabel is tried again on the slow retry (10 s doubling to once a minute).
    await w.advance(30 * MIN)
    const patches = count("PATCH")
    expect(patches).toBeLessThanOrEqual(2 + 30 + 3)
    expect(Either.isRight(o.sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    // 1:00: the relabel tried once more for the deletion, refused; the pod deleted anyway.
    expect(count("PATCH")).toBe(patches + 1)
    expect(count("DELETE")).toBe(1)
    expect(t.pods()).toEqual([["eco-gi-1", uid, null, expect.any(String)]])
    expect(t.view().status).toBe("terminating")
    await w.advance(10 * MIN)
    expect(t.pods()).toEqual([])
    expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "user_requested", billable_ms: 59 * MIN })
    // Its end confirmed by the third GET (1:00:30); the stop completes then.
    expect(t.moves()).toEqual([
      [1 * MIN, "pending", "loading", null],
      [1.5 * MIN, "loading", "running", null],
      [60 * MIN, "running", "terminating", "user_requested"],
      [60 * MIN + 30 * S, "terminating", "terminated", "user_requested"]
    ])
    expect(t.rows()).toEqual([
      [0, "gpu_usage", "-3.20"],
      [60 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 59 * MIN))]
    ])
    // The look-up at 0:30, then the three checks; no PATCH or DELETE since.
    expect(count("GET")).toBe(4)
    expect(count("PATCH")).toBe(patches + 1)
    expect(count("DELETE")).toBe(1)
    const failed = w.reports.filter((r) => r.kind === "request_failed").map((r) => [r.at - START_MS, r.what, r.status, r.final])
    expect(failed.length).toBe(patches - 1 + 1)
    expect(failed.at(-1)).toEqual([60 * MIN, "label pod eco-gi-1", 403, true])
    expect(failed.every(([, what]) => what === "label pod eco-gi-1")).toBe(true)
  }, 30_000)
})

describe("a look-up answered late", () => {
  it("after newer watch events of the same pod: ignored, the older version it read is not put back in the cache (no relabel of a pod labelled again)", async () => {
    // Proves the look-up's answer is dropped when the cache changed since it was sent. The
    // operator removes the label (DELETED: the driver sends its GET, whose answer the API
    // server reads at once, the pod unlabelled, and sends late), then puts it back (ADDED: the
    // driver caches that newer version). Before, the late answer, of the same uid, replaced it:
    // the driver took the pod for out of its selector again and patched its labels back
    // (`pod_relabeled`), acting on a version older than the one it had.
    world = await K8sWorld.start()
    const w = world
    const d = await w.driver()
    d.subscribe(() => {})
    const spec = workloadSpec({ gpu_count: 1 })
    d.createWorkload(spec)
    await w.advance(90 * S)
    expect(d.phaseOf(spec.name)).toBe("running")
    let release: () => void = () => {}
    w.server.holdGet("/pods/eco-gi-1", new Promise<void>((resolve) => (release = resolve)))
    const gets = () => w.server.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods/eco-gi-1")).length
    await unlabelByHand(w, "eco-gi-1")
    // Bounded wait (wall clock, the test's own) for the look-up to reach the server.
    for (let i = 0; i < 2_500 && gets() === 0; i++) await new Promise((resolve) => setTimeout(resolve, 2))
    expect(gets()).toBe(1)
    await labelByHand(w, "eco-gi-1", { [MANAGED]: "true" })
    await caughtUp(w.server, d, w.server.resourceVersion)
    release()
    await w.advance(0)
    const driverPatches = w.server.requests.filter((r) => r.method === "PATCH" && r.token === "ecolink-test-token")
    expect(driverPatches).toEqual([])
    expect(w.reports.filter((r) => r.kind === "pod_relabeled" || r.kind === "pod_lost")).toEqual([])
    expect(d.phaseOf(spec.name)).toBe("running")
    expect(w.pods().map((p) => [p.metadata.name, p.metadata.labels?.[MANAGED] ?? null])).toEqual([["eco-gi-1", "true"]])
  }, 30_000)
})

describe("second reader: labels are the engine's workload's, not whatever a pod's annotations are edited to", () => {
  // Found by the second reader of 728ea7c: with our labels computed from the pod's annotations,
  // the driver moved the pod into inf-2's Service. They come from the engine's workload now.
  it("an operator edits a replica's ecolink.io/service annotation to another instance: its labels stay inf-1's, it stays in inf-1's Service, nothing is patched", async () => {
    const t = await openInference()
    const { w } = t
    await w.advance(30 * MIN)
    bothServing(t)
    const ours = { ...t.labelsOf(US_EAST) }
    // 0:30: `kubectl annotate pod <us-east> ecolink.io/service=inf-2 --overwrite`. The labels are
    // untouched; the pod is still inf-1's replica (the engine's workload says so).
    const core = w.kubeConfig("operator").makeApiClient(CoreV1Api)
    await core.patchNamespacedPod(
      { name: US_EAST, namespace: w.namespace, body: { metadata: { annotations: { "ecolink.io/service": "inf-2" } } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
    )
    await w.advance(0)
    await w.advance(1 * MIN)
    expect(t.labelsOf(US_EAST)).toEqual(ours)
    expect(t.relabels()).toEqual([])
    bothServing(t)
  }, 30_000)
})

describe("second reader: a relabel's wait ends with its workload", () => {
  // Found by the second reader of 728ea7c: `finishIfGone` forgot the workload without clearing
  // its relabel timer (it fired later and did nothing, keeping the workload in memory till then).
  it("a label kept removed, then the instance terminated: no relabel timer is left once the workload is gone", async () => {
    const t = await open()
    const { w, o } = t
    await w.advance(30 * MIN)
    const RESOURCE = "ecolink.io/resource"
    // Removed three times at once: put back at once, then after 10 s; the third waits 20 s.
    for (let i = 0; i < 2; i++) {
      await labelByHand(w, "eco-gi-1", { [RESOURCE]: null })
      await w.advance(0)
      await w.advance(10 * S)
    }
    await labelByHand(w, "eco-gi-1", { [RESOURCE]: null })
    await w.advance(0)
    const relabelTimers = () => (w.clock as unknown as { timers: Array<{ key: string; fn: unknown }> }).timers.filter((x) => x.fn !== null && x.key.includes("k8s:relabel:")).length
    expect(relabelTimers()).toBe(1)
    // Terminated before that wait is over: its pod is deleted and its workload forgotten.
    expect(Either.isRight(o.sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    await w.advance(1 * S)
    expect(t.pods()).toEqual([])
    expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "user_requested" })
    expect(relabelTimers()).toBe(0)
  }, 30_000)
})

describe("third reader: a delete the driver sent that failed is no delete carried out", () => {
  // Found by the third reader of 8a25425: `deleteAsked` was set when the delete was sent and kept
  // while its retry waited after a 5xx. A label removed by hand in that wait (DELETED without
  // deletionTimestamp) was taken for the delete carried out, without a look-up: the pod left the
  // cache, and once the retries gave up the workload concluded (`pod.deleted`, the instance
  // terminated) while the pod ran on its GPUs, unlabelled, unseen, billed to no one.
  it("the instance's delete fails (5xx) and the label is removed before its retry: the pod is looked up, kept, and deleted; the instance is terminated only once its pod is gone", async () => {
    const t = await open()
    const { w, o } = t
    await w.advance(30 * MIN)
    const [[, uid]] = t.pods() as [[string, string, string, null]]
    const count = (method: string) => w.server.requests.filter((r) => r.method === method && r.path.endsWith("/pods/eco-gi-1")).length
    // Every attempt of this delete fails (request_attempts_max: 5).
    w.server.inject({ method: "DELETE", path: "/pods/eco-gi-1", status: 500, times: 5 })
    expect(Either.isRight(o.sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(count("DELETE")).toBe(1)
    // In the retry's wait: `kubectl label pod eco-gi-1 ecolink.io/managed-`.
    await unlabelByHand(w, "eco-gi-1")
    await w.advance(0)
    // The DELETED is looked up: the pod is still there, not deleted.
    expect(t.pods()).toEqual([["eco-gi-1", uid, null, null]])
    expect(count("GET")).toBe(1)
    await w.advance(10 * MIN)
    // Never terminated while its pod holds its GPUs: the pod is gone by now, and then the instance.
    expect(t.pods()).toEqual([])
    expect(t.view()).toMatchObject({ status: "terminated", termination_reason: "user_requested" })
  }, 30_000)
})
