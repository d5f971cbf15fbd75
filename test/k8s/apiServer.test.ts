/**
 * The API test server holds to the wire protocol the real clients speak: @kubernetes/client-node
 * (object-style calls and its `Watch`) and, where installed, `kubectl`. If the server were
 * wrong, every driver test would test a fiction; these pin what it does.
 */
import { execFile } from "node:child_process"
import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { CoordinationV1Api, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions, Watch, type V1PersistentVolumeClaim, type V1PersistentVolumeClaimSpec, type V1Pod } from "@kubernetes/client-node"
import { afterEach, describe, expect, it } from "vitest"
import { KubeApiServer, writeKubeconfig } from "./apiServer.js"
import { K8sWorld } from "./harness.js"

const NS = "ecolink"
let server: KubeApiServer | null = null
let world: K8sWorld | null = null
afterEach(async () => {
  await server?.close()
  await world?.close()
  server = null
  world = null
})

const start = async (options: { history_events_max?: number; expired_as?: "event" | "status" } = {}) => {
  server = await KubeApiServer.start({ now: () => Date.parse("2026-03-01T00:00:00Z"), ...options })
  const kc = new KubeConfig()
  kc.loadFromFile(writeKubeconfig(server, { namespace: NS }))
  return { server, kc, core: kc.makeApiClient(CoreV1Api), coord: kc.makeApiClient(CoordinationV1Api) }
}

const pod = (name: string, labels: Record<string, string> = {}): V1Pod => ({ apiVersion: "v1", kind: "Pod", metadata: { name, labels }, spec: { containers: [{ name: "c", image: "busybox" }] } })

/** An open watch collecting `type name` lines, and how it ended. */
const watchPods = async (kc: KubeConfig, params: Record<string, string | boolean>) => {
  const events: string[] = []
  const objects: Array<Record<string, unknown>> = []
  let ended: { err: unknown } | null = null
  const endWaiters: Array<() => void> = []
  const controller = await new Watch(kc).watch(
    `/api/v1/namespaces/${NS}/pods`,
    params,
    (type, obj) => {
      events.push(`${type} ${obj?.metadata?.name ?? obj?.code ?? ""}`.trim())
      objects.push(obj)
    },
    (err) => {
      ended = { err }
      for (const w of endWaiters.splice(0)) w()
    }
  )
  return {
    events,
    objects,
    controller,
    get ended() {
      return ended
    },
    /** Resolves when `n` events arrived (or fails after a second). */
    until: async (n: number) => {
      for (let i = 0; i < 200 && events.length < n; i++) await new Promise((r) => setTimeout(r, 5))
      expect(events.length).toBeGreaterThanOrEqual(n)
    },
    whenEnded: () => new Promise<void>((resolve) => (ended !== null ? resolve() : endWaiters.push(resolve)))
  }
}

const status = async (p: Promise<unknown>): Promise<{ code: number; body: Record<string, unknown> }> => {
  try {
    await p
  } catch (e) {
    const ex = e as { code: number; body: string }
    return { code: ex.code, body: JSON.parse(ex.body) as Record<string, unknown> }
  }
  throw new Error("expected a refusal")
}

