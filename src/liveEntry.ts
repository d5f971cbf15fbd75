/**
 * A live resource as the supervisor holds it: its kind, its XState actor and its next alarm,
 * with the small questions both the supervisor and the reconciler ask of one (its status, its
 * workloads, its account). Nothing here changes an entry.
 */
import type { Actor } from "xstate"
import { deferredBillingEnd, gpuStatusOf, type GpuInstanceContext, type gpuInstanceMachine } from "../machines/gpuInstance.js"
import { inferenceStatusOf, type InferenceContext, type inferenceInstanceMachine } from "../machines/inferenceInstance.js"
import { storageStatusOf, type storageMachine } from "../machines/storage.js"
import type { TimerHandle } from "./clock.js"
import { podNameFor, type PlacedWorkload, type WorkloadSpec } from "./cluster.js"
import { replicaResource } from "./resources.js"

type GpuActor = Actor<typeof gpuInstanceMachine>
type InferenceActor = Actor<typeof inferenceInstanceMachine>
type StorageActor = Actor<typeof storageMachine>
type Alarm = { readonly at: number; readonly key: string; readonly handle: TimerHandle } | null

/** `pods`: the workload names, by region for an inference instance, computed once (reconcile). */
export type LiveEntry =
  | { readonly kind: "gpu"; readonly id: string; readonly actor: GpuActor; alarm: Alarm; pods?: Readonly<Record<string, string>> }
  | { readonly kind: "inference"; readonly id: string; readonly actor: InferenceActor; alarm: Alarm; pods?: Readonly<Record<string, string>> }
  | { readonly kind: "storage"; readonly id: string; readonly actor: StorageActor; alarm: Alarm; pods?: Readonly<Record<string, string>> }

/** The names of an entry's workloads: `""` → the GPU resource's; region → an inference replica's. */
export const podsOf = (entry: Extract<LiveEntry, { kind: "gpu" | "inference" }>): Readonly<Record<string, string>> =>
  (entry.pods ??=
    entry.kind === "gpu"
      ? { "": podNameFor(entry.id) }
      : Object.fromEntries(entry.actor.getSnapshot().context.regions.map((region) => [region, podNameFor(replicaResource(entry.id, region))])))

export const statusOf = (entry: LiveEntry): string =>
  entry.kind === "gpu" ? gpuStatusOf(entry.actor.getSnapshot())
  : entry.kind === "inference" ? inferenceStatusOf(entry.actor.getSnapshot())
  : storageStatusOf(entry.actor.getSnapshot())


/** The storage an instance has attached: its drive and filesystems, or its model's filesystem. */
export const storageOf = (entry: LiveEntry): string[] => {
  if (entry.kind === "gpu") {
    const ctx = entry.actor.getSnapshot().context
    return [...(ctx.drive == null ? [] : [ctx.drive]), ...(ctx.filesystems ?? [])]
  }
  if (entry.kind === "inference") {
    const fs = entry.actor.getSnapshot().context.filesystem
    return fs == null ? [] : [fs]
  }
  return []
}

export const accountOf = (entry: LiveEntry): string => entry.actor.getSnapshot().context.account

const NO_REPLICAS: Readonly<Record<string, string>> = Object.freeze({})

/** Statuses of an inference instance's replicas, by region; empty for a GPU resource. */
export const replicaStatuses = (entry: LiveEntry): Readonly<Record<string, string>> =>
  entry.kind === "inference" ? Object.fromEntries(Object.entries(entry.actor.getSnapshot().context.replicas).map(([r, b]) => [r, b.status])) : NO_REPLICAS

/**
 * A stop requested while the world was behind settles at the pods' deletion (`settle_at_deleted`),
 * which dates a stop of theirs before the request (`ended_at`): where the transitions must put
 * the end of the billable stretch the request closed, as the machine is about to bill it. A GPU
 * resource (`pod.deleted` while `terminating`): its move into `terminating`, logged at the request
 * (`requested_at`), moves back to `at` when the pods stopped earlier; null otherwise. An inference
 * replica (its `pod.deleted` while the instance is `terminating`): its move into `deleted` is
 * logged at `at`, where its stretch's billing ended; null when none was open at the request.
 * Read before the event is sent.
 */
