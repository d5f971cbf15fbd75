/**
 * A GPU instance, or a GPU cluster (the same machine with `node_count` > 1), as the manual
 * describes it (SPEC §3):
 *
 *   pending → loading → running ⇄ preempted → terminating → terminated
 *   pending | loading | running | preempted → failed
 *
 * The machine is pure. It never reads time (every event carries its instant `at`), never
 * does I/O, and never decides money: it names intents (`placeHold`, `extendHold`, `settle`,
 * `createPod`, `deletePod`, `notify…`) that the supervisor provides with
 * `machine.provide(...)` and carries out against the ledger and the cluster.
 *
 * It arms no XState `after` timers: the deadline and the warnings live in context as
 * instants, and the supervisor's alarm worker derives the next alarm from the snapshot
 * (`nextAlarm`). That survives `getPersistedSnapshot()` (pending `after` timers do not,
 * statelyai/xstate#5331) and keeps XState's wall-clock bookkeeping out of the run.
 */
import { and, assertEvent, assign, enqueueActions, setup, type SnapshotFrom } from "xstate"
import {
  DURATION_WARNINGS,
  MS_PER_HOUR,
  MS_PER_MINUTE,
  PENDING_TIMEOUT_MS,
  WATCHDOG_LAG_MS,
  type TerminationReason
} from "../src/policy.js"

export type GpuResourceKind = "gpu_instance" | "gpu_cluster"

export interface GpuInstanceInput {
  readonly id: string
  readonly account: string
  readonly kind: GpuResourceKind
  readonly gpu: string
  /** GPUs per node. */
  readonly gpu_count: number
  /** 1 for an instance; the number of nodes of a cluster. */
  readonly node_count: number
  readonly region: string
  readonly image: string | null
  /** The catalog rate per GPU-hour at launch, in micros, as a decimal string (JSON-safe). */
  readonly hourly_rate_micros: string
  readonly estimated_duration_hours: number
  readonly created_at: number
  /** A cloud drive attached at launch (SPEC §5), detached when the instance stops. */
  readonly drive?: string | null
  /** Shared filesystems mounted at launch. */
  readonly filesystems?: ReadonlyArray<string>
}

export interface GpuInstanceContext extends GpuInstanceInput {
  /** Hours committed and held: the estimate plus every extension. */
  readonly hours_committed: number
  /** First entry into `loading` (Decision, SPEC §3). Null while never started. */
  readonly started_at: number | null
  /** `started_at + hours_committed`; null until started. */
  readonly deadline_at: number | null
  /** Duration warnings still to send for the current deadline, in minutes, in firing order. */
  readonly warnings_pending: ReadonlyArray<number>
  /** Billable milliseconds accumulated in closed `loading`/`running` stretches. */
  readonly billable_ms: number
  /** Start of the open billable stretch, or null when the GPUs are not held. */
  readonly billing_since: number | null
  readonly termination_reason: TerminationReason | null
  /** When the stop was requested (the compare-and-swap to `terminating`). */
  readonly stop_requested_at: number | null
  /**
   * Present only when the stop was requested while the world's view of the pods was behind (a
   * Kubernetes watch gap: `world_behind`): the pods may have stopped before, unheard, so the
   * hold settles at `pod.deleted`, whose `ended_at` dates such a stop. `stretch_since` is where
   * the billable stretch the stop closed began (null if none was open): billing ends at that
   * earlier stop, never before the stretch began.
   */
  readonly settle_at_deleted?: { readonly stretch_since: number | null }
}

export type PodState = "running" | "not_running" | "missing"

export type GpuInstanceEvent =
  | { type: "pod.loading"; at: number }
  | { type: "pod.running"; at: number }
  /**
   * `ended_at`: when the pod stopped holding the GPUs, if the world says and it is earlier than
   * `at` (a preemption or failure the engine learns of late: a missed event, an outage). Billing
   * stops there (`billingEndOf`); everything else happens at `at`, when the engine learns it.
   */
  | { type: "pod.preempted"; at: number; ended_at?: number }
  | { type: "pod.failed"; at: number; ended_at?: number }
  /** `ended_at`: the pods had stopped before a stop requested while the world was behind (`settle_at_deleted`). */
  | { type: "pod.deleted"; at: number; ended_at?: number }
  | { type: "extend"; at: number; hours: number }
  /**
   * `world_behind`: the world may not have heard every change to the pods yet (a watch gap), so
   * the hold settles when the pods are known gone (`settle_at_deleted`), not now.
   */
  | { type: "terminate"; at: number; world_behind?: boolean }
  | { type: "deadline"; at: number; credit_depleted: boolean; world_behind?: boolean }
  | { type: "duration_warning"; at: number; minutes: number }
  | { type: "watchdog"; at: number; pod: PodState }

