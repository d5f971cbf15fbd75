/**
 * The resources the engine runs, as its callers see them: the requests that create them, the
 * views that describe them, who is asking, and the deterministic ids derived from them. Pure
 * types and functions; the supervisor owns the actors behind them.
 */
import { billableMsAt, gpuStatusOf, type GpuInstanceContext, type GpuInstanceSnapshot, type GpuResourceKind, type GpuStatus } from "../machines/gpuInstance.js"
import { inferenceStatusOf, type InferenceSnapshot, type InferenceStatus, type ModelSource } from "../machines/inferenceInstance.js"
import { storageStatusOf, type StorageKind, type StorageSnapshot } from "../machines/storage.js"
import type { Micros } from "./money.js"
import type * as policy from "./policy.js"

export interface LaunchGpuRequest {
  readonly account: string
  readonly id: string
  readonly kind: GpuResourceKind
  readonly gpu: string
  readonly gpu_count: number
  readonly node_count: number
  readonly region: string
  readonly estimated_duration_hours: number
  readonly image?: string | null
  /** A cloud drive to attach (SPEC §5). */
  readonly drive?: string | null
  /** Shared filesystems to mount. */
  readonly filesystems?: ReadonlyArray<string>
}

export interface GpuView {
  readonly id: string
  readonly account: string
  readonly kind: GpuResourceKind
  readonly status: GpuStatus
  readonly gpu: string
  readonly gpu_count: number
  readonly node_count: number
  readonly region: string
  /** The container image asked for at launch; null for the platform's default. */
  readonly image: string | null
  /** The cloud drive attached at launch, and the shared filesystems mounted (SPEC §5). */
  readonly drive: string | null
  readonly filesystems: ReadonlyArray<string>
  readonly hourly_rate_micros: Micros
  readonly hours_committed: number
  readonly created_at: number
  readonly started_at: number | null
  readonly deadline_at: number | null
  readonly billable_ms: number
  readonly termination_reason: policy.TerminationReason | null
}

export interface LaunchInferenceRequest {
  readonly account: string
  readonly id: string
  readonly model: string
}

export interface RegisterModelRequest {
  readonly account: string
  readonly model: string
  readonly source: ModelSource
  readonly filesystem?: string | null
  readonly gpu: string
  readonly gpu_count: number
}

export interface InferenceView {
  readonly id: string
  readonly account: string
  readonly kind: "inference_instance"
  readonly status: InferenceStatus
  readonly model: string
  readonly gpu: string
  readonly gpu_count: number
  readonly regions: ReadonlyArray<{ readonly region: string; readonly status: string }>
  readonly hourly_rate_micros: Micros
  readonly created_at: number
  readonly cycle: number
  readonly cycle_hold_micros: Micros
  readonly cycle_ends_at: number | null
  readonly termination_reason: policy.TerminationReason | null
}

export interface CreateStorageRequest {
  readonly account: string
  readonly id: string
  readonly kind: StorageKind
  readonly size_gb: number
  readonly region: string
}

export interface StorageView {
  readonly id: string
  readonly account: string
  readonly kind: StorageKind
  readonly status: string
  /** A shared filesystem is `in_use` while at least one instance has it mounted. */
  readonly in_use: boolean
  readonly size_gb: number
  readonly region: string
  readonly attached_to: ReadonlyArray<string>
  readonly daily_rate_micros: Micros
}

export type ResourceView = GpuView | InferenceView | StorageView

export interface ExtendResult {
  readonly additional_cost_micros: Micros
  readonly new_balance_micros: Micros
  readonly deadline_at: number | null
}

/**
 * Who is asking: an account (a customer's key) sees only its own resources; `operator`
 * (the timeline, an operator's tools) sees all.
 */
export type Caller = { readonly account: string } | "operator"

export const STORAGE_KINDS: ReadonlyArray<string> = ["cloud_drive", "shared_fs"]

export const INFERENCE_KIND = "inference_instance"

/** The resource id a replica's workload carries: `@` cannot occur in a resource id. */
export const replicaResource = (id: string, region: string): string => `${id}@${region}`

/** The resource a workload belongs to: `id` itself, or the instance of a replica's `id@region`. */
export const ownerOf = (resource: string): string => {
  const at = resource.indexOf("@")
  return at < 0 ? resource : resource.slice(0, at)
}

export const cycleHoldIdFor = (id: string, cycle: number): string => `hold:${id}:${cycle}`

export const holdIdFor = (resource: string): string => `hold:${resource}`

export const rateOf = (ctx: GpuInstanceContext): Micros => BigInt(ctx.hourly_rate_micros)

export const inferenceViewOf = (snapshot: InferenceSnapshot): InferenceView => {
  const c = snapshot.context
  const status = inferenceStatusOf(snapshot)
  return {
    id: c.id,
    account: c.account,
    kind: INFERENCE_KIND,
    status,
    model: c.model,
    gpu: c.gpu,
    gpu_count: c.gpu_count,
    regions: c.regions.map((region) => ({ region, status: c.replicas[region]?.status ?? "pending" })),
    hourly_rate_micros: BigInt(c.hourly_rate_micros),
    created_at: c.created_at,
    cycle: c.cycle.number,
    cycle_hold_micros: BigInt(c.cycle.hold_micros),
    cycle_ends_at: status === "terminating" || status === "terminated" || status === "failed" ? null : c.cycle.ends_at,
    termination_reason: c.termination_reason
  }
}

export const storageViewOf = (snapshot: StorageSnapshot): StorageView => {
  const c = snapshot.context
  return {
    id: c.id,
    account: c.account,
    kind: c.kind,
    status: storageStatusOf(snapshot),
    in_use: c.attached_to.length > 0,
    size_gb: c.size_gb,
    region: c.region,
    attached_to: c.attached_to,
    daily_rate_micros: BigInt(c.daily_rate_micros)
  }
}

export const viewOf = (snapshot: GpuInstanceSnapshot, at: number): GpuView => {
  const c = snapshot.context
  return {
    id: c.id,
    account: c.account,
    kind: c.kind,
    status: gpuStatusOf(snapshot),
    gpu: c.gpu,
    gpu_count: c.gpu_count,
    node_count: c.node_count,
    region: c.region,
    image: c.image,
    drive: c.drive ?? null,
    filesystems: c.filesystems ?? [],
    hourly_rate_micros: rateOf(c),
    hours_committed: c.hours_committed,
    created_at: c.created_at,
    started_at: c.started_at,
    deadline_at: c.deadline_at,
    billable_ms: billableMsAt(c, at),
    termination_reason: c.termination_reason
  }
}

