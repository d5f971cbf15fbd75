import { describe, expect, it } from "vitest"
import { createActor, initialTransition, transition } from "xstate"
import {
  billableMsAt,
  gpuInstanceMachine,
  gpuStatusOf,
  nextAlarm,
  type GpuInstanceEvent,
  type GpuInstanceInput,
  type GpuInstanceSnapshot
} from "../machines/gpuInstance.js"
import { inferenceInstanceMachine, inferenceStatusOf, type InferenceEvent, type InferenceInput } from "../machines/inferenceInstance.js"
import { storageMachine, storageStatusOf, type StorageEvent } from "../machines/storage.js"

const MINUTE = 60_000
const HOUR = 3_600_000

/** The seed's instance: 1 GPU at $1.60/h for 2 h, created at t=0. */
const input = (overrides: Partial<GpuInstanceInput> = {}): GpuInstanceInput => ({
  id: "gi-1",
  account: "acc-1",
  kind: "gpu_instance",
  gpu: "H100",
  gpu_count: 1,
  node_count: 1,
  region: "us-east",
  image: null,
  hourly_rate_micros: "1600000",
  estimated_duration_hours: 2,
  created_at: 0,
  ...overrides
})

type Actions = ReturnType<typeof transition<typeof gpuInstanceMachine>>[1]

/** The names of the intents a step asks the supervisor to carry out, in order. */
const names = (actions: Actions): string[] => actions.map((a) => a.type)

const start = (): GpuInstanceSnapshot => initialTransition(gpuInstanceMachine, input())[0]

const step = (snapshot: GpuInstanceSnapshot, event: GpuInstanceEvent) => transition(gpuInstanceMachine, snapshot, event)

/** Applies events in order and returns the last snapshot. */
const run = (...events: GpuInstanceEvent[]): GpuInstanceSnapshot => events.reduce((s, e) => step(s, e)[0], start())

/** Loading at 1 min, running at 2 min: the deadline is 1 min + 2 h. */
const LOADING_AT = 1 * MINUTE
const RUNNING_AT = 2 * MINUTE
const DEADLINE_AT = LOADING_AT + 2 * HOUR
const running = (): GpuInstanceSnapshot => run({ type: "pod.loading", at: LOADING_AT }, { type: "pod.running", at: RUNNING_AT })

describe("launch", () => {
  it("starts pending and asks for the hold and the pod", () => {
    // Proves launch enters {active: "pending"} with placeHold then createPod and nothing started yet.
    const [snapshot, actions] = initialTransition(gpuInstanceMachine, input())
    expect(snapshot.value).toEqual({ active: "pending" })
    expect(gpuStatusOf(snapshot)).toBe("pending")
    expect(names(actions)).toEqual(["placeHold", "createPod"])
    expect(snapshot.context).toMatchObject({
      hours_committed: 2,
      started_at: null,
      deadline_at: null,
      warnings_pending: [],
      billable_ms: 0,
      billing_since: null,
      termination_reason: null,
      stop_requested_at: null
    })
  })

  it("enters loading on pod.loading, starting billing and the deadline", () => {
    // Proves started_at = the loading instant, deadline = started_at + 2 h, and all five warnings armed.
    const [snapshot, actions] = step(start(), { type: "pod.loading", at: LOADING_AT })
    expect(snapshot.value).toEqual({ active: "loading" })
    expect(names(actions)).toEqual([])
    expect(snapshot.context).toMatchObject({
      started_at: LOADING_AT,
      deadline_at: LOADING_AT + 2 * 3_600_000,
      warnings_pending: [30, 20, 10, 5, 1],
      billing_since: LOADING_AT,
      billable_ms: 0
    })
  })

  it("keeps started_at and billing from loading when the pod becomes running", () => {
    // Proves loading → running does not restart the deadline or the billable stretch.
    const snapshot = running()
    expect(snapshot.value).toEqual({ active: "running" })
    expect(snapshot.context).toMatchObject({ started_at: LOADING_AT, deadline_at: DEADLINE_AT, billing_since: LOADING_AT })
    expect(billableMsAt(snapshot.context, RUNNING_AT + 1_000)).toBe(RUNNING_AT + 1_000 - LOADING_AT)
  })

  it("starts billing at pod.running when the loading event never came", () => {
    // Proves a Ready event straight from pending starts the deadline at that instant.
    const [snapshot] = step(start(), { type: "pod.running", at: 3 * MINUTE })
    expect(snapshot.value).toEqual({ active: "running" })
    expect(snapshot.context).toMatchObject({ started_at: 3 * MINUTE, deadline_at: 3 * MINUTE + 2 * HOUR, billing_since: 3 * MINUTE })
  })
})

