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
import type { GpuView } from "../../src/resources.js"
import { tmpDb } from "../helpers.js"
import { K8sWorld, START_MS } from "./harness.js"
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
const open = async () => {
  world = await K8sWorld.start()
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
  it("while its instance is terminated: the relabel that gave up is sent again at the engine's next delete, not at once in a loop", async () => {
    // Proves a relabel refused for good (403: a Role from before this version, without the
    // `patch` verb, or an admission policy) is not re-sent at once by the deletion it gates:
    // its give-up refreshed the workload, whose deletion sent the relabel again, refused again,
    // as fast as the API server answered (the world never settled). Now it waits for the
    // engine's next delete (its reconciliation asks every 5 minutes), as a delete that gave up.
    const t = await open()
    const { w, o } = t
    await w.advance(30 * MIN)
    const patches = () => w.server.requests.filter((r) => r.method === "PATCH" && r.path.endsWith("/pods/eco-gi-1")).length
    w.server.inject({ method: "PATCH", path: "/pods/eco-gi-1", token: "ecolink-test-token", status: 403 })
    await unlabelByHand(w, "eco-gi-1")
    await w.advance(0)
    // The operator's own patch, then the driver's relabel, refused.
    expect(patches()).toBe(2)
    expect(Either.isRight(o.sup.terminate("gi-1"))).toBe(true)
    await w.advance(0)
    expect(patches()).toBe(3)
    await w.advance(10 * MIN)
    expect(patches()).toBe(5)
    expect(w.reports.filter((r) => r.kind === "request_failed").map((r) => [r.at - START_MS, r.what, r.status, r.final])).toEqual([
      [30 * MIN, "label pod eco-gi-1", 403, true],
      [30 * MIN, "label pod eco-gi-1", 403, true],
      [35 * MIN, "label pod eco-gi-1", 403, true],
      [40 * MIN, "label pod eco-gi-1", 403, true]
    ])
    // Billed to the terminate; the pod, which the driver may not label, is left to an operator.
    expect(t.rows()).toEqual([
      [0, "gpu_usage", "-3.20"],
      [30 * MIN, "refund", formatDollars(dollars("3.20") - costMicros(RATE, 1, 29 * MIN))]
    ])
  }, 30_000)
})
