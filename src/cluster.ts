/**
 * The Cluster port: what the engine asks of the world that runs pods, and what it hears
 * back. One GPU resource is one workload: a pod per node (one for an instance,
 * `node_count` for a cluster), named deterministically from the resource id so that a
 * duplicate create is refused by the cluster instead of running twice.
 *
 * Commands are fire-and-forget: the world answers with events, and the engine reconciles
 * against `get`/`list` (level-triggered), so a lost event is healed, not fatal.
 */

export interface WorkloadSpec {
  /** Deterministic, from the resource id (`podNameFor`). */
  readonly name: string
  readonly resource: string
  readonly account: string
  readonly region: string
  readonly gpu: string
  /** GPUs per pod; one pod per node. */
  readonly gpu_count: number
  readonly node_count: number
  readonly image: string | null
  /** Storage to mount (cloud drive, shared filesystems) by resource id, sorted: PVCs in Kubernetes. */
  readonly volumes: ReadonlyArray<string>
  /** For an inference replica, the instance whose Service fronts it; null for a GPU resource. */
  readonly service: string | null
}

/** A storage volume (SPEC §5): a PersistentVolumeClaim in Kubernetes, named from the resource id. */
export interface VolumeSpec {
  readonly id: string
  readonly account: string
  readonly kind: "cloud_drive" | "shared_fs"
  readonly size_gb: number
  readonly region: string
}

/** What the cluster says a workload is doing now. */
export type WorkloadPhase = "pending" | "loading" | "running" | "preempted" | "failed"

export interface WorkloadStatus {
  readonly name: string
  readonly resource: string
  readonly phase: WorkloadPhase
  /** When its containers first started (the instant of `loading`), if they did. */
  readonly started_at: number | null
}

/**
 * What the world tells the engine, stamped `at` when the world learned it. A stop the world
 * learned late (the Kubernetes driver's re-opened watch or relist) may carry `ended_at`, when
 * the pods' own record dates it, earlier than `at`: billing ends there, as for a stop the
 * reconciler finds late (`firstStopAt`). The simulated world's events are never late.
 */
export type ClusterEvent =
  | { readonly type: "pod.loading"; readonly resource: string; readonly at: number }
  | { readonly type: "pod.running"; readonly resource: string; readonly at: number; readonly started_at: number | null }
  | { readonly type: "pod.preempted"; readonly resource: string; readonly at: number; readonly ended_at?: number }
  | { readonly type: "pod.failed"; readonly resource: string; readonly at: number; readonly ended_at?: number }
  /**
   * `ended_at`: a world whose view was behind when the delete was asked (`viewBehind`) sends
   * `pod.deleted` once it has caught up, with the instant its pods had stopped holding their
   * GPUs before the delete, when it learned of such a stop meanwhile (dated as above).
   */
  | { readonly type: "pod.deleted"; readonly resource: string; readonly at: number; readonly ended_at?: number }

