/**
 * A scripted kubelet (and scheduler) for the Kubernetes API test server: it places the pods
 * the driver creates on the nodes of their region (first fit, a GPU cluster's pods together,
 * in arrival order, as the simulated cluster does), and moves them through their phases on
 * the injected clock:
 *
 *   bound to a node, image pulling          Pending, PodScheduled, container waiting
 *   after the image pull                    Running, container started, not Ready
 *   after the container start               Ready
 *
 * and can, on a test's or a timeline's word: preempt a workload (the scheduler's
 * `DisruptionTarget` condition, then a graceful delete; the GPUs stay with the preemptor
 * until `resume`, when the replacement pod the driver created starts at once on the warm
 * node), fail it (phase Failed), lose it (deleted at once, as `kubectl delete --force`
 * would), cordon a region (nothing new is placed), or take a region down.
 *
 * Like the real scheduler, it places no pod whose PersistentVolumeClaims are not all there
 * (missing, or being deleted): such a pod waits, Unschedulable, and is placed the moment its
 * last claim is created. So a driver that forgot a claim would see its pod stuck, not running.
 *
 * It writes the Events a real scheduler and kubelet write when they take a pod (core/v1, in the
 * shapes the API server returns): the scheduler's `Preempted` on a preemption victim (through
 * events.k8s.io/v1: an `eventTime`, no first/lastTimestamp), and the kubelet's `Killing` for each
 * container of a pod it stops because it is being deleted (a preemption victim, `kubectl delete`,
 * the driver's own deletes). A pod that fails (`fail`) or vanishes (`lose`) gets none.
 *
 * A pod being deleted (a `deletionTimestamp`) is removed after the region's `pod_stop_ms`.
 * Timers run on the world lane, keyed by the workload's name, like the simulated cluster's,
 * so ties at one instant break the same way in both worlds.
 */
import { Lane, type EngineClock, type TimerHandle } from "../../src/clock.js"
import { ANNOTATIONS } from "../../src/k8s/names.js"
import type { WorldOutcome } from "../../sim/cluster.js"
import { claimsOf, kubeTime, type Change, type KubeApiServer, type KubeObject } from "./apiServer.js"

export interface KubeletRegion {
  readonly name: string
  readonly nodes: number
  readonly gpus_per_node: number
  readonly image_pull_ms: number
  readonly container_start_ms: number
  readonly pod_stop_ms: number
}

export interface KubeletOptions {
  readonly namespace: string
  readonly region_label?: string
  readonly gpu_resource?: string
}

interface Gang {
  readonly key: string
  readonly resource: string
  readonly region: string
  readonly expected: number
  readonly gpus: number
  /** The PersistentVolumeClaims its pods mount, sorted. */
  readonly claims: ReadonlyArray<string>
  /** Pod name → node index, or null while unplaced. */
  readonly pods: Map<string, number | null>
  timer: TimerHandle | null
  /** Its image is on the node: a replacement starts without a pull. */
  warm: boolean
  /** Nodes held by the preemptor since a preemption, until `resume`. */
  reservation: number[] | null
  resumed: boolean
  queued: boolean
  failed: boolean
}

interface RegionState {
  readonly spec: KubeletRegion
  readonly free: number[]
  down: boolean
  cordoned: boolean
  /** Its kubelets confirm no deletion (nodes lost): pods stay terminating. */
  silent: boolean
  readonly queue: string[]
}

const ok: WorldOutcome = { ok: true }
const refuse = (error: string, message: string): WorldOutcome => ({ ok: false, status: 409, error, message })

export const PREEMPTION_REASON = "PreemptionByScheduler"
/** The uid of the (make-believe) higher-priority pod the scheduler's `Preempted` Event names. */
export const PREEMPTOR_UID = "00000000-0000-4000-8000-0000000ffff1"

export class ScriptedKubelet {
  private readonly regions = new Map<string, RegionState>()
  private readonly gangs = new Map<string, Gang>()
  private readonly regionLabel: string
  private readonly gpuResource: string
  private readonly unsubscribe: () => void
  private handling = false
  private readonly backlog: Change[] = []

  constructor(
    private readonly server: KubeApiServer,
    private readonly clock: EngineClock,
    regions: ReadonlyArray<KubeletRegion>,
    private readonly options: KubeletOptions
  ) {
    this.regionLabel = options.region_label ?? "topology.kubernetes.io/region"
    this.gpuResource = options.gpu_resource ?? "nvidia.com/gpu"
    for (const spec of [...regions].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      this.regions.set(spec.name, { spec, free: Array.from({ length: spec.nodes }, () => spec.gpus_per_node), down: false, cordoned: false, silent: false, queue: [] })
    }
    this.unsubscribe = server.onChange((change) => this.onChange(change))
  }