export const deferredStopEnd = (
  entry: LiveEntry,
  event: { readonly type: string; readonly ended_at?: number; readonly region?: string }
): { readonly kind: "gpu"; readonly requested_at: number; readonly at: number } | { readonly kind: "replica"; readonly at: number } | null => {
  if (entry.kind === "storage" || statusOf(entry) !== "terminating") return null
  if (entry.kind === "gpu") {
    const ctx = entry.actor.getSnapshot().context
    const requested_at = ctx.stop_requested_at
    if (ctx.settle_at_deleted === undefined || requested_at === null) return null
    const at = deferredBillingEnd(ctx.settle_at_deleted.stretch_since, requested_at, event.ended_at)
    return at === null || at >= requested_at ? null : { kind: "gpu", requested_at, at }
  }
  const ctx = entry.actor.getSnapshot().context
  const requested_at = ctx.stop_requested_at
  const region = event.region
  const replica = region === undefined ? undefined : ctx.replicas[region]
  if (ctx.settle_at_deleted === undefined || requested_at === null || region === undefined || replica === undefined || replica.status === "deleted") return null
  const at = deferredBillingEnd(ctx.settle_at_deleted.stretch_since[region] ?? null, requested_at, event.ended_at)
  return at === null ? null : { kind: "replica", at }
}

/** A live resource that runs workloads: a GPU resource or an inference instance. */
export type WorkloadEntry = Extract<LiveEntry, { kind: "gpu" | "inference" }>

/** The workload of one inference replica: its region's pod, behind the instance's Service. */
export const replicaSpec = (ctx: InferenceContext, region: string): WorkloadSpec => {
  const resource = replicaResource(ctx.id, region)
  return {
    name: podNameFor(resource),
    resource,
    account: ctx.account,
    region,
    gpu: ctx.gpu,
    gpu_count: ctx.gpu_count,
    node_count: 1,
    image: null,
    volumes: ctx.filesystem == null ? [] : [ctx.filesystem],
    service: ctx.id
  }
}

/** The workload of a GPU resource: one pod per node, each with `gpu_count` GPUs and the storage it mounts. */
export const gpuSpec = (ctx: GpuInstanceContext): WorkloadSpec => ({
  name: podNameFor(ctx.id),
  resource: ctx.id,
  account: ctx.account,
  region: ctx.region,
  gpu: ctx.gpu,
  gpu_count: ctx.gpu_count,
  node_count: ctx.node_count,
  image: ctx.image,
  volumes: [...(ctx.drive == null ? [] : [ctx.drive]), ...(ctx.filesystems ?? [])].sort(),
  service: null
})

/** The phases in which the engine last saw a pod it had created: what a restored world takes up. */
const PLACED: ReadonlySet<string> = new Set(["pending", "loading", "running", "preempted"])

/**
 * The workloads a live resource's snapshot says the engine created (`PlacedWorkload`), with
 * the phase it last saw: a GPU resource's pods while it is pending, loading, running or
 * preempted; an active inference instance's replicas that are. A pending one's pull began when
 * the resource was created (an inference replica's, at the latest then). None for a resource
 * `terminating` (its delete was asked before the stop, and went through while the control
 * plane was down: the reconciliation confirms it gone).
 */
export const placedWorkloads = (entry: WorkloadEntry): PlacedWorkload[] => {
  if (entry.kind === "gpu") {
    const snapshot = entry.actor.getSnapshot()
    const status = gpuStatusOf(snapshot)
    if (!PLACED.has(status)) return []
    return [{ spec: gpuSpec(snapshot.context), phase: status as PlacedWorkload["phase"], loading_at: snapshot.context.started_at, created_at: snapshot.context.created_at }]
  }
  const snapshot = entry.actor.getSnapshot()
  if (snapshot.value !== "active") return []
  const ctx = snapshot.context
  const placed: PlacedWorkload[] = []
  for (const region of ctx.regions) {
    const replica = ctx.replicas[region]
    if (replica === undefined || !PLACED.has(replica.status)) continue
    // A loading replica's billable stretch began when its containers started.
    placed.push({ spec: replicaSpec(ctx, region), phase: replica.status as PlacedWorkload["phase"], loading_at: replica.status === "loading" ? replica.billing_since : null, created_at: ctx.created_at })
  }
  return placed
}
