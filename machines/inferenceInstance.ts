/**
 * A user inference instance (SPEC §4): a registered model served by one replica per region
 * (a child actor each, `machines/inferenceReplica.ts`), billed per replica while its pod
 * holds the GPUs, in 24-hour cycles. Every cycle has its own hold; at the cycle's end the
 * supervisor settles it and renews with a full hold, a partial hold, or stops the instance
 * (`credit_depleted`). The machine never decides money: the `cycle_end` event carries the
 * renewal the supervisor computed from the ledger.
 *
 *   active (replicas pending/loading/running/preempted/failed) → terminating → terminated
 *   active → failed (every replica failed)
 */
import { and, assertEvent, assign, enqueueActions, sendTo, setup, type SnapshotFrom } from "xstate"
import { BILLABLE_STATES, MS_PER_HOUR, type TerminationReason } from "../src/policy.js"
import { billedPastStop, billingEndOf } from "./gpuInstance.js"
import { replicaMachine, type ReplicaStatus, type ReplicaStatusEvent } from "./inferenceReplica.js"

export type ModelSource = "huggingface" | "platform" | "shared_fs"

export interface InferenceInput {
  readonly id: string
  readonly account: string
  readonly model: string
  readonly source: ModelSource
  readonly gpu: string
  readonly gpu_count: number
  /** One replica per region, in this order (sorted by name). */
  readonly regions: ReadonlyArray<string>
  /** Catalog rate per GPU-hour at launch, micros, as a decimal string. */
  readonly hourly_rate_micros: string
  /** The first cycle's hold (full: rate × GPUs × replicas × 24 h), micros as a string. */
  readonly first_hold_micros: string
  readonly created_at: number
  /** The shared filesystem a `shared_fs` model's weights live on, mounted by the replica. */
  readonly filesystem?: string | null
}

export interface ReplicaBilling {
  readonly status: ReplicaStatus
  /** Start of the open billable stretch, or null. */
  readonly billing_since: number | null
  /** Billable milliseconds of this replica in the current cycle, closed stretches only. */
  readonly cycle_billable_ms: number
}

export interface Cycle {
  readonly number: number
  readonly started_at: number
  readonly hold_micros: string
  readonly ends_at: number
  readonly partial: boolean
}

export interface InferenceContext extends InferenceInput {
  readonly replicas: Readonly<Record<string, ReplicaBilling>>
  readonly cycle: Cycle
  readonly termination_reason: TerminationReason | null
  readonly stop_requested_at: number | null
  /**
   * Present only when the stop was requested while the world's view of the pods was behind (a
   * Kubernetes watch gap: `world_behind`), as on a GPU instance: a replica's pod may have
   * stopped before, unheard, so the cycle's hold settles once every replica's `pod.deleted` has
   * come, each dating such a stop (`ended_at`). `stretch_since`: where each replica's billable
   * stretch the stop closed began (null if none was open): billing ends at that earlier stop,
   * never before the stretch began.
   */
  readonly settle_at_deleted?: { readonly stretch_since: Readonly<Record<string, number | null>> }
}

export interface Renewal {
  readonly kind: "full" | "partial"
  readonly hold_micros: string
  readonly window_ms: number
}

export type InferenceEvent =
  /** `ended_at` as on a GPU instance's pod events: a stop the world dates before `at`. */
  | { type: "replica.pod"; region: string; pod: "loading" | "running" | "preempted" | "failed" | "deleted"; at: number; ended_at?: number }
  | ReplicaStatusEvent
  /**
   * `world_behind` (on a stop: a terminate, or a cycle end that cannot renew): the world may not
   * have heard every change to the pods yet (a watch gap), so the cycle settles when the
   * replicas' pods are known gone (`settle_at_deleted`), not now.
   */
  | { type: "cycle_end"; at: number; renewal: Renewal | null; world_behind?: boolean }
  | { type: "terminate"; at: number; world_behind?: boolean }

const BILLABLE: ReadonlySet<string> = new Set(BILLABLE_STATES)

export const replicaId = (region: string): string => `replica-${region}`

/** Billable replica-milliseconds of the current cycle as of `at`, every replica together. */
export const cycleBillableMsAt = (ctx: InferenceContext, at: number): number =>
  Object.values(ctx.replicas).reduce((sum, r) => sum + r.cycle_billable_ms + (r.billing_since === null ? 0 : Math.max(0, at - r.billing_since)), 0)