/** The statuses the manual names, in the order a resource can reach them. */
export const GPU_STATUSES = ["pending", "loading", "running", "preempted", "terminating", "terminated", "failed"] as const
export type GpuStatus = (typeof GPU_STATUSES)[number]

const warningMinutes = (event: GpuInstanceEvent): number => (event.type === "duration_warning" ? event.minutes : 0)

const warningsFor = (deadline_at: number, at: number): number[] =>
  DURATION_WARNINGS.map((w) => w.minutes).filter((m) => deadline_at - m * MS_PER_MINUTE >= at)

/** True when an instance has been pending longer than the watchdog tolerates (SPEC §3). */
export const isStuckPending = (ctx: Pick<GpuInstanceContext, "created_at">, at: number): boolean =>
  at - ctx.created_at > PENDING_TIMEOUT_MS

/** Billable milliseconds as of `at`, counting the open stretch. */
export const billableMsAt = (ctx: GpuInstanceContext, at: number): number =>
  ctx.billable_ms + (ctx.billing_since === null ? 0 : Math.max(0, at - ctx.billing_since))

/**
 * Where an event ends the open billable stretch: `at`, or the pod's own stop (`ended_at`)
 * when the world reported an earlier one, never before the stretch began. For an inference
 * replica too (its stretch): a stop learned after a cycle boundary bills to that boundary.
 */
export const billingEndOf = (ctx: Pick<GpuInstanceContext, "billing_since">, event: { readonly at: number; readonly ended_at?: number }): number =>
  event.ended_at === undefined || ctx.billing_since === null ? event.at : Math.min(event.at, Math.max(ctx.billing_since, event.ended_at))

/**
 * A stop requested while the world was behind (`settle_at_deleted`) closed the stretch open
 * since `stretch_since` at the request; `pod.deleted` dates an earlier stop of the pods
 * (`ended_at`, learned since): the milliseconds billed past it, given back before the hold
 * settles, as a stop heard late would have ended the stretch (`billingEndOf`). 0 with no such
 * stop, or no stretch open at the request. For an inference replica too (its stretch).
 */
export const billedPastStop = (stretch_since: number | null, requested_at: number, ended_at: number | undefined): number =>
  requested_at - billingEndOf({ billing_since: stretch_since }, { at: requested_at, ended_at })

/**
 * Where billing of the stretch open at a stop requested while the world was behind
 * (`settle_at_deleted`) ended, once `pod.deleted` has told what the pods did (`ended_at`): the
 * request, or the pods' earlier stop, never before the stretch began. Null when no stretch was
 * open then. The instant the transitions log that stretch's end at, so that they say what was
 * billed (SPEC §9.3). For an inference replica too (its stretch).
 */
export const deferredBillingEnd = (stretch_since: number | null, requested_at: number, ended_at: number | undefined): number | null =>
  stretch_since === null ? null : requested_at - billedPastStop(stretch_since, requested_at, ended_at)

/** GPUs held while running: per node × nodes. */
export const gpuUnits = (ctx: Pick<GpuInstanceInput, "gpu_count" | "node_count">): number => ctx.gpu_count * ctx.node_count