describe("preemption", () => {
  it("stops billing and notifies on pod.preempted, accumulating billable time exactly", () => {
    // Proves running → preempted closes the billable stretch (loading at 1 min to preemption at 31 min = 30 min).
    const [snapshot, actions] = step(running(), { type: "pod.preempted", at: 31 * MINUTE })
    expect(snapshot.value).toEqual({ active: "preempted" })
    expect(names(actions)).toEqual(["notifyPreempted"])
    expect(snapshot.context.billable_ms).toBe(30 * MINUTE)
    expect(snapshot.context.billing_since).toBe(null)
    // Nothing is billed while preempted.
    expect(billableMsAt(snapshot.context, 50 * MINUTE)).toBe(30 * MINUTE)
  })

  it("resumes on pod.running with a notification, billing again, deadline unchanged", () => {
    // Proves preempted → running restarts billing at the resume instant and does not move the deadline.
    const preempted = step(running(), { type: "pod.preempted", at: 31 * MINUTE })[0]
    const [snapshot, actions] = step(preempted, { type: "pod.running", at: 41 * MINUTE })
    expect(snapshot.value).toEqual({ active: "running" })
    expect(names(actions)).toEqual(["notifyResumed"])
    expect(snapshot.context).toMatchObject({
      started_at: LOADING_AT,
      deadline_at: DEADLINE_AT,
      billing_since: 41 * MINUTE,
      billable_ms: 30 * MINUTE,
      warnings_pending: [30, 20, 10, 5, 1]
    })
    // A second preemption adds only the second stretch: 30 min + (61 − 41) min.
    const [again] = step(snapshot, { type: "pod.preempted", at: 61 * MINUTE })
    expect(again.context.billable_ms).toBe(50 * MINUTE)
  })

  it("can be preempted while still loading", () => {
    // Proves loading → preempted also stops billing, counting the loading time.
    const loading = run({ type: "pod.loading", at: LOADING_AT })
    const [snapshot, actions] = step(loading, { type: "pod.preempted", at: LOADING_AT + 45_000 })
    expect(snapshot.value).toEqual({ active: "preempted" })
    expect(names(actions)).toEqual(["notifyPreempted"])
    expect(snapshot.context.billable_ms).toBe(45_000)
  })
})

describe("extend", () => {
  it("asks for the extra hold, grows hours_committed, moves the deadline", () => {
    // Proves a 3 h extension in running emits extendHold {hours: 3} and the deadline moves by 3 h.
    const [snapshot, actions] = step(running(), { type: "extend", at: 10 * MINUTE, hours: 3 })
    expect(snapshot.value).toEqual({ active: "running" })
    expect(actions.map((a) => [a.type, a.params])).toEqual([["extendHold", { hours: 3 }]])
    expect(snapshot.context.hours_committed).toBe(5)
    expect(snapshot.context.deadline_at).toBe(LOADING_AT + 5 * HOUR)
    expect(snapshot.context.started_at).toBe(LOADING_AT)
  })

  it("re-arms the warnings that were already sent", () => {
    // Proves after the 30 and 20 min warnings went out, an extension arms all five again for the new deadline.
    let snapshot = running()
    snapshot = step(snapshot, { type: "duration_warning", at: DEADLINE_AT - 30 * MINUTE, minutes: 30 })[0]
    snapshot = step(snapshot, { type: "duration_warning", at: DEADLINE_AT - 20 * MINUTE, minutes: 20 })[0]
    expect(snapshot.context.warnings_pending).toEqual([10, 5, 1])
    const [extended] = step(snapshot, { type: "extend", at: DEADLINE_AT - 15 * MINUTE, hours: 1 })
    expect(extended.context.deadline_at).toBe(DEADLINE_AT + HOUR)
    expect(extended.context.warnings_pending).toEqual([30, 20, 10, 5, 1])
  })

  it("grows the hours of a pending instance, and the deadline counts them when it starts", () => {
    // Proves an extension before start has no deadline to move, yet the later deadline includes it.
    const [pending, actions] = step(start(), { type: "extend", at: MINUTE, hours: 1 })
    expect(names(actions)).toEqual(["extendHold"])
    expect(pending.context).toMatchObject({ hours_committed: 3, deadline_at: null, warnings_pending: [] })
    const [loading] = step(pending, { type: "pod.loading", at: 2 * MINUTE })
    expect(loading.context.deadline_at).toBe(2 * MINUTE + 3 * HOUR)
  })
})