  stop(): void {
    this.unsubscribe()
    for (const g of this.gangs.values()) this.cancel(g)
  }

  /** Free GPUs per node of a region. */
  free(region: string): ReadonlyArray<number> {
    return [...(this.regions.get(region)?.free ?? [])]
  }

  // ── what a test or a timeline does to the world ───────────────────────────────────────
  preempt(resource: string): WorldOutcome {
    const g = this.gangOf(resource)
    if (g === undefined || g.failed) return refuse("no_pod", `no pod runs for ${resource}`)
    if (!g.warm || g.reservation !== null) return refuse("not_running", `the pod of ${resource} is not running`)
    this.cancel(g)
    g.reservation = [...g.pods.values()].filter((n): n is number => n !== null)
    g.resumed = false
    for (const pod of [...g.pods.keys()].sort()) {
      const victim = this.server.update("pods", this.options.namespace, pod, (o) => {
        o.status = { ...o.status, conditions: [...(o.status?.conditions ?? []), { type: "DisruptionTarget", status: "True", reason: PREEMPTION_REASON, message: "Preempted by a higher priority pod", lastTransitionTime: kubeTime(this.clock.now()) }] }
      })
      this.server.deletePod(this.options.namespace, pod)
      // The scheduler writes its Event once the victim's delete went through.
      this.preemptedEvent(victim)
    }
    return ok
  }

  resume(resource: string): WorldOutcome {
    const g = this.gangOf(resource, true)
    if (g === undefined || g.reservation === null || g.resumed) return refuse("not_preempted", `the pod of ${resource} is not preempted`)
    g.resumed = true
    this.placeReplacement(g)
    return ok
  }

  /** Every pod of the workload fails (phase Failed), as a pull or a crash would make it. */
  fail(resource: string): WorldOutcome {
    const g = this.gangOf(resource)
    if (g === undefined) return refuse("no_pod", `no pod runs for ${resource}`)
    if (g.failed) return refuse("already_failed", `the pod of ${resource} already failed`)
    this.failGang(g, "Error")
    return ok
  }

  /** The workload's pods vanish at once, without a word (a forced delete, a lost node). */
  lose(resource: string): WorldOutcome {
    const g = this.gangOf(resource)
    if (g === undefined) return refuse("no_pod", `no pod runs for ${resource}`)
    this.cancel(g)
    for (const pod of [...g.pods.keys()].sort()) this.server.remove("pods", this.options.namespace, pod)
    return ok
  }

  /** Nothing new is placed in the region (a scheduler that finds no room). */
  cordon(region: string, cordoned = true): void {
    const r = this.regions.get(region)
    if (r === undefined) throw new Error(`no region ${region}`)
    r.cordoned = cordoned
    if (!cordoned) this.placeQueued(r)
  }

  /** The region's kubelets stop answering: a pod being deleted there stays terminating. */
  silence(region: string, silent = true): void {
    const r = this.regions.get(region)
    if (r === undefined) throw new Error(`no region ${region}`)
    r.silent = silent
  }

  regionDown(name: string): WorldOutcome {
    const r = this.regions.get(name)
    if (r === undefined) return { ok: false, status: 404, error: "unknown_region", message: `no region ${name}` }
    if (r.down) return refuse("already_down", `region ${name} is already down`)
    r.down = true
    for (const key of [...this.gangs.keys()].sort()) {
      const g = this.gangs.get(key)!
      if (g.region === name && !g.failed && g.pods.size > 0) this.failGang(g, "NodeLost")
    }
    return ok
  }

  regionUp(name: string): WorldOutcome {
    const r = this.regions.get(name)
    if (r === undefined) return { ok: false, status: 404, error: "unknown_region", message: `no region ${name}` }
    if (!r.down) return refuse("not_down", `region ${name} is not down`)
    r.down = false
    this.placeQueued(r)
    return ok
  }

  // ── reacting to the API server ────────────────────────────────────────────────────────
  /** Changes are handled one at a time, in order, even those our own writes cause. */
  private onChange(change: Change): void {
    if (change.object.metadata.namespace !== this.options.namespace) return
    if (change.plural !== "pods" && !(change.plural === "persistentvolumeclaims" && change.type === "ADDED")) return
    this.backlog.push(change)
    if (this.handling) return
    this.handling = true
    try {
      for (let c = this.backlog.shift(); c !== undefined; c = this.backlog.shift()) this.handle(c)
    } finally {
      this.handling = false
    }
  }