export const gpuInstanceMachine = setup({
  types: {
    input: {} as GpuInstanceInput,
    context: {} as GpuInstanceContext,
    events: {} as GpuInstanceEvent
  },
  actions: {
    // Intents carried out by the supervisor (machine.provide). Defaults do nothing, so the
    // machine can be stepped as data in tests with `transition()`.
    placeHold: () => {},
    extendHold: (_, _params: { hours: number }) => {},
    settle: () => {},
    createPod: () => {},
    deletePod: () => {},
    notifyDurationWarning: (_, _params: { minutes: number }) => {},
    notifyPreempted: () => {},
    notifyResumed: () => {},
    notifyTerminated: () => {},
    // Pure context updates.
    startBilling: assign(({ context, event }) => {
      if (context.billing_since !== null) return {}
      // Billing starts when the engine learns the GPUs are held, never earlier: a pod whose
      // Ready event was missed and is healed by the watchdog is billed from the heal.
      const from = event.at
      const started_at = context.started_at ?? from
      const deadline_at = started_at + context.hours_committed * MS_PER_HOUR
      return {
        billing_since: from,
        started_at,
        deadline_at,
        warnings_pending: context.deadline_at === null ? warningsFor(deadline_at, event.at) : context.warnings_pending
      }
    }),
    stopBilling: assign(({ context, event }) =>
      context.billing_since === null ? {} : { billable_ms: billableMsAt(context, billingEndOf(context, event)), billing_since: null }
    ),
    addHours: assign(({ context, event }) => {
      assertEvent(event, "extend")
      const hours_committed = context.hours_committed + event.hours
      if (context.started_at === null) return { hours_committed }
      const deadline_at = context.started_at + hours_committed * MS_PER_HOUR
      // An extension moves the deadline; the warning thresholds are armed again for it.
      return { hours_committed, deadline_at, warnings_pending: warningsFor(deadline_at, event.at) }
    }),
    markWarningSent: assign(({ context, event }) => {
      assertEvent(event, "duration_warning")
      return { warnings_pending: context.warnings_pending.filter((m) => m !== event.minutes) }
    }),
    requestStop: assign(({ context, event }, params: { reason: TerminationReason }) =>
      context.termination_reason !== null ? {} : { termination_reason: params.reason, stop_requested_at: event.at }
    ),
    // Before `stopBilling` closes the stretch: where it began, should a stop heard later end it.
    deferSettleIfBehind: assign(({ context, event }) =>
      (event.type === "terminate" || event.type === "deadline") && event.world_behind === true ? { settle_at_deleted: { stretch_since: context.billing_since } } : {}
    ),
    /**
     * The stop was requested while the world was behind, and the pods had stopped before it
     * (`ended_at`, learned since): the stretch the stop closed ends there instead, as a stop
     * heard late would have ended it (`billingEndOf`).
     */
    endBillingAtStop: assign(({ context, event }) => {
      assertEvent(event, "pod.deleted")
      const deferred = context.settle_at_deleted
      const requested_at = context.stop_requested_at
      if (deferred === undefined || requested_at === null) return {}
      return { billable_ms: context.billable_ms - billedPastStop(deferred.stretch_since, requested_at, event.ended_at) }
    })
  },
  guards: {
    creditDepleted: ({ event }) => event.type === "deadline" && event.credit_depleted,
    settleDeferred: ({ context }) => context.settle_at_deleted !== undefined,
    stuckPending: ({ context, event }) => isStuckPending(context, event.at),
    podIsRunning: ({ event }) => event.type === "watchdog" && event.pod === "running",
    warningIsArmed: ({ context, event }) => event.type === "duration_warning" && context.warnings_pending.includes(event.minutes),
    warningIsTimely: ({ context, event }) =>
      context.deadline_at !== null && event.at <= context.deadline_at - warningMinutes(event) * MS_PER_MINUTE + WATCHDOG_LAG_MS
  }
}).createMachine({
  id: "gpuInstance",
  context: ({ input }) => ({
    ...input,
    hours_committed: input.estimated_duration_hours,
    started_at: null,
    deadline_at: null,
    warnings_pending: [],
    billable_ms: 0,
    billing_since: null,
    termination_reason: null,
    stop_requested_at: null
  }),
  initial: "active",
  states: {
    active: {
      // Entered once, at launch: the supervisor has already checked that the balance covers it.
      entry: ["placeHold", "createPod"],
      initial: "pending",
      on: {
        terminate: { target: "terminating", actions: [{ type: "requestStop", params: { reason: "user_requested" } }, "deferSettleIfBehind"] },
        extend: { actions: [{ type: "extendHold", params: ({ event }) => ({ hours: event.hours }) }, "addHours"] },
        "pod.failed": { target: "failed" },
        deadline: [
          { guard: "creditDepleted", target: "terminating", actions: [{ type: "requestStop", params: { reason: "credit_depleted" } }, "deferSettleIfBehind"] },
          { target: "terminating", actions: [{ type: "requestStop", params: { reason: "duration_expired" } }, "deferSettleIfBehind"] }
        ],
        duration_warning: [
          {
            guard: and(["warningIsArmed", "warningIsTimely"]),
            actions: [{ type: "notifyDurationWarning", params: ({ event }) => ({ minutes: event.minutes }) }, "markWarningSent"]
          },
          // A warning whose moment passed while the control plane was down is dropped, not
          // sent late: the user hears the next threshold (or the termination) instead.
          { guard: "warningIsArmed", actions: ["markWarningSent"] }
        ]
      },
      states: {
        pending: {
          on: {
            "pod.loading": { target: "loading", actions: ["startBilling"] },
            // The Ready event can arrive without a loading one (or the watcher missed it).
            "pod.running": { target: "running", actions: ["startBilling"] },
            watchdog: [
              // A pod that is actually running heals the instance (the Ready event was missed);
              // otherwise the instance has failed and any pod is deleted.
              { guard: and(["stuckPending", "podIsRunning"]), target: "running", actions: ["startBilling"] },
              { guard: "stuckPending", target: "#gpuInstance.failed" }
            ],
            // Nothing is billed or due before the pod starts.
            deadline: {},
            duration_warning: {}
          }
        },
        loading: {
          on: {
            "pod.running": { target: "running" },
            "pod.preempted": { target: "preempted", actions: ["stopBilling", "notifyPreempted"] }
          }
        },
        running: {
          on: {
            "pod.preempted": { target: "preempted", actions: ["stopBilling", "notifyPreempted"] }
          }
        },
        preempted: {
          on: {
            "pod.running": { target: "running", actions: ["startBilling", "notifyResumed"] }
          }
        }
      }
    },
    terminating: {
      // The stop was recorded first (the compare-and-swap of the manual's
      // `terminating_requested`): billing ends now and the hold settles exactly once: now, or,
      // when the world was behind, once the pods are known gone and what they did is heard.
      entry: [
        "stopBilling",
        enqueueActions(({ context, enqueue }) => {
          if (context.settle_at_deleted === undefined) enqueue("settle")
        }),
        "deletePod"
      ],
      on: {
        "pod.deleted": [
          { guard: "settleDeferred", target: "terminated", actions: ["endBillingAtStop", "settle"] },
          { target: "terminated" }
        ]
      }
    },
    terminated: {
      type: "final",
      entry: ["notifyTerminated"]
    },
    failed: {
      type: "final",
      entry: ["stopBilling", { type: "requestStop", params: { reason: "failed" } }, "settle", "deletePod", "notifyTerminated"]
    }
  }
})