describe("duration warnings", () => {
  it("notifies an armed threshold once and disarms it", () => {
    // Proves the 30-minute warning emits notifyDurationWarning {minutes: 30} and leaves [20, 10, 5, 1].
    const [snapshot, actions] = step(running(), { type: "duration_warning", at: DEADLINE_AT - 30 * MINUTE, minutes: 30 })
    expect(actions.map((a) => [a.type, a.params])).toEqual([["notifyDurationWarning", { minutes: 30 }]])
    expect(snapshot.context.warnings_pending).toEqual([20, 10, 5, 1])
    expect(snapshot.value).toEqual({ active: "running" })
    // The same threshold again is now unarmed: no action, no change.
    const [again, againActions] = step(snapshot, { type: "duration_warning", at: DEADLINE_AT - 30 * MINUTE, minutes: 30 })
    expect(names(againActions)).toEqual([])
    expect(again.context.warnings_pending).toEqual([20, 10, 5, 1])
  })

  it("ignores a threshold that was never armed", () => {
    // Proves an unknown threshold (15 min) sends nothing.
    const before = running()
    const [snapshot, actions] = step(before, { type: "duration_warning", at: DEADLINE_AT - 15 * MINUTE, minutes: 15 })
    expect(names(actions)).toEqual([])
    expect(snapshot.context.warnings_pending).toEqual([30, 20, 10, 5, 1])
  })

  it("re-arms only the thresholds still ahead of the new deadline", () => {
    // Proves an extension applied 40 min past the old deadline (new deadline 20 min ahead) arms [20, 10, 5, 1], not 30.
    const [snapshot] = step(running(), { type: "extend", at: DEADLINE_AT + 40 * MINUTE, hours: 1 })
    expect(snapshot.context.deadline_at).toBe(DEADLINE_AT + HOUR)
    expect(snapshot.context.warnings_pending).toEqual([20, 10, 5, 1])
    expect(nextAlarm(snapshot)).toEqual({ at: DEADLINE_AT + 40 * MINUTE, event: "duration_warning", minutes: 20 })
  })

  it("sends nothing while pending", () => {
    // Proves a stray warning before start is ignored.
    const [snapshot, actions] = step(start(), { type: "duration_warning", at: MINUTE, minutes: 30 })
    expect(names(actions)).toEqual([])
    expect(snapshot.value).toEqual({ active: "pending" })
  })
})

