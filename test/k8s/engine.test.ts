/**
 * The supervisor over the Kubernetes driver: SPEC §3's stuck-pending rule applied from what
 * the cluster shows (healed and failed), orphan pods deleted and reported, a pod deleted
 * behind our back settled as a failure, preemption and resumption billed as in the
 * simulator, the reconcile helpers of src/k8s/reconcile.ts on the driver, and storage
 * (SPEC §5) as PersistentVolumeClaims created, mounted and deleted by the supervisor.
 */
import { Either } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import type { ClusterPort, WorkloadSpec } from "../../src/cluster.js"
import type { KubernetesCluster } from "../../src/k8s/cluster.js"
import { createMissing, deleteOrphans, findOrphans, missingWorkloads, stuckPendingEvidence, stuckPendingInput } from "../../src/k8s/reconcile.js"
import { costMicros, dollars, formatDollars } from "../../src/money.js"
import type { GpuView } from "../../src/resources.js"
import { tmpDb } from "../helpers.js"
import { K8sWorld, START_MS } from "./harness.js"
import { MissEvents, startEngine, stopEngine, type KubeEngine } from "./timelineWorld.js"

let world: K8sWorld | null = null
let engine: KubeEngine | null = null
afterEach(async () => {
  if (engine !== null) stopEngine(engine)
  await world?.close()
  world = null
  engine = null
})

const MIN = 60_000
const at = (ms: number): number => START_MS + ms
const RATE = dollars("1.60")

const open = async (wrap: (d: KubernetesCluster) => ClusterPort = (d) => d) => {
  world = await K8sWorld.start()
  const driver = await world.driver()
  engine = startEngine({ db: ":memory:", clock: world.clock, cluster: wrap(driver), gpu_rates: new Map([["H100", RATE]]) })
  const sup = engine.sup.sync
  expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
  expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
  const launch = (id = "gi-1") =>
    expect(Either.isRight(sup.launchGpu({ account: "acme", id, kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null }))).toBe(true)
  const view = (id = "gi-1") => Either.getOrThrow(sup.describe(id)) as GpuView
  const rows = () => engine!.ledger.ledgerRows().map((r) => [r.at - START_MS, r.kind, formatDollars(r.amount_micros), r.resource])
  const moves = (id = "gi-1") => engine!.ledger.transitions().filter((t) => t.resource === id).map((t) => [t.at - START_MS, t.from_state, t.to_state, t.reason])
  return { w: world, driver, sup, launch, view, rows, moves }
}

describe("SPEC §3's stuck-pending rule, from what the cluster shows", () => {
  it("a pod the scheduler cannot place: failed at the first watchdog past 15 minutes, its pod deleted, the hold refunded in full", async () => {
    const { w, driver, launch, view, rows, moves } = await open()
    w.kubelet.cordon("us-east")
    launch()
    await w.advance(19 * MIN)
    expect(stuckPendingEvidence(driver, "eco-gi-1")).toEqual({
      pod: "not_running",
      pods: [{ pod: "eco-gi-1", state: "pending", node: null, reason: "Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu." }]
    })
    await w.advance(1 * MIN)
    expect(view().status).toBe("failed")
    expect(moves()).toEqual([[20 * MIN, "pending", "failed", "failed"]])
    // The watchdog's journal entry carries the scheduler's reason beside the rule's input.
    expect(engine!.ledger.journalEntries().filter((e) => e.kind === "watchdog").map((e) => [e.at - START_MS, JSON.parse(e.payload as string)])).toEqual([
      [
        20 * MIN,
        {
          id: "gi-1",
          pod: "not_running",
          pods: [{ pod: "eco-gi-1", state: "pending", node: null, reason: "Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu." }]
        }
      ]
    ])
    expect(w.pods()).toEqual([])
    expect(rows()).toEqual([
      [0, "adjustment", "100.00", null],
      [0, "gpu_usage", "-3.20", "gi-1"],
      [20 * MIN, "refund", "3.20", "gi-1"]
    ])
  })

  it("a pod whose Ready event the engine missed: healed to running at the same watchdog, billed from then", async () => {
    let miss: MissEvents | null = null
    const { w, launch, view, moves } = await open((d) => (miss = new MissEvents(d)))
    miss!.missEvents("gi-1", 2)
    launch()
    await w.advance(20 * MIN)
    expect(moves()).toEqual([[20 * MIN, "pending", "running", "watchdog_healed"]])
    expect(view()).toMatchObject({ status: "running", started_at: at(20 * MIN), billable_ms: 0 })
    expect(w.pods().map((p) => p.metadata.name)).toEqual(["eco-gi-1"])
  })
})