  private handle(change: Change): void {
    // A new claim may be the last one a queued pod waits for.
    if (change.plural === "persistentvolumeclaims") return this.placeEverywhere()
    const pod = change.object
    if (change.type === "ADDED") return this.added(pod)
    if (change.type === "DELETED") return this.deleted(pod)
    if (pod.metadata.deletionTimestamp !== undefined && change.old?.metadata.deletionTimestamp === undefined) this.terminating(pod)
  }

  private added(pod: KubeObject): void {
    const a = pod.metadata.annotations ?? {}
    const key = a[ANNOTATIONS.workload] ?? pod.metadata.name
    const region = pod.spec?.nodeSelector?.[this.regionLabel] as string | undefined
    let g = this.gangs.get(key)
    if (g === undefined) {
      g = {
        key,
        resource: a[ANNOTATIONS.resource] ?? "",
        region: region ?? "",
        expected: Number(a[ANNOTATIONS.nodeCount] ?? "1"),
        gpus: Number(pod.spec?.containers?.[0]?.resources?.requests?.[this.gpuResource] ?? "0"),
        claims: claimsOf(pod).sort(),
        pods: new Map(),
        timer: null,
        warm: false,
        reservation: null,
        resumed: false,
        queued: false,
        failed: false
      }
      this.gangs.set(key, g)
    }
    g.pods.set(pod.metadata.name, null)
    if (g.pods.size < g.expected) return
    if (g.reservation !== null) return this.placeReplacement(g)
    const r = this.regions.get(g.region)
    if (r === undefined) return this.unschedulable(g, `0/0 nodes are available: no node matches ${this.regionLabel}=${g.region}`)
    if (!g.queued) {
      g.queued = true
      r.queue.push(key)
    }
    this.placeQueued(r)
    if (!g.queued) return
    const claim = this.claimMissing(g)
    this.unschedulable(g, claim !== null ? `0/${r.spec.nodes} nodes are available: ${claim}.` : `0/${r.spec.nodes} nodes are available: ${r.spec.nodes} Insufficient ${this.gpuResource}.`)
  }

  /** Why a gang's claims keep it from being placed (the scheduler's words), or null. */
  private claimMissing(g: Gang): string | null {
    for (const claim of g.claims) {
      const c = this.server.object("persistentvolumeclaims", this.options.namespace, claim)
      if (c === undefined) return `persistentvolumeclaim "${claim}" not found`
      if (c.metadata.deletionTimestamp !== undefined) return `persistentvolumeclaim "${claim}" is being deleted`
    }
    return null
  }

  private terminating(pod: KubeObject): void {
    const g = this.gangs.get(pod.metadata.annotations?.[ANNOTATIONS.workload] ?? pod.metadata.name)
    if (g === undefined) return
    this.cancel(g)
    if (this.regions.get(g.region)?.silent === true) return
    this.killingEvents(pod)
    const stop_ms = this.regions.get(g.region)?.spec.pod_stop_ms ?? 0
    this.clock.schedule(this.clock.now() + stop_ms, () => this.server.remove("pods", this.options.namespace, pod.metadata.name), { lane: Lane.world, key: g.key })
  }

  private deleted(pod: KubeObject): void {
    const g = this.gangs.get(pod.metadata.annotations?.[ANNOTATIONS.workload] ?? pod.metadata.name)
    if (g === undefined) return
    const node = g.pods.get(pod.metadata.name) ?? null
    g.pods.delete(pod.metadata.name)
    const r = this.regions.get(g.region)
    const victim = (pod.status?.conditions ?? []).some((c: { type?: string }) => c.type === "DisruptionTarget")
    // A preemption victim's GPUs stay with the preemptor; any other pod's are free again.
    if (node !== null && r !== undefined && !(victim && g.reservation !== null)) r.free[node]! += g.gpus
    if (g.pods.size > 0) return
    this.cancel(g)
    if (g.reservation !== null && !victim && r !== undefined) {
      // The preempted workload itself was deleted: its claim on the nodes goes with it.
      for (const n of g.reservation) r.free[n]! += g.gpus
      g.reservation = null
    }
    if (g.reservation === null) {
      this.gangs.delete(g.key)
      if (r !== undefined) {
        const i = r.queue.indexOf(g.key)
        if (i >= 0) r.queue.splice(i, 1)
      }
    }
    if (r !== undefined) this.placeQueued(r)
  }

  // ── placement and phases ──────────────────────────────────────────────────────────────
  private placeEverywhere(): void {
    for (const r of this.regions.values()) this.placeQueued(r)
  }