describe("stopping", () => {
  it("stops at the deadline with duration_expired, settling and deleting the pod", () => {
    // Proves deadline → terminating records the reason and the request instant, and closes billing exactly at the deadline.
    const [snapshot, actions] = step(running(), { type: "deadline", at: DEADLINE_AT, credit_depleted: false })
    expect(snapshot.value).toBe("terminating")
    expect(names(actions)).toEqual(["settle", "deletePod"])
    expect(snapshot.context).toMatchObject({
      termination_reason: "duration_expired",
      stop_requested_at: DEADLINE_AT,
      billing_since: null,
      billable_ms: 2 * HOUR
    })
  })

  it("stops with credit_depleted when the deadline event says so", () => {
    // Proves the credit-depleted variant of the deadline records its own reason.
    const [snapshot, actions] = step(running(), { type: "deadline", at: 30 * MINUTE, credit_depleted: true })
    expect(snapshot.value).toBe("terminating")
    expect(names(actions)).toEqual(["settle", "deletePod"])
    expect(snapshot.context.termination_reason).toBe("credit_depleted")
  })

  it("ignores a deadline while pending", () => {
    // Proves nothing is due before the pod starts.
    const [snapshot, actions] = step(start(), { type: "deadline", at: 2 * HOUR, credit_depleted: false })
    expect(snapshot.value).toEqual({ active: "pending" })
    expect(names(actions)).toEqual([])
  })

  it("stops on terminate with user_requested", () => {
    // Proves a user's stop request settles and deletes the pod with reason user_requested.
    const [snapshot, actions] = step(running(), { type: "terminate", at: 20 * MINUTE })
    expect(snapshot.value).toBe("terminating")
    expect(names(actions)).toEqual(["settle", "deletePod"])
    expect(snapshot.context).toMatchObject({ termination_reason: "user_requested", stop_requested_at: 20 * MINUTE, billable_ms: 19 * MINUTE })
  })

  it("ignores a second terminate while terminating", () => {
    // Proves two stoppers never both settle: the second request changes nothing and asks for nothing.
    const terminating = step(running(), { type: "terminate", at: 20 * MINUTE })[0]
    const [snapshot, actions] = step(terminating, { type: "terminate", at: 21 * MINUTE })
    expect(names(actions)).toEqual([])
    expect(snapshot.value).toBe("terminating")
    expect(snapshot.context).toEqual(terminating.context)
  })

  it("ignores a deadline and an extension while terminating", () => {
    // Proves a late alarm or extend after the stop request neither re-settles nor extends.
    const terminating = step(running(), { type: "terminate", at: 20 * MINUTE })[0]
    const [afterDeadline, deadlineActions] = step(terminating, { type: "deadline", at: DEADLINE_AT, credit_depleted: false })
    expect(names(deadlineActions)).toEqual([])
    expect(afterDeadline.context.termination_reason).toBe("user_requested")
    const [afterExtend, extendActions] = step(terminating, { type: "extend", at: 22 * MINUTE, hours: 1 })
    expect(names(extendActions)).toEqual([])
    expect(afterExtend.context.hours_committed).toBe(2)
  })

  it("ends terminated (final) with notifyTerminated on pod.deleted", () => {
    // Proves the pod's deletion completes the stop and tells the user.
    const terminating = step(running(), { type: "deadline", at: DEADLINE_AT, credit_depleted: false })[0]
    const [snapshot, actions] = step(terminating, { type: "pod.deleted", at: DEADLINE_AT + 5_000 })
    expect(snapshot.value).toBe("terminated")
    expect(snapshot.status).toBe("done")
    expect(gpuStatusOf(snapshot)).toBe("terminated")
    expect(names(actions)).toEqual(["notifyTerminated"])
    expect(snapshot.context.termination_reason).toBe("duration_expired")
    // Time after the stop request is not billed.
    expect(snapshot.context.billable_ms).toBe(2 * HOUR)
  })

  it("asked to stop while the world is behind, settles at pod.deleted, billed to the stop that event dates", () => {
    // Proves a terminate with world_behind closes billing at once but asks for no settlement; the
    // pod.deleted that dates an earlier stop (ended_at) ends the closed stretch there, then settles.
    const [terminating, actions] = step(running(), { type: "terminate", at: 62 * MINUTE, world_behind: true })
    expect(terminating.value).toBe("terminating")
    expect(names(actions)).toEqual(["deletePod"])
    expect(terminating.context).toMatchObject({ stop_requested_at: 62 * MINUTE, billing_since: null, billable_ms: 61 * MINUTE, settle_at_deleted: { stretch_since: LOADING_AT } })
    const [snapshot, deletedActions] = step(terminating, { type: "pod.deleted", at: 64 * MINUTE, ended_at: 61 * MINUTE })
    expect(snapshot.value).toBe("terminated")
    expect(names(deletedActions)).toEqual(["settle", "notifyTerminated"])
    expect(snapshot.context.billable_ms).toBe(60 * MINUTE)
    // Without a dated stop, or with one before the stretch began, the stop request ends it.
    expect(step(terminating, { type: "pod.deleted", at: 64 * MINUTE })[0].context.billable_ms).toBe(61 * MINUTE)
    expect(step(terminating, { type: "pod.deleted", at: 64 * MINUTE, ended_at: 0 })[0].context.billable_ms).toBe(0)
  })

  it("asked to stop while the world is behind and already preempted: the settlement waits, the billed time does not change", () => {
    // Proves nothing is re-dated when no stretch was open at the request (a deadline here).
    const preempted = step(running(), { type: "pod.preempted", at: 30 * MINUTE })[0]
    const [terminating, actions] = step(preempted, { type: "deadline", at: DEADLINE_AT, credit_depleted: false, world_behind: true })
    expect(names(actions)).toEqual(["deletePod"])
    expect(terminating.context.settle_at_deleted).toEqual({ stretch_since: null })
    const [snapshot, deletedActions] = step(terminating, { type: "pod.deleted", at: DEADLINE_AT + MINUTE, ended_at: 20 * MINUTE })
    expect(names(deletedActions)).toEqual(["settle", "notifyTerminated"])
    expect(snapshot.context.billable_ms).toBe(29 * MINUTE)
  })

  it("fails from loading on pod.failed, settling, deleting and notifying", () => {
    // Proves pod.failed → failed (final) with reason "failed", billing closed at the failure.
    const loading = run({ type: "pod.loading", at: LOADING_AT })
    const [snapshot, actions] = step(loading, { type: "pod.failed", at: LOADING_AT + 20_000 })
    expect(snapshot.value).toBe("failed")
    expect(snapshot.status).toBe("done")
    expect(names(actions)).toEqual(["settle", "deletePod", "notifyTerminated"])
    expect(snapshot.context).toMatchObject({
      termination_reason: "failed",
      stop_requested_at: LOADING_AT + 20_000,
      billable_ms: 20_000,
      billing_since: null
    })
  })
})

