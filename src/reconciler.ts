/**
 * The reconciler (issue 5, as a Kubernetes controller's): makes what the machines believe
 * agree with what the cluster shows, and deletes the workloads nobody owns. The supervisor
 * runs it at start and on every watchdog tick, inside a unit of work, and tells it which
 * resources changed in between; the reconciler decides, and acts only through its host (a
 * machine's dispatch, a pod created again) and the cluster port.
 */
import type { GpuInstanceContext, GpuInstanceEvent, GpuStatus } from "../machines/gpuInstance.js"
import { gpuStatusOf } from "../machines/gpuInstance.js"
import type { InferenceEvent } from "../machines/inferenceInstance.js"
import type { EngineClock } from "./clock.js"
import { podNameFor, type ClusterPort, type RecalledStop, type WorkloadPhase, type WorkloadSpec } from "./cluster.js"
import { assert } from "./errors.js"
import { podsOf, replicaSpec, statusOf, type WorkloadEntry } from "./liveEntry.js"
import * as policy from "./policy.js"
import { ownerOf, replicaResource } from "./resources.js"
import type { JournalPort } from "./services.js"

/** What the reconciler needs of the supervisor. */
export interface ReconcilerHost {
  readonly clock: EngineClock
  readonly cluster: ClusterPort
  readonly journal: JournalPort
  /** The live resources that run workloads, by id. */
  readonly withPods: ReadonlyMap<string, WorkloadEntry>
  /** Whether `id` is a live resource: its workloads are ours. */
  isLive(id: string): boolean
  /** Tells a machine what the cluster shows; the transition it causes gives `cause` as its reason. */
  dispatch(entry: WorkloadEntry, event: GpuInstanceEvent | InferenceEvent, cause: "reconciled"): void
  /** Creates a GPU resource's pods again: pending (its create was lost) or preempted (its replacement was never made). */
  createPod(ctx: GpuInstanceContext, at: number): void
  /**
   * True while the unit runs as of an instant the world has passed (src/backlog.ts): what the
   * cluster shows now may have happened after `at`, so only a stop the world dates at or before
   * `at` is applied; the rest is told by the world's own events, which wait behind this unit.
   */
  catchingUp?(): boolean
}

export class Reconciler {
  /** Resources whose machine ran since the last tick: they may disagree with the cluster now. */
  private readonly changedSinceTick = new Set<string>()
  /** Workloads of resources that left `live` since the last tick: they may be orphans now. */
  private readonly goneSinceTick = new Set<string>()
  private lastDrifted: ReadonlyArray<string> = []
  private lastOrphans: ReadonlyArray<string> = []

  constructor(
    private readonly host: ReconcilerHost,
    /** `ReconcileAudit`: check every incremental reconcile against a full scan (tests). */
    private readonly audit: boolean
  ) {}

  /** A resource's machine ran: the next tick looks at it. */
  changed(id: string): void {
    this.changedSinceTick.add(id)
  }

  /** A resource left `live`: the next tick looks at the workload `name` it had. */
  gone(name: string): void {
    this.goneSinceTick.add(name)
  }

  /**
   * Level-triggered reconciliation: make what the machines believe agree with what the
   * cluster shows, for every live resource, and delete workloads nobody owns (each orphan is
   * journaled, so an operator can see it). At start it heals everything; on a watchdog tick
   * a GPU resource still `pending` is left to SPEC §3's stuck-pending rule (healed or failed
   * once it has been pending 15 minutes), as the manual describes.
   *
   * A tick is incremental: only a resource whose machine ran since the last tick, whose
   * workload the cluster's change feed reports, or that the last tick found drifted can have
   * drifted since, and only a workload the feed reports, one of a resource that left `live`,
   * or last tick's orphan can be an orphan now. Everything is scanned at start and at every
   * `RECONCILE_RESYNC_INTERVAL_MS` mark (a resync, as an informer's), and on every tick under
   * `ReconcileAudit`, which fails loudly if the two ever disagree.
   *
   * Scans only look (in whatever order the sets hold); the resources that disagree are then
   * corrected in id order, so what is written never depends on iteration order.
   */
  reconcile(when: "start" | "tick"): void {
    const at = this.host.clock.now()
    const resync = when === "start" || at % policy.RECONCILE_RESYNC_INTERVAL_MS === 0
    const suspects = new Set<string>(this.lastDrifted)
    const orphanSuspects = new Set<string>(this.lastOrphans)
    for (const id of this.changedSinceTick) suspects.add(id)
    for (const name of this.goneSinceTick) orphanSuspects.add(name)
    this.changedSinceTick.clear()
    this.goneSinceTick.clear()
    this.host.cluster.drainChanges((name, resource) => {
      suspects.add(ownerOf(resource))
      orphanSuspects.add(name)
    })
    const full = resync || this.audit
    const drifted = full ? this.drifted(this.host.withPods.keys(), when) : this.drifted(suspects, when)
    if (full && !resync) this.agree("drifted", at, this.drifted(suspects, when), drifted)
    for (const id of drifted) {
      const entry = this.host.withPods.get(id)!
      if (entry.kind === "inference") this.reconcileInference(entry, at)
      else this.reconcileGpu(entry, at)
    }
    let orphans: string[]
    if (full) {
      orphans = []
      this.host.cluster.forEachWorkload((name, resource) => {
        if (!this.owned(resource)) orphans.push(name)
      })
      orphans.sort()
      if (!resync) this.agree("orphans", at, this.orphansAmong(orphanSuspects), orphans)
    } else {
      orphans = this.orphansAmong(orphanSuspects)
    }
    this.sweepOrphans(orphans, at)
    this.lastDrifted = drifted
    this.lastOrphans = orphans
  }