/** Per-hour cost of the whole instance with every replica running: the hold's basis. */
export const fullHourlyMicros = (ctx: Pick<InferenceInput, "hourly_rate_micros" | "gpu_count" | "regions">): bigint =>
  BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count) * BigInt(ctx.regions.length)

/**
 * Per-hour cost of the replicas consuming a partial hold: those billing now (`loading`,
 * `running`), or, if none is, those that can still bill (not failed or deleted). The basis of a
 * partial hold's window, which "runs until consumed" (SPEC §4): after a failover, or with a
 * replica that cannot start, it lasts as long as the replicas running take to consume it (and
 * `partialEndAt` moves its end when they change). At least one replica's rate, so a window is
 * always finite.
 */
export const liveHourlyMicros = (ctx: Pick<InferenceContext, "hourly_rate_micros" | "gpu_count" | "regions" | "replicas">): bigint => {
  let billing = 0
  let live = 0
  for (const region of ctx.regions) {
    const status = ctx.replicas[region]?.status ?? "pending"
    if (BILLABLE.has(status)) billing++
    if (status !== "failed" && status !== "deleted") live++
  }
  return BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count) * BigInt(Math.max(billing > 0 ? billing : live, 1))
}

/**
 * When a partial cycle's hold is consumed at the replicas' billing as of `at`: what it covers
 * (replica-milliseconds) less what they have consumed, shared among those billing now. Null
 * while none bills (nothing consumes it: the cycle waits, `partialWaits`). A partial hold "runs
 * until consumed" (SPEC §4), so its end moves whenever a replica starts or stops billing.
 */
export const partialEndAt = (ctx: InferenceContext, at: number): number | null => {
  let billing = 0
  for (const r of Object.values(ctx.replicas)) if (r.billing_since !== null) billing++
  if (billing === 0) return null
  const covered = (BigInt(ctx.cycle.hold_micros) * BigInt(MS_PER_HOUR)) / (BigInt(ctx.hourly_rate_micros) * BigInt(ctx.gpu_count))
  const left = covered - BigInt(cycleBillableMsAt(ctx, at))
  return left <= 0n ? at : at + Number(left / BigInt(billing))
}

/** Closes every open billable stretch at `at` (a cycle boundary or a stop). */
const closeStretches = (replicas: InferenceContext["replicas"], at: number): Record<string, ReplicaBilling> =>
  Object.fromEntries(
    Object.entries(replicas).map(([region, r]) => [
      region,
      r.billing_since === null ? r : { ...r, cycle_billable_ms: r.cycle_billable_ms + Math.max(0, at - r.billing_since), billing_since: null }
    ])
  )

const othersAre = (ctx: InferenceContext, region: string, status: ReplicaStatus): boolean =>
  Object.entries(ctx.replicas).every(([r, b]) => r === region || b.status === status)