describe("orphans and lost pods", () => {
  it("a pod labelled as ours with no live resource is deleted at start and journaled", async () => {
    world = await K8sWorld.start()
    const earlier = await world.driver()
    earlier.createWorkload({ name: "eco-gone-1", resource: "gone-1", account: "acme", region: "us-east", gpu: "H100", gpu_count: 1, node_count: 1, image: null, volumes: [], service: null })
    await world.advance(2 * MIN)
    earlier.stop()
    const driver = await world.driver()
    engine = startEngine({ db: ":memory:", clock: world.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]) })
    await world.advance(0)
    expect(world.pods()).toEqual([])
    expect(engine.ledger.journalEntries().filter((e) => e.kind === "orphan_deleted").map((e) => JSON.parse(e.payload as string))).toEqual([
      { name: "eco-gone-1", resource: "gone-1", phase: "running" }
    ])
    expect(driver.list()).toEqual([])
  })

  it("a running pod deleted behind our back: the instance failed then, its hold settled for the time it ran", async () => {
    const { w, launch, view, rows, moves } = await open()
    launch()
    await w.advance(60 * MIN)
    w.kubelet.lose("gi-1")
    await w.advance(0)
    expect(view()).toMatchObject({ status: "failed", termination_reason: "failed", billable_ms: 59 * MIN })
    expect(moves()).toEqual([
      [1 * MIN, "pending", "loading", null],
      [1.5 * MIN, "loading", "running", null],
      [60 * MIN, "running", "failed", "failed"]
    ])
    const consumed = costMicros(RATE, 1, 59 * MIN)
    expect(rows().slice(1)).toEqual([
      [0, "gpu_usage", "-3.20", "gi-1"],
      [60 * MIN, "refund", formatDollars(dollars("3.20") - consumed), "gi-1"]
    ])
    expect(w.pods()).toEqual([])
  })

  it("preempted and resumed: not billed while preempted, notified both ways, same deadline", async () => {
    const { w, launch, view, moves } = await open()
    launch()
    await w.advance(60 * MIN)
    w.kubelet.preempt("gi-1")
    await w.advance(10 * MIN)
    w.kubelet.resume("gi-1")
    await w.advance(1 * MIN)
    expect(moves().slice(2)).toEqual([
      [60 * MIN, "running", "preempted", null],
      [70.5 * MIN, "preempted", "running", null]
    ])
    expect(view()).toMatchObject({ status: "running", deadline_at: at(121 * MIN), billable_ms: 59 * MIN + 0.5 * MIN })
    expect(engine!.ledger.notifications().map((n) => [n.at - START_MS, n.kind])).toEqual([
      [60 * MIN, "preempted"],
      [70.5 * MIN, "resumed"]
    ])
  })
})

describe("the reconcile helpers over the driver", () => {
  const spec = (id: string, over: Partial<WorkloadSpec> = {}): WorkloadSpec => ({ name: `eco-${id}`, resource: id, account: "acme", region: "us-east", gpu: "H100", gpu_count: 1, node_count: 1, image: null, volumes: [], service: null, ...over })

  it("find and delete orphans (a replica belongs to its instance; a pod naming no resource is an orphan), create what is missing", async () => {
    world = await K8sWorld.start()
    const d = await world.driver()
    d.createWorkload(spec("live-1"))
    d.createWorkload(spec("dead-1"))
    d.createWorkload(spec("inf-1@us-east", { name: "eco-inf-1@us-east", service: "inf-1" }))
    world.server.create("pods", world.namespace, { metadata: { name: "stray", labels: { "ecolink.io/managed": "true" } }, spec: { containers: [{ name: "x", image: "x" }] } })
    await world.advance(2 * MIN)
    const live = new Set(["live-1", "inf-1"])
    expect(findOrphans(d, (id) => live.has(id))).toEqual([
      { name: "eco-dead-1", resource: "dead-1", phase: "running" },
      { name: "stray", resource: "", phase: "pending" }
    ])
    const reported: string[] = []
    deleteOrphans(d, (id) => live.has(id), (o) => reported.push(o.name))
    await world.advance(0)
    expect(reported).toEqual(["eco-dead-1", "stray"])
    expect(world.pods().map((p) => p.metadata.name)).toEqual([d.podsOf("eco-inf-1@us-east")[0]!.pod, "eco-live-1"])
    expect(findOrphans(d, (id) => live.has(id))).toEqual([])

    expect(missingWorkloads(d, [spec("live-1"), spec("new-1")]).map((s) => s.name)).toEqual(["eco-new-1"])
    expect(createMissing(d, [spec("live-1"), spec("new-1")]).map((s) => s.name)).toEqual(["eco-new-1"])
    expect(stuckPendingInput(d, "eco-new-1")).toBe("not_running")
    expect(stuckPendingInput(d, "eco-live-1")).toBe("running")
    expect(stuckPendingInput(d, "eco-nothing")).toBe("missing")
    await world.advance(0)
    expect(world.pods().map((p) => p.metadata.name)).toContain("eco-new-1")
  })
})