describe("watchdog", () => {
  it("leaves an instance pending for 15 minutes or less alone", () => {
    // Proves the watchdog waits "more than 15 min", whatever it sees of the pod.
    for (const pod of ["running", "missing", "not_running"] as const) {
      for (const at of [5 * MINUTE, 15 * MINUTE]) {
        const [snapshot, actions] = step(start(), { type: "watchdog", at, pod })
        expect(snapshot.value).toEqual({ active: "pending" })
        expect(names(actions)).toEqual([])
      }
    }
  })

  it("heals a stuck pending instance whose pod is running, billing from the watchdog's instant", () => {
    // Proves the missed-Ready heal: running, started_at = billing_since = the watchdog's `at`.
    const at = 20 * MINUTE
    const [snapshot, actions] = step(start(), { type: "watchdog", at, pod: "running" })
    expect(snapshot.value).toEqual({ active: "running" })
    expect(names(actions)).toEqual([])
    expect(snapshot.context).toMatchObject({
      started_at: at,
      billing_since: at,
      deadline_at: at + 2 * HOUR,
      warnings_pending: [30, 20, 10, 5, 1],
      billable_ms: 0
    })
  })

  it("fails a stuck pending instance whose pod is missing or not running", () => {
    // Proves the watchdog flips it to failed, settling (a full refund: nothing billed) and deleting any pod.
    for (const pod of ["missing", "not_running"] as const) {
      const [snapshot, actions] = step(start(), { type: "watchdog", at: 15 * MINUTE + 1, pod })
      expect(snapshot.value).toBe("failed")
      expect(names(actions)).toEqual(["settle", "deletePod", "notifyTerminated"])
      expect(snapshot.context).toMatchObject({ termination_reason: "failed", billable_ms: 0, started_at: null })
    }
  })

  it("measures the pending time from created_at", () => {
    // Proves the 15-minute limit counts from creation, not from t=0.
    const created = initialTransition(gpuInstanceMachine, input({ created_at: 10 * MINUTE }))[0]
    expect(step(created, { type: "watchdog", at: 25 * MINUTE, pod: "missing" })[0].value).toEqual({ active: "pending" })
    expect(step(created, { type: "watchdog", at: 25 * MINUTE + 1, pod: "missing" })[0].value).toBe("failed")
  })

  it("ignores the watchdog once running", () => {
    // Proves the watchdog only judges pending instances.
    const [snapshot, actions] = step(running(), { type: "watchdog", at: 30 * MINUTE, pod: "missing" })
    expect(snapshot.value).toEqual({ active: "running" })
    expect(names(actions)).toEqual([])
  })
})