describe("the Kubernetes API test server", () => {
  it("creates, reads, lists by label and deletes pods, refusing duplicates (409) and unknown names (404) with Status objects", async () => {
    const { core } = await start()
    const created = await core.createNamespacedPod({ namespace: NS, body: pod("a", { app: "x", tier: "gpu" }) })
    expect(created.metadata?.resourceVersion).toBe("1")
    expect(created.metadata?.uid).toBe("00000000-0000-4000-8000-000000000001")
    expect(created.status?.phase).toBe("Pending")
    await core.createNamespacedPod({ namespace: NS, body: pod("b", { app: "y" }) })
    const dup = await status(core.createNamespacedPod({ namespace: NS, body: pod("a") }))
    expect(dup.code).toBe(409)
    expect(dup.body).toMatchObject({ kind: "Status", status: "Failure", reason: "AlreadyExists", code: 409, message: 'pods "a" already exists', details: { name: "a", kind: "pods" } })
    const missing = await status(core.readNamespacedPod({ name: "nope", namespace: NS }))
    expect(missing.body).toMatchObject({ kind: "Status", reason: "NotFound", code: 404, message: 'pods "nope" not found' })
    const invalid = await status(core.createNamespacedPod({ namespace: NS, body: pod("Not_Valid") }))
    expect(invalid.body).toMatchObject({ reason: "Invalid", code: 422 })

    const list = async (labelSelector?: string) => (await core.listNamespacedPod({ namespace: NS, labelSelector })).items.map((p) => p.metadata?.name)
    expect(await list()).toEqual(["a", "b"])
    expect(await list("app=x")).toEqual(["a"])
    expect(await list("app!=x")).toEqual(["b"])
    expect(await list("app in (x,y),!tier")).toEqual(["b"])
    expect(await list("tier")).toEqual(["a"])
    expect((await core.listNamespacedPod({ namespace: NS })).metadata?.resourceVersion).toBe("2")

    // Unbound pods go at once; the answer is the pod as it was last.
    const deleted = await core.deleteNamespacedPod({ name: "a", namespace: NS })
    expect(deleted.metadata?.resourceVersion).toBe("3")
    expect(await list()).toEqual(["b"])
    expect((await status(core.deleteNamespacedPod({ name: "a", namespace: NS }))).code).toBe(404)
  })

  it("deletes a pod bound to a node gracefully: a deletionTimestamp first, gone when the kubelet confirms", async () => {
    const { server, core } = await start()
    await core.createNamespacedPod({ namespace: NS, body: pod("a") })
    server.update("pods", NS, "a", (o) => (o.spec.nodeName = "n1"))
    const answered = await core.deleteNamespacedPod({ name: "a", namespace: NS })
    expect(answered.metadata?.deletionTimestamp?.toISOString()).toBe("2026-03-01T00:00:30.000Z")
    expect(answered.metadata?.deletionGracePeriodSeconds).toBe(30)
    expect(server.objects("pods", NS).map((p) => p.metadata.name)).toEqual(["a"])
    server.remove("pods", NS, "a")
    expect(server.objects("pods", NS)).toEqual([])
    // A precondition on another uid is refused.
    await core.createNamespacedPod({ namespace: NS, body: pod("b") })
    const refused = await status(core.deleteNamespacedPod({ name: "b", namespace: NS, body: { preconditions: { uid: "other" } } }))
    expect(refused.body).toMatchObject({ reason: "Conflict", code: 409 })
    expect(server.objects("pods", NS).map((p) => p.metadata.name)).toEqual(["b"])
    // The pod's own uid is accepted.
    await core.deleteNamespacedPod({ name: "b", namespace: NS, body: { preconditions: { uid: server.object("pods", NS, "b")!.metadata.uid! } } })
    expect(server.objects("pods", NS)).toEqual([])
  })

  it("watches: initial ADDED without a resourceVersion, only later events from one, label filters, BOOKMARKs on demand", async () => {
    const { server, kc, core } = await start()
    await core.createNamespacedPod({ namespace: NS, body: pod("a", { mine: "true" }) })
    await core.createNamespacedPod({ namespace: NS, body: pod("b") })
    const all = await watchPods(kc, {})
    await all.until(2)
    expect(all.events).toEqual(["ADDED a", "ADDED b"])

    const mine = await watchPods(kc, { resourceVersion: "1", labelSelector: "mine=true", allowWatchBookmarks: true })
    server.update("pods", NS, "a", (o) => (o.status.phase = "Running"))
    // Moving out of the selector is a DELETED for that watch.
    server.update("pods", NS, "a", (o) => delete o.metadata.labels!.mine)
    expect(server.bookmark()).toBe(1)
    await mine.until(3)
    expect(mine.events).toEqual(["MODIFIED a", "DELETED a", "BOOKMARK"])
    // As the API server's watch cache sends it: the object as it was before (still labelled, no
    // deletion mark), under the change's resourceVersion. The pod itself is still there.
    expect(mine.objects[1]).toMatchObject({ metadata: { name: "a", labels: { mine: "true" }, resourceVersion: "4" }, status: { phase: "Running" } })
    expect((mine.objects[1] as { metadata: Record<string, unknown> }).metadata.deletionTimestamp).toBeUndefined()
    expect(server.object("pods", NS, "a")?.metadata.labels).toEqual({})
    expect(mine.objects[2]).toEqual({ kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: "4" } })
    await all.until(4)
    expect(all.events).toEqual(["ADDED a", "ADDED b", "MODIFIED a", "MODIFIED a"])

    expect(server.dropWatches()).toBe(2)
    await all.whenEnded()
    await mine.whenEnded()
    expect(all.ended).toEqual({ err: null })
  })

  it("patches labels as `kubectl label` does (JSON merge patch): a uid that differs is 422, a resourceVersion that differs 409, a patch that changes nothing writes nothing", async () => {
    const { server, core } = await start()
    const created = await core.createNamespacedPod({ namespace: NS, body: pod("a", { mine: "true", keep: "x" }) })
    const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch)
    const patch = (body: object) => core.patchNamespacedPod({ name: "a", namespace: NS, body }, merge)
    const refusal = (p: Promise<unknown>) => p.then(() => null, (e: { code?: number; body?: string }) => [e.code, JSON.parse(e.body ?? "{}").reason])
    const unlabelled = await patch({ metadata: { labels: { mine: null } } })
    expect(unlabelled.metadata?.labels).toEqual({ keep: "x" })
    expect(unlabelled.metadata?.uid).toBe(created.metadata?.uid)
    const rv = server.resourceVersion
    expect(await refusal(patch({ metadata: { uid: "00000000-0000-4000-8000-00000000ffff", labels: { mine: "true" } } }))).toEqual([422, "Invalid"])
    expect(await refusal(patch({ metadata: { resourceVersion: created.metadata?.resourceVersion, labels: { mine: "true" } } }))).toEqual([409, "Conflict"])
    expect(server.resourceVersion).toBe(rv)
    // The uid of the pod meant, and its label back; the same patch again changes nothing.
    const back = await patch({ metadata: { uid: created.metadata?.uid, labels: { mine: "true" } } })
    expect(back.metadata?.labels).toEqual({ keep: "x", mine: "true" })
    expect(server.resourceVersion).toBe(rv + 1)
    expect((await patch({ metadata: { uid: created.metadata?.uid, labels: { mine: "true" } } })).metadata?.resourceVersion).toBe(String(rv + 1))
    expect(server.resourceVersion).toBe(rv + 1)
  })

  it("answers a watch from a compacted resourceVersion with 410 Gone: an ERROR event, or an HTTP 410 when configured", async () => {
    const { server, kc, core } = await start({ history_events_max: 2 })
    for (const name of ["a", "b", "c", "d"]) await core.createNamespacedPod({ namespace: NS, body: pod(name) })
    // Four events, two kept (3 and 4): a watch from 1 would miss 2, one from 2 misses nothing.
    const old = await watchPods(kc, { resourceVersion: "1" })
    await old.whenEnded()
    expect(old.events).toEqual(["ERROR 410"])
    expect(old.objects[0]).toMatchObject({ kind: "Status", reason: "Expired", code: 410 })
    const recent = await watchPods(kc, { resourceVersion: "2" })
    await recent.until(2)
    expect(recent.events).toEqual(["ADDED c", "ADDED d"])
    recent.controller.abort()

    server.compact()
    server.expiredAs = "status"
    const refused = await watchPods(kc, { resourceVersion: "3" })
    await refused.whenEnded()
    expect(refused.events).toEqual([])
    expect((refused.ended?.err as { statusCode?: number }).statusCode).toBe(410)
  })

  it("serves persistentvolumeclaims: create (defaults, the pvc-protection finalizer), get, list by label, 409, 404 and 422 as Status objects", async () => {
    const { core } = await start()
    const claim = (name: string, labels: Record<string, string> = {}, spec: V1PersistentVolumeClaimSpec = { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "10Gi" } } }): V1PersistentVolumeClaim => ({
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: { name, labels },
      spec
    })
    await core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: claim("a", { app: "x" }) })
    await core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: claim("b", {}, { accessModes: ["ReadWriteMany"], resources: { requests: { storage: "1Ti" } }, storageClassName: "nfs" }) })
    const read = await core.readNamespacedPersistentVolumeClaim({ name: "a", namespace: NS })
    expect(read.metadata?.finalizers).toEqual(["kubernetes.io/pvc-protection"])
    expect(read.spec).toEqual({ accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "10Gi" } }, volumeMode: "Filesystem" })
    expect(read.status).toEqual({ phase: "Pending" })
    const list = async (labelSelector?: string) => (await core.listNamespacedPersistentVolumeClaim({ namespace: NS, labelSelector })).items.map((c) => c.metadata?.name)
    expect(await list()).toEqual(["a", "b"])
    expect(await list("app=x")).toEqual(["a"])

    const dup = await status(core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: claim("a") }))
    expect(dup.body).toEqual({ kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: 'persistentvolumeclaims "a" already exists', reason: "AlreadyExists", details: { name: "a", group: "", kind: "persistentvolumeclaims" }, code: 409 })
    const missing = await status(core.readNamespacedPersistentVolumeClaim({ name: "nope", namespace: NS }))
    expect(missing.body).toEqual({ kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: 'persistentvolumeclaims "nope" not found', reason: "NotFound", details: { name: "nope", kind: "persistentvolumeclaims" }, code: 404 })
    const noMode = await status(core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: claim("c", {}, { resources: { requests: { storage: "10Gi" } } }) }))
    expect(noMode.body).toMatchObject({ reason: "Invalid", code: 422, message: 'PersistentVolumeClaim "c" is invalid: spec.accessModes: Required value: at least 1 access mode is required' })
    const noSize = await status(core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: claim("c", {}, { accessModes: ["ReadWriteOnce"] }) }))
    expect(noSize.body).toMatchObject({ reason: "Invalid", code: 422, message: 'PersistentVolumeClaim "c" is invalid: spec.resources[storage]: Required value' })

    const deleted = await core.deleteNamespacedPersistentVolumeClaim({ name: "a", namespace: NS })
    expect(deleted.metadata?.name).toBe("a")
    expect(await list()).toEqual(["b"])
    expect((await status(core.deleteNamespacedPersistentVolumeClaim({ name: "a", namespace: NS }))).code).toBe(404)
  })

  it("keeps a deleted claim a pod mounts (a deletionTimestamp) until the last such pod is gone", async () => {
    const { server, core } = await start()
    await core.createNamespacedPersistentVolumeClaim({ namespace: NS, body: { metadata: { name: "data" }, spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "1Gi" } } } } })
    for (const name of ["a", "b"]) {
      await core.createNamespacedPod({ namespace: NS, body: { ...pod(name), spec: { containers: [{ name: "c", image: "busybox" }], volumes: [{ name: "data", persistentVolumeClaim: { claimName: "data" } }] } } })
    }
    const answered = await core.deleteNamespacedPersistentVolumeClaim({ name: "data", namespace: NS })
    expect(answered.metadata?.deletionTimestamp?.toISOString()).toBe("2026-03-01T00:00:00.000Z")
    // Deleting it again answers the claim as it is.
    expect((await core.deleteNamespacedPersistentVolumeClaim({ name: "data", namespace: NS })).metadata?.resourceVersion).toBe(answered.metadata?.resourceVersion)
    await core.deleteNamespacedPod({ name: "a", namespace: NS })
    expect(server.objects("persistentvolumeclaims", NS).map((c) => c.metadata.name)).toEqual(["data"])
    await core.deleteNamespacedPod({ name: "b", namespace: NS })
    expect(server.objects("persistentvolumeclaims", NS)).toEqual([])
  })

  it("replaces leases with optimistic concurrency: a stale resourceVersion is 409 Conflict", async () => {
    const { coord } = await start()
    const spec = { holderIdentity: "a", leaseDurationSeconds: 15 }
    const created = await coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: "l" }, spec } })
    const renewed = await coord.replaceNamespacedLease({ name: "l", namespace: NS, body: { ...created, spec: { ...spec, leaseTransitions: 1 } } })
    expect(renewed.metadata?.resourceVersion).toBe("2")
    const stale = await status(coord.replaceNamespacedLease({ name: "l", namespace: NS, body: { ...created, spec: { ...spec, holderIdentity: "b" } } }))
    expect(stale.code).toBe(409)
    expect(stale.body).toMatchObject({ reason: "Conflict", message: 'Operation cannot be fulfilled on leases.coordination.k8s.io "l": the object has been modified; please apply your changes to the latest version and try again' })
    expect((await coord.readNamespacedLease({ name: "l", namespace: NS })).spec?.holderIdentity).toBe("a")
    expect((await status(coord.createNamespacedLease({ namespace: NS, body: { metadata: { name: "l" }, spec } }))).code).toBe(409)
  })

  const hasKubectl = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"].some((p) => existsSync(p))
  if (!hasKubectl) console.log("kubectl is not installed (Debian package kubernetes-client): the kubectl check of the test server is skipped")
  it.runIf(hasKubectl)("is read by kubectl: `kubectl get pods -o json` sees the pods the driver created, `get pvc` its claims", async () => {
    world = await K8sWorld.start()
    const driver = await world.driver()
    driver.ensureVolume({ id: "dr-1", account: "acme", kind: "cloud_drive", size_gb: 100, region: "us-east" })
    driver.createWorkload({ name: "eco-gi-1", resource: "gi-1", account: "acme", region: "us-east", gpu: "H100", gpu_count: 2, node_count: 1, image: null, volumes: [], service: null })
    driver.createWorkload({ name: "eco-gc-1", resource: "gc-1", account: "acme", region: "us-east", gpu: "H100", gpu_count: 8, node_count: 2, image: "acme/train:1", volumes: [], service: null })
    await world.advance(90_000)
    const { stdout } = await promisify(execFile)(
      "kubectl",
      ["--kubeconfig", world.kubeconfig, "--cache-dir", mkdtempSync(join(tmpdir(), "kubectl-cache-")), "--request-timeout", "10s", "get", "pods", "-n", "ecolink", "-l", "ecolink.io/managed=true", "-o", "json"],
      { timeout: 20_000 }
    )
    const seen = JSON.parse(stdout) as { kind: string; items: Array<{ metadata: { name: string; labels: Record<string, string> }; spec: { nodeName: string }; status: { phase: string } }> }
    expect(seen.kind).toBe("List")
    const expected = world.pods()
    expect(seen.items.map((p) => [p.metadata.name, p.metadata.labels["ecolink.io/resource"], p.spec.nodeName, p.status.phase])).toEqual(
      expected.map((p) => [p.metadata.name, p.metadata.labels!["ecolink.io/resource"], p.spec.nodeName, p.status.phase])
    )
    expect(seen.items.map((p) => p.metadata.name)).toEqual(["eco-gc-1-0", "eco-gc-1-1", "eco-gi-1"])
    const claims = await promisify(execFile)(
      "kubectl",
      ["--kubeconfig", world.kubeconfig, "--cache-dir", mkdtempSync(join(tmpdir(), "kubectl-cache-")), "--request-timeout", "10s", "get", "pvc", "-n", "ecolink", "-l", "ecolink.io/managed=true", "-o", "json"],
      { timeout: 20_000 }
    )
    const pvcs = JSON.parse(claims.stdout) as { items: Array<{ metadata: { name: string }; spec: { accessModes: string[]; resources: { requests: { storage: string } }; storageClassName: string } }> }
    expect(pvcs.items.map((c) => [c.metadata.name, c.spec.accessModes, c.spec.resources.requests.storage, c.spec.storageClassName])).toEqual([["eco-dr-1", ["ReadWriteOnce"], "100Gi", "ecolink-cloud-drive"]])
    // `kubectl label pod eco-gi-1 ecolink.io/managed-` is taken (a merge patch): the pod is out
    // of the selector, still there. (The driver, subscribed to nothing here, leaves it so.)
    await promisify(execFile)("kubectl", ["--kubeconfig", world.kubeconfig, "--cache-dir", mkdtempSync(join(tmpdir(), "kubectl-cache-")), "--request-timeout", "10s", "label", "pod", "eco-gi-1", "-n", "ecolink", "ecolink.io/managed-"], { timeout: 20_000 })
    expect(world.server.object("pods", "ecolink", "eco-gi-1")?.metadata.labels?.["ecolink.io/managed"]).toBeUndefined()
  })
})