  private placeQueued(r: RegionState): void {
    if (r.down || r.cordoned) return
    for (let i = 0; i < r.queue.length; ) {
      const g = this.gangs.get(r.queue[i]!)!
      const nodes = this.claimMissing(g) === null ? this.fit(r, g) : null
      if (nodes === null) {
        i++
        continue
      }
      r.queue.splice(i, 1)
      g.queued = false
      for (const n of nodes) r.free[n]! -= g.gpus
      this.bind(g, nodes, r.spec.image_pull_ms)
    }
  }

  private fit(r: RegionState, g: Gang): number[] | null {
    const chosen: number[] = []
    for (let n = 0; n < r.free.length && chosen.length < g.expected; n++) if (r.free[n]! >= g.gpus) chosen.push(n)
    return chosen.length === g.expected ? chosen : null
  }

  /** A replacement after `resume` goes on the nodes the preemptor held, image already there. */
  private placeReplacement(g: Gang): void {
    if (!g.resumed || g.reservation === null || g.pods.size < g.expected) return
    const nodes = g.reservation
    g.reservation = null
    g.resumed = false
    this.bind(g, nodes, 0)
  }

  private bind(g: Gang, nodes: ReadonlyArray<number>, pull_ms: number): void {
    const r = this.regions.get(g.region)!
    const now = kubeTime(this.clock.now())
    ;[...g.pods.keys()].sort().forEach((pod, i) => {
      const node = nodes[i]!
      g.pods.set(pod, node)
      this.server.update("pods", this.options.namespace, pod, (o) => {
        o.spec.nodeName = `${g.region}-node-${node}`
        o.status = {
          phase: "Pending",
          qosClass: "Guaranteed",
          conditions: [{ type: "PodScheduled", status: "True", lastTransitionTime: now }],
          containerStatuses: containerNames(o).map((name) => ({ name, image: imageOf(o, name), imageID: "", ready: false, started: false, restartCount: 0, state: { waiting: { reason: "ContainerCreating" } } }))
        }
      })
    })
    this.after(g, g.warm ? 0 : pull_ms, () => this.started(g, r))
  }

  private started(g: Gang, r: RegionState): void {
    g.warm = true
    const now = kubeTime(this.clock.now())
    for (const pod of [...g.pods.keys()].sort()) {
      this.server.update("pods", this.options.namespace, pod, (o) => {
        o.status = {
          ...o.status,
          phase: "Running",
          startTime: now,
          conditions: [
            { type: "PodScheduled", status: "True", lastTransitionTime: now },
            { type: "Initialized", status: "True", lastTransitionTime: now },
            { type: "ContainersReady", status: "False", reason: "ContainersNotReady", lastTransitionTime: now },
            { type: "Ready", status: "False", reason: "ContainersNotReady", lastTransitionTime: now }
          ],
          containerStatuses: containerNames(o).map((name) => ({ name, image: imageOf(o, name), imageID: "", ready: false, started: true, restartCount: 0, state: { running: { startedAt: now } } }))
        }
      })
    }
    this.after(g, r.spec.container_start_ms, () => this.ready(g))
  }

  private ready(g: Gang): void {
    const now = kubeTime(this.clock.now())
    for (const pod of [...g.pods.keys()].sort()) {
      this.server.update("pods", this.options.namespace, pod, (o) => {
        o.status = {
          ...o.status,
          conditions: (o.status.conditions as Array<{ type: string }>).map((c) =>
            c.type === "Ready" || c.type === "ContainersReady" ? { type: c.type, status: "True", lastTransitionTime: now } : c
          ),
          containerStatuses: (o.status.containerStatuses as Array<Record<string, unknown>>).map((c) => ({ ...c, ready: true }))
        }
      })
    }
  }

