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
import type { ClusterPort, WorkloadPhase, WorkloadSpec } from "../cluster.js"
import { ownerOf } from "../resources.js"

/** A workload the cluster runs for no live resource of ours. */
export interface Orphan {
  readonly name: string
  readonly resource: string
  readonly phase: WorkloadPhase
}

export { ownerOf } from "../resources.js"
export { stuckPendingEvidence, stuckPendingInput, type StuckPendingPod } from "../cluster.js"

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
