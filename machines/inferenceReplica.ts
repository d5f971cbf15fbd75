/**
 * One regional replica of a user inference instance (SPEC §4): a child actor of the
 * instance, following its pod: pending → loading → running ⇄ preempted, failed, deleted.
 * Every change is reported to the parent (`replica.status`), which bills per replica.
 */
import { sendParent, setup } from "xstate"

export type ReplicaStatus = "pending" | "loading" | "running" | "preempted" | "failed" | "deleted"

export interface ReplicaInput {
  readonly region: string
}

export type ReplicaEvent =
  | { type: "pod.loading"; at: number }
  | { type: "pod.running"; at: number }
  /** `ended_at`: when the pod stopped, if the world dates it earlier than `at` (learned late). */
  | { type: "pod.preempted"; at: number; ended_at?: number }
  | { type: "pod.failed"; at: number; ended_at?: number }
  /** `ended_at`: its pods had stopped before a stop the instance asked while the world was behind. */
  | { type: "pod.deleted"; at: number; ended_at?: number }

export interface ReplicaStatusEvent {
  readonly type: "replica.status"
  readonly region: string
  readonly status: ReplicaStatus
  readonly at: number
  /** When the pod stopped, if the world dates it earlier than `at`: billing stops there. */
  readonly ended_at?: number
}

export const replicaMachine = setup({
  types: {
    input: {} as ReplicaInput,
    context: {} as ReplicaInput,
    events: {} as ReplicaEvent
  },
  actions: {
    report: sendParent(({ context, event }, params: { status: ReplicaStatus }) => ({
      type: "replica.status",
      region: context.region,
      status: params.status,
      at: event.at,
      ...("ended_at" in event && event.ended_at !== undefined ? { ended_at: event.ended_at } : {})
    }))
  }
}).createMachine({
  id: "replica",
  context: ({ input }) => ({ region: input.region }),
  initial: "pending",
  on: {
    "pod.deleted": { target: ".deleted" }
  },
  states: {
    pending: {
      on: {
        "pod.loading": { target: "loading" },
        "pod.running": { target: "running" },
        "pod.failed": { target: "failed" }
      }
    },
    loading: {
      entry: { type: "report", params: { status: "loading" } },
      on: {
        "pod.running": { target: "running" },
        "pod.preempted": { target: "preempted" },
        "pod.failed": { target: "failed" }
      }
    },
    running: {
      entry: { type: "report", params: { status: "running" } },
      on: {
        "pod.preempted": { target: "preempted" },
        "pod.failed": { target: "failed" }
      }
    },
    preempted: {
      entry: { type: "report", params: { status: "preempted" } },
      on: {
        "pod.running": { target: "running" },
        "pod.failed": { target: "failed" }
      }
    },
    failed: {
      entry: { type: "report", params: { status: "failed" } }
    },
    deleted: {
      type: "final",
      entry: { type: "report", params: { status: "deleted" } }
    }
  }
})
