/**
 * A cloud drive (attached to one instance at a time) or a shared filesystem (mounted by
 * many; `in_use` while at least one instance has it), SPEC §5. Its data outlives every
 * instance: detaching or suspending never deletes it; only `delete` does, and the
 * supervisor refuses that (409) while it is in use.
 *
 *   available ⇄ in_use, available | in_use → suspended → available | in_use, available | suspended → deleted
 *
 * Suspended storage is disconnected from its instances but remembers them (`suspended_from`):
 * restoring it reattaches it to those still running (the manual: "Restoring the balance
 * reattaches the storage"), and an instance that stops meanwhile is forgotten.
 *
 * Money is not the machine's business: the supervisor's daily worker charges `size_gb ×
 * daily_rate` at 00:00 UTC and suspends storage whose charge the balance cannot cover.
 */
import { assertEvent, assign, setup, type SnapshotFrom } from "xstate"

export type StorageKind = "cloud_drive" | "shared_fs"

export interface StorageInput {
  readonly id: string
  readonly account: string
  readonly kind: StorageKind
  readonly size_gb: number
  readonly region: string
  /** Catalog price per GB-day at creation, micros, as a decimal string. */
  readonly daily_rate_micros: string
  readonly created_at: number
}

export interface StorageContext extends StorageInput {
  /** Instances that have it attached (a drive: at most one), in attach order. */
  readonly attached_to: ReadonlyArray<string>
  /**
   * While suspended, the instances it was disconnected from, which get it back when it is
   * restored; empty otherwise. (A snapshot written before it existed is given an empty one when
   * read: src/snapshots.ts.)
   */
  readonly suspended_from: ReadonlyArray<string>
}

/** One day of the storage, in micros: `size_gb × daily rate` (SPEC §5). */
export const dayMicrosOf = (ctx: Pick<StorageInput, "daily_rate_micros" | "size_gb">): bigint => BigInt(ctx.daily_rate_micros) * BigInt(ctx.size_gb)

export type StorageEvent =
  | { type: "attach"; at: number; instance: string }
  | { type: "detach"; at: number; instance: string }
  | { type: "suspend"; at: number }
  | { type: "restore"; at: number }
  | { type: "delete"; at: number }

export type StorageStatus = "available" | "in_use" | "suspended" | "deleted"

export const storageMachine = setup({
  types: { input: {} as StorageInput, context: {} as StorageContext, events: {} as StorageEvent },
  actions: {
    notifySuspended: () => {},
    notifyRestored: () => {},
    attach: assign(({ context, event }) => {
      assertEvent(event, "attach")
      return { attached_to: [...context.attached_to, event.instance] }
    }),
    detach: assign(({ context, event }) => {
      assertEvent(event, "detach")
      return { attached_to: context.attached_to.filter((i) => i !== event.instance) }
    }),
    // Suspended storage is disconnected from every instance (its data stays), and remembers them.
    disconnect: assign(({ context }) => ({ attached_to: [], suspended_from: context.attached_to })),
    // An instance that stopped while its storage was suspended gets nothing back.
    forget: assign(({ context, event }) => {
      assertEvent(event, "detach")
      return { suspended_from: context.suspended_from.filter((i) => i !== event.instance) }
    }),
    reattach: assign(({ context }) => ({ attached_to: context.suspended_from, suspended_from: [] }))
  },
  guards: {
    // Nothing stays attached once this instance lets go (however many times it was attached).
    lastDetach: ({ context, event }) => event.type === "detach" && context.attached_to.includes(event.instance) && context.attached_to.every((i) => i === event.instance),
    disconnectedFromAny: ({ context }) => context.suspended_from.length > 0
  }
}).createMachine({
  id: "storage",
  context: ({ input }) => ({ ...input, attached_to: [], suspended_from: [] }),
  initial: "available",
  states: {
    available: {
      on: {
        attach: { target: "in_use", actions: ["attach"] },
        suspend: { target: "suspended" },
        delete: { target: "deleted" }
      }
    },
    in_use: {
      on: {
        attach: { actions: ["attach"] },
        detach: [{ guard: "lastDetach", target: "available", actions: ["detach"] }, { actions: ["detach"] }],
        suspend: { target: "suspended", actions: ["disconnect"] }
      }
    },
    suspended: {
      entry: ["notifySuspended"],
      on: {
        restore: [
          { guard: "disconnectedFromAny", target: "in_use", actions: ["reattach", "notifyRestored"] },
          { target: "available", actions: ["notifyRestored"] }
        ],
        delete: { target: "deleted" },
        detach: { actions: ["forget"] }
      }
    },
    deleted: { type: "final" }
  }
})

export type StorageSnapshot = SnapshotFrom<typeof storageMachine>

export const storageStatusOf = (snapshot: { value: unknown }): StorageStatus => snapshot.value as StorageStatus