  /** `ReconcileAudit`: what the incremental tick saw must be what a full scan sees. */
  private agree(what: string, at: number, incremental: ReadonlyArray<string>, full: ReadonlyArray<string>): void {
    assert(incremental.join() === full.join(), () => `incremental reconcile at ${at}: ${what} [${incremental.join()}], a full scan [${full.join()}]`)
  }

  /** The ids among `ids` whose machine disagrees with the cluster, sorted. */
  private drifted(ids: Iterable<string>, when: "start" | "tick"): string[] {
    const drifted: string[] = []
    for (const id of ids) {
      const entry = this.host.withPods.get(id)
      // A finished actor waits in `live` only until the batch's commit writes its last snapshot.
      if (entry === undefined || entry.actor.getSnapshot().status === "done") continue
      if (entry.kind === "inference" ? this.replicasDrifted(entry) : this.gpuDrifted(entry, when)) drifted.push(id)
    }
    return drifted.sort()
  }

  /** Whether a workload's resource (`id` or `id@region`) is a live resource of ours. */
  private owned(resource: string): boolean {
    return this.host.isLive(ownerOf(resource))
  }

  /** The workloads among `names` that exist and that no live resource owns, sorted. */
  private orphansAmong(names: Iterable<string>): string[] {
    const orphans: string[] = []
    for (const name of names) {
      const workload = this.host.cluster.get(name)
      if (workload !== undefined && !this.owned(workload.resource)) orphans.push(name)
    }
    return orphans.sort()
  }

  /**
   * What a GPU resource's machine should be told, given its pods' phase; null when they agree.
   * A resource that has no pod yet (`pending`) or waits for capacity (`preempted`: its victim is
   * gone, its replacement owed) and whose pods are missing has its pods created again, never
   * taken for lost: nothing is billed until they run. A `preempted` one's replacement is missing
   * when the control plane stopped before making it (a crash or a deploy between the victim's
   * deletion and the create, or a create the API server kept refusing): before, a restart then
   * failed the instance, though the cluster had only preempted it.
   */
  private gpuCorrection(status: GpuStatus, phase: WorkloadPhase | "missing"): GpuInstanceEvent["type"] | "createPod" | "deletePod" | null {
    if (status === "terminating") return phase === "missing" ? "pod.deleted" : "deletePod"
    if (phase === "missing" || phase === "failed") return (status === "pending" || status === "preempted") && phase === "missing" ? "createPod" : "pod.failed"
    if (phase === "running" && status !== "running") return "pod.running"
    if (phase === "loading" && status === "pending") return "pod.loading"
    if (phase === "preempted" && (status === "running" || status === "loading")) return "pod.preempted"
    return null
  }

  private gpuDrifted(entry: Extract<WorkloadEntry, { kind: "gpu" }>, when: "start" | "tick"): boolean {
    const snapshot = entry.actor.getSnapshot()
    const status = gpuStatusOf(snapshot)
    if (when === "tick" && status === "pending") return false
    const name = podsOf(entry)[""]!
    const phase = this.host.cluster.phaseOf(name) ?? "missing"
    if (this.gpuCorrection(status, phase) !== null) return true
    return status === "running" && phase === "running" && this.interruptedAt(name, snapshot.context.billing_since) !== null
  }

  /**
   * A stop and restart the engine never saw (both pod events missed, or both during an
   * outage): the world says the pod stopped holding its GPUs after billing last began (not at
   * that instant: a preemption and resume seen together leave a stop there), though it runs
   * again now. The first such stop, or null.
   */
  private interruptedAt(name: string, billing_since: number | null): number | null {
    return billing_since === null ? null : this.host.cluster.firstStopAt(name, billing_since + 1)
  }