export const inferenceInstanceMachine = setup({
  types: {
    input: {} as InferenceInput,
    context: {} as InferenceContext,
    events: {} as InferenceEvent
  },
  actors: { replica: replicaMachine },
  actions: {
    // Intents carried out by the supervisor.
    placeHold: () => {},
    settleCycle: () => {},
    createPods: () => {},
    deletePods: () => {},
    notifyPartialHold: (_, _params: { hold_micros: string; window_ms: number }) => {},
    notifyTerminated: () => {},
    // Pure updates.
    /**
     * Tells a replica what its pod did. `deleteAsked`: whether the engine has asked for the
     * replicas' deletion (it does so only when the instance stops). A pod deleted without our
     * asking (`kubectl delete pod`, a node drained without a disruption mark) is lost: that
     * replica has failed, as a GPU instance fails on a pod that vanished (docs/POLICY.md,
     * Failover), never `deleted`, which no failover counts and no reconciliation looks at again.
     */
    forwardToReplica: sendTo(
      ({ event }) => (event.type === "replica.pod" ? replicaId(event.region) : "none"),
      ({ event }, params: { deleteAsked: boolean }) => {
        assertEvent(event, "replica.pod")
        const pod = event.pod === "deleted" && !params.deleteAsked ? "failed" : event.pod
        return { type: `pod.${pod}` as const, at: event.at, ...(event.ended_at === undefined ? {} : { ended_at: event.ended_at }) }
      }
    ),
    trackReplica: assign(({ context, event }) => {
      assertEvent(event, "replica.status")
      const r = context.replicas[event.region]
      if (r === undefined) return {}
      const billable = BILLABLE.has(event.status)
      const closed = r.billing_since === null ? r.cycle_billable_ms : r.cycle_billable_ms + Math.max(0, billingEndOf(r, event) - r.billing_since)
      const next: ReplicaBilling = {
        status: event.status,
        cycle_billable_ms: billable && r.billing_since !== null ? r.cycle_billable_ms : closed,
        billing_since: billable ? (r.billing_since ?? event.at) : null
      }
      const replicas = { ...context.replicas, [event.region]: next }
      if (!context.cycle.partial || context.stop_requested_at !== null) return { replicas }
      // A partial hold runs until consumed: its end follows the replicas billing it.
      const ends_at = partialEndAt({ ...context, replicas }, event.at)
      return ends_at === null || ends_at === context.cycle.ends_at ? { replicas } : { replicas, cycle: { ...context.cycle, ends_at } }
    }),
    /** A new cycle: the old one's billing is settled; stretches still open carry on. */
    startCycle: assign(({ context, event }) => {
      assertEvent(event, "cycle_end")
      const renewal = event.renewal!
      const replicas = Object.fromEntries(
        Object.entries(closeStretches(context.replicas, event.at)).map(([region, r]) => [
          region,
          { status: r.status, cycle_billable_ms: 0, billing_since: BILLABLE.has(r.status) ? event.at : null }
        ])
      )
      return {
        replicas,
        cycle: {
          number: context.cycle.number + 1,
          started_at: event.at,
          hold_micros: renewal.hold_micros,
          ends_at: event.at + renewal.window_ms,
          partial: renewal.kind === "partial"
        }
      }
    }),
    stopBilling: assign(({ context, event }) => ({ replicas: closeStretches(context.replicas, event.at) })),
    requestStop: assign(({ context, event }, params: { reason: TerminationReason }) =>
      context.termination_reason !== null ? {} : { termination_reason: params.reason, stop_requested_at: event.at }
    ),
    // Before `stopBilling` closes the stretches: where each began, should a stop heard later end it.
    deferSettleIfBehind: assign(({ context, event }) =>
      (event.type === "terminate" || event.type === "cycle_end") && event.world_behind === true
        ? { settle_at_deleted: { stretch_since: Object.fromEntries(context.regions.map((region) => [region, context.replicas[region]?.billing_since ?? null])) } }
        : {}
    ),
    /**
     * A replica's pods are gone after a stop requested while the world was behind, and had
     * stopped before it (`ended_at`, learned since): that replica's stretch the stop closed ends
     * there instead, as a stop heard late would have ended it.
     */
    endReplicaBillingAtStop: assign(({ context, event }) => {
      assertEvent(event, "replica.status")
      const deferred = context.settle_at_deleted
      const requested_at = context.stop_requested_at
      const r = context.replicas[event.region]
      if (deferred === undefined || requested_at === null || r === undefined || event.status !== "deleted") return {}
      const past_ms = billedPastStop(deferred.stretch_since[event.region] ?? null, requested_at, event.ended_at)
      return past_ms === 0 ? {} : { replicas: { ...context.replicas, [event.region]: { ...r, cycle_billable_ms: r.cycle_billable_ms - past_ms } } }
    })
  },
  guards: {
    renews: ({ event }) => event.type === "cycle_end" && event.renewal !== null,
    renewsPartially: ({ event }) => event.type === "cycle_end" && event.renewal?.kind === "partial",
    lastReplicaFails: ({ context, event }) => event.type === "replica.status" && event.status === "failed" && othersAre(context, event.region, "failed"),
    lastReplicaDeleted: ({ context, event }) => event.type === "replica.status" && event.status === "deleted" && othersAre(context, event.region, "deleted"),
    settleDeferred: ({ context }) => context.settle_at_deleted !== undefined
  }
}).createMachine({
  id: "inferenceInstance",
  context: ({ input }) => ({
    ...input,
    replicas: Object.fromEntries(input.regions.map((region) => [region, { status: "pending" as ReplicaStatus, billing_since: null, cycle_billable_ms: 0 }])),
    cycle: { number: 1, started_at: input.created_at, hold_micros: input.first_hold_micros, ends_at: input.created_at + 24 * MS_PER_HOUR, partial: false },
    termination_reason: null,
    stop_requested_at: null
  }),
  initial: "active",
  states: {
    active: {
      entry: [
        enqueueActions(({ context, enqueue }) => {
          for (const region of context.regions) enqueue.spawnChild("replica", { id: replicaId(region), input: { region } })
        }),
        "placeHold",
        "createPods"
      ],
      on: {
        "replica.pod": { actions: [{ type: "forwardToReplica", params: { deleteAsked: false } }] },
        "replica.status": [
          // Failover: while one replica serves, a failed one is just not billed. When the
          // last one fails, the instance has failed.
          { guard: "lastReplicaFails", target: "failed", actions: ["trackReplica"] },
          { actions: ["trackReplica"] }
        ],
        cycle_end: [
          {
            guard: "renewsPartially",
            actions: ["settleCycle", "startCycle", "placeHold", { type: "notifyPartialHold", params: ({ event }) => ({ hold_micros: event.renewal!.hold_micros, window_ms: event.renewal!.window_ms }) }]
          },
          { guard: "renews", actions: ["settleCycle", "startCycle", "placeHold"] },
          // The balance is $0: no new hold can be placed, so the instance stops.
          { target: "terminating", actions: [{ type: "requestStop", params: { reason: "credit_depleted" } }, "deferSettleIfBehind"] }
        ],
        terminate: { target: "terminating", actions: [{ type: "requestStop", params: { reason: "user_requested" } }, "deferSettleIfBehind"] }
      }
    },
    terminating: {
      // Billing ends at the stop and the cycle settles exactly once: now, or, when the world was
      // behind, once every replica's pods are known gone and what they did is heard.
      entry: [
        "stopBilling",
        enqueueActions(({ context, enqueue }) => {
          if (context.settle_at_deleted === undefined) enqueue("settleCycle")
        }),
        "deletePods"
      ],
      on: {
        "replica.pod": { actions: [{ type: "forwardToReplica", params: { deleteAsked: true } }] },
        "replica.status": [
          { guard: and(["lastReplicaDeleted", "settleDeferred"]), target: "terminated", actions: ["trackReplica", "endReplicaBillingAtStop", "settleCycle"] },
          { guard: "lastReplicaDeleted", target: "terminated", actions: ["trackReplica"] },
          { actions: ["trackReplica", "endReplicaBillingAtStop"] }
        ]
      }
    },
    terminated: { type: "final", entry: ["notifyTerminated"] },
    failed: {
      type: "final",
      entry: ["stopBilling", { type: "requestStop", params: { reason: "failed" } }, "settleCycle", "deletePods", "notifyTerminated"]
    }
  }
})