export type GpuInstanceMachine = typeof gpuInstanceMachine
export type GpuInstanceSnapshot = SnapshotFrom<GpuInstanceMachine>

/** The manual's status name for a snapshot (`{active: "running"}` → `running`). */
export const gpuStatusOf = (snapshot: { value: unknown }): GpuStatus => {
  const v = snapshot.value
  if (typeof v === "string") return v as GpuStatus
  return (v as { active: GpuStatus }).active
}

export const isActiveStatus = (s: GpuStatus): boolean => s === "pending" || s === "loading" || s === "running" || s === "preempted"

export type GpuAlarm =
  | { readonly at: number; readonly event: "duration_warning"; readonly minutes: number }
  | { readonly at: number; readonly event: "deadline" }

/**
 * The next instant this instance needs the engine's attention, derived from its snapshot
 * alone: the earliest armed duration warning, else the deadline. Null when nothing is due
 * (not started, or already stopping).
 */
export const nextAlarm = (snapshot: GpuInstanceSnapshot): GpuAlarm | null => {
  const status = gpuStatusOf(snapshot)
  const ctx = snapshot.context
  if (status === "pending" || !isActiveStatus(status) || ctx.deadline_at === null) return null
  const minutes = ctx.warnings_pending[0]
  if (minutes !== undefined) return { at: ctx.deadline_at - minutes * MS_PER_MINUTE, event: "duration_warning", minutes }
  return { at: ctx.deadline_at, event: "deadline" }
}