export interface ClusterPort {
  /** Creates the workload's pods. A second create of the same name is a no-op. */
  createWorkload(spec: WorkloadSpec): void
  /**
   * Deletes the workload's pods; `pod.deleted` follows once they are gone. Idempotent. Asked
   * while the world's view is behind (`viewBehind`), `pod.deleted` waits until it has caught up,
   * and carries `ended_at` if the pods had stopped before the delete was asked.
   */
  deleteWorkload(name: string): void
  /** Makes sure the storage volume exists; its data survives every workload. Idempotent. */
  ensureVolume(volume: VolumeSpec): void
  /** Deletes the storage volume and its data. Idempotent. */
  deleteVolume(id: string): void
  /**
   * Calls `visit` with the id of every volume the cluster holds for us, as of its last look
   * (a driver may answer from a list it took earlier, and start the next one now), in no
   * particular order. The reconciler's sweep of leftover volumes: a volume whose delete gave
   * up, or whose control plane stopped before the delete went through.
   */
  forEachVolume(visit: (id: string) => void): void
  get(name: string): WorkloadStatus | undefined
  /**
   * The first instant at or after `from` at which the workload's pods stopped holding their
   * GPUs (left `loading`/`running`), if the world knows; null if they have not since, or the
   * world cannot say. Billing that began at `from` ends there: a stop the engine learned late,
   * and a stop and restart it never saw (both events missed, or during an outage), are billed
   * only up to the first stop. The simulated world keeps every stop instant. The Kubernetes
   * driver keeps the stops it saw, each dated when it learned it or, learned late, from the
   * pod's own record (a `DisruptionTarget`'s `lastTransitionTime`, a container's
   * `state.terminated.finishedAt`, a `deletionTimestamp`) or, for a pod gone with none of
   * these, its Events, in whole seconds: a stop in the second `from` falls in is answered as
   * `from` (docs/KUBERNETES.md, "Dating a stop"). It forgets them with the workload, and a new
   * driver knows only what the pods it lists still say (and what `recallGone` finds in the
   * Events). A lookup over a few instants.
   */
  firstStopAt(name: string, from: number): number | null
  /**
   * Optional: how a started workload the world does not know ended, when its pods all went while
   * no control plane watched them (an engine outage: a new control plane never saw them), from
   * what the world still keeps of their end (Kubernetes Events); null if it keeps nothing, and the
   * engine takes the workload for lost, as before. `from`: when billing began, the instant its
   * pods were known to run: nothing from before counts, and no stop is dated earlier (nor later
   * than now). A preemption is the world's to resume, as one it saw: from then on `phaseOf` says
   * `preempted` and `firstStopAt` dates it, and the engine's next `createWorkload` of it creates
   * the replacement pods. The simulated world never loses sight of its workloads and leaves it out.
   */
  recallGone?(workload: Pick<WorkloadSpec, "name" | "resource" | "account" | "region" | "node_count" | "service">, from: number): RecalledStop | null
  /**
   * Optional: whether a change to the pods may have happened that the world has not heard of
   * yet (the Kubernetes driver's watch is down, relisting, or replaying the gap after it
   * re-opened). A stop the engine asks for then cannot be billed up to a stop the pods made
   * unheard: it settles at `pod.deleted`, which dates that stop (`ended_at`). A world that
   * always hears its pods at once (the simulated one) leaves it out: never behind.
   */
  viewBehind?(): boolean
  /**
   * Just the phase of `get(name)`, or undefined: the reconciler asks it of every live
   * resource on every watchdog tick, so it must be a lookup, not a copy.
   */
  phaseOf(name: string): WorkloadPhase | undefined
  /** Every workload the cluster runs for us, ordered by name. */
  list(): ReadonlyArray<WorkloadStatus>
  /**
   * Calls `visit` with the name and resource of every workload, in no particular order and
   * without copying: the reconciler's orphan check on every watchdog tick. A caller that acts
   * on what it finds sorts first.
   */
  forEachWorkload(visit: (name: string, resource: string) => void): void
  /**
   * The change feed: calls `visit` with the name and resource of every workload that
   * appeared, changed phase or disappeared since the previous call (each at least once, in
   * no particular order), then forgets them. It reports changes, not events: a pod event the
   * watch lost is here all the same. The reconciler's watchdog tick looks only at these, at
   * the resources the engine changed, and at what it found wrong last time (one consumer).
   */
  drainChanges(visit: (name: string, resource: string) => void): void
  /**
   * Optional: what the cluster says about each pod of the workload, for the journal (an
   * operator reading why an instance failed wants the scheduler's "Unschedulable: …" beside
   * it). Evidence only, never an input to a decision; a world that cannot describe its pods
   * leaves it out.
   */
  podsOf?(name: string): ReadonlyArray<PodEvidence>
  /** Static facts about a region, for admission (`gpu_count exceeds GPUs per node`). */
  region(name: string): { readonly nodes: number; readonly gpus_per_node: number } | undefined
  /** The regions this cluster spans, sorted by name. */
  regionNames(): ReadonlyArray<string>
  /** Delivers pod events; returns the unsubscribe function. One subscriber at a time. */
  subscribe(handler: (event: ClusterEvent) => void): () => void
}

/**
 * A workload the engine last saw placed, from a live resource's snapshot (`placedWorkloads`):
 * what a world that keeps its pods only in the control plane's memory (the built-in simulated
 * cluster of `npm start`) takes up again when a new process starts on the same database
 * (`RestoreWorkloads`). `phase`: the phase the engine last saw its pods in.
 */
export interface PlacedWorkload {
  readonly spec: WorkloadSpec
  /** `pending`: created, its image still pulling (or waiting for room) when the engine last looked. */
  readonly phase: "pending" | "loading" | "running" | "preempted"
  /** When its containers started (it entered `loading`), as the engine recorded it; null if the record does not say. */
  readonly loading_at: number | null
  /** A pending one's: when the engine asked for it (its resource's creation), so its pull is not started over. */
  readonly created_at?: number
}

/** How a workload whose pods went unseen ended (`ClusterPort.recallGone`): `ended_at` dates the stop. */
export interface RecalledStop {
  readonly phase: "preempted" | "failed"
  readonly ended_at: number
}

/** One pod of a workload as the cluster describes it (`ClusterPort.podsOf`). */
export interface PodEvidence {
  readonly pod: string
  /** The pod's state as the world names it (`pending`, `running`, `missing`, …). */
  readonly state: string
  readonly node: string | null
  /** Why it is where it is: the scheduler's or the kubelet's reason and message, if any. */
  readonly reason: string | null
}

export const podNameFor = (resource: string): string => `eco-${resource}`

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