export type InferenceSnapshot = SnapshotFrom<typeof inferenceInstanceMachine>
export type InferenceStatus = "pending" | "loading" | "running" | "preempted" | "terminating" | "terminated" | "failed"

/**
 * The instance's status as the manual shows it: the best of its replicas while active. With
 * nothing running or loading and a replica preempted, the instance is `preempted` (as a GPU
 * instance is), not `pending`: it has run and waits for capacity to come back.
 */
export const inferenceStatusOf = (snapshot: { value: unknown; context: InferenceContext }): InferenceStatus => {
  const v = snapshot.value as string
  if (v === "terminating") return "terminating"
  if (v === "terminated" || v === "failed") return v
  const statuses = Object.values(snapshot.context.replicas).map((r) => r.status)
  if (statuses.includes("running")) return "running"
  if (statuses.includes("loading")) return "loading"
  if (statuses.includes("preempted")) return "preempted"
  return "pending"
}

/** Regions whose replica serves right now, in the instance's region order. */
export const healthyRegions = (ctx: InferenceContext): string[] => ctx.regions.filter((r) => ctx.replicas[r]?.status === "running")

/** The next cycle boundary while active; null once stopping. */
export const inferenceAlarm = (snapshot: InferenceSnapshot): { at: number } | null =>
  snapshot.value === "active" && !partialWaits(snapshot.context) ? { at: snapshot.context.cycle.ends_at } : null

/**
 * A partial cycle nothing consumes (no replica billing): it has no end until one bills again
 * (then `partialEndAt` sets it). Its hold stays, unrenewed: a partial hold runs until consumed.
 */
export const partialWaits = (ctx: InferenceContext): boolean =>
  ctx.cycle.partial && Object.values(ctx.replicas).every((r) => r.billing_since === null)
