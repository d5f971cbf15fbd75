/**
 * What a pod's status means to the engine, and what a workload's pods add up to. Pure
 * functions of the objects the API server returns, so the mapping is tested as data and is
 * the same after a relist as on a live watch.
 *
 *   scheduled, image pulling        → pending
 *   containers started, not Ready   → started   (the workload's `loading`)
 *   Ready                           → ready     (`running`)
 *   DisruptionTarget=True, or Failed
 *   with reason Preempting          → disrupted (preemption or eviction: `preempted`)
 *   Failed or Succeeded             → failed
 */
import type { V1Pod } from "@kubernetes/client-node"
import type { WorkloadPhase } from "../cluster.js"

export type PodState = "pending" | "started" | "ready" | "disrupted" | "failed"

/** The condition the scheduler, the eviction API and the kubelet set on a pod they are about to take. */
export const DISRUPTION_TARGET = "DisruptionTarget"
/** `status.reason` of a pod the kubelet failed to admit a higher-priority pod (kubelet preemption). */
export const KUBELET_PREEMPTING = "Preempting"

const conditionTrue = (pod: V1Pod, type: string): boolean => (pod.status?.conditions ?? []).some((c) => c.type === type && c.status === "True")

export const podStateOf = (pod: V1Pod): PodState => {
  const phase = pod.status?.phase
  if (conditionTrue(pod, DISRUPTION_TARGET) || (phase === "Failed" && pod.status?.reason === KUBELET_PREEMPTING)) return "disrupted"
  // Decision: a pod that ran to completion (Succeeded) no longer holds its GPUs: for billing
  // it has stopped like a failed one (docs/KUBERNETES.md).
  if (phase === "Failed" || phase === "Succeeded") return "failed"
  if (conditionTrue(pod, "Ready")) return "ready"
  const containers = pod.status?.containerStatuses ?? []
  const allRunning = containers.length > 0 && containers.every((c) => c.state?.running != null || c.started === true)
  if (phase === "Running" || allRunning) return "started"
  return "pending"
}

/** Whether the API server is already deleting the pod (graceful deletion in progress). */
export const isTerminating = (pod: V1Pod): boolean => pod.metadata?.deletionTimestamp != null

/** What the driver remembers of a workload between two of its pods' changes. */
export interface WorkloadMemory {
  /** The phase last reported (the engine's view). */
  readonly phase: WorkloadPhase
  /** A preemption was reported and no replacement is Ready yet. */
  readonly preempted: boolean
  /** A pod vanished without us asking: the workload failed. */
  readonly lost: boolean
}

/**
 * The workload's phase from its pods (`missing` for a pod not in the cache, e.g. a
 * replacement not created yet), and whether it is preempted now.
 *
 * - Failed is final, and so is a lost workload.
 * - A pod disrupted while the workload had started is a preemption; the workload stays
 *   `preempted` until every pod (the replacements) is Ready again. A pod disrupted before the
 *   workload started is only replaced: the workload is still pending.
 * - Once running, a workload whose pod drops out of Ready (a readiness flap) is still
 *   running: billing follows the GPUs, which the pod still holds.
 * - All pods started → loading; otherwise pending. A GPU cluster is loading when its last
 *   pod has started and running when its last pod is Ready.
 */
export const workloadPhaseOf = (states: ReadonlyArray<PodState | "missing">, memory: WorkloadMemory): { readonly phase: WorkloadPhase; readonly preempted: boolean } => {
  if (memory.lost || memory.phase === "failed" || states.includes("failed")) return { phase: "failed", preempted: false }
  const started = memory.phase === "loading" || memory.phase === "running" || memory.phase === "preempted"
  const allReady = states.length > 0 && states.every((s) => s === "ready")
  const preempted = (memory.preempted || (started && states.includes("disrupted"))) && !allReady
  if (preempted) return { phase: "preempted", preempted: true }
  if (allReady) return { phase: "running", preempted: false }
  if (memory.phase === "running") return { phase: "running", preempted: false }
  if (states.length > 0 && states.every((s) => s === "started" || s === "ready")) return { phase: "loading", preempted: false }
  return { phase: "pending", preempted: false }
}

/**
 * Kubernetes `Time` fields (a condition's `lastTransitionTime`, a container's `finishedAt`, a
 * `deletionTimestamp`) travel as RFC 3339 in whole seconds: an instant read from one stands for
 * anywhere in that second.
 */
export const KUBE_TIME_PRECISION_MS = 1_000

/**
 * A `Time` field as epoch milliseconds, or null if absent or unreadable. The watch hands the
 * driver parsed JSON (a string) and a list the client's deserialized objects (a Date): both are
 * read here, so a pod dates the same whichever way it came.
 */
export const kubeTimeMs = (value: Date | string | null | undefined): number | null => {
  if (value === null || value === undefined) return null
  const ms = typeof value === "string" ? Date.parse(value) : value.getTime()
  return Number.isFinite(ms) ? ms : null
}

/**
 * When a pod stopped holding its GPUs, as its own record tells (cluster wall time, whole
 * seconds), or null if it does not say. `gone`: the pod was removed from the API server and
 * this is the last version seen of it.
 *
 * - Disrupted (`DisruptionTarget=True`): that condition's `lastTransitionTime`, the instant the
 *   scheduler, the eviction API or the kubelet marked it; the driver reports `preempted` from
 *   that mark, not from when its containers finish.
 * - `Failed` or `Succeeded` (a kubelet preemption too): the latest `state.terminated.finishedAt`
 *   of its containers, when the last of them ended.
 * - Removed while terminating: its `deletionTimestamp`, the end of its grace period, by which
 *   the kubelet has killed its containers (the driver counts a terminating pod as holding its
 *   GPUs until it is gone).
 *
 * Not `lastState.terminated`: our pods run with `restartPolicy: Never`, so the kubelet never
 * restarts a container in place; a pod that did keep its GPUs across a restart would be billed
 * like a readiness flap (docs/KUBERNETES.md).
 */
export const podStoppedAt = (pod: V1Pod, gone: boolean): number | null => {
  const mark = (pod.status?.conditions ?? []).find((c) => c.type === DISRUPTION_TARGET && c.status === "True")
  const marked = kubeTimeMs(mark?.lastTransitionTime)
  if (marked !== null) return marked
  const phase = pod.status?.phase
  if (phase === "Failed" || phase === "Succeeded") {
    let last: number | null = null
    for (const c of pod.status?.containerStatuses ?? []) {
      const finished = kubeTimeMs(c.state?.terminated?.finishedAt)
      if (finished !== null && (last === null || finished > last)) last = finished
    }
    return last
  }
  return gone ? kubeTimeMs(pod.metadata?.deletionTimestamp) : null
}