  /**
   * Where a stop found late ends billing that began at `billing_since`: the world's first stop
   * since then (several may have come and gone unseen), or null if the world cannot say.
   */
  private stoppedSince(name: string, billing_since: number | null): number | null {
    return billing_since === null ? null : this.host.cluster.firstStopAt(name, billing_since)
  }

  /**
   * Corrects one resource now if it disagrees with its pods: before a deadline or a cycle end
   * settles it, so a stop its events never told of is billed only up to when it happened,
   * even if the next watchdog tick would come too late.
   */
  reconcileOne(id: string): void {
    const entry = this.host.withPods.get(id)
    if (entry === undefined || entry.actor.getSnapshot().status === "done") return
    const at = this.host.clock.now()
    if (entry.kind === "inference") {
      if (this.replicasDrifted(entry)) this.reconcileInference(entry, at)
    } else if (this.gpuDrifted(entry, "tick")) this.reconcileGpu(entry, at)
  }

  private reconcileGpu(entry: Extract<WorkloadEntry, { kind: "gpu" }>, at: number): void {
    const id = entry.id
    const status = gpuStatusOf(entry.actor.getSnapshot())
    const workload = this.host.cluster.get(podNameFor(id))
    const phase = workload?.phase ?? "missing"
    const correction = this.gpuCorrection(status, phase)
    if (this.host.catchingUp?.() === true) {
      const since = this.stoppedSince(podNameFor(id), entry.actor.getSnapshot().context.billing_since)
      const datedStop = (correction === "pod.preempted" || correction === "pod.failed") && phase === (correction === "pod.preempted" ? "preempted" : "failed") && since !== null && since <= at
      if (!datedStop && correction !== "deletePod") return
    }
    if (correction === null) {
      // Running, as the engine thinks, but stopped and restarted unseen: unbill the gap by
      // telling the machine both (the stop dated when it happened, the restart now: as a heal,
      // billed from when the engine learns it).
      const stopped = status === "running" && phase === "running" ? this.interruptedAt(podNameFor(id), entry.actor.getSnapshot().context.billing_since) : null
      if (stopped === null) return
      this.host.journal.append(at, "reconcile", { id, status, phase, interrupted_at: stopped })
      this.host.dispatch(entry, { type: "pod.preempted", at, ended_at: stopped }, "reconciled")
      this.host.dispatch(entry, { type: "pod.running", at }, "reconciled")
      return
    }
    // Commands to the cluster are idempotent (deterministic names) and journal nothing: the
    // events they cause will. A pending resource whose create was lost is created again.
    if (correction === "createPod") return this.host.createPod(entry.actor.getSnapshot().context, at)
    if (correction === "deletePod") return this.host.cluster.deleteWorkload(podNameFor(id))
    const ctx = entry.actor.getSnapshot().context
    // Started, and its pods gone unseen (an outage): the world may still know how they ended.
    const recalled =
      correction === "pod.failed" && phase === "missing" && ctx.billing_since !== null
        ? this.recall({ name: podNameFor(id), resource: id, account: ctx.account, region: ctx.region, node_count: ctx.node_count, service: null }, ctx.billing_since)
        : null
    if (recalled !== null) {
      this.host.journal.append(at, "reconcile", { id, status, phase, recalled: recalled.phase, interrupted_at: recalled.ended_at })
      this.host.dispatch(entry, { type: recalled.phase === "preempted" ? "pod.preempted" : "pod.failed", at, ...(recalled.ended_at < at ? { ended_at: recalled.ended_at } : {}) }, "reconciled")
      // Preempted: its replacement is made from the spec the engine creates it from.
      if (recalled.phase === "preempted") this.host.createPod(ctx, at)
      return
    }
    this.host.journal.append(at, "reconcile", { id, status, phase })
    // A preemption or failure found late is billed only up to when the world says it happened.
    const since = this.stoppedSince(podNameFor(id), entry.actor.getSnapshot().context.billing_since)
    const dated = (correction === "pod.preempted" || correction === "pod.failed") && phase === (correction === "pod.preempted" ? "preempted" : "failed") && since !== null && since < at
    this.host.dispatch(entry, (dated ? { type: correction, at, ended_at: since } : { type: correction, at }) as GpuInstanceEvent, "reconciled")
  }