  private failGang(g: Gang, reason: string): void {
    this.cancel(g)
    g.failed = true
    const r = this.regions.get(g.region)
    if (r !== undefined) {
      const i = r.queue.indexOf(g.key)
      if (i >= 0) r.queue.splice(i, 1)
      g.queued = false
    }
    const now = kubeTime(this.clock.now())
    for (const [pod, node] of [...g.pods.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
      // A failed pod's containers are gone: its GPUs are free at once, as in the simulated world.
      if (node !== null && r !== undefined) r.free[node]! += g.gpus
      g.pods.set(pod, null)
      this.server.update("pods", this.options.namespace, pod, (o) => {
        o.status = {
          ...o.status,
          phase: "Failed",
          reason,
          conditions: [...((o.status?.conditions as Array<{ type: string }> | undefined) ?? []).filter((c) => c.type !== "Ready" && c.type !== "ContainersReady"), { type: "Ready", status: "False", reason: "PodFailed", lastTransitionTime: now }],
          containerStatuses: containerNames(o).map((name) => ({ name, image: imageOf(o, name), imageID: "", ready: false, started: false, restartCount: 0, state: { terminated: { exitCode: 1, reason: "Error", finishedAt: now } } }))
        }
      })
    }
    if (r !== undefined) this.placeQueued(r)
  }

  private unschedulable(g: Gang, message: string): void {
    for (const pod of [...g.pods.keys()].sort()) {
      const o = this.server.object("pods", this.options.namespace, pod)
      if (o === undefined || (o.status?.conditions ?? []).some((c: { type: string }) => c.type === "PodScheduled")) continue
      this.server.update("pods", this.options.namespace, pod, (p) => {
        p.status = { ...p.status, conditions: [{ type: "PodScheduled", status: "False", reason: "Unschedulable", message, lastTransitionTime: kubeTime(this.clock.now()) }] }
      })
    }
  }

  // ── the Events a scheduler and a kubelet write ────────────────────────────────────────
  /**
   * The scheduler's Event on a preemption victim (`Eventf(victim, preemptor, Normal, "Preempted",
   * "Preempting", "Preempted by pod %v on node %v", …)` through events.k8s.io/v1), as core/v1
   * shows it: `eventTime` in microseconds, null first/lastTimestamp, the preemptor as `related`.
   */
  private preemptedEvent(victim: KubeObject): void {
    this.server.recordEvent(this.options.namespace, {
      involvedObject: podRef(victim),
      reason: "Preempted",
      message: `Preempted by pod ${PREEMPTOR_UID} on node ${String(victim.spec?.nodeName ?? "")}`,
      source: {},
      firstTimestamp: null,
      lastTimestamp: null,
      type: "Normal",
      eventTime: microTime(this.clock.now()),
      action: "Preempting",
      related: { kind: "Pod", namespace: this.options.namespace, name: "preemptor", uid: PREEMPTOR_UID, apiVersion: "v1" },
      reportingComponent: "default-scheduler",
      reportingInstance: "default-scheduler-control-plane"
    })
  }

  /** The kubelet's Event for each container it stops ("Stopping container <name>"), core/v1 style. */
  private killingEvents(pod: KubeObject): void {
    const node = String(pod.spec?.nodeName ?? "")
    const now = kubeTime(this.clock.now())
    for (const name of containerNames(pod)) {
      this.server.recordEvent(this.options.namespace, {
        involvedObject: { ...podRef(pod), fieldPath: `spec.containers{${name}}` },
        reason: "Killing",
        message: `Stopping container ${name}`,
        source: { component: "kubelet", host: node },
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
        type: "Normal",
        eventTime: null,
        reportingComponent: "kubelet",
        reportingInstance: node
      })
    }
  }

  private after(g: Gang, delay_ms: number, fn: () => void): void {
    this.cancel(g)
    g.timer = this.clock.schedule(
      this.clock.now() + delay_ms,
      () => {
        g.timer = null
        fn()
      },
      { lane: Lane.world, key: g.key }
    )
  }

  private cancel(g: Gang): void {
    if (g.timer !== null) this.clock.clearTimeout(g.timer)
    g.timer = null
  }

  private gangOf(resource: string, includeEmpty = false): Gang | undefined {
    for (const key of [...this.gangs.keys()].sort()) {
      const g = this.gangs.get(key)!
      if (g.resource === resource && (includeEmpty || g.pods.size > 0)) return g
    }
    return undefined
  }
}

/** An Event's `involvedObject` for a pod: kind, name, namespace, uid, as the recorders take it from the object. */
const podRef = (pod: KubeObject): Record<string, string> => ({
  kind: "Pod",
  namespace: pod.metadata.namespace ?? "",
  name: pod.metadata.name,
  uid: pod.metadata.uid ?? "",
  apiVersion: "v1",
  resourceVersion: pod.metadata.resourceVersion ?? ""
})

/** A MicroTime (RFC 3339 with microseconds), as events.k8s.io writers stamp `eventTime`. */
const microTime = (ms: number): string => new Date(ms).toISOString().replace(/Z$/, "000Z")

const containerNames = (pod: KubeObject): string[] => ((pod.spec?.containers ?? []) as Array<{ name: string }>).map((c) => c.name)
const imageOf = (pod: KubeObject, name: string): string => ((pod.spec?.containers ?? []) as Array<{ name: string; image: string }>).find((c) => c.name === name)?.image ?? ""
