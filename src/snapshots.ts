/**
 * Stored actor snapshots across versions of the engine (docs/ENGINE.md, "Upgrades").
 *
 * Each live resource's XState snapshot is kept as JSON in `resources.snapshot`, written by the
 * version of the engine that ran it. A newer engine restores it with its own machines, whose
 * contexts may have gained fields since: the snapshot lacks them, and code that compares a
 * missing field (`undefined`) with `null`, or reads `.length` of it, takes a wrong branch or
 * throws. So every stored snapshot is read here, once, and brought to the current context:
 * each field added after a machine's first version is filled with the value that means what the
 * versions before it did (derived from their code, not guessed), and a field that every version
 * had and that is missing makes the snapshot unreadable, loudly, naming the resource and the
 * field, instead of running on with `undefined`.
 *
 * The tables below list every field of every context type, with its history. They are typed
 * against the context types, so a field added to a machine's context without an entry here
 * does not compile (`npm test` runs the typecheck), and test/upgrade.test.ts checks that the
 * fields marked `first` are exactly those of each machine's first version.
 *
 * `resources.snapshot_version` (migration 20) says which format wrote a row: 0 for rows written
 * before it existed (every engine from f1f27d5 on), `SNAPSHOT_VERSION` since. A row of the
 * current format is read as is; an older one is upgraded; a newer one (a rollback onto a file a
 * newer engine ran) is refused, since what a newer field means cannot be known here.
 */
import type { GpuInstanceContext, GpuInstanceSnapshot } from "../machines/gpuInstance.js"
import type { Cycle, InferenceContext, InferenceSnapshot, ReplicaBilling } from "../machines/inferenceInstance.js"
import type { ReplicaInput } from "../machines/inferenceReplica.js"
import type { StorageContext, StorageSnapshot } from "../machines/storage.js"
import { INFERENCE_KIND, STORAGE_KINDS } from "./resources.js"

/**
 * The format of the snapshots this engine writes. Raise it when a change to a machine's context
 * needs more than a missing field filled (a field renamed, retyped, or a value whose meaning
 * changed), and add the step that converts the older format in `upgrade…` below.
 */
export const SNAPSHOT_VERSION = 1

/** In the machine's first version: every stored snapshot has it. */
interface First {
  readonly since: "first"
}
/** Added later: a snapshot written before lacks it, and `fill` is what the versions before meant. */
interface Fill<V> {
  readonly since: string
  readonly fill: V
}
/** Added later and optional in the type: a snapshot without it means what `absent` says, and stays without it. */
interface Absent {
  readonly since: string
  readonly absent: string
}

type OptionalKeys<C> = { [K in keyof C]-?: object extends Pick<C, K> ? K : never }[keyof C]

/** Every field of a context, with how it came to be. Exhaustive: the compiler rejects a missing or an unknown field. */
export type ContextHistory<C> = {
  readonly [K in keyof C]-?: K extends OptionalKeys<C> ? First | Fill<Exclude<C[K], undefined>> | Absent : First | Fill<C[K]>
}

const first: First = { since: "first" }

/** machines/gpuInstance.ts, first version f1f27d5. */
export const GPU_CONTEXT_HISTORY: ContextHistory<GpuInstanceContext> = {
  id: first,
  account: first,
  kind: first,
  gpu: first,
  gpu_count: first,
  node_count: first,
  region: first,
  image: first,
  hourly_rate_micros: first,
  estimated_duration_hours: first,
  created_at: first,
  // 2a1c28a (storage): before it an instance could attach nothing.
  drive: { since: "2a1c28a", fill: null },
  filesystems: { since: "2a1c28a", fill: [] },
  hours_committed: first,
  started_at: first,
  deadline_at: first,
  warnings_pending: first,
  billable_ms: first,
  billing_since: first,
  termination_reason: first,
  stop_requested_at: first,
  // d8b62ac: before it a stop always settled when requested (the `terminating` state's entry),
  // which is what a stop without it does now.
  settle_at_deleted: { since: "d8b62ac", absent: "the hold settled when the stop was requested" }
}

/** machines/inferenceInstance.ts, first version ca4b45c. */
export const INFERENCE_CONTEXT_HISTORY: ContextHistory<InferenceContext> = {
  id: first,
  account: first,
  model: first,
  source: first,
  gpu: first,
  gpu_count: first,
  regions: first,
  hourly_rate_micros: first,
  first_hold_micros: first,
  created_at: first,
  // 1b4197c: before it no model lived on a shared filesystem, so no replica mounted one.
  filesystem: { since: "1b4197c", fill: null },
  replicas: first,
  cycle: first,
  termination_reason: first,
  stop_requested_at: first,
  // 375b0c1: before it a stop always settled the cycle when requested, as a stop without it does now.
  settle_at_deleted: { since: "375b0c1", absent: "the cycle's hold settled when the stop was requested" }
}

/** An inference instance's `replicas` entries, first version ca4b45c. */
export const REPLICA_BILLING_HISTORY: ContextHistory<ReplicaBilling> = { status: first, billing_since: first, cycle_billable_ms: first }

/** An inference instance's `cycle`, first version ca4b45c. */
export const CYCLE_HISTORY: ContextHistory<Cycle> = { number: first, started_at: first, hold_micros: first, ends_at: first, partial: first }

/** machines/inferenceReplica.ts (a child's context, inside its parent's snapshot), first version ca4b45c. */
export const REPLICA_CONTEXT_HISTORY: ContextHistory<ReplicaInput> = { region: first }

