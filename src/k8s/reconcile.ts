/**
 * Level-triggered reconciliation inputs for the supervisor, from what the cluster shows
 * (issue 5: "every live resource has the pods it should, every pod labelled as ours has a
 * live resource, and SPEC §3's stuck-pending rule is applied from what the cluster actually
 * shows"). Pure over the Cluster port, so they work in every world; the Kubernetes driver
 * adds pod-level evidence for the journal.
 *
 * The supervisor decides; these functions only look, and `deleteOrphans` /
 * `createMissing` carry out the two corrections that need no machine (idempotent commands:
 * deterministic names make a repeated create or delete harmless).
 */
import type { ClusterPort, PodEvidence, WorkloadPhase, WorkloadSpec } from "../cluster.js"
import { replicaOf } from "./names.js"

/** A workload the cluster runs for no live resource of ours. */
export interface Orphan {
  readonly name: string
  readonly resource: string
  readonly phase: WorkloadPhase
}

/** The live resource a workload belongs to: an inference replica's instance, or the resource. */
export const ownerOf = (resource: string): string => replicaOf(resource)?.instance ?? resource

/**
 * Every workload whose owner is not live, ordered by name. A pod labelled as ours that names
 * no resource (its annotations lost or hand-made) is an orphan too (`resource` is "").
 */
export const findOrphans = (cluster: ClusterPort, isLive: (resource_id: string) => boolean): Orphan[] =>
  cluster
    .list()
    .filter((w) => w.resource === "" || !isLive(ownerOf(w.resource)))
    .map((w) => ({ name: w.name, resource: w.resource, phase: w.phase }))

/** Deletes every orphan (idempotent), telling `report` of each first; returns them. */
export const deleteOrphans = (cluster: ClusterPort, isLive: (resource_id: string) => boolean, report: (orphan: Orphan) => void = () => {}): Orphan[] => {
  const orphans = findOrphans(cluster, isLive)
  for (const o of orphans) {
    report(o)
    cluster.deleteWorkload(o.name)
  }
  return orphans
}

/** The workloads the engine wants that the cluster does not show, in the order given. */
export const missingWorkloads = (cluster: ClusterPort, desired: ReadonlyArray<WorkloadSpec>): WorkloadSpec[] => desired.filter((spec) => cluster.phaseOf(spec.name) === undefined)

/** Creates each missing workload (a lost create; the name makes a repeat harmless); returns them. */
export const createMissing = (cluster: ClusterPort, desired: ReadonlyArray<WorkloadSpec>): WorkloadSpec[] => {
  const missing = missingWorkloads(cluster, desired)
  for (const spec of missing) cluster.createWorkload(spec)
  return missing
}

/** SPEC §3's stuck-pending rule, its input: is the pod actually running, not running, or gone? */
export type StuckPendingPod = "running" | "not_running" | "missing"

export const stuckPendingInput = (cluster: ClusterPort, name: string): StuckPendingPod => {
  const phase = cluster.phaseOf(name)
  return phase === undefined ? "missing" : phase === "running" ? "running" : "not_running"
}

/**
 * The rule's input with what the cluster says about each pod (for the journal: "Unschedulable:
 * 0/2 nodes are available…" is what an operator wants to read next to `failed`).
 */
export const stuckPendingEvidence = (cluster: ClusterPort, name: string): { readonly pod: StuckPendingPod; readonly pods: ReadonlyArray<PodEvidence> } => ({
  pod: stuckPendingInput(cluster, name),
  pods: cluster.podsOf?.(name) ?? []
})
