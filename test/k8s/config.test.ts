/**
 * Names and configuration of the Kubernetes world: deterministic, valid Kubernetes names
 * from any engine name, and the cluster description decoded (or refused) at the boundary.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { backoffMs, DEFAULT_LIMITS } from "../../src/k8s/config.js"
import { dnsLabel, labelValue, podNamesOf, serviceNameOf } from "../../src/k8s/names.js"
import { decodeKubernetesWorld } from "../../src/k8s/world.js"
import { DEFAULT_LEADER_ELECTION } from "../../src/k8s/leader.js"

describe("Kubernetes names", () => {
  it("keeps a valid name, and makes any other a valid DNS label that differs from every other engine name", () => {
    expect(dnsLabel("eco-gi-1")).toBe("eco-gi-1")
    const replica = dnsLabel("eco-inf-1@us-east")
    expect(replica).toMatch(/^eco-inf-1-us-east-[0-9a-f]{8}$/)
    expect(dnsLabel("eco-inf-1@us-east")).toBe(replica)
    // "eco-GI_1" and "eco-gi-1" must not share a pod.
    expect(dnsLabel("eco-GI_1")).not.toBe("eco-gi-1")
    const long = dnsLabel(`eco-${"x".repeat(80)}`)
    expect(long.length).toBe(63)
    for (const n of [replica, dnsLabel("eco-GI_1"), long, dnsLabel("eco-a.b-")]) expect(n).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/)
    expect(podNamesOf("eco-gc-1", 12)).toEqual(Array.from({ length: 12 }, (_, i) => `eco-gc-1-${i}`))
    expect(podNamesOf(`eco-${"y".repeat(70)}`, 12).every((n) => n.length <= 63)).toBe(true)
    expect(serviceNameOf("inf-1")).toBe("eco-inf-1")
    expect(labelValue("inf-1@us-east")).toMatch(/^inf-1-us-east-[0-9a-f]{8}$/)
    expect(labelValue("acme")).toBe("acme")
  })

  it("backs off by doubling from the minimum, capped at the maximum", () => {
    expect([1, 2, 3, 4, 5, 6, 60].map((a) => backoffMs(a, DEFAULT_LIMITS.pods_watch_backoff_ms_min, DEFAULT_LIMITS.pods_watch_backoff_ms_max))).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000])
  })
})

describe("the cluster description file", () => {
  it("decodes regions and options, filling the defaults", () => {
    const decoded = decodeKubernetesWorld({ namespace: "prod", regions: { "us-east": { nodes: 4, gpus_per_node: 8 } }, gpu_label: "nvidia.com/gpu.product", leader_election: { lease_name: "eco" } })
    expect(Either.isRight(decoded)).toBe(true)
    const c = Either.getOrThrow(decoded)
    expect(c.cluster).toMatchObject({ namespace: "prod", regions: [{ name: "us-east", nodes: 4, gpus_per_node: 8 }], gpu_label: "nvidia.com/gpu.product", preemptible_priority_class: "ecolink-preemptible", limits: DEFAULT_LIMITS })
    expect(c.leader_election).toEqual({ ...DEFAULT_LEADER_ELECTION, lease_name: "eco" })
    expect([c.cluster.cloud_drive_storage_class, c.cluster.shared_fs_storage_class]).toEqual(["ecolink-cloud-drive", "ecolink-shared-fs"])
  })

  it("takes a StorageClass per storage kind, null for the cluster's default, and refuses a name Kubernetes would not", () => {
    const decoded = decodeKubernetesWorld({ regions: { "us-east": { nodes: 1, gpus_per_node: 8 } }, cloud_drive_storage_class: "premium-rwo.csi", shared_fs_storage_class: null })
    expect(Either.isRight(decoded)).toBe(true)
    const c = Either.getOrThrow(decoded).cluster
    expect([c.cloud_drive_storage_class, c.shared_fs_storage_class]).toEqual(["premium-rwo.csi", null])
    expect(Either.isLeft(decodeKubernetesWorld({ regions: { "us-east": { nodes: 1, gpus_per_node: 8 } }, shared_fs_storage_class: "Shared_FS" }))).toBe(true)
  })

  it("refuses what would break the engine: no GPUs per node, a lease that lapses before its leader gives up", () => {
    expect(Either.isLeft(decodeKubernetesWorld({ regions: { "us-east": { nodes: 4, gpus_per_node: 0 } } }))).toBe(true)
    // Found by review: no region at all was accepted, and every launch then refused.
    expect(Either.getLeft(decodeKubernetesWorld({ regions: {} }))).toEqual(Either.getLeft(Either.left("regions: at least one region")))
    expect(Either.getLeft(decodeKubernetesWorld({ regions: { a: { nodes: 0, gpus_per_node: 8 } }, inference_port: "80" }))).toEqual(
      Either.getLeft(Either.left("regions.a.nodes: Expected a number between 1 and 100000, actual 0; inference_port: Expected number, actual \"80\""))
    )
    expect(Either.getLeft(decodeKubernetesWorld({ regions: { "us-east": { nodes: 1, gpus_per_node: 8 } }, leader_election: { lease_duration_ms: 5_000 } }))).toEqual(
      Either.getLeft(Either.left("leader_election: need retry_period_ms < renew_deadline_ms < lease_duration_ms, the last in whole seconds"))
    )
  })
})