describe("nextAlarm", () => {
  it("is null while pending", () => {
    // Proves nothing is due before the pod starts.
    expect(nextAlarm(start())).toBe(null)
  })

  it("gives the earliest armed warning, then the next, then the deadline", () => {
    // Proves the alarm worker walks 30, 20, 10, 5, 1 minutes before the deadline and then the deadline.
    let snapshot = running()
    for (const minutes of [30, 20, 10, 5, 1]) {
      const alarm = nextAlarm(snapshot)
      expect(alarm).toEqual({ at: DEADLINE_AT - minutes * MINUTE, event: "duration_warning", minutes })
      snapshot = step(snapshot, { type: "duration_warning", at: DEADLINE_AT - minutes * MINUTE, minutes })[0]
    }
    expect(nextAlarm(snapshot)).toEqual({ at: DEADLINE_AT, event: "deadline" })
  })

  it("keeps the deadline while preempted", () => {
    // Proves a preempted instance still stops at its deadline.
    const preempted = step(running(), { type: "pod.preempted", at: 31 * MINUTE })[0]
    expect(nextAlarm(preempted)).toEqual({ at: DEADLINE_AT - 30 * MINUTE, event: "duration_warning", minutes: 30 })
  })

  it("is null once stopping or stopped", () => {
    // Proves no alarm fires for an instance already terminating, terminated or failed.
    const terminating = step(running(), { type: "terminate", at: 20 * MINUTE })[0]
    expect(nextAlarm(terminating)).toBe(null)
    expect(nextAlarm(step(terminating, { type: "pod.deleted", at: 21 * MINUTE })[0])).toBe(null)
    expect(nextAlarm(step(running(), { type: "pod.failed", at: 20 * MINUTE })[0])).toBe(null)
  })
})

describe("the storage machine", () => {
  const fs = { id: "fs-1", account: "acc-1", kind: "shared_fs" as const, size_gb: 10, region: "us-east", daily_rate_micros: "10000", created_at: 0 }
  const step = (events: ReadonlyArray<StorageEvent>) => {
    let [snapshot] = initialTransition(storageMachine, fs)
    for (const e of events) [snapshot] = transition(storageMachine, snapshot, e)
    return snapshot
  }

  it("is released when its only instance lets go, however many times that instance attached it", () => {
    // Proves the detach guard: attached twice by gi-1 (as a launch listing it twice once did), one detach frees it.
    const s = step([
      { type: "attach", at: 1, instance: "gi-1" },
      { type: "attach", at: 1, instance: "gi-1" },
      { type: "detach", at: 2, instance: "gi-1" }
    ])
    expect([storageStatusOf(s), s.context.attached_to]).toEqual(["available", []])
  })

  it("goes back to the instances it was suspended from, less one that stopped meanwhile", () => {
    // Proves suspended_from: gi-1 and gi-2 mount it, it is suspended, gi-2 stops, a restore reattaches gi-1 only.
    const s = step([
      { type: "attach", at: 1, instance: "gi-1" },
      { type: "attach", at: 1, instance: "gi-2" },
      { type: "suspend", at: 2 },
      { type: "detach", at: 3, instance: "gi-2" },
      { type: "restore", at: 4 }
    ])
    expect([storageStatusOf(s), s.context.attached_to, s.context.suspended_from]).toEqual(["in_use", ["gi-1"], []])
  })
})