describe("storage as PersistentVolumeClaims, through the supervisor", () => {
  const STORAGE_RATES = new Map([
    ["cloud_drive", dollars("0.004")],
    ["shared_fs", dollars("0.006")]
  ])
  /** What matters of a stored claim: name, labels, access mode, size, class, and whether it is going. */
  const claims = (w: K8sWorld) =>
    w.server.objects("persistentvolumeclaims", w.namespace).map((c) => ({
      name: c.metadata.name,
      labels: c.metadata.labels,
      accessModes: c.spec.accessModes,
      storage: c.spec.resources.requests.storage,
      storageClassName: c.spec.storageClassName,
      deleting: c.metadata.deletionTimestamp !== undefined
    }))
  const labels = (id: string) => ({ "ecolink.io/managed": "true", "ecolink.io/resource": id, "ecolink.io/account": "acme", "ecolink.io/region": "us-east" })
  const start = async (db: string) => {
    const driver = await world!.driver()
    engine = startEngine({ db, clock: world!.clock, cluster: driver, gpu_rates: new Map([["H100", RATE]]), storage_rates: STORAGE_RATES })
    return { driver, sup: engine.sup.sync }
  }
  /** Opens the account `acme` with $100.00. */
  const fundAcme = (sup: KubeEngine["sup"]["sync"]) => {
    expect(Either.isRight(sup.openAccount("acme"))).toBe(true)
    expect(Either.isRight(sup.credit("acme", "adjustment", dollars("100.00"), "Opening balance"))).toBe(true)
  }
  const create = (sup: KubeEngine["sup"]["sync"], id: string, kind: "cloud_drive" | "shared_fs", size_gb: number) =>
    expect(Either.isRight(sup.createStorage({ account: "acme", id, kind, size_gb, region: "us-east" }))).toBe(true)

  it("createStorage creates the claim; an instance launched with it has a pod mounting it; deleteStorage deletes it", async () => {
    world = await K8sWorld.start()
    const { sup } = await start(":memory:")
    fundAcme(sup)
    create(sup, "dr-1", "cloud_drive", 100)
    create(sup, "fs-1", "shared_fs", 500)
    await world.settle()
    expect(claims(world)).toEqual([
      { name: "eco-dr-1", labels: labels("dr-1"), accessModes: ["ReadWriteOnce"], storage: "100Gi", storageClassName: "ecolink-cloud-drive", deleting: false },
      { name: "eco-fs-1", labels: labels("fs-1"), accessModes: ["ReadWriteMany"], storage: "500Gi", storageClassName: "ecolink-shared-fs", deleting: false }
    ])

    const launched = sup.launchGpu({ account: "acme", id: "gi-1", kind: "gpu_instance", gpu: "H100", gpu_count: 1, node_count: 1, region: "us-east", estimated_duration_hours: 2, image: null, drive: "dr-1", filesystems: ["fs-1"] })
    expect(Either.isRight(launched)).toBe(true)
    await world.advance(2 * MIN)
    // The scripted scheduler places no pod before its claims exist: running proves they did.
    expect((Either.getOrThrow(sup.describe("gi-1")) as GpuView).status).toBe("running")
    const [pod, ...others] = world.pods()
    expect(others).toEqual([])
    expect(pod!.spec.volumes).toEqual([
      { name: "eco-dr-1", persistentVolumeClaim: { claimName: "eco-dr-1" } },
      { name: "eco-fs-1", persistentVolumeClaim: { claimName: "eco-fs-1" } }
    ])
    expect(pod!.spec.containers[0].volumeMounts).toEqual([
      { name: "eco-dr-1", mountPath: "/mnt/dr-1" },
      { name: "eco-fs-1", mountPath: "/mnt/fs-1" }
    ])

    // Attached: refused, nothing deleted in the cluster.
    expect(Either.isLeft(sup.deleteStorage("dr-1"))).toBe(true)
    await world.settle()
    expect(world.server.requests.filter((r) => r.method === "DELETE" && r.path.includes("/persistentvolumeclaims"))).toEqual([])
    // Terminating releases the drive at once; its pod is still stopping when the claim is deleted,
    // so the API server keeps the claim (pvc-protection) until the pod is gone.
    expect(Either.isRight(sup.terminate("gi-1"))).toBe(true)
    expect(Either.isRight(sup.deleteStorage("dr-1"))).toBe(true)
    await world.settle()
    expect(claims(world).map((c) => [c.name, c.deleting])).toEqual([
      ["eco-dr-1", true],
      ["eco-fs-1", false]
    ])
    await world.advance(0)
    expect(world.pods()).toEqual([])
    expect(claims(world).map((c) => c.name)).toEqual(["eco-fs-1"])
    expect(Either.isRight(sup.deleteStorage("fs-1"))).toBe(true)
    await world.advance(0)
    expect(claims(world)).toEqual([])
    expect(world.reports.filter((r) => r.kind === "request_failed")).toEqual([])
  })

  it("a claim whose delete gave up is deleted again at a later volume resync; a claim the ledger does not know is left alone", async () => {
    world = await K8sWorld.start()
    const { sup } = await start(":memory:")
    fundAcme(sup)
    create(sup, "dr-1", "cloud_drive", 100)
    // A claim labelled as ours that this ledger never heard of (another control plane's, or hand-made).
    world.server.create("persistentvolumeclaims", world.namespace, {
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: { name: "eco-dr-x", labels: labels("dr-x"), annotations: { "ecolink.io/resource": "dr-x" } },
      spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "10Gi" } }, storageClassName: "ecolink-cloud-drive" }
    } as never)
    await world.settle()
    world.server.inject({ method: "DELETE", path: "/persistentvolumeclaims", status: 503 })
    expect(Either.isRight(sup.deleteStorage("dr-1"))).toBe(true)
    await world.advance(5 * MIN)
    expect(world.reports.filter((r) => r.kind === "request_failed" && r.final).map((r) => (r.kind === "request_failed" ? r.what : ""))).toEqual([
      "delete persistentvolumeclaim eco-dr-1"
    ])
    expect(claims(world).map((c) => c.name)).toEqual(["eco-dr-1", "eco-dr-x"])
    world.server.clearFailures()
    // The list taken at start (before dr-1 existed) is empty; the one taken at 01:00 has both
    // claims, and the sweep at 02:00 deletes dr-1's (deleted storage) and leaves dr-x's (the
    // ledger knows no dr-x).
    await world.advance(2 * 60 * MIN)
    expect(claims(world).map((c) => c.name)).toEqual(["eco-dr-x"])
    expect(engine!.ledger.journalEntries().filter((e) => e.kind === "volume_deleted_again").map((e) => [e.at - START_MS, JSON.parse(e.payload as string)])).toEqual([
      [120 * MIN, { id: "dr-1" }]
    ])
  })

  it("a restarted engine (same SQLite file, new driver) re-ensures the claims of live storage: a lost one comes back, a deleted one does not", async () => {
    world = await K8sWorld.start()
    const db = tmpDb()
    const first = await start(db)
    fundAcme(first.sup)
    create(first.sup, "dr-1", "cloud_drive", 100)
    create(first.sup, "fs-1", "shared_fs", 500)
    create(first.sup, "fs-2", "shared_fs", 50)
    expect(Either.isRight(first.sup.deleteStorage("dr-1"))).toBe(true)
    await world.advance(10 * MIN)
    stopEngine(engine!)
    engine = null
    first.driver.stop()
    // While no engine runs, a claim is deleted behind its back.
    world.server.remove("persistentvolumeclaims", world.namespace, "eco-fs-1")
    expect(claims(world).map((c) => c.name)).toEqual(["eco-fs-2"])
    const posts = () => world!.server.requests.filter((r) => r.method === "POST" && r.path.includes("/persistentvolumeclaims")).length
    const before = posts()

    await start(db)
    await world.advance(0)
    expect(claims(world)).toEqual([
      { name: "eco-fs-1", labels: labels("fs-1"), accessModes: ["ReadWriteMany"], storage: "500Gi", storageClassName: "ecolink-shared-fs", deleting: false },
      { name: "eco-fs-2", labels: labels("fs-2"), accessModes: ["ReadWriteMany"], storage: "50Gi", storageClassName: "ecolink-shared-fs", deleting: false }
    ])
    // One ensure per live volume: fs-1 created again, fs-2 answered 409 (it exists), no error.
    expect(posts() - before).toBe(2)
    expect(world.reports.filter((r) => r.kind === "request_failed")).toEqual([])
  })
})