/** machines/storage.ts, first version 2a1c28a. */
export const STORAGE_CONTEXT_HISTORY: ContextHistory<StorageContext> = {
  id: first,
  account: first,
  kind: first,
  size_gb: first,
  region: first,
  daily_rate_micros: first,
  created_at: first,
  attached_to: first,
  // 65ef492: before it suspended storage forgot its instances, and restoring it made it
  // `available`, attached to none: what an empty list does now.
  suspended_from: { since: "65ef492", fill: [] }
}

/** A stored snapshot this engine cannot run: written by a newer one, or missing a field every version writes. */
export class SnapshotUnreadable extends Error {
  constructor(readonly resource: string, reason: string) {
    super(`stored snapshot of ${resource} cannot be restored: ${reason}`)
    this.name = "SnapshotUnreadable"
  }
}

type Json = Record<string, unknown>

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

/** `ctx` with every field `history` names: missing ones filled, or absent where that has its own meaning. */
export const upgradeContext = <C>(resource: string, where: string, ctx: unknown, history: ContextHistory<C>): Json => {
  if (!isObject(ctx)) throw new SnapshotUnreadable(resource, `${where} is not an object`)
  let out: Json | null = null
  for (const [field, h] of Object.entries(history) as Array<[string, First | Fill<unknown> | Absent]>) {
    if (field in ctx) continue
    if ("fill" in h) {
      out ??= { ...ctx }
      out[field] = structuredClone(h.fill)
    } else if (!("absent" in h)) {
      throw new SnapshotUnreadable(resource, `${where} has no ${field}, which every version writes`)
    }
  }
  return out ?? ctx
}

const withContext = (resource: string, snapshot: unknown, upgrade: (ctx: unknown) => Json): Json => {
  if (!isObject(snapshot)) throw new SnapshotUnreadable(resource, "not a JSON object")
  const context = upgrade(snapshot.context)
  return context === snapshot.context ? snapshot : { ...snapshot, context }
}

/** A GPU instance's or cluster's snapshot, written by any earlier version, in the current format. */
export const upgradeGpuSnapshot = (resource: string, snapshot: unknown): GpuInstanceSnapshot =>
  withContext(resource, snapshot, (ctx) => upgradeContext(resource, "context", ctx, GPU_CONTEXT_HISTORY)) as unknown as GpuInstanceSnapshot

/** A storage resource's snapshot, written by any earlier version, in the current format. */
export const upgradeStorageSnapshot = (resource: string, snapshot: unknown): StorageSnapshot =>
  withContext(resource, snapshot, (ctx) => upgradeContext(resource, "context", ctx, STORAGE_CONTEXT_HISTORY)) as unknown as StorageSnapshot

/** An inference instance's snapshot (its cycle, its replicas' billing, its replica children), in the current format. */
export const upgradeInferenceSnapshot = (resource: string, snapshot: unknown): InferenceSnapshot => {
  const upgraded = withContext(resource, snapshot, (raw) => {
    const ctx = upgradeContext(resource, "context", raw, INFERENCE_CONTEXT_HISTORY)
    const cycle = upgradeContext(resource, "context.cycle", ctx.cycle, CYCLE_HISTORY)
    if (!isObject(ctx.replicas)) throw new SnapshotUnreadable(resource, "context.replicas is not an object")
    const replicas = Object.fromEntries(
      Object.entries(ctx.replicas).map(([region, r]) => [region, upgradeContext(resource, `context.replicas.${region}`, r, REPLICA_BILLING_HISTORY)])
    )
    return { ...ctx, cycle, replicas }
  })
  if (!isObject(upgraded.children)) return upgraded as unknown as InferenceSnapshot
  const children = Object.fromEntries(
    Object.entries(upgraded.children).map(([id, child]) => {
      if (!isObject(child) || !isObject(child.snapshot)) throw new SnapshotUnreadable(resource, `child ${id} has no snapshot`)
      const snapshot = withContext(resource, child.snapshot, (ctx) => upgradeContext(resource, `child ${id}'s context`, ctx, REPLICA_CONTEXT_HISTORY))
      return [id, { ...child, snapshot }]
    })
  )
  return { ...upgraded, children } as unknown as InferenceSnapshot
}

export type StoredSnapshot =
  | { readonly kind: "gpu"; readonly snapshot: GpuInstanceSnapshot }
  | { readonly kind: "inference"; readonly snapshot: InferenceSnapshot }
  | { readonly kind: "storage"; readonly snapshot: StorageSnapshot }

/** The refusal of a row a newer engine wrote (a rollback onto its file). */
export const newerFormat = (record: { readonly id: string; readonly snapshot_version: number }): SnapshotUnreadable =>
  new SnapshotUnreadable(record.id, `it was written by a newer engine (snapshot format ${record.snapshot_version}; this engine knows up to ${SNAPSHOT_VERSION}); run that version or a later one`)

/**
 * The one way to read a stored snapshot (restore at start, a finished resource's view, the
 * simulator's output): parsed, and upgraded when an earlier format wrote it.
 */
export const readSnapshot = (record: { readonly id: string; readonly kind: string; readonly snapshot: string; readonly snapshot_version: number }): StoredSnapshot => {
  if (record.snapshot_version > SNAPSHOT_VERSION) throw newerFormat(record)
  const json: unknown = JSON.parse(record.snapshot)
  const current = record.snapshot_version === SNAPSHOT_VERSION
  if (STORAGE_KINDS.includes(record.kind)) return { kind: "storage", snapshot: current ? (json as StorageSnapshot) : upgradeStorageSnapshot(record.id, json) }
  if (record.kind === INFERENCE_KIND) return { kind: "inference", snapshot: current ? (json as InferenceSnapshot) : upgradeInferenceSnapshot(record.id, json) }
  return { kind: "gpu", snapshot: current ? (json as GpuInstanceSnapshot) : upgradeGpuSnapshot(record.id, json) }
}