describe("an inference instance's replicas", () => {
  /** Two replicas (eu-west, us-east) of 1 GPU at $1.60/h, launched at t=0. */
  const inferenceInput: InferenceInput = {
    id: "ii-1",
    account: "acc-1",
    model: "llama",
    source: "huggingface",
    gpu: "H100",
    gpu_count: 1,
    regions: ["eu-west", "us-east"],
    hourly_rate_micros: "1600000",
    first_hold_micros: "76800000",
    created_at: 0
  }

  /**
   * The instance as an actor (its replicas are child actors, which `transition()` does not run),
   * with its intents recorded by name and instant instead of carried out.
   */
  const launched = () => {
    const intents: string[] = []
    const record = (name: string) => ({ event }: { event: InferenceEvent }) => void intents.push(`${name}@${event.at}`)
    const machine = inferenceInstanceMachine.provide({
      actions: { placeHold: () => void intents.push("placeHold"), settleCycle: record("settleCycle"), deletePods: record("deletePods"), notifyTerminated: record("notifyTerminated") }
    })
    const actor = createActor(machine, { input: inferenceInput }).start()
    for (const region of inferenceInput.regions) {
      actor.send({ type: "replica.pod", region, pod: "loading", at: 1 * MINUTE })
      actor.send({ type: "replica.pod", region, pod: "running", at: 2 * MINUTE })
    }
    return { actor, intents, replica: (region: string) => actor.getSnapshot().context.replicas[region]! }
  }

  it("takes a replica's pod deleted without our asking, while active, as that replica's failure: failover, then the instance fails on the last", () => {
    // Proves an unasked pod.deleted (kubectl delete pod) fails its replica (not `deleted`, which
    // lastReplicaFails never counted): eu-west serves on; when it fails too, the instance fails,
    // its cycle settled once, its pods deleted, instead of renewing a hold with nothing serving.
    const { actor, intents, replica } = launched()
    actor.send({ type: "replica.pod", region: "us-east", pod: "deleted", at: 60 * MINUTE })
    expect(actor.getSnapshot().value).toBe("active")
    expect(inferenceStatusOf(actor.getSnapshot())).toBe("running")
    expect(replica("us-east")).toEqual({ status: "failed", billing_since: null, cycle_billable_ms: 59 * MINUTE })
    actor.send({ type: "replica.pod", region: "eu-west", pod: "failed", at: 70 * MINUTE })
    expect(actor.getSnapshot().value).toBe("failed")
    expect(actor.getSnapshot().context.termination_reason).toBe("failed")
    expect(replica("eu-west")).toEqual({ status: "failed", billing_since: null, cycle_billable_ms: 69 * MINUTE })
    expect(intents).toEqual(["placeHold", `settleCycle@${70 * MINUTE}`, `deletePods@${70 * MINUTE}`, `notifyTerminated@${70 * MINUTE}`])
  })

  it("keeps a failed replica failed when its pod is then deleted without our asking, so the last failure still fails the instance", () => {
    // Proves the failed pod's removal (kubectl delete of a Failed pod) does not turn a failed
    // replica into `deleted`: the other replica's failure is still the last one.
    const { actor, intents, replica } = launched()
    actor.send({ type: "replica.pod", region: "us-east", pod: "failed", at: 30 * MINUTE })
    actor.send({ type: "replica.pod", region: "us-east", pod: "deleted", at: 40 * MINUTE })
    expect(replica("us-east").status).toBe("failed")
    actor.send({ type: "replica.pod", region: "eu-west", pod: "failed", at: 50 * MINUTE })
    expect(actor.getSnapshot().value).toBe("failed")
    expect(intents.filter((i) => i.startsWith("settleCycle"))).toEqual([`settleCycle@${50 * MINUTE}`])
  })

  it("asked to stop while the world is behind, settles once every replica's pod.deleted has come, each billed to the stop it dates", () => {
    // Proves a terminate with world_behind closes billing at once but asks for no settlement;
    // each replica's pod.deleted ends that replica's closed stretch at the stop it dates
    // (ended_at), never before the stretch began, and the last one settles the cycle, once.
    const { actor, intents, replica } = launched()
    actor.send({ type: "replica.pod", region: "eu-west", pod: "preempted", at: 30 * MINUTE })
    actor.send({ type: "terminate", at: 62 * MINUTE, world_behind: true })
    expect(actor.getSnapshot().value).toBe("terminating")
    expect(actor.getSnapshot().context.settle_at_deleted).toEqual({ stretch_since: { "eu-west": null, "us-east": 1 * MINUTE } })
    expect(intents).toEqual(["placeHold", `deletePods@${62 * MINUTE}`])
    expect([replica("eu-west").cycle_billable_ms, replica("us-east").cycle_billable_ms]).toEqual([29 * MINUTE, 61 * MINUTE])
    // eu-west had stopped billing before the request: a date on its deletion changes nothing.
    actor.send({ type: "replica.pod", region: "eu-west", pod: "deleted", at: 64 * MINUTE, ended_at: 20 * MINUTE })
    actor.send({ type: "replica.pod", region: "us-east", pod: "deleted", at: 64 * MINUTE, ended_at: 61 * MINUTE })
    expect(actor.getSnapshot().value).toBe("terminated")
    expect([replica("eu-west").cycle_billable_ms, replica("us-east").cycle_billable_ms]).toEqual([29 * MINUTE, 60 * MINUTE])
    expect(intents).toEqual(["placeHold", `deletePods@${62 * MINUTE}`, `settleCycle@${64 * MINUTE}`, `notifyTerminated@${64 * MINUTE}`])
  })

  it("stopped for credit at a cycle end while the world is behind: the same deferral, never unbilled before the stretch began", () => {
    // Proves the cycle end that cannot renew defers as a terminate does, and that an ended_at
    // before the stretch began (a stop before the cycle) bills nothing of this cycle, not less.
    const { actor, intents, replica } = launched()
    actor.send({ type: "cycle_end", at: 24 * HOUR, renewal: null, world_behind: true })
    expect(actor.getSnapshot().context.termination_reason).toBe("credit_depleted")
    expect(intents).toEqual(["placeHold", `deletePods@${24 * HOUR}`])
    actor.send({ type: "replica.pod", region: "us-east", pod: "deleted", at: 24 * HOUR + 2 * MINUTE, ended_at: 0 })
    expect(actor.getSnapshot().value).toBe("terminating")
    actor.send({ type: "replica.pod", region: "eu-west", pod: "deleted", at: 24 * HOUR + 2 * MINUTE, ended_at: 24 * HOUR - MINUTE })
    expect(actor.getSnapshot().value).toBe("terminated")
    expect([replica("eu-west").cycle_billable_ms, replica("us-east").cycle_billable_ms]).toEqual([24 * HOUR - 2 * MINUTE, 0])
    expect(intents.slice(2)).toEqual([`settleCycle@${24 * HOUR + 2 * MINUTE}`, `notifyTerminated@${24 * HOUR + 2 * MINUTE}`])
  })

  it("still ends a replica `deleted` when its deletion was asked for (the instance stopping)", () => {
    // Proves the unasked rule leaves a stop alone: terminate, then each pod.deleted → terminated.
    const { actor, intents, replica } = launched()
    actor.send({ type: "terminate", at: 60 * MINUTE })
    actor.send({ type: "replica.pod", region: "us-east", pod: "deleted", at: 61 * MINUTE, ended_at: 30 * MINUTE })
    expect([actor.getSnapshot().value, replica("us-east").status]).toEqual(["terminating", "deleted"])
    actor.send({ type: "replica.pod", region: "eu-west", pod: "deleted", at: 61 * MINUTE })
    expect(actor.getSnapshot().value).toBe("terminated")
    expect(intents).toEqual(["placeHold", `settleCycle@${60 * MINUTE}`, `deletePods@${60 * MINUTE}`, `notifyTerminated@${61 * MINUTE}`])
    // With a current view, a date on a deletion changes nothing: the cycle settled at the stop.
    expect(replica("us-east").cycle_billable_ms).toBe(59 * MINUTE)
  })
})