  /**
   * How a started workload whose pods the world lost sight of ended, if the world still knows
   * (`ClusterPort.recallGone`: a preemption or a loss, dated); null otherwise, and the workload
   * has failed, dated when found, as before. `from`: when its billing began.
   */
  private recall(workload: Pick<WorkloadSpec, "name" | "resource" | "account" | "region" | "node_count" | "service">, from: number): RecalledStop | null {
    return this.host.cluster.recallGone?.(workload, from) ?? null
  }

  /** Deletes the workloads the cluster runs for no live resource of ours (`orphans`, sorted), each journaled (the operator's report). */
  private sweepOrphans(orphans: ReadonlyArray<string>, at: number): void {
    for (const name of orphans) {
      const workload = this.host.cluster.get(name)
      if (workload === undefined) continue
      this.host.journal.append(at, "orphan_deleted", { name, resource: workload.resource, phase: workload.phase })
      this.host.cluster.deleteWorkload(name)
    }
  }

  /** Whether any replica of an inference instance disagrees with its pod (see reconcileInference). */
  private replicasDrifted(entry: Extract<WorkloadEntry, { kind: "inference" }>): boolean {
    const snapshot = entry.actor.getSnapshot()
    const ctx = snapshot.context
    const stopping = snapshot.value === "terminating"
    const pods = podsOf(entry)
    for (const region of ctx.regions) {
      const replica = ctx.replicas[region]?.status ?? "pending"
      if (replica === "deleted") continue
      const phase = this.host.cluster.phaseOf(pods[region]!) ?? "missing"
      if (stopping || (phase === "missing" ? replica !== "failed" : phase !== replica && phase !== "pending")) return true
      if (replica === "running" && phase === "running" && this.interruptedAt(pods[region]!, ctx.replicas[region]?.billing_since ?? null) !== null) return true
    }
    return false
  }

  private reconcileInference(entry: Extract<WorkloadEntry, { kind: "inference" }>, at: number): void {
    const ctx = entry.actor.getSnapshot().context
    const stopping = statusOf(entry) === "terminating"
    for (const region of ctx.regions) {
      const name = podNameFor(replicaResource(entry.id, region))
      const workload = this.host.cluster.get(name)
      const replica = ctx.replicas[region]?.status ?? "pending"
      const phase = workload?.phase ?? "missing"
      const send = (pod: "loading" | "running" | "preempted" | "failed" | "deleted", ended_at: number | null = null) => {
        if (this.host.catchingUp?.() === true) {
          const since = ended_at ?? (pod === phase && (pod === "preempted" || pod === "failed") ? this.stoppedSince(name, ctx.replicas[region]?.billing_since ?? null) : null)
          if (since === null || since > at) return
        }
        this.host.journal.append(at, "reconcile", { id: entry.id, region, replica, phase, ...(ended_at === null ? {} : { interrupted_at: ended_at }) })
        // As for a GPU resource: a stop found late is billed only up to when the world dates it.
        const since = ended_at ?? (pod === phase && (pod === "preempted" || pod === "failed") ? this.stoppedSince(name, ctx.replicas[region]?.billing_since ?? null) : null)
        this.host.dispatch(entry, { type: "replica.pod", region, pod, at, ...(since !== null && since < at ? { ended_at: since } : {}) }, "reconciled")
      }
      if (replica === "deleted") continue
      if (stopping) {
        if (workload === undefined) send("deleted")
        else this.host.cluster.deleteWorkload(name)
      } else if (phase === "missing") {
        const billing_since = ctx.replicas[region]?.billing_since ?? null
        // Started, and its pod gone unseen (an outage): the world may still know how it ended.
        const recalled = (replica === "loading" || replica === "running") && billing_since !== null ? this.recall(replicaSpec(ctx, region), billing_since) : null
        // Not started yet, or waiting for capacity (its replacement owed, never made): created
        // again, as a GPU resource's pods are (`gpuCorrection`), not taken for a failed replica.
        if (replica === "pending" || replica === "preempted") this.host.cluster.createWorkload(replicaSpec(ctx, region))
        else if (recalled !== null) {
          send(recalled.phase, recalled.ended_at)
          // Preempted: its replacement is made from the replica's spec.
          if (recalled.phase === "preempted") this.host.cluster.createWorkload(replicaSpec(ctx, region))
        } else if (replica !== "failed") send("failed")
      } else if (phase !== replica && phase !== "pending") {
        send(phase)
      } else if (replica === "running" && phase === "running") {
        // Stopped and restarted unseen, as for a GPU resource above.
        const stopped = this.interruptedAt(name, ctx.replicas[region]?.billing_since ?? null)
        if (stopped !== null) {
          send("preempted", stopped)
          send("running")
        }
      }
    }
  }
}
