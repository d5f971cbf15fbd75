/**
 * What the cluster's Events still say of how a pod ended, for a stop the driver never saw: a pod
 * gone while no watch was open (a relist after a watch gap, the first list after an engine
 * outage) whose last version, if the driver saw one, says nothing of its stop. Pure functions of
 * the objects the API server returns, so the rules are tested as data.
 *
 * Who writes what (Kubernetes 1.26 and later), as core/v1 Events show them:
 *
 *   scheduler      Preempted              "Preempted by pod <uid> on node <node>", on the victim,
 *                                         through events.k8s.io/v1: `eventTime` (µs), no
 *                                         first/lastTimestamp; written after the DisruptionTarget
 *                                         condition and the victim's delete
 *   kubelet        Preempting             admission preemption ("Preempted in order to admit
 *                                         critical pod")
 *   kubelet        Evicted                node-pressure eviction
 *   taint manager  TaintManagerEviction   "Marking for deletion Pod <ns>/<name>" (and, with the same
 *                                         reason, "Cancelling deletion ..."): its reference names
 *                                         no uid
 *   kubelet        Killing                "Stopping container <c>": any container stop, a
 *                                         preemption victim's and a `kubectl delete`'s alike
 *
 * Decision: a preemption or eviction reason is a preemption, as every `DisruptionTarget` reason is
 * (podState.ts): the cluster took the pod for its own reasons and the workload resumes on a
 * replacement. A `Killing` with no such reason beside it is the loss it is (the workload fails),
 * dated at the end of the grace period the kill began, as a `deletionTimestamp` dates a pod last
 * seen terminating: the driver counts a terminating pod as holding its GPUs until it is gone.
 *
 * Events are best-effort (the API says so: "informative, best-effort, supplemental data"): the
 * recorders rate-limit and drop them, and the API server keeps them an hour by default
 * (`--event-ttl`). So finding none changes nothing: the stop is dated when the driver found it and
 * taken for a loss, as before.
 */
import type { CoreV1Event } from "@kubernetes/client-node"
import { kubeTimeMs } from "./podState.js"

/** Reasons that say the cluster took the pod (a preemption or an eviction): the workload is preempted. */
export const PREEMPTION_REASONS: ReadonlySet<string> = new Set(["Preempted", "Preempting", "Evicted"])
/** The taint manager's reason, for both its marks: only "Marking for deletion" is an eviction. */
export const TAINT_EVICTION_REASON = "TaintManagerEviction"
const TAINT_EVICTION_MARK = "Marking for deletion"
/** The kubelet's reason when it stops a container. */
export const KILLING_REASON = "Killing"
/**
 * Every reason `podStopEventOf` reads, in the order the driver lists them (one list each, by the
 * API server's `reason` field selector): the preemption and eviction reasons first, `Killing`
 * last. A round cut short (its bound reached, a list failed) then only ever misses kills, which
 * are the most numerous (every container stop of every pod in the namespace) and the least
 * telling: a pod whose kill was not read is dated when found, as before, and never has its
 * preemption taken for a kill, because a kill counts only once every preemption reason was read.
 */
export const STOP_EVENT_REASONS: ReadonlyArray<string> = [...PREEMPTION_REASONS, TAINT_EVICTION_REASON, KILLING_REASON]

export type PodEndKind = "preempted" | "killed"

/** One Event about a pod that says it stopped: the pod's name and uid (null: the event names none), when. */
export interface PodStopEvent {
  readonly pod: string
  readonly uid: string | null
  readonly kind: PodEndKind
  /** The first occurrence (epoch milliseconds, cluster wall time). */
  readonly at: number
}

/** How a pod ended, as its Events tell: `at` is when it stopped holding its GPUs. */
export interface PodEnd {
  readonly kind: PodEndKind
  readonly at: number
}

/**
 * When an Event first happened: the earliest of `eventTime` (events.k8s.io writers; MicroTime),
 * `firstTimestamp` and `lastTimestamp` (the core recorder's), and `series.lastObservedTime`, as
 * they came (a list deserializes the Times into Dates and leaves MicroTime a string). A series
 * repeats one occurrence: the stop is its first.
 */
export const eventInstant = (e: CoreV1Event): number | null => {
  let first: number | null = null
  // MicroTime is typed as a Date but comes as the string it was sent as; `kubeTimeMs` reads both.
  for (const t of [e.eventTime, e.firstTimestamp, e.lastTimestamp, e.series?.lastObservedTime]) {
    const ms = kubeTimeMs(t)
    if (ms !== null && (first === null || ms < first)) first = ms
  }
  return first
}

/** An Event that says a pod stopped (a preemption, an eviction, a kill), or null for any other. */
export const podStopEventOf = (e: CoreV1Event): PodStopEvent | null => {
  const ref = e.involvedObject
  if (ref?.kind !== "Pod" || ref.name === undefined || e.reason === undefined) return null
  const kind: PodEndKind | null =
    PREEMPTION_REASONS.has(e.reason) || (e.reason === TAINT_EVICTION_REASON && (e.message ?? "").startsWith(TAINT_EVICTION_MARK)) ? "preempted"
    : e.reason === KILLING_REASON ? "killed"
    : null
  const at = eventInstant(e)
  if (kind === null || at === null) return null
  return { pod: ref.name, uid: ref.uid === undefined || ref.uid === "" ? null : ref.uid, kind, at }
}

/**
 * How the pod `pod.name` ended, from its stop events, or null if none says. An event is this pod's
 * when both name a uid and it is this pod's (names are reused: a replacement bears its victim's),
 * or, where either uid is unknown (the taint manager names none; a new control plane never saw the
 * pod), when it came no earlier than `since`: the instant the pod was known to run, by which every
 * earlier pod of that name was gone (a cluster time in whole seconds counts from its second's
 * start). A preemption or eviction wins over a kill and dates the stop at its first mark; a kill
 * alone dates it at the end of its grace period (`grace_ms`).
 */
export const podEndOf = (events: ReadonlyArray<PodStopEvent>, pod: { readonly name: string; readonly uid: string | null; readonly grace_ms: number }, since: number): PodEnd | null => {
  let preempted: number | null = null
  let killed: number | null = null
  for (const e of events) {
    if (e.pod !== pod.name) continue
    const mine = e.uid !== null && pod.uid !== null ? e.uid === pod.uid : e.at >= since
    if (!mine) continue
    if (e.kind === "preempted") preempted = preempted === null ? e.at : Math.min(preempted, e.at)
    else killed = killed === null ? e.at : Math.min(killed, e.at)
  }
  if (preempted !== null) return { kind: "preempted", at: preempted }
  return killed === null ? null : { kind: "killed", at: killed + pod.grace_ms }
}
