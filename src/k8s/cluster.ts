/**
 * The Kubernetes world's Cluster port (issue 5): the same supervisor and machines that run
 * in the simulator drive a real cluster through @kubernetes/client-node.
 *
 * - One pod per GPU instance and per inference replica (`node_count` pods for a GPU
 *   cluster), named deterministically from the engine's workload name (`names.ts`), so a
 *   duplicate create is refused by the API server (409) and treated as "already exists":
 *   never a second pod, never a second hold.
 * - Pods ask for `nvidia.com/gpu` (requests = limits), are placed by node selector on their
 *   region, and GPU work runs in a lower (preemptible) PriorityClass. An inference instance's
 *   replicas sit behind one Service.
 * - An informer-style cache (list, then watch from the list's resourceVersion, with
 *   bookmarks) answers the port's synchronous `get`/`phaseOf`/`list`. Each change of a
 *   workload's pods is mapped (`podState.ts`) to the engine's events, stamped with the engine
 *   clock. A watch that ends is re-opened from the last resourceVersion after a bounded
 *   backoff; a 410 Gone relists and diffs the cache, so nothing changed meanwhile is lost.
 * - Preemption: a pod disrupted after it started (DisruptionTarget, or kubelet preemption)
 *   is `pod.preempted`; once the victim is gone the driver creates a replacement pod of the
 *   same name, and `pod.running` follows when every replacement is Ready. A pod deleted
 *   out from under us (not asked for, not a preemption) fails its workload: `pod.failed`,
 *   as the reconciler would conclude from a missing pod. Names are reused, so every delete of
 *   a pod the driver has seen carries its uid as a precondition (409: that pod is gone, and
 *   the replacement of its name is left alone), and events about a uid known gone are stale.
 * - Stops: every time a workload's pods stop holding their GPUs the driver remembers when
 *   (`firstStopAt`), dated when it learned it or, learned late, from the pod's own record
 *   (`podStoppedAt`: DisruptionTarget, a container's finishedAt, a deletionTimestamp), and a
 *   late `pod.preempted`/`pod.failed` carries that date (`ended_at`), so nothing is billed
 *   after the stop however late the engine hears of it. A workload deleted while the view is
 *   behind (`viewBehind`: a watch gap) concludes once the gap has told how its pods ended, and
 *   its `pod.deleted` carries a stop they made before the delete: the engine settles there.
 * - A pod found gone with nothing of its stop in its last version (a relist after a watch gap),
 *   or never seen at all (the first list after an engine outage: `recallGone`), is looked up in
 *   the namespace's Events (`podEvents.ts`, one round of lists per relist or start: one list per
 *   stop reason, every page, `events_listed_max` events read at most): a preemption or eviction
 *   dates the stop and is a preemption (a replacement follows), a kill dates the loss.
 *
 * - A pod of ours taken out of the list/watch selector by hand (its `ecolink.io/managed` label
 *   removed or changed) looks DELETED to the watch and is in no selected list, yet runs on its
 *   GPUs: a DELETED without a deletionTimestamp is looked up by name (`lookUp`), lists read the
 *   whole namespace and keep ours by annotation, and such a pod is kept and its label put back
 *   (`relabel`), so it is never taken for gone while it runs. Every other label of ours removed
 *   or changed by hand (`ecolink.io/instance`, which an inference replica's Service selects) is
 *   put back the same way, at a bounded pace against something that keeps undoing it
 *   (`restoreLabels`). One the engine wants deleted whose relabel gives up (`patch` forbidden)
 *   is deleted anyway and its end, which the watch cannot show, confirmed by name
 *   (`confirmGone`): it never holds its GPUs after its instance's stop.
 *
 * - Storage: a drive or shared filesystem is a PersistentVolumeClaim named like the volume
 *   the pods mount (`claimNameOf`), created by `ensureVolume` (409 = it exists) and deleted by
 *   `deleteVolume` (404 = it is gone). The requests for one claim run one at a time, so the
 *   last command wins whatever the order of the answers.
 *
 * The port's commands are fire-and-forget: the driver records the intent synchronously (so
 * `get` answers at once, as the simulated cluster does) and carries it out over HTTP, with
 * bounded concurrency and bounded retries, on the engine clock. `start()` must finish (the
 * first list) before the supervisor starts, or its reconciliation would see an empty world.
 *
 * Determinism: every timestamp and every wait is the injected EngineClock's; the driver
 * never reads the wall clock.
 */
import { CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions, Watch, type ConfigurationOptions, type CoreV1EventList, type V1PersistentVolumeClaim, type V1Pod, type V1Service, type V1Volume, type V1VolumeMount } from "@kubernetes/client-node"
import { Lane, type EngineClock, type TimerHandle } from "../clock.js"
import type { ClusterEvent, ClusterPort, RecalledStop, VolumeSpec, WorkloadPhase, WorkloadSpec, WorkloadStatus } from "../cluster.js"
import { assert } from "../errors.js"
import { abortable } from "./abortable.js"
import { backoffMs, type KubernetesClusterConfig } from "./config.js"
import { ANNOTATIONS, claimNameOf, LABELS, labelValue, MANAGED_SELECTOR, podLabelsOf, podNamesOf, serviceNameOf } from "./names.js"
import { podEndOf, podStopEventOf, STOP_EVENT_REASONS, type PodEnd, type PodStopEvent } from "./podEvents.js"
import { isTerminating, KUBE_TIME_PRECISION_MS, podStateOf, podStoppedAt, workloadPhaseOf, type PodState } from "./podState.js"

/** What the driver tells the operator: retries given up, orphans, watch restarts. */
export type DriverReport =
  | { readonly kind: "watch_restarted"; readonly at: number; readonly reason: "dropped" | "expired"; readonly backoff_ms: number }
  | { readonly kind: "relisted"; readonly at: number; readonly pods: number }
  | { readonly kind: "request_failed"; readonly at: number; readonly what: string; readonly status: number | null; readonly final: boolean }
  | { readonly kind: "pod_lost"; readonly at: number; readonly workload: string; readonly pod: string }
  | { readonly kind: "pod_replaced"; readonly at: number; readonly workload: string; readonly pod: string }
  /** Labels of ours a pod lacked or bore with another value (removed or changed by hand), put back. */
  | { readonly kind: "pod_relabeled"; readonly at: number; readonly workload: string; readonly pod: string; readonly labels: ReadonlyArray<string> }
  /**
   * A pod's labels put back `times` times in a row, each undone soon after (another controller
   * or a script that keeps removing or changing them): the driver goes on putting them back, at
   * most once every `own_retry_ms_max`, until whatever undoes them is stopped. Once per such run.
   */
  | { readonly kind: "labels_contested"; readonly at: number; readonly workload: string; readonly pod: string; readonly labels: ReadonlyArray<string>; readonly times: number }
  /**
   * A round of pod stop Event lists ended at `events_listed_max` with more to read: from
   * `unread_from` on (that reason's rest, and the reasons after it), a pod gone unseen is
   * billed until found, as with no Event. Raise the bound if this comes often.
   */
  | { readonly kind: "events_cut"; readonly at: number; readonly read: number; readonly unread_from: string }

export type WatchState = "new" | "listing" | "watching" | "backoff" | "stopped"

/**
 * One stop of a workload (its pods stopped holding their GPUs), on the engine clock: it happened
 * somewhere in [at, until]. `at` is what `firstStopAt` answers; `until` is the latest instant the
 * pod's record allows (the end of its whole second), never after the driver learned of it.
 */
interface Stop {
  readonly at: number
  readonly until: number
}

/** One pod of a workload as the cache shows it, for operators and the journal. */
export interface PodSummary {
  readonly pod: string
  readonly state: PodState | "missing"
  readonly node: string | null
  /** Why it is where it is: the scheduler's or the kubelet's reason and message, if any. */
  readonly reason: string | null
}

interface Workload {
  readonly name: string
  readonly resource: string
  readonly account: string
  readonly region: string
  /** The inference instance whose Service fronts this replica, or null. */
  readonly service: string | null
  readonly pods: ReadonlyArray<string>
  /** What each pod is created from (a replacement too). */
  readonly templates: Map<string, V1Pod>
  phase: WorkloadPhase
  preempted: boolean
  lost: boolean
  started_at: number | null
  deleting: boolean
  /**
   * When the engine asked for the deletion while the driver's view was behind (`viewBehind`),
   * or null: its pods may have stopped before, unheard, so `pod.deleted` waits for what the gap
   * tells of them and carries the stop it dates (`stopBeforeDelete`).
   */
  deleteBehindAt: number | null
  /** A stop of its pods before a delete asked while behind, learned late (`stopped`), or null. */
  stopBeforeDelete: number | null
  /**
   * Uids of its pods the API server said were gone (a delete answered 404 or 409) during such a
   * deletion, before the watch delivered their last version: `pod.deleted` waits for it, or for
   * a current view (`finishIfGone`).
   */
  readonly goneUnheard: Set<string>
  /** Pods with a create, delete, look-up or relabel request in flight (or waiting to retry). */
  readonly busy: Set<string>
  /**
   * Pods of ours the cache holds that are not in the list/watch selector (`ecolink.io/managed`
   * removed or changed by hand): the watch tells nothing of them until their label is back, so
   * the driver puts it back (`relabel`, a merge patch naming the pod's uid) before anything else
   * it does with them. Also a pod whose look-up after such a DELETED gave up: the relabel's uid
   * tells whether it is still there.
   */
  readonly unlabeled: Set<string>
  /**
   * Per pod, the run of times its labels were put back (`relabel`) each soon after the last (they
   * were undone again: another controller, a script), and when the last was: the next waits
   * `own_retry_ms_min` doubling per time, up to `own_retry_ms_max` (`restoreLabels`).
   */
  readonly relabeled: Map<string, { readonly times: number; readonly at: number }>
  /** The timer that puts labels back once their wait is over (`relabelLater`), or null. */
  relabelTimer: { readonly handle: TimerHandle; readonly at: number } | null
  /**
   * Pods whose delete gave up (refused: 403, an admission webhook; or retried
   * `request_attempts_max` times): not sent again until the engine's next `deleteWorkload`
   * (the watchdog repeats it every tick), so a refusal is never re-sent in a loop.
   */
  readonly deleteStalled: Set<string>
  /**
   * Pods out of our selector that the engine wants deleted and whose relabel gave up (refused for
   * good: a Role without `patch`, an admission policy; or retried `request_attempts_max` times):
   * deleted anyway, by name with their uid as a precondition, for they hold GPUs nobody is billed
   * for. The watch shows nothing of their end, so a GET by name confirms it (`confirmGone`): `at`
   * is when the next one is due (null until the delete is answered), `checks` how many found the
   * pod still there, the wait doubling from `own_retry_ms_min` to `own_retry_ms_max` with each.
   */
  readonly unwatched: Map<string, { readonly checks: number; readonly at: number | null }>
  /**
   * The uid of each pod whose delete this driver sent (in flight or answered): a DELETED without a
   * `deletionTimestamp` for it is its own delete carried out at once (a pending pod's, a forced
   * one), not a label removed by hand, so it is taken as gone without a look-up (`lookUp`).
   */
  readonly deleteAsked: Map<string, string>
  /** Pods whose write was answered but whose watch event has not arrived: resourceVersion awaited. */
  readonly awaiting: Map<string, { readonly rv: string; readonly seq: number }>
  replacements: number
  /**
   * Pods whose predecessor was preempted and is gone: the driver owes each a replacement create
   * (`ownWork`), until one exists. Kept while the driver is passive, so the engine that subscribes
   * (or its `createWorkload`) finds the replacement still owed.
   */
  readonly replacing: Set<string>
  /**
   * Pods whose create the engine asked for and which gave up (`request_attempts_max` retriable
   * failures: an API server restarting for longer than the backoffs, or a refusal): created again
   * on the driver's slow retry (`ownWork`) while the workload is wanted, as a replacement is.
   * Nobody else asks again: the reconciliation leaves a `pending` GPU resource to SPEC §3's
   * 15-minute rule, which would fail it, and an inference replica whose pod never came stays
   * `pending` for ever, its cycle's hold renewed every day.
   */
  readonly createOwed: Set<string>
  /** The timer that tries the driver's own writes again after one gave up (`ownRetryLater`), or null. */
  ownRetryTimer: TimerHandle | null
  /** Consecutive give-ups of the driver's own writes: the next wait doubles with each. */
  ownGiveUps: number
  /** When we first saw each pod terminating (our clock): a silent kubelet is forced after a while. */
  readonly terminatingSince: Map<string, number>
  /** Found in the cluster (an earlier control plane created it), not created by this one. */
  readonly discovered: boolean
  /**
   * Whether its pods hold their GPUs, as far as this driver knows: true from when it saw them
   * start (loading) until it saw them stop. Null for a workload found in the cluster, until the
   * driver sees it running or stopped: the engine may be billing it.
   */
  holds: boolean | null
  /** When this driver last saw its pods start holding their GPUs: no stop is dated earlier. */
  held_at: number | null
  /** Every stop this driver saw, in order (`firstStopAt`); forgotten with the workload. */
  readonly stops: Stop[]
}

/** How far the driver knows a claim to be along (`volumeState`). */
export type ClaimState = "creating" | "created" | "create_failed" | "deleting"

/**
 * A PersistentVolumeClaim the engine wants to exist, or to be gone. One request at a time per
 * claim: a command that arrives while one is under way is carried out when it ends.
 */
interface Claim {
  readonly name: string
  /** What the last ensure asked for; null for a claim only ever deleted. */
  volume: VolumeSpec | null
  want: "present" | "absent"
  /** The request under way (in flight or waiting to retry), or null. */
  doing: "create" | "delete" | null
  /** Its last create gave up (or was refused): asked again by the next ensure or a workload mounting it. */
  failed: boolean
}

/** An error the API server answered (ApiException) or the network raised, with its status. */
const statusOf = (e: unknown): number | null => {
  const o = e as { code?: unknown; statusCode?: unknown } | null
  if (typeof o?.code === "number") return o.code
  if (typeof o?.statusCode === "number") return o.statusCode
  return null
}
/**
 * How long a refusal asked us to wait (ms): its `Retry-After` header in seconds (what API Priority
 * and Fairness sends with a 429), else its Status's `details.retryAfterSeconds`; null if neither.
 * An HTTP-date form is not read (the API server sends seconds).
 */
const retryAfterMsOf = (e: unknown): number | null => {
  const o = e as { headers?: unknown; body?: unknown } | null
  const headers = o?.headers
  if (typeof headers === "object" && headers !== null) {
    for (const [name, value] of Object.entries(headers as Record<string, unknown>)) {
      if (name.toLowerCase() === "retry-after" && typeof value === "string" && /^\s*\d{1,9}\s*$/.test(value)) return Number(value) * 1_000
    }
  }
  const details = (o?.body as { details?: { retryAfterSeconds?: unknown } } | undefined)?.details
  const seconds = details?.retryAfterSeconds
  return typeof seconds === "number" && Number.isInteger(seconds) && seconds >= 0 ? seconds * 1_000 : null
}
/** A request unanswered after `request_timeout_ms`: no status, so retriable like a network error. */
class RequestTimeout extends Error {}
/** Retriable: the server is busy or broken, or the request never got an answer. */
const retriable = (status: number | null): boolean => status === null || status === 429 || status >= 500

const ANNOTATION_NODE_COUNT_MAX = 1_024
/**
 * A pod's labels put back this many times in a row, each undone soon after: something keeps
 * removing or changing them, which the operator is told of once (`labels_contested`).
 */
const RELABELS_CONTESTED = 3
/** Phases in which a workload's pods hold their GPUs (and are billed), as in the simulated world. */
const HELD: ReadonlySet<WorkloadPhase> = new Set(["loading", "running"])
/**
 * (pod, resourceVersion) pairs the watch delivered, remembered so a write answered after its
 * own watch event is not awaited forever. Bounded: the oldest are forgotten first.
 */
const SEEN_VERSIONS_MAX = 4_096
/**
 * Stops remembered per workload. Each stop but a final failure needs a replacement pod before
 * the next, so `pod_replacements_max` bounds them first; beyond this the oldest is forgotten,
 * and a stop found late is then dated at a later one: billed more, never less.
 */
const STOPS_REMEMBERED_MAX = 128
/**
 * Uids of pods known to be gone (a DELETED event, a delete answered 404 or 409, a list without
 * them), so a stale or replayed event about one is not taken for the pod now bearing its name
 * (a replacement). Bounded: the oldest are forgotten first.
 */
const GONE_UIDS_MAX = 4_096
/**
 * The Events the driver lists for one stop reason: those about pods with that reason. Both are
 * field selectors the API server allows on core/v1 Events (`involvedObject.kind`, `reason`; a
 * comma is their AND), so it filters them, and the driver reads only the events it can use: the
 * routine ones (Scheduled, Pulling, Started…) of every pod in the namespace would otherwise fill
 * the bound, in name order, before any `eco-…` pod's stop.
 */
const stopEventsSelector = (reason: string): string => `involvedObject.kind=Pod,reason=${reason}`
/** Phases of a workload that had started: a pod taken from one of them is a preemption, not a silent replacement. */
const STARTED: ReadonlySet<WorkloadPhase> = new Set(["loading", "running", "preempted"])

export class KubernetesCluster implements ClusterPort {
  private readonly core: CoreV1Api
  private readonly watcher: Watch
  private readonly workloads = new Map<string, Workload>()
  /** Workloads tracked, dropped or whose phase changed since the last `drainChanges`: name → resource. */
  private readonly changes = new Map<string, string>()
  /** Pod name → its workload's name. */
  private readonly podOwner = new Map<string, string>()
  /** The informer's cache: pod name → the pod as last seen. */
  private readonly cache = new Map<string, V1Pod>()
  private handler: ((event: ClusterEvent) => void) | null = null
  private rv = ""
  private state: WatchState = "new"
  private abort: AbortController | null = null
  /** Where the next watch's HTTP agent goes (`openWatch` sets it just before it opens one). */
  private watchAgentSink: (agent: { destroy?(): void } | undefined) => void = () => {}
  private backoffTimer: TimerHandle | null = null
  private watchFailures = 0
  private connected = false
  private session = 0
  /** Write answers and lists are numbered, so a relist can tell which answers it covers. */
  private seq = 0
  private inFlight = 0
  private readonly queue: Array<() => void> = []
  private readonly idleWaiters: Array<() => void> = []
  private readonly progress = new Set<() => void>()
  private readonly services = new Set<string>()
  /** Claim name → the claim the engine wants; a claim is forgotten once its delete has ended. */
  private readonly claims = new Map<string, Claim>()
  /** The volume ids of the claims labelled as ours in the last list (`forEachVolume`), sorted. */
  private listedVolumes: ReadonlyArray<string> = []
  private listingVolumes = false
  private readonly seen = new Set<string>()
  /** Pod uids known to be gone (`GONE_UIDS_MAX`): events about them are stale. */
  private readonly goneUids = new Set<string>()
  /** Creates and deletes waiting on the clock to be retried. */
  private retriesWaiting = 0
  /** A relist failed: the next attempt after the backoff lists again instead of watching. */
  private relistPending = false
  /**
   * The last instant (engine clock) the cache was known current: the last list, or the last
   * event or BOOKMARK of a watch that was not replaying. No stop learned late is dated earlier.
   */
  private liveAt = Number.NEGATIVE_INFINITY
  /**
   * The watch was re-opened after a drop and has sent no BOOKMARK yet, within
   * `pods_watch_replay_window_ms` of opening: what it delivers may be the gap's events,
   * replayed, so it is learned late.
   */
  private replaying = false
  /** When the current watch was opened (engine clock). */
  private watchOpenedAt = Number.NEGATIVE_INFINITY
  /**
   * While the driver takes in what it learns late (a relist, a watch replaying a gap, the first
   * list at start): the instant its view was last current (`liveAt` then). Null: learned live.
   */
  private lateSince: number | null = null
  /**
   * While the driver takes in a pod gone that a DELETED told before a look-up by name confirmed
   * it (`lookedUp`): when that DELETED came. A stop its record does not date is dated then, not
   * when the API server answered the look-up (its retries can take minutes). Null otherwise.
   */
  private goneHeardAt: number | null = null
  /**
   * Workloads whose pods all went while the driver was passive, oldest first: at most
   * `passive_gone_workloads_max` are kept (`rememberGone`). Cleared when an engine subscribes.
   */
  private readonly goneWhilePassive = new Map<string, number>()
  /**
   * What the Events listed with the first list said of pods it did not show (gone before this
   * driver started: an engine outage), for the engine's reconciliation at start (`recallGone`).
   * At most `events_listed_max` were read; dropped when an engine subscribes (it has reconciled by then).
   */
  private recallable: ReadonlyArray<PodStopEvent> = []
  private readonly regions: Map<string, { readonly nodes: number; readonly gpus_per_node: number }>
  /** Requests started, ever: the test harness's "did anything new happen" counter. */
  requests_started = 0
  /** Pod watches opened, ever (for the test harness, as `requests_started`). */
  watches_opened = 0

  constructor(
    kubeconfig: KubeConfig,
    private readonly clock: EngineClock,
    private readonly config: KubernetesClusterConfig,
    private readonly report: (r: DriverReport) => void = () => {}
  ) {
    this.core = kubeconfig.makeApiClient(CoreV1Api)
    // The watch's own connection is reachable only through the agent client-node makes for it
    // (`applyToFetchOptions` makes one per call, and `Watch.watch` calls it once, synchronously
    // from `watch`): kept, so a watch that never connects, or whose stream outlives the server's
    // promise to end it, can be cut (`watchAgent`).
    const watchConfig = Object.create(kubeconfig) as KubeConfig
    watchConfig.applyToFetchOptions = (opts) => {
      const sink = this.watchAgentSink
      return kubeconfig.applyToFetchOptions(opts).then((o) => {
        sink(o.agent as { destroy?(): void } | undefined)
        return o
      })
    }
    this.watcher = new Watch(watchConfig)
    this.regions = new Map([...config.regions].sort((a, b) => (a.name < b.name ? -1 : 1)).map((r) => [r.name, { nodes: r.nodes, gpus_per_node: r.gpus_per_node }]))
  }

  // ── lifecycle ─────────────────────────────────────────────────────────────────────────
  /** Lists the engine's pods (the cache the supervisor reconciles against), then watches. */
  async start(): Promise<void> {
    if (this.state !== "new") throw new Error(`KubernetesCluster started twice (${this.state})`)
    await this.relist(false)
  }

  /** Stops watching; requests in flight finish, and nothing more is reported. */
  stop(): void {
    this.state = "stopped"
    this.handler = null
    this.abort?.abort()
    this.abort = null
    if (this.backoffTimer !== null) this.clock.clearTimeout(this.backoffTimer)
    this.backoffTimer = null
    this.notifyProgress()
  }

  private isStopped(): boolean {
    return this.state === "stopped"
  }

  /**
   * Whether the driver writes on its own (replacement pods, deleting a kubelet-preempted pod,
   * carrying a deletion on from its events): only while an engine is subscribed, that is while
   * this replica leads (the supervisor subscribes when it starts and unsubscribes when it stops
   * or is fenced). A standby's driver is passive: it keeps its cache warm and writes nothing, so
   * it never creates a pod for an instance the leader has already terminated. The engine's own
   * commands (`createWorkload`, `deleteWorkload`, volumes) are carried out either way: only a
   * leader's supervisor sends them, and its reconciliation at start runs before it subscribes.
   */
  private get active(): boolean {
    return this.handler !== null && !this.isStopped()
  }

  get watchState(): WatchState {
    return this.state
  }

  /** Whether the pod watch's stream is open (the API server answered it). */
  get watchConnected(): boolean {
    return this.state === "watching" && this.connected
  }

  /**
   * Whether a change to the pods may be unheard yet: no watch open (waiting to re-open, or
   * listing), or one re-opened after a drop still replaying the gap (until its first BOOKMARK or
   * the end of `pods_watch_replay_window_ms`). A deletion asked for then sends `pod.deleted` only
   * once the gap has told what it knows of the pods (`finishIfGone`).
   */
  viewBehind(): boolean {
    if (this.state === "backoff" || this.state === "listing") return true
    return this.state === "watching" && this.replaying && this.clock.now() - this.watchOpenedAt <= this.config.limits.pods_watch_replay_window_ms
  }

  /** The resourceVersion the cache reflects (the last list, event or bookmark). Opaque. */
  observedResourceVersion(): string {
    return this.rv
  }

  /** Creates and deletes waiting on the clock for their next attempt. */
  get retries_waiting(): number {
    return this.retriesWaiting
  }

  /** Resolves when no request is queued or in flight (list, create, delete). */
  idle(): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** Called after every change the cache takes in (an event, a bookmark, a list). */
  onProgress(listener: () => void): () => void {
    this.progress.add(listener)
    return () => this.progress.delete(listener)
  }

  // ── ClusterPort ───────────────────────────────────────────────────────────────────────
  region(name: string) {
    return this.regions.get(name)
  }

  regionNames(): ReadonlyArray<string> {
    return [...this.regions.keys()]
  }

  createWorkload(spec: WorkloadSpec): void {
    // A claim whose create gave up is asked for again by the next workload that mounts it (a
    // launch with that storage, a pod re-created at start): its pod would wait for it forever.
    for (const id of spec.volumes) this.retryClaim(claimNameOf(id))
    const existing = this.workloads.get(spec.name)
    if (existing !== undefined) {
      // Level-triggered: a create the engine repeats re-creates pods whose create was lost.
      if (!existing.deleting && !existing.lost && existing.phase !== "failed") {
        existing.pods.forEach((pod, i) => {
          // A pod never seen (a workload recalled from its Events, `recallGone`) is made from the
          // engine's spec: a replacement, if one is owed for it.
          if (!existing.templates.has(pod) && podNamesOf(spec.name, spec.node_count)[i] === pod) existing.templates.set(pod, this.replacementOf(existing, this.podFor(spec, pod, i), pod))
          if (this.cache.has(pod) || existing.busy.has(pod) || existing.awaiting.has(pod) || !existing.templates.has(pod)) return
          if (existing.replacing.has(pod)) this.report({ kind: "pod_replaced", at: this.clock.now(), workload: existing.name, pod })
          this.createPod(existing, pod, 1)
        })
      }
      return
    }
    if (!this.regions.has(spec.region)) throw new Error(`workload ${spec.name} in unknown region ${spec.region}`)
    if (!(Number.isSafeInteger(spec.node_count) && spec.node_count >= 1 && spec.node_count <= ANNOTATION_NODE_COUNT_MAX)) throw new Error(`workload ${spec.name}: node_count ${spec.node_count}`)
    const pods = podNamesOf(spec.name, spec.node_count)
    const w = this.track({
      name: spec.name,
      resource: spec.resource,
      account: spec.account,
      region: spec.region,
      pods,
      service: spec.service,
      templates: new Map(pods.map((pod, i) => [pod, this.podFor(spec, pod, i)])),
      discovered: false
    })
    if (spec.service !== null) this.ensureService(spec.service)
    for (const pod of pods) this.createPod(w, pod, 1)
  }

  deleteWorkload(name: string): void {
    const w = this.workloads.get(name)
    if (w === undefined) return
    if (!w.deleting && this.viewBehind()) w.deleteBehindAt = this.clock.now()
    w.deleting = true
    // Repeated (the watchdog asks again each tick): a delete goes only where none is under way,
    // and a delete that gave up is sent again here, once per command, never from an event.
    w.deleteStalled.clear()
    this.deleteRemaining(w)
    // Nothing to wait for: the event still comes later, never inside the caller's dispatch.
    if (this.concluded(w)) this.clock.schedule(this.clock.now(), () => this.finishIfGone(w), { lane: Lane.world, key: name })
  }

  get(name: string): WorkloadStatus | undefined {
    const w = this.workloads.get(name)
    return w === undefined ? undefined : { name, resource: w.resource, phase: w.phase, started_at: w.started_at }
  }

  /**
   * Level-triggered: every call sends the create (unless one is under way), so a claim deleted
   * behind our back comes back at the engine's next ensure; the API server's 409 is the
   * "already there" answer, never an error.
   */
  ensureVolume(volume: VolumeSpec): void {
    if (!this.regions.has(volume.region)) throw new Error(`volume ${volume.id} in unknown region ${volume.region}`)
    if (!(Number.isSafeInteger(volume.size_gb) && volume.size_gb >= 1)) throw new Error(`volume ${volume.id}: size_gb ${volume.size_gb}`)
    const c = this.claimOf(claimNameOf(volume.id))
    c.volume = volume
    c.want = "present"
    c.failed = false
    if (c.doing === null) this.createClaim(c, 1)
  }

  /** Idempotent: a claim we never heard of is deleted by name all the same (a restarted driver). */
  deleteVolume(id: string): void {
    const c = this.claimOf(claimNameOf(id))
    c.want = "absent"
    if (c.doing === null) this.deleteClaim(c, 1)
  }

  /**
   * The volumes of the claims labelled as ours in the last list of claims, then starts the next
   * list (one at a time): the reconciler calls it at start and hourly, so each sweep acts on
   * the list taken an hour before, which is safe because it deletes only what the ledger says
   * was deleted. A claim already being deleted, or without our resource annotation, is left out.
   */
  forEachVolume(visit: (id: string) => void): void {
    for (const id of this.listedVolumes) visit(id)
    // A sweep can wait an hour: the list is not added to a queue that is already full.
    if (this.listingVolumes || this.isStopped() || this.queue.length >= this.config.limits.requests_queued_max) return
    this.listingVolumes = true
    this.request((options) => this.core.listNamespacedPersistentVolumeClaim({ namespace: this.config.namespace, labelSelector: MANAGED_SELECTOR }, options)).then(
      (list) => {
        this.listingVolumes = false
        if (this.isStopped()) return
        const ids: string[] = []
        for (const claim of list.items) {
          const id = claim.metadata?.annotations?.[ANNOTATIONS.resource]
          if (id !== undefined && claim.metadata?.deletionTimestamp == null) ids.push(id)
        }
        this.listedVolumes = ids.sort()
      },
      (e: unknown) => {
        this.listingVolumes = false
        if (!this.isStopped()) this.report({ kind: "request_failed", at: this.clock.now(), what: "list persistentvolumeclaims", status: statusOf(e), final: true })
      }
    )
  }

  /** What this driver knows of a volume's claim: undefined when it has nothing to do with it. */
  volumeState(id: string): ClaimState | undefined {
    const c = this.claims.get(claimNameOf(id))
    if (c === undefined) return undefined
    if (c.want === "absent") return "deleting"
    return c.doing !== null ? "creating" : c.failed ? "create_failed" : "created"
  }

  /**
   * The first instant at or after `from` at which the workload's pods stopped holding their GPUs,
   * from the stops this driver saw (dated from the pods' own records when learned late; see
   * `stopped`). A stop dated from a record lies somewhere in its whole second: it counts if that
   * second reaches `from`, and is answered no earlier than `from`, so a stop in the second
   * billing began is neither missed nor dated before it. A lookup over a few stops.
   */
  firstStopAt(name: string, from: number): number | null {
    for (const s of this.workloads.get(name)?.stops ?? []) if (s.until >= from) return Math.max(s.at, from)
    return null
  }

  /**
   * How a started workload this driver does not know ended, from the Events listed with its first
   * list (its pods were gone by then: they went while no control plane watched), or null if they
   * say nothing of one of its pods (the engine takes it for lost, dated when found, as before).
   * No control plane saw these pods, so no uid is known: an event counts from `from` on, when the
   * engine knew the pods ran (every earlier pod of the name was gone by then: `podEndOf`). Every
   * pod preempted or evicted: a preemption, dated at the first; the driver tracks the workload as
   * preempted from then on and owes each pod a replacement, made from the spec of the engine's
   * next `createWorkload` of it. Any pod killed otherwise: a loss, dated at the first stop. Never
   * dated before `from`, nor after now.
   */
  recallGone(workload: Pick<WorkloadSpec, "name" | "resource" | "account" | "region" | "node_count" | "service">, from: number): RecalledStop | null {
    const count = workload.node_count
    if (this.workloads.has(workload.name) || this.recallable.length === 0 || !(Number.isSafeInteger(count) && count >= 1 && count <= ANNOTATION_NODE_COUNT_MAX)) return null
    const pods = podNamesOf(workload.name, count)
    const grace_ms = this.config.termination_grace_s * 1_000
    const ends: PodEnd[] = []
    for (const pod of pods) {
      const end = podEndOf(this.recallable, { name: pod, uid: null, grace_ms }, from)
      // A pod of which nothing is kept went unexplained: the workload is lost, as before.
      if (end === null) return null
      ends.push(end)
    }
    const lost = ends.some((e) => e.kind === "killed")
    const first = Math.min(...ends.map((e) => e.at))
    const now = this.clock.now()
    const ended_at = Math.min(Math.max(first, from), now)
    if (lost) return { phase: "failed", ended_at }
    const { name, resource, account, region, service } = workload
    const w = this.track({ name, resource, account, region, service, pods, templates: new Map(), discovered: true })
    w.phase = "preempted"
    w.preempted = true
    w.holds = false
    w.stops.push({ at: ended_at, until: Math.min(Math.max(first + KUBE_TIME_PRECISION_MS - 1, ended_at), now) })
    w.replacements = 1
    for (const pod of pods) w.replacing.add(pod)
    return { phase: "preempted", ended_at }
  }

  phaseOf(name: string): WorkloadPhase | undefined {
    return this.workloads.get(name)?.phase
  }

  forEachWorkload(visit: (name: string, resource: string) => void): void {
    for (const [name, w] of this.workloads) visit(name, w.resource)
  }

  drainChanges(visit: (name: string, resource: string) => void): void {
    for (const [name, resource] of this.changes) visit(name, resource)
    this.changes.clear()
  }

  list(): ReadonlyArray<WorkloadStatus> {
    return [...this.workloads.keys()].sort().map((name) => this.get(name)!)
  }

  /** What the cache shows of each pod of a workload (empty for a workload we do not know). */
  podsOf(name: string): ReadonlyArray<PodSummary> {
    const w = this.workloads.get(name)
    if (w === undefined) return []
    return w.pods.map((pod) => {
      const p = this.cache.get(pod)
      if (p === undefined) return { pod, state: "missing", node: null, reason: null }
      const unscheduled = (p.status?.conditions ?? []).find((c) => c.status === "False" && c.reason !== undefined && c.type === "PodScheduled")
      const waiting = (p.status?.containerStatuses ?? []).find((c) => c.state?.waiting?.reason !== undefined)?.state?.waiting
      const why = p.status?.reason ?? unscheduled?.reason ?? waiting?.reason ?? null
      const message = p.status?.message ?? unscheduled?.message ?? waiting?.message ?? null
      return { pod, state: podStateOf(p), node: p.spec?.nodeName ?? null, reason: why === null ? null : message === null ? why : `${why}: ${message}` }
    })
  }

  subscribe(handler: (event: ClusterEvent) => void): () => void {
    if (this.handler !== null) throw new Error("KubernetesCluster has one subscriber at a time")
    this.handler = handler
    // The engine reconciled (its full scan at start) what this driver kept: it decides now.
    this.goneWhilePassive.clear()
    this.recallable = []
    // Active from now on: what the driver owes of its own (replacements, kubelet-preempted pods
    // to delete) is done now. The supervisor subscribes after its reconciliation at start, so a
    // workload of a resource it no longer owns is already being deleted and is left alone.
    for (const w of [...this.workloads.values()]) this.ownWork(w)
    return () => {
      if (this.handler === handler) this.handler = null
    }
  }

  // ── pods and services ─────────────────────────────────────────────────────────────────
  private track(init: Pick<Workload, "name" | "resource" | "account" | "region" | "service" | "pods" | "templates" | "discovered">): Workload {
    const w: Workload = {
      ...init,
      phase: "pending",
      preempted: false,
      lost: false,
      started_at: null,
      deleting: false,
      deleteBehindAt: null,
      stopBeforeDelete: null,
      goneUnheard: new Set(),
      busy: new Set(),
      unlabeled: new Set(),
      relabeled: new Map(),
      relabelTimer: null,
      deleteStalled: new Set(),
      unwatched: new Map(),
      deleteAsked: new Map(),
      awaiting: new Map(),
      replacements: 0,
      replacing: new Set(),
      createOwed: new Set(),
      ownRetryTimer: null,
      ownGiveUps: 0,
      terminatingSince: new Map(),
      holds: init.discovered ? null : false,
      held_at: null,
      stops: []
    }
    this.workloads.set(w.name, w)
    this.changes.set(w.name, w.resource)
    for (const pod of w.pods) this.podOwner.set(pod, w.name)
    return w
  }

  /** `template`, annotated as the workload's latest replacement if a replacement of `pod` is owed. */
  private replacementOf(w: Workload, template: V1Pod, pod: string): V1Pod {
    if (!w.replacing.has(pod)) return template
    template.metadata!.annotations = { ...(template.metadata!.annotations ?? {}), [ANNOTATIONS.replacement]: String(w.replacements) }
    return template
  }

  private podFor(spec: WorkloadSpec, pod: string, index: number): V1Pod {
    const c = this.config
    const instance = spec.service
    const gpus = String(spec.gpu_count)
    const storage = [...spec.volumes].sort()
    const volumes: V1Volume[] = storage.map((id) => ({ name: claimNameOf(id), persistentVolumeClaim: { claimName: claimNameOf(id) } }))
    const mounts: V1VolumeMount[] = storage.map((id) => ({ name: claimNameOf(id), mountPath: `/mnt/${id}` }))
    const priority = instance === null ? c.preemptible_priority_class : c.inference_priority_class
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: pod,
        namespace: c.namespace,
        labels: podLabelsOf({ workload: spec.name, resource: spec.resource, account: spec.account, region: spec.region, instance }, index),
        annotations: {
          [ANNOTATIONS.workload]: spec.name,
          [ANNOTATIONS.resource]: spec.resource,
          [ANNOTATIONS.account]: spec.account,
          [ANNOTATIONS.region]: spec.region,
          [ANNOTATIONS.nodeCount]: String(spec.node_count),
          ...(instance === null ? {} : { [ANNOTATIONS.service]: instance })
        }
      },
      spec: {
        // A GPU workload that stops is over: the engine decides what comes next, not the kubelet.
        restartPolicy: "Never",
        ...(priority === null ? {} : { priorityClassName: priority }),
        nodeSelector: { [c.region_label]: spec.region, ...(c.gpu_label === null ? {} : { [c.gpu_label]: spec.gpu }) },
        tolerations: [{ key: c.gpu_resource, operator: "Exists", effect: "NoSchedule" }],
        terminationGracePeriodSeconds: c.termination_grace_s,
        enableServiceLinks: false,
        // The container runs the customer's image in the engine's namespace: it gets no
        // service account token, which the kubelet mounts by default (the namespace's default
        // account, bound to the engine's Role when the engine runs as it, lists and deletes
        // every account's pods and claims).
        automountServiceAccountToken: false,
        containers: [
          {
            name: "workload",
            image: spec.image ?? c.default_image,
            resources: { requests: { [c.gpu_resource]: gpus }, limits: { [c.gpu_resource]: gpus } },
            ...(instance === null ? {} : { ports: [{ name: "http", containerPort: c.inference_port }] }),
            ...(instance === null || c.inference_readiness_path === null ? {} : { readinessProbe: { httpGet: { path: c.inference_readiness_path, port: "http" }, periodSeconds: 5 } }),
            ...(mounts.length === 0 ? {} : { volumeMounts: mounts })
          }
        ],
        ...(volumes.length === 0 ? {} : { volumes })
      }
    }
  }

  private ensureService(instance: string, attempt = 1): void {
    const name = serviceNameOf(instance)
    if (attempt === 1 && this.services.has(name)) return
    this.services.add(name)
    const body: V1Service = {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name, namespace: this.config.namespace, labels: { [LABELS.managed]: "true", [LABELS.instance]: labelValue(instance) }, annotations: { [ANNOTATIONS.resource]: instance } },
      spec: { selector: { [LABELS.instance]: labelValue(instance) }, ports: [{ name: "http", port: this.config.inference_port, targetPort: this.config.inference_port }] }
    }
    this.write(`create service ${name}`, attempt, (options) => this.core.createNamespacedService({ namespace: this.config.namespace, body }, options), {
      ok: () => {},
      // 409: it exists (a replica of the same instance, or an earlier control plane made it).
      refused: (status) => status === 409,
      retry: () => this.ensureService(instance, attempt + 1),
      // Forgotten, so the next replica of the instance tries again.
      gaveUp: () => this.services.delete(name)
    })
  }

  private dropServiceIfUnused(instance: string | null): void {
    if (instance === null) return
    if ([...this.workloads.values()].some((w) => w.service === instance)) return
    const name = serviceNameOf(instance)
    this.services.delete(name)
    this.write(`delete service ${name}`, 1, (options) => this.core.deleteNamespacedService({ name, namespace: this.config.namespace }, options), { ok: () => {}, refused: (status) => status === 404 })
  }

  // ── persistent volume claims ──────────────────────────────────────────────────────────
  private claimOf(name: string): Claim {
    const known = this.claims.get(name)
    if (known !== undefined) return known
    const c: Claim = { name, volume: null, want: "present", doing: null, failed: false }
    this.claims.set(name, c)
    return c
  }

  private claimFor(v: VolumeSpec): V1PersistentVolumeClaim {
    const c = this.config
    const storageClass = v.kind === "cloud_drive" ? c.cloud_drive_storage_class : c.shared_fs_storage_class
    return {
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: {
        name: claimNameOf(v.id),
        namespace: c.namespace,
        labels: { [LABELS.managed]: "true", [LABELS.resource]: labelValue(v.id), [LABELS.account]: labelValue(v.account), [LABELS.region]: labelValue(v.region) },
        annotations: { [ANNOTATIONS.resource]: v.id, [ANNOTATIONS.account]: v.account, [ANNOTATIONS.region]: v.region }
      },
      spec: {
        // A drive is attached to one instance at a time; a shared filesystem is mounted by many.
        accessModes: [v.kind === "cloud_drive" ? "ReadWriteOnce" : "ReadWriteMany"],
        // Gi, not GB: the customer gets at least the gigabytes they pay for.
        resources: { requests: { storage: `${v.size_gb}Gi` } },
        volumeMode: "Filesystem",
        ...(storageClass === null ? {} : { storageClassName: storageClass })
      }
    }
  }

  private createClaim(c: Claim, attempt: number): void {
    assert(c.volume !== null && c.want === "present", () => `create of claim ${c.name} without a volume to create`)
    c.doing = "create"
    const body = this.claimFor(c.volume)
    this.write(`create persistentvolumeclaim ${c.name}`, attempt, (options) => this.core.createNamespacedPersistentVolumeClaim({ namespace: this.config.namespace, body }, options), {
      ok: () => this.claimDone(c, true),
      // 409 AlreadyExists: the claim is there (an earlier ensure, another control plane).
      refused: (status) => {
        if (status !== 409) return false
        this.claimDone(c, true)
        return true
      },
      retry: () => (c.want === "present" ? this.createClaim(c, attempt + 1) : this.claimDone(c, false)),
      gaveUp: () => this.claimDone(c, false)
    })
  }

  private deleteClaim(c: Claim, attempt: number): void {
    c.doing = "delete"
    this.write(`delete persistentvolumeclaim ${c.name}`, attempt, (options) => this.core.deleteNamespacedPersistentVolumeClaim({ name: c.name, namespace: this.config.namespace }, options), {
      ok: () => this.claimDone(c, true),
      // 404: gone already. The API server keeps a claim a pod still mounts until that pod is
      // gone (the `kubernetes.io/pvc-protection` finalizer): accepted is enough for us.
      refused: (status) => {
        if (status !== 404) return false
        this.claimDone(c, true)
        return true
      },
      retry: () => (c.want === "absent" ? this.deleteClaim(c, attempt + 1) : this.claimDone(c, false)),
      gaveUp: () => this.claimDone(c, false)
    })
  }

  /** A claim's request has ended: carry out a command that came meanwhile, or settle. */
  private claimDone(c: Claim, succeeded: boolean): void {
    if (this.claims.get(c.name) !== c) return
    const did = c.doing
    c.doing = null
    if (c.want === "present" && did === "create") c.failed = !succeeded
    else if (c.want === "present") this.createClaim(c, 1)
    else if (did === "create") this.deleteClaim(c, 1)
    // Deleted, or its delete gave up (reported): nothing more to do for it.
    else this.claims.delete(c.name)
  }

  /** A claim whose create gave up is asked for again (a workload mounting it is being created). */
  private retryClaim(name: string): void {
    const c = this.claims.get(name)
    if (c === undefined || c.want !== "present" || c.doing !== null || !c.failed) return
    c.failed = false
    this.createClaim(c, 1)
  }

  private createPod(w: Workload, pod: string, attempt: number): void {
    w.busy.add(pod)
    const body = w.templates.get(pod)!
    this.write(`create pod ${pod}`, attempt, (options) => this.core.createNamespacedPod({ namespace: this.config.namespace, body }, options), {
      ok: (created) => {
        w.busy.delete(pod)
        if (w.replacing.delete(pod) || w.createOwed.delete(pod)) w.ownGiveUps = 0
        this.await(w, pod, created.metadata?.resourceVersion)
        this.refresh(w)
      },
      // 409 AlreadyExists: the name is taken, so the pod exists: never a second one.
      refused: (status) => {
        if (status !== 409) return false
        w.busy.delete(pod)
        w.replacing.delete(pod)
        w.createOwed.delete(pod)
        // Not in the cache yet: delete it by name once we know we are deleting.
        if (w.deleting && !this.cache.has(pod)) this.deletePod(w, pod, 1, false, undefined)
        else this.refresh(w)
        return true
      },
      retry: () => this.createPod(w, pod, attempt + 1),
      gaveUp: () => {
        w.busy.delete(pod)
        // A replacement is the driver's own, and nobody else asks again for a pod the engine
        // asked for either (`createOwed`): both are tried again on the slow retry.
        if (!w.replacing.has(pod) && !w.deleting) w.createOwed.add(pod)
        if (!w.deleting) this.ownRetryLater(w)
        this.refresh(w)
      }
    })
  }

  /**
   * `force`: no grace period, for a pod whose kubelet never confirmed its graceful delete.
   * `uid`: the pod the driver saw, sent as a precondition, so the delete never reaches another
   * pod of the same name (a replacement created since, by this driver or another control plane,
   * which a stale cache or a retry would otherwise delete). Undefined only for a pod never seen
   * (a create answered 409 while the workload is being deleted): deleted by name.
   */
  private deletePod(w: Workload, pod: string, attempt: number, force: boolean, uid: string | undefined): void {
    w.busy.add(pod)
    // Its DELETED may come before this answers: from now on it is known to be asked (`lookUp`).
    if (uid !== undefined) w.deleteAsked.set(pod, uid)
    const body = uid === undefined ? {} : { body: { preconditions: { uid } } }
    const request = (options: ConfigurationOptions) => this.core.deleteNamespacedPod({ name: pod, namespace: this.config.namespace, ...(force ? { gracePeriodSeconds: 0 } : {}), ...body }, options)
    this.write(`${force ? "force delete" : "delete"} pod ${pod}`, attempt, request, {
      ok: (deleted) => {
        w.busy.delete(pod)
        if (!w.deleting) w.ownGiveUps = 0
        const unwatched = w.unwatched.get(pod)
        if (unwatched === undefined) this.await(w, pod, deleted.metadata?.resourceVersion)
        else {
          // Out of our selector: the watch shows neither this version nor the pod's end. The
          // answer is what the cache knows of it now (terminating: not deleted again, forced
          // once terminating too long), and a GET by name at once tells whether it is gone.
          if (uid !== undefined && uidOf(deleted) === uid && this.cachedUid(pod) === uid) this.cache.set(pod, deleted)
          w.unwatched.set(pod, { checks: unwatched.checks, at: this.clock.now() })
        }
        this.refresh(w)
      },
      // 404: the API server says the pod is gone, whatever the cache says (a watch gap). 409 to a
      // uid precondition: the name is another pod's (a replacement), so the one we meant is gone
      // too, and the other is left alone. Unless the workload is being deleted: that pod is
      // ours to delete as well, by name, as a pod we have not seen yet is.
      refused: (status) => {
        if (status !== 404 && !(status === 409 && uid !== undefined)) return false
        w.busy.delete(pod)
        if (status === 409 && w.deleting) this.deletePod(w, pod, 1, force, undefined)
        this.goneOnServer(w, pod, uid)
        return true
      },
      // Failed (a 5xx, a timeout): not carried out, as far as the driver knows, while its retry
      // waits (sent again, it is asked again). A DELETED meanwhile is a label removed by hand,
      // looked up (`lookUp`): taken for this delete, the pod left the cache and, the retries
      // given up, its workload concluded while it ran on (found by the third reader of 8a25425).
      failed: () => {
        if (uid !== undefined && w.deleteAsked.get(pod) === uid) w.deleteAsked.delete(pod)
      },
      retry: () => this.deletePod(w, pod, attempt + 1, force, uid),
      gaveUp: () => {
        w.busy.delete(pod)
        w.deleteStalled.add(pod)
        // Not deleting: the delete of a kubelet-preempted pod, the driver's own.
        if (!w.deleting) this.ownRetryLater(w)
        this.refresh(w)
      }
    })
  }

  /**
   * A pod of ours left the watch's selector with no deletion mark (a DELETED without a
   * `deletionTimestamp`): removed at once (a pending pod's delete, a forced one, a terminal
   * pod's), or still there with its `ecolink.io/managed` label removed or changed by hand, which
   * the API server reports the same way. A GET by name (names are deterministic) tells which.
   * The same pod (its uid) still there is kept, as the GET shows it, and gets its label back
   * (`relabel`, once the driver is active): it holds its GPUs for a resource the engine bills,
   * so the engine must keep seeing it. Gone (404, or another pod of that name) it is taken for
   * gone as the DELETED said, learned when the DELETED was (`late`). The cache keeps the pod
   * meanwhile: nothing is concluded from a DELETED that may not be one.
   */
  private lookUp(w: Workload, pod: string, uid: string, last: V1Pod, attempt = 1, heard = this.clock.now(), sent = this.cache.get(pod)): void {
    const late = this.lateSince
    this.write(`get pod ${pod}`, attempt, (options) => this.core.readNamespacedPod({ name: pod, namespace: this.config.namespace }, options), {
      ok: (found) => this.lookedUp(pod, uid, last, late, heard, sent, found),
      refused: (status) => {
        if (status !== 404) return false
        this.lookedUp(pod, uid, last, late, heard, sent, null)
        return true
      },
      retry: () => this.lookUp(w, pod, uid, last, attempt + 1, heard, sent),
      // Not known: kept, and the relabel's uid precondition tells (on the slow retry, or when
      // an engine subscribes); a relist meanwhile tells too.
      gaveUp: () => {
        if (this.cache.get(pod) !== sent) return
        w.unlabeled.add(pod)
        this.ownRetryLater(w)
      }
    })
  }

  /**
   * What the API server said of a pod gone from the selector: `found` by name, or null (404).
   * `sent`: what the cache held when the look-up was sent.
   */
  private lookedUp(pod: string, uid: string, last: V1Pod, late: number | null, heard: number, sent: V1Pod | undefined, found: V1Pod | null): void {
    // The cache changed meanwhile (the pod back in the selector and changed since, a relist, a
    // newer pod of the name): what changed it is newer than this answer may be (the GET was read
    // before, or answered after, the watch events that came first), so it knows better. Before,
    // only the uid was compared: a late answer put an older version of the same pod back.
    if (this.cache.get(pod) !== sent || this.cachedUid(pod) !== uid) return
    const prior = this.lateSince
    this.lateSince = late
    try {
      if (found === null || uidOf(found) !== uid) {
        this.markGone(uid)
        this.cache.delete(pod)
        // Gone when its DELETED came (`heard`), not when the API server answered the look-up.
        this.goneHeardAt = heard
        this.podGone(last, true)
      } else if (!isManaged(found)) {
        this.cache.set(pod, found)
        this.podChanged(found, true)
      }
      // Else it is in the selector again (labelled back by someone): the watch brings it.
    } finally {
      this.lateSince = prior
      this.goneHeardAt = null
    }
  }

  /**
   * Puts our labels back on `pod` if its turn has come: at once the first time, or when they
   * stayed ours a while since they were last put back (an operator's edit); otherwise (they were
   * undone soon after: something keeps removing or changing them) once the wait since the last
   * time is over, `own_retry_ms_min` doubling per time in a row up to `own_retry_ms_max`, as
   * Kubernetes' own controllers rate-limit an item that keeps failing. The driver never gives up
   * on them (a pod out of our selector would go unseen, a replica out of its Service would serve
   * nothing while billed), but never fights faster than that either, and says so
   * (`labels_contested`). Only while active, or to carry the engine's delete on.
   */
  private restoreLabels(w: Workload, pod: string): void {
    // Deleted without its label (`unwatched`): its end is confirmed by name, not by the watch.
    if (w.busy.has(pod) || w.unwatched.has(pod)) return
    const now = this.clock.now()
    const l = this.config.limits
    const last = w.relabeled.get(pod)
    const wait_ms = last === undefined ? 0 : backoffMs(last.times, l.own_retry_ms_min, l.own_retry_ms_max)
    // Quiet for `own_retry_ms_max` past the wait: a new edit, not the same fight.
    const times = last === undefined || now > last.at + wait_ms + l.own_retry_ms_max ? 0 : last.times
    if (times > 0 && last!.at + wait_ms > now) return this.relabelLater(w, last!.at + wait_ms)
    this.relabel(w, pod, 1, times)
  }

  /** `restoreLabels` again at `at` (one timer per workload, at the earliest instant asked). */
  private relabelLater(w: Workload, at: number): void {
    if (w.relabelTimer !== null && w.relabelTimer.at <= at) return
    if (w.relabelTimer !== null) this.clock.clearTimeout(w.relabelTimer.handle)
    const handle = this.clock.schedule(
      at,
      () => {
        w.relabelTimer = null
        if (this.isStopped() || this.workloads.get(w.name) !== w) return
        // A deletion puts back a label out of our selector first (`deleteRemaining`).
        if (w.deleting) this.refresh(w)
        else this.ownWork(w)
      },
      { lane: Lane.world, key: `k8s:relabel:${w.name}` }
    )
    w.relabelTimer = { handle, at }
  }

  /**
   * Puts every label of ours back on a pod that lacks it or bears it with another value
   * (`ownLabelsOf`: what the driver created it with), as a JSON merge patch that names the pod's
   * uid and sets only our keys: a label an operator added is left alone, and the API server
   * refuses the patch (422, the uid is immutable) if another pod bears the name now, as
   * Kubernetes' own controllers rely on. `ecolink.io/managed` puts the pod back in the
   * list/watch selector; `ecolink.io/instance` puts an inference replica back in its instance's
   * Service, which selects by it (before, only `managed` came back: a replica whose `instance`
   * label was removed by hand got no traffic while the engine billed it as running). Decision:
   * the pod is kept, not deleted (docs/KUBERNETES.md, "A pod taken out of our selector"): it
   * runs the customer's workload on GPUs the resource is billed for, so the engine's view
   * (running, billed, serving) is the truth once the labels are back. 404 or 422: the pod meant
   * is gone, taken as a delete answered 404 is. `times`: how many times in a row they were put
   * back before this one (`restoreLabels`).
   */
  private relabel(w: Workload, pod: string, attempt: number, times: number): void {
    const cached = this.cache.get(pod)
    const uid = cached === undefined ? undefined : uidOf(cached)
    if (cached === undefined || uid === undefined) {
      w.unlabeled.delete(pod)
      return
    }
    const labels = ownLabelsOf(w, pod)
    // A pod out of our selector may be cached as it was before (its look-up gave up): its label is owed.
    const owed = [...new Set([...labelsOwedOf(w, cached), ...(w.unlabeled.has(pod) ? [LABELS.managed] : [])])].sort()
    w.busy.add(pod)
    const body = { metadata: { uid, labels } }
    const request = (options: ConfigurationOptions) =>
      this.core.patchNamespacedPod({ name: pod, namespace: this.config.namespace, body }, setHeaderOptions("Content-Type", PatchStrategy.MergePatch, options))
    this.write(`label pod ${pod}`, attempt, request, {
      ok: (patched) => {
        w.busy.delete(pod)
        w.ownGiveUps = 0
        const now = this.clock.now()
        w.relabeled.set(pod, { times: times + 1, at: now })
        this.report({ kind: "pod_relabeled", at: now, workload: w.name, pod, labels: owed })
        if (times + 1 === RELABELS_CONTESTED) this.report({ kind: "labels_contested", at: now, workload: w.name, pod, labels: owed, times: times + 1 })
        // In the selector again: the watch brings it (ADDED), and every change from now on.
        if (this.cachedUid(pod) === uid) w.unlabeled.delete(pod)
        this.await(w, pod, patched.metadata?.resourceVersion)
        this.refresh(w)
      },
      refused: (status) => {
        if (status !== 404 && status !== 422) return false
        w.busy.delete(pod)
        w.unlabeled.delete(pod)
        this.goneOnServer(w, pod, uid)
        return true
      },
      retry: () => this.relabel(w, pod, attempt + 1, times),
      gaveUp: () => {
        w.busy.delete(pod)
        // Gating a deletion, it is not sent again: the pod holds GPUs the engine no longer bills
        // for, and a relabel refused for good (a 403 of a Role without `patch`, an admission
        // policy) would keep them held until an operator acted. The pod is deleted anyway, by
        // name with its uid as a precondition, and its end, which the watch cannot show, is
        // confirmed by name (`unwatched`, `confirmGone`). Never re-sent at once: that looped a
        // refused relabel as fast as the API server answered.
        if (w.deleting) {
          if (this.cachedUid(pod) === uid && !w.unwatched.has(pod)) w.unwatched.set(pod, { checks: 0, at: null })
          return this.refresh(w)
        }
        this.ownRetryLater(w)
        this.refresh(w)
      }
    })
  }

  /**
   * Whether a pod deleted out of our selector (`unwatched`) is gone, which the watch cannot show.
   * 404, or another pod of that name: gone, as a delete answered 404 is (`goneOnServer`), and the
   * workload concludes. Still there: the cache keeps what the GET shows (unless the watch or a
   * relist changed it meanwhile: they know better), and the next GET waits `own_retry_ms_min`,
   * doubling per time up to `own_retry_ms_max` (a pod terminating longer than
   * `pod_force_delete_after_ms` is forced by `deleteRemaining`, so the checks end). Not retried
   * at once when it fails: the next check is that retry.
   */
  private confirmGone(w: Workload, pod: string, uid: string): void {
    w.busy.add(pod)
    const sent = this.cache.get(pod)
    this.write(`get pod ${pod}`, 1, (options) => this.core.readNamespacedPod({ name: pod, namespace: this.config.namespace }, options), {
      ok: (found) => {
        w.busy.delete(pod)
        if (uidOf(found) !== uid) return this.goneOnServer(w, pod, uid)
        this.checkLater(w, pod, sent, found)
      },
      refused: (status) => {
        if (status !== 404) return false
        w.busy.delete(pod)
        this.goneOnServer(w, pod, uid)
        return true
      },
      gaveUp: () => {
        w.busy.delete(pod)
        this.checkLater(w, pod, sent, null)
      }
    })
  }

  /** A pod deleted out of our selector found still there (`found`), or not known (null): checked again later. */
  private checkLater(w: Workload, pod: string, sent: V1Pod | undefined, found: V1Pod | null): void {
    const u = w.unwatched.get(pod)
    // Gone meanwhile (the watch saw it go: its label was back), or the workload is.
    if (u === undefined) return this.refresh(w)
    if (found !== null && sent !== undefined && this.cache.get(pod) === sent) this.cache.set(pod, found)
    const l = this.config.limits
    const checks = u.checks + 1
    // Not terminating (the delete's answer was not what it did): its delete is sent again.
    const again = found !== null && !isTerminating(found)
    w.unwatched.set(pod, { checks, at: again ? null : this.clock.now() + backoffMs(checks, l.own_retry_ms_min, l.own_retry_ms_max) })
    this.refresh(w)
  }

  private cachedUid(pod: string): string | undefined {
    const cached = this.cache.get(pod)
    return cached === undefined ? undefined : uidOf(cached)
  }

  /**
   * A delete answered 404: the pod is gone, though the cache (behind: a watch gap) still shows
   * it. Taken as the watch's DELETED would be, so a deleting workload concludes and nothing
   * sends the delete again; the DELETED the watch delivers later finds no pod in the cache and
   * is ignored, and a relist agrees.
   */
  private goneOnServer(w: Workload, pod: string, uid: string | undefined): void {
    if (uid !== undefined) this.markGone(uid)
    const cached = this.cache.get(pod)
    // The cache may show a newer pod of that name by now: that one is not known gone.
    if (cached === undefined || (uid !== undefined && uidOf(cached) !== undefined && uidOf(cached) !== uid)) return this.refresh(w)
    this.markGone(uidOf(cached))
    // Deleted while the view is behind: the pod may have stopped in the gap, which only its last
    // version tells, and the watch will replay it (`heardGone`).
    const gone = uidOf(cached)
    if (w.deleteBehindAt !== null && gone !== undefined && this.viewBehind()) w.goneUnheard.add(gone)
    this.cache.delete(pod)
    w.awaiting.delete(pod)
    this.podGone(cached, true)
  }

  /** A write was answered: the workload is not settled until the watch shows that version. */
  private await(w: Workload, pod: string, rv: string | undefined): void {
    if (rv === undefined || this.seen.has(`${pod}@${rv}`)) return
    w.awaiting.set(pod, { rv, seq: ++this.seq })
  }

  /** The watch (or a list) showed this version of the pod. */
  private saw(w: Workload, pod: V1Pod): void {
    const name = pod.metadata!.name!
    const rv = pod.metadata?.resourceVersion
    if (rv === undefined) return
    if (w.awaiting.get(name)?.rv === rv) w.awaiting.delete(name)
    this.seen.add(`${name}@${rv}`)
    if (this.seen.size > SEEN_VERSIONS_MAX) this.seen.delete(this.seen.values().next().value!)
  }

  /** A pod uid is gone for good (uids are never reused): later events about it are stale. */
  private markGone(uid: string | undefined): void {
    if (uid === undefined) return
    this.goneUids.delete(uid)
    this.goneUids.add(uid)
    if (this.goneUids.size > GONE_UIDS_MAX) this.goneUids.delete(this.goneUids.values().next().value!)
  }

  /**
   * One request through the bounded queue. `refused` handles an expected refusal (409, 404)
   * and says whether it did; a retriable failure is retried after a backoff on the engine
   * clock, `request_attempts_max` times at most; anything else is reported and dropped (the
   * supervisor's level-triggered reconciliation asks again).
   */
  private write<T>(
    what: string,
    attempt: number,
    call: (options: ConfigurationOptions) => Promise<T>,
    on: { ok: (result: T) => void; refused: (status: number) => boolean; retry?: () => void; gaveUp?: () => void; failed?: () => void }
  ): void {
    this.request(call).then(
      (result) => {
        if (!this.isStopped()) on.ok(result)
      },
      (e: unknown) => {
        if (this.isStopped()) return
        // This attempt was not carried out, as far as the driver knows (before its refusal, retry or give-up).
        on.failed?.()
        const status = statusOf(e)
        if (status !== null && on.refused(status)) return
        const l = this.config.limits
        const again = retriable(status) && attempt < l.request_attempts_max && on.retry !== undefined
        this.report({ kind: "request_failed", at: this.clock.now(), what, status, final: !again })
        if (!again) return on.gaveUp?.()
        // No sooner than the server asked (`Retry-After`), up to `retry_after_ms_max`.
        const delay_ms = Math.max(backoffMs(attempt, l.request_backoff_ms_min, l.request_backoff_ms_max), Math.min(retryAfterMsOf(e) ?? 0, l.retry_after_ms_max))
        // The pod stays busy while its retry waits on the clock; `idle()` does not wait for it.
        this.retriesWaiting++
        this.clock.schedule(
          this.clock.now() + delay_ms,
          () => {
            this.retriesWaiting--
            if (this.isStopped()) return
            // A retry is a new write: a driver that went passive meanwhile (its engine stopped
            // or was fenced: the lease is lost) leaves it to the leader, whose reconcile asks again.
            if (this.active) on.retry!()
            else on.gaveUp?.()
          },
          { lane: Lane.world, key: `k8s:${what}` }
        )
      }
    )
  }

  /**
   * `call` sends the request with the options it is given, which carry an AbortSignal: when the
   * request times out its HTTP request is cancelled (the connection closed), so a hung API
   * server never holds more than `requests_in_flight_max` connections of this driver.
   */
  private request<T>(call: (options: ConfigurationOptions) => Promise<T>): Promise<T> {
    const l = this.config.limits
    if (this.queue.length >= l.requests_queued_max) throw new Error(`more than ${l.requests_queued_max} Kubernetes requests queued`)
    return new Promise<T>((resolve, reject) => {
      const run = (): void => {
        this.inFlight++
        this.requests_started++
        // Ends the request once: its answer, its error or its timeout, whichever comes first.
        let ended = false
        const end = (): boolean => {
          if (ended) return false
          ended = true
          this.clock.clearTimeout(timer)
          this.inFlight--
          const next = this.queue.shift()
          if (next !== undefined) next()
          // Let the caller's continuation run before anyone is told the driver is idle.
          else void Promise.resolve().then(() => this.checkIdle())
          return true
        }
        const controller = new AbortController()
        // A hung API server (or connection) must not keep a pod busy for ever: past
        // `request_timeout_ms` the request has failed like a network error and is retried.
        // Its HTTP request is cancelled too: abandoned, it would keep its connection open
        // while its retry opens another, and a hung server would collect
        // `requests_in_flight_max` more of them every timeout, without bound.
        const timer = this.clock.schedule(
          this.clock.now() + l.request_timeout_ms,
          () => {
            if (!end()) return
            controller.abort()
            reject(new RequestTimeout(`no answer in ${l.request_timeout_ms} ms`))
          },
          { lane: Lane.world, key: "k8s:request-timeout" }
        )
        call(abortable(controller.signal)).then(
          (result) => {
            if (end()) resolve(result)
          },
          (e: unknown) => {
            if (end()) reject(e)
          }
        )
      }
      if (this.inFlight < l.requests_in_flight_max) run()
      else this.queue.push(run)
    })
  }

  private checkIdle(): void {
    if (this.inFlight > 0 || this.queue.length > 0) return
    for (const resolve of this.idleWaiters.splice(0)) resolve()
  }

  // ── list and watch ────────────────────────────────────────────────────────────────────
  /**
   * Lists the engine's pods and replaces the cache with what the list shows. The first list
   * only fills the cache (the supervisor reconciles at start); a relist after 410 Gone reports
   * every difference as the watch would have.
   *
   * The list is of every pod of the namespace, not of the watch's selector: a pod of ours whose
   * `ecolink.io/managed` label was removed (or changed) by hand is in no selected list, yet it
   * runs on its GPUs. It is ours by its annotations (`ownedByAnnotations`), kept in the cache
   * (`unlabeled`) and its label put back once the driver is active (`relabel`). One list, so the
   * pods with the label and those without come from one snapshot: two lists could both miss a pod
   * relabelled between them.
   */
  private async relist(report: boolean): Promise<void> {
    this.state = "listing"
    const listSeq = ++this.seq
    let list
    try {
      list = await this.request((options) => this.core.listNamespacedPod({ namespace: this.config.namespace }, options))
    } catch (e) {
      if (this.isStopped()) return
      if (!report) throw e
      this.report({ kind: "request_failed", at: this.clock.now(), what: "list pods", status: statusOf(e), final: false })
      this.relistPending = true
      return this.scheduleWatch("dropped", retryAfterMsOf(e))
    }
    if (this.isStopped()) return
    const listedAt = this.clock.now()
    const items = list.items.filter(isOurs)
    const ends = await this.podEnds(items, report)
    if (this.isStopped()) return
    this.relistPending = false
    // Everything the list shows that the cache did not is learned late (at start: never seen).
    this.lateSince = this.liveAt
    try {
      this.takeList(items, listSeq, report, ends)
    } finally {
      this.lateSince = null
    }
    this.liveAt = listedAt
    this.rv = list.metadata?.resourceVersion ?? ""
    if (report) this.report({ kind: "relisted", at: this.clock.now(), pods: items.length })
    this.notifyProgress()
    this.openWatch(false)
  }

  /**
   * What the namespace's Events say of the pods a list shows gone, by pod name (`podEvents.ts`).
   * A relist lists them only when one of ours is gone with nothing of its stop in its last version
   * (neither stopped nor terminating): an event names its pod by uid (or, the taint manager's,
   * counts from the driver's last current view on). The first list always does, for the engine's
   * reconciliation at start (`recallGone`): a new control plane does not know which pods went.
   * Best-effort, as Events are: a list that fails is reported and nothing is learned from it.
   */
  private async podEnds(items: ReadonlyArray<V1Pod>, report: boolean): Promise<ReadonlyMap<string, PodEnd>> {
    const listed = new Set(items.map((pod) => pod.metadata?.name))
    const unrecorded = report ? [...this.cache.entries()].filter(([name, pod]) => !listed.has(name) && podStoppedAt(pod, true) === null) : []
    if (report && unrecorded.length === 0) return new Map()
    const events = await this.listStopEvents()
    if (!report) {
      this.recallable = events.filter((e) => !listed.has(e.pod))
      return new Map()
    }
    const ends = new Map<string, PodEnd>()
    for (const [name, pod] of unrecorded) {
      const grace_s = pod.spec?.terminationGracePeriodSeconds ?? this.config.termination_grace_s
      const end = podEndOf(events, { name, uid: uidOf(pod) ?? null, grace_ms: grace_s * 1_000 }, this.liveAt)
      if (end !== null) ends.set(name, end)
    }
    return ends
  }

  /**
   * One round of lists of the namespace's pod stop Events: one list per reason `podEvents.ts`
   * reads (`STOP_EVENT_REASONS`, preemptions first, `Killing` last), each followed page by page
   * (`events_page_max` a page, `continue`) until it ends or `events_listed_max` events in all were
   * read. A list that fails (403 without RBAC, a 5xx, a timeout, 410 for a `continue` too old) is
   * reported and ends the round: what was read is kept, and the lists after it (kills last) are
   * not tried, so a hung API server costs one timeout, not one per reason.
   */
  private async listStopEvents(): Promise<PodStopEvent[]> {
    const l = this.config.limits
    const stops: PodStopEvent[] = []
    let read = 0
    for (const reason of STOP_EVENT_REASONS) {
      let token: string | null = null
      do {
        const limit = Math.min(l.events_page_max, l.events_listed_max - read)
        const _continue: string | undefined = token ?? undefined
        let page: CoreV1EventList
        try {
          page = await this.request((options) => this.core.listNamespacedEvent({ namespace: this.config.namespace, fieldSelector: stopEventsSelector(reason), limit, _continue }, options))
        } catch (e) {
          if (!this.isStopped()) this.report({ kind: "request_failed", at: this.clock.now(), what: "list events", status: statusOf(e), final: true })
          return stops
        }
        if (this.isStopped()) return stops
        // A server that sent more than asked does not move the bound.
        const items = page.items.slice(0, limit)
        read += items.length
        for (const e of items) {
          const stop = podStopEventOf(e)
          if (stop !== null) stops.push(stop)
        }
        token = page.metadata?._continue || null
        // A page that read nothing yet promises more makes no progress: the round ends, as at the
        // bound, before a later reason (a kill) could be read without this one's rest.
        if (token !== null && items.length === 0) return stops
      } while (token !== null && read < l.events_listed_max)
      assert(read <= l.events_listed_max, () => `read ${read} events, more than events_listed_max ${l.events_listed_max}`)
      if (read === l.events_listed_max) {
        // This reason's rest if its list was cut, else the next reason's (none after the last).
        const unread_from = token !== null ? reason : STOP_EVENT_REASONS[STOP_EVENT_REASONS.indexOf(reason) + 1]
        if (unread_from !== undefined) this.report({ kind: "events_cut", at: this.clock.now(), read, unread_from })
        return stops
      }
    }
    return stops
  }

  /** Replaces the cache with a list's pods, handling every difference as the watch would have. */
  private takeList(items: ReadonlyArray<V1Pod>, listSeq: number, report: boolean, ends: ReadonlyMap<string, PodEnd>): void {
    const seen = new Set<string>()
    for (const pod of items) {
      const name = pod.metadata?.name
      if (name === undefined) continue
      seen.add(name)
      const before = this.cache.get(name)
      if (before?.metadata?.resourceVersion === pod.metadata?.resourceVersion && before !== undefined) continue
      if (before !== undefined && uidOf(before) !== uidOf(pod)) this.markGone(uidOf(before))
      this.cache.set(name, pod)
      this.podChanged(pod, report)
    }
    for (const [name, pod] of [...this.cache.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (seen.has(name)) continue
      this.markGone(uidOf(pod))
      this.cache.delete(name)
      this.podGone(pod, report, ends.get(name) ?? null)
    }
    // Answers that came before this list are covered by it.
    for (const w of this.workloads.values()) for (const [pod, a] of [...w.awaiting]) if (a.seq < listSeq) w.awaiting.delete(pod)
    // A list shows no pod that is gone: the last version of one the API server said was gone in
    // a gap will not come (a 410 lost the history), and its stop, if any, is dated no earlier.
    for (const w of this.workloads.values()) w.goneUnheard.clear()
    for (const w of [...this.workloads.values()]) this.refresh(w, report)
  }

  /**
   * `resumed`: re-opened from the last resourceVersion after the stream dropped, so it first
   * replays what happened meanwhile; it is taken as live from its first BOOKMARK on (the API
   * server sends one about every minute, and the test server on demand).
   */
  private openWatch(resumed: boolean): void {
    if (this.isStopped()) return
    this.replaying = resumed
    this.watchOpenedAt = this.clock.now()
    this.state = "watching"
    this.connected = false
    const session = ++this.session
    let expired = false
    let ended = false
    // The agent of this watch's connection, once client-node made it; destroying it cuts the
    // connection (its socket), which ends the watch (`done`) however it hangs.
    let agent: { destroy?(): void } | undefined
    let cut = false
    this.watches_opened++
    this.watchAgentSink = (a) => {
      agent = a
      if (cut) a?.destroy?.()
    }
    const l = this.config.limits
    /**
     * A watch that never connects (an API server or load balancer that accepts the connection
     * and never answers), or whose stream is still open past the `timeoutSeconds` the server
     * promised to end it at (a half-open connection: the server's end gone without a reset, so
     * no byte and no close ever comes): cut, and re-opened as a dropped one is. client-node's
     * Watch sets no timeout of its own. Before, such a watch waited for ever: the cache froze
     * while the driver said it was watching (`viewBehind` false), so stops went unheard,
     * stops asked then settled at once on the stale view, and no replacement was made.
     */
    const bound = (kind: "connect" | "stream", at: number): TimerHandle =>
      this.clock.schedule(
        at,
        () => {
          if (ended || session !== this.session || this.isStopped()) return
          if (kind === "connect" && this.connected) return
          const what = kind === "connect" ? "watch pods (no answer)" : "watch pods (open past its timeout)"
          this.report({ kind: "request_failed", at: this.clock.now(), what, status: null, final: false })
          cut = true
          agent?.destroy?.()
          done(new RequestTimeout(`${what}: no answer`))
        },
        { lane: Lane.world, key: "k8s:pods-watch-bound" }
      )
    const timers = [bound("connect", this.clock.now() + l.request_timeout_ms), bound("stream", this.clock.now() + l.pods_watch_timeout_s * 1_000 + l.request_timeout_ms)]
    const done = (err: unknown): void => {
      if (ended || session !== this.session) return
      ended = true
      for (const t of timers) this.clock.clearTimeout(t)
      this.abort = null
      this.connected = false
      if (this.isStopped()) return
      if (expired || statusOf(err) === 410) return this.scheduleWatch("expired")
      this.scheduleWatch("dropped")
    }
    const onEvent = (type: string, object: V1Pod & { code?: number }): void => {
      if (session !== this.session || this.isStopped()) return
      try {
        if (type === "ERROR") {
          if (object.code === 410) expired = true
          return
        }
        if (type === "BOOKMARK") {
          this.rv = object.metadata?.resourceVersion ?? this.rv
          const replayed = this.replaying
          this.replaying = false
          this.liveAt = this.clock.now()
          if (replayed) this.caughtUp()
          return
        }
        const name = object.metadata?.name
        if (name === undefined) return
        // The replay comes first, at once: past the window the watch is live, bookmark or not.
        if (this.replaying && this.clock.now() - this.watchOpenedAt > this.config.limits.pods_watch_replay_window_ms) this.replaying = false
        this.lateSince = this.replaying ? this.liveAt : null
        const uid = uidOf(object)
        const cached = this.cache.get(name)
        // The cache shows another pod of this name. A DELETED is then about an earlier pod (the
        // watch delivers a name's DELETED before its next ADDED), and leaves the cached one; any
        // other event is about a later pod, so the cached one is gone.
        const other = cached !== undefined && uid !== undefined && uidOf(cached) !== undefined && uidOf(cached) !== uid
        if (uid !== undefined && this.goneUids.has(uid)) {
          // About a pod known to be gone (stale, or replayed): never about the pod of this name now.
          this.heardGone(name, uid, object, type === "DELETED")
        } else if (type === "DELETED" && cached !== undefined && !other && uid !== undefined && object.metadata?.deletionTimestamp == null && this.ownerOf(cached).deleteAsked.get(name) !== uid) {
          // Gone from our selector with no deletion asked: a label removed or changed by hand
          // (the API server reports an object that stops matching a watch's selector as
          // DELETED, as it was before) looks like a pod removed at once. Looked up by name
          // before it is taken for gone (`lookUp`). Not a pod whose delete this driver sent
          // (`deleteAsked`): a pending pod's delete is carried out at once, and it knows that
          // pod is going, without a GET per delete.
          this.lookUp(this.ownerOf(cached), name, uid, object)
        } else if (type === "DELETED") {
          this.markGone(uid)
          // A pod not in the cache was already taken as gone (a delete answered 404).
          if (cached !== undefined && !other) {
            this.cache.delete(name)
            this.podGone(object, true)
          }
        } else {
          if (other) this.markGone(uidOf(cached))
          this.cache.set(name, object)
          this.podChanged(object, true)
        }
        this.rv = object.metadata?.resourceVersion ?? this.rv
        if (!this.replaying) this.liveAt = this.clock.now()
      } catch (e) {
        // The client swallows exceptions thrown by a watch callback: a defect here (or in
        // the supervisor, which runs inside `emit`) must still stop the process loudly.
        process.nextTick(() => {
          throw e
        })
      } finally {
        this.lateSince = null
        this.notifyProgress()
      }
    }
    this.watcher
      .watch(
        `/api/v1/namespaces/${encodeURIComponent(this.config.namespace)}/pods`,
        { resourceVersion: this.rv, allowWatchBookmarks: true, labelSelector: MANAGED_SELECTOR, timeoutSeconds: l.pods_watch_timeout_s },
        onEvent,
        done
      )
      .then(
        (controller) => {
          // A watch given up on (cut, stopped, or superseded) that connected after all is closed.
          if (ended || session !== this.session || this.isStopped()) return controller.abort()
          this.abort = controller
          this.watchFailures = 0
          this.connected = true
          this.notifyProgress()
        },
        (e: unknown) => done(e)
      )
  }

  /**
   * After a 410 the cache is rebuilt from a list at once (the list's resourceVersion is
   * current, so it cannot expire again at once); a dropped stream, or a failed list, waits a
   * backoff that doubles per consecutive failure up to `pods_watch_backoff_ms_max`, and at least
   * what a list refused with `Retry-After` asked (`retry_after_ms`).
   */
  private scheduleWatch(reason: "dropped" | "expired", retry_after_ms: number | null = null): void {
    if (this.isStopped()) return
    const l = this.config.limits
    if (reason === "expired") {
      this.report({ kind: "watch_restarted", at: this.clock.now(), reason, backoff_ms: 0 })
      void this.relist(true)
      return
    }
    // A list refused with `Retry-After` waits at least that long (up to `retry_after_ms_max`).
    const backoff_ms = Math.max(backoffMs(++this.watchFailures, l.pods_watch_backoff_ms_min, l.pods_watch_backoff_ms_max), Math.min(retry_after_ms ?? 0, l.retry_after_ms_max))
    this.report({ kind: "watch_restarted", at: this.clock.now(), reason, backoff_ms })
    this.state = "backoff"
    this.notifyProgress()
    this.backoffTimer = this.clock.schedule(
      this.clock.now() + backoff_ms,
      () => {
        this.backoffTimer = null
        if (this.isStopped()) return
        if (this.relistPending) void this.relist(true)
        else this.openWatch(true)
      },
      { lane: Lane.world, key: "k8s:pods-watch" }
    )
  }

  private notifyProgress(): void {
    for (const listener of [...this.progress]) listener()
  }

  // ── from pods to workloads to events ─────────────────────────────────────────────────
  /** The workload a pod belongs to; one discovered from the pod's annotations if new to us. */
  private ownerOf(pod: V1Pod): Workload {
    const name = pod.metadata!.name!
    const known = this.podOwner.get(name)
    if (known !== undefined && this.workloads.has(known)) return this.workloads.get(known)!
    const a = pod.metadata?.annotations ?? {}
    const annotated = annotatedWorkload(pod)
    const valid = annotated !== null
    // A pod of ours that names no workload we can rebuild is its own (orphan) workload.
    const key = annotated?.workload ?? name
    const existing = this.workloads.get(key)
    if (existing !== undefined) {
      this.podOwner.set(name, key)
      return existing
    }
    const pods = annotated !== null ? podNamesOf(annotated.workload, annotated.node_count) : [name]
    const w = this.track({
      name: key,
      resource: valid ? (a[ANNOTATIONS.resource] ?? "") : "",
      account: a[ANNOTATIONS.account] ?? "",
      region: a[ANNOTATIONS.region] ?? "",
      service: valid ? (a[ANNOTATIONS.service] ?? null) : null,
      pods,
      templates: new Map(),
      discovered: true
    })
    return w
  }

  private podChanged(pod: V1Pod, report: boolean): void {
    const w = this.ownerOf(pod)
    const name = pod.metadata!.name!
    // Out of our selector (its label removed or changed by hand): its label is owed (`ownWork`).
    if (isManaged(pod)) w.unlabeled.delete(name)
    else w.unlabeled.add(name)
    if (!w.templates.has(name)) w.templates.set(name, templateOf(w, pod))
    this.saw(w, pod)
    // It exists: whoever created it (this driver, or the leader while this one stood by), no
    // replacement is owed for it any more.
    w.replacing.delete(name)
    w.createOwed.delete(name)
    const state = podStateOf(pod)
    if (state === "disrupted" || state === "failed") this.stopped(w, podStoppedAt(pod, false))
    // A control plane that finds a replacement pod not yet started finds a preempted workload
    // (the one before it saw the preemption; this one must not bill meanwhile).
    const replacement = pod.metadata?.annotations?.[ANNOTATIONS.replacement] !== undefined
    if (w.discovered && w.phase === "pending" && replacement && (podStateOf(pod) === "pending" || podStateOf(pod) === "started")) w.preempted = true
    // A pod the kubelet preempted (Failed, reason Preempting) stays until deleted: we delete it
    // and create its replacement once it is gone.
    this.ownWork(w)
    this.refresh(w, report)
  }

  /**
   * An event about a pod known to be gone. Stale, it changes nothing; but a pod the API server
   * said was gone while the watch was away (`goneUnheard`) is heard here at last, in the replay:
   * its versions may date a stop before the deletion was asked, and its DELETED is its last.
   */
  private heardGone(name: string, uid: string, pod: V1Pod, gone: boolean): void {
    const w = this.workloads.get(this.podOwner.get(name) ?? "")
    if (w === undefined || !w.goneUnheard.has(uid)) return
    this.stopped(w, podStoppedAt(pod, gone))
    if (!gone) return
    w.goneUnheard.delete(uid)
    this.finishIfGone(w)
  }

  /**
   * The re-opened watch has replayed its gap (its first BOOKMARK): every pod's last version has
   * come by now, so deletions that waited for one conclude, in name order.
   */
  private caughtUp(): void {
    const waiting = [...this.workloads.values()].filter((w) => w.goneUnheard.size > 0).sort((a, b) => (a.name < b.name ? -1 : 1))
    for (const w of waiting) {
      w.goneUnheard.clear()
      this.finishIfGone(w)
    }
  }

  /**
   * `end`: what the cluster's Events say of how the pod ended (`podEnds`, a relist), for a pod
   * whose last version says nothing of its stop.
   */
  private podGone(pod: V1Pod, report: boolean, end: PodEnd | null = null): void {
    const w = this.ownerOf(pod)
    const name = pod.metadata!.name!
    this.saw(w, pod)
    w.deleteStalled.delete(name)
    w.unlabeled.delete(name)
    w.unwatched.delete(name)
    if (w.deleteAsked.get(name) === uidOf(pod)) w.deleteAsked.delete(name)
    const record = podStoppedAt(pod, true)
    const told = record === null ? end : null
    // Gone without our asking: whatever it was doing, it holds no GPUs now.
    this.stopped(w, record ?? told?.at ?? null)
    if (!w.deleting && !w.lost && w.phase !== "failed") {
      const disrupted = podStateOf(pod) === "disrupted" || told?.kind === "preempted"
      if (disrupted && w.replacements < this.config.limits.pod_replacements_max && w.templates.has(name)) {
        // A preemption only its Events told of: the workload is preempted, as the victim's
        // DisruptionTarget would have made it had the driver seen that version.
        if (told?.kind === "preempted" && STARTED.has(w.phase)) w.preempted = true
        // Preempted or evicted: the same pod again, which the scheduler places when it can
        // (by this driver only while it is active: see `ownWork`).
        w.replacements++
        const template = w.templates.get(name)!
        template.metadata!.annotations = { ...(template.metadata!.annotations ?? {}), [ANNOTATIONS.replacement]: String(w.replacements) }
        w.replacing.add(name)
        this.ownWork(w)
      } else {
        w.lost = true
        this.report({ kind: "pod_lost", at: this.clock.now(), workload: w.name, pod: name })
      }
    }
    this.refresh(w, report)
    if (!this.active) this.rememberGone(w)
  }

  /**
   * A passive driver (a standby's) sees the leader delete its workloads as pods gone without
   * asking, and nobody deletes them here: without a bound it would keep every workload the
   * leader ever ran. It keeps the newest `passive_gone_workloads_max` whose pods are all gone
   * (a new leader may still ask them a stop's date, or find a replacement owed) and forgets the
   * oldest; one that has pods again (a replacement) is kept however old.
   */
  private rememberGone(w: Workload): void {
    if (this.workloads.get(w.name) !== w || w.deleting || !this.concluded(w)) return
    const now = this.clock.now()
    this.goneWhilePassive.delete(w.name)
    this.goneWhilePassive.set(w.name, now)
    while (this.goneWhilePassive.size > this.config.limits.passive_gone_workloads_max) {
      // The oldest that can go: one with a replacement owed is kept (the next leader creates
      // it, where a forgotten one would be found without pods and its instance failed) until
      // that is long overdue (a leader that lived on made it, or gave up on the workload).
      let dropped = false
      for (const [name, gone_at] of this.goneWhilePassive) {
        const old = this.workloads.get(name)
        if (old !== undefined && !old.deleting && this.concluded(old) && old.replacing.size > 0 && now - gone_at < PASSIVE_REPLACEMENT_OWED_MS) continue
        this.goneWhilePassive.delete(name)
        if (old !== undefined && !old.deleting && this.concluded(old)) this.forget(old)
        dropped = true
        break
      }
      if (!dropped) break
    }
  }

  /**
   * Drops a workload without a word: only a passive driver does, and the engine that subscribes
   * next scans every workload at its start, so no change is recorded for it either.
   */
  private forget(w: Workload): void {
    this.workloads.delete(w.name)
    this.changes.delete(w.name)
    for (const pod of w.pods) if (this.podOwner.get(pod) === w.name) this.podOwner.delete(pod)
    if (w.ownRetryTimer !== null) this.clock.clearTimeout(w.ownRetryTimer)
    w.ownRetryTimer = null
    if (w.relabelTimer !== null) this.clock.clearTimeout(w.relabelTimer.handle)
    w.relabelTimer = null
  }

  /**
   * What the driver does of its own for a workload, only while it is active: create the
   * replacements it owes, delete the pods the kubelet preempted (they stay `Failed` until
   * deleted). Idempotent: nothing is sent for a pod with a request under way.
   */
  private ownWork(w: Workload): void {
    if (!this.active || this.workloads.get(w.name) !== w) return
    // Whatever the workload's state, a pod out of our selector gets its label back first: until
    // then the watch shows nothing of it, neither its stop nor its end.
    for (const pod of [...w.unlabeled]) this.restoreLabels(w, pod)
    if (w.deleting || w.lost || w.phase === "failed") return
    for (const pod of w.pods) {
      if (w.busy.has(pod) || w.awaiting.has(pod) || w.unlabeled.has(pod)) continue
      const cached = this.cache.get(pod)
      // Another label of ours removed or changed by hand (`ecolink.io/instance`: its Service
      // selects the replica by it) is put back too, on a pod that still runs.
      if (cached !== undefined && !isTerminating(cached) && cached.status?.phase !== "Failed" && cached.status?.phase !== "Succeeded" && labelsOwedOf(w, cached).length > 0) {
        this.restoreLabels(w, pod)
        continue
      }
      // A recalled workload's replacement waits for the engine's spec (`createWorkload`).
      if (cached === undefined && w.replacing.has(pod) && w.templates.has(pod)) {
        this.report({ kind: "pod_replaced", at: this.clock.now(), workload: w.name, pod })
        this.createPod(w, pod, 1)
      } else if (cached === undefined && w.createOwed.has(pod) && w.templates.has(pod)) {
        this.createPod(w, pod, 1)
      } else if (cached !== undefined && podStateOf(cached) === "disrupted" && !isTerminating(cached) && cached.status?.phase === "Failed" && !w.deleteStalled.has(pod)) {
        this.deletePod(w, pod, 1, false, uidOf(cached))
      }
    }
  }

  /**
   * One of the driver's own writes gave up (an API server restarting, say): `ownWork` runs again
   * after `own_retry_ms_min`, doubling per consecutive give-up up to `own_retry_ms_max`, for as
   * long as the workload is wanted (`ownWork` checks), so a preempted instance resumes once the
   * API server answers again instead of waiting for its deadline.
   */
  private ownRetryLater(w: Workload): void {
    if (w.ownRetryTimer !== null) return
    const l = this.config.limits
    const delay_ms = backoffMs(++w.ownGiveUps, l.own_retry_ms_min, l.own_retry_ms_max)
    w.ownRetryTimer = this.clock.schedule(
      this.clock.now() + delay_ms,
      () => {
        w.ownRetryTimer = null
        if (this.isStopped() || this.workloads.get(w.name) !== w || w.deleting) return
        // Only a victim's delete can have stalled while the workload is not being deleted.
        w.deleteStalled.clear()
        this.ownWork(w)
      },
      { lane: Lane.world, key: `k8s:own-retry:${w.name}` }
    )
  }

  /** Recomputes a workload's phase from its pods, reports what changed, finishes a deletion. */
  private refresh(w: Workload, report = true): void {
    if (this.workloads.get(w.name) !== w) return
    if (w.deleting) {
      // Carrying a deletion on is the driver's own work: a passive driver leaves it to the leader.
      if (this.active) this.deleteRemaining(w)
      return this.finishIfGone(w)
    }
    const states: Array<PodState | "missing"> = w.pods.map((pod) => {
      const cached = this.cache.get(pod)
      return cached === undefined ? "missing" : podStateOf(cached)
    })
    const next = workloadPhaseOf(states, w)
    const before = w.phase
    w.preempted = next.preempted
    if (next.phase === before) return
    w.phase = next.phase
    this.changes.set(w.name, w.resource)
    const at = this.clock.now()
    if (HELD.has(next.phase) && !HELD.has(before)) {
      w.holds = true
      w.held_at = at
    } else if (HELD.has(before) && !HELD.has(next.phase)) {
      // A stop no pod's record explained (each pod that stops is dated first): dated now.
      this.stopped(w, null)
    }
    // What a control plane finds already started, it did not see start: its start is unknown.
    if (!report) return
    if (HELD.has(next.phase) && w.started_at === null) w.started_at = at
    const resource = w.resource
    // A stop learned late (a re-opened watch, a relist) carries when the pods' records date it.
    const stop = w.holds === false ? w.stops.at(-1) : undefined
    const dated = stop !== undefined && stop.at < at ? { ended_at: stop.at } : {}
    switch (next.phase) {
      case "loading":
        return this.emit({ type: "pod.loading", resource, at })
      case "running":
        return this.emit({ type: "pod.running", resource, at, started_at: w.started_at })
      case "preempted":
        return this.emit({ type: "pod.preempted", resource, at, ...dated })
      case "failed":
        return this.emit({ type: "pod.failed", resource, at, ...dated })
      case "pending":
        return
    }
  }

  /**
   * The workload's pods stopped holding their GPUs; `dated` is when a pod's own record says so
   * (cluster wall time in whole seconds, `podStoppedAt`), or null if it does not. Dated when the
   * driver learned it, as the event it sends then is, unless the driver learned it late (a
   * relist, a re-opened watch replaying its gap, the first list at start: `lateSince`) and the
   * record puts the stop in an earlier second: then at the start of that second, the earliest
   * instant it may have been, but never before this driver saw the pods start, nor before its
   * view was last current. Cluster and engine clocks are both wall time (UTC milliseconds); a
   * skew between them moves a stop learned late by as much, within those bounds, and never
   * moves a stop heard live. A workload stops once until its pods hold their GPUs again; our own deletes are no
   * stop of theirs (the engine stopped billing when it asked).
   */
  private stopped(w: Workload, dated: number | null): void {
    if (w.holds === false) return
    // A pod gone that a DELETED told before its look-up confirmed it: as of that DELETED, never
    // before the pods last held again nor before the last stop ended (the stops stay in order).
    const heard = this.goneHeardAt
    const now = heard === null ? this.clock.now() : Math.max(heard, w.held_at ?? heard, w.stops.at(-1)?.until ?? heard)
    // The record dates the stop only when the driver learned it late: a node's clock running
    // behind must not backdate a stop heard on time, and even learned late, no stop is dated
    // before the driver last had a current view (it would have heard of it then).
    const since = this.lateSince
    const late = since !== null && dated !== null && dated + KUBE_TIME_PRECISION_MS <= now
    if (w.deleting) {
      // Our own deletes are no stop of theirs (the engine stopped billing when it asked). But a
      // delete asked while the view was behind may learn late that the pods had stopped before
      // it: a record whose whole second ended by then (`pod.deleted` carries it).
      const before = late && w.deleteBehindAt !== null && dated + KUBE_TIME_PRECISION_MS <= w.deleteBehindAt
      if (!before) return
    }
    const at = late ? Math.max(dated, since, w.held_at ?? dated) : now
    const until = late ? Math.max(dated + KUBE_TIME_PRECISION_MS - 1, at) : now
    const last = w.stops.at(-1)
    assert(last === undefined || last.until <= at, () => `workload ${w.name}: stop at ${at} before the last one (until ${last!.until})`)
    w.stops.push({ at, until })
    if (w.stops.length > STOPS_REMEMBERED_MAX) w.stops.shift()
    w.holds = false
    if (w.deleting) w.stopBeforeDelete = at
  }

  /**
   * Sends a delete for each pod of the workload that exists and is not already going. A pod
   * terminating for longer than `pod_force_delete_after_ms` (its node gone, its kubelet
   * silent) is deleted again without a grace period, so a stop always completes.
   */
  private deleteRemaining(w: Workload): void {
    const now = this.clock.now()
    for (const pod of w.pods) {
      const cached = this.cache.get(pod)
      if (cached === undefined || w.busy.has(pod)) continue
      // Its label back first: deleted out of our selector, its end would never be seen. Unless
      // that gave up (`unwatched`): deleted anyway, its end confirmed by name.
      let unwatched = w.unwatched.get(pod)
      if (w.unlabeled.has(pod) && unwatched === undefined) {
        this.restoreLabels(w, pod)
        continue
      }
      if (w.awaiting.has(pod) || w.deleteStalled.has(pod)) continue
      // Already terminating: no delete to send, only its end to confirm.
      if (unwatched !== undefined && unwatched.at === null && isTerminating(cached)) w.unwatched.set(pod, (unwatched = { checks: unwatched.checks, at: now }))
      if (unwatched !== undefined && unwatched.at !== null) {
        // Its delete was answered: asked by name when due, forced once terminating too long.
        if (unwatched.at > now) {
          this.relabelLater(w, unwatched.at)
          continue
        }
        const since = isTerminating(cached) ? (w.terminatingSince.get(pod) ?? now) : now
        if (isTerminating(cached)) w.terminatingSince.set(pod, since)
        if (now - since >= this.config.limits.pod_force_delete_after_ms) this.deletePod(w, pod, 1, true, uidOf(cached))
        else this.confirmGone(w, pod, uidOf(cached)!)
        continue
      }
      if (!isTerminating(cached)) {
        this.deletePod(w, pod, 1, false, uidOf(cached))
        continue
      }
      const since = w.terminatingSince.get(pod) ?? now
      w.terminatingSince.set(pod, since)
      if (now - since >= this.config.limits.pod_force_delete_after_ms) this.deletePod(w, pod, 1, true, uidOf(cached))
    }
  }

  /** Whether every pod of a workload being deleted is gone, with nothing left in flight. */
  private concluded(w: Workload): boolean {
    return w.pods.every((pod) => !this.cache.has(pod) && !w.busy.has(pod) && !w.awaiting.has(pod))
  }

  private finishIfGone(w: Workload): void {
    if (this.workloads.get(w.name) !== w || !this.concluded(w)) return
    // A pod taken as gone in a gap: its last version, which the replay brings, may date a stop
    // the engine settles at. Waited for while the view is behind (a relist or the replay's end
    // gives up on it: `takeList`, `caughtUp`, or the window's end at the next delete's ask).
    if (w.goneUnheard.size > 0 && this.viewBehind()) return
    this.workloads.delete(w.name)
    this.changes.set(w.name, w.resource)
    for (const pod of w.pods) if (this.podOwner.get(pod) === w.name) this.podOwner.delete(pod)
    // Its timers go with it: they would fire for a workload no longer there.
    if (w.ownRetryTimer !== null) this.clock.clearTimeout(w.ownRetryTimer)
    w.ownRetryTimer = null
    if (w.relabelTimer !== null) this.clock.clearTimeout(w.relabelTimer.handle)
    w.relabelTimer = null
    this.dropServiceIfUnused(w.service)
    const dated = w.stopBeforeDelete === null ? {} : { ended_at: w.stopBeforeDelete }
    this.emit({ type: "pod.deleted", resource: w.resource, at: this.clock.now(), ...dated })
  }

  private emit(event: ClusterEvent): void {
    this.handler?.(event)
  }
}

/**
 * How long a passive driver keeps a gone workload whose replacement it owes beyond
 * `passive_gone_workloads_max`: a leader that lived on made the replacement long before (the
 * standby would have seen it), or gave the workload up.
 */
const PASSIVE_REPLACEMENT_OWED_MS = 60 * 60_000

/** A pod's uid, as the API server assigned it (absent only from objects it never stored). */
const uidOf = (pod: V1Pod): string | undefined => pod.metadata?.uid ?? undefined

/**
 * What a replacement of `pod` is created from: its metadata and spec, not its placement; with
 * our labels as its workload makes them (`ownLabelsOf`), whatever it bore of them (a label
 * removed or changed by hand is not carried on to its replacement), and the others it bore.
 */
const templateOf = (w: Workload, pod: V1Pod): V1Pod => {
  const spec = { ...(pod.spec ?? { containers: [] }) }
  delete spec.nodeName
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: pod.metadata?.name, namespace: pod.metadata?.namespace, labels: { ...(pod.metadata?.labels ?? {}), ...ownLabelsOf(w, pod.metadata?.name ?? "") }, annotations: { ...(pod.metadata?.annotations ?? {}) } },
    spec
  }
}

/**
 * The labels the driver puts on pod `pod` of workload `w` (`podLabelsOf`), from the workload as
 * the driver holds it: what the engine created it with, or, for a workload a restarted control
 * plane found, what its pods' annotations said then. Not from the pod's annotations now: an
 * annotation edited by hand (`ecolink.io/service` set to another instance) would have the
 * driver move the replica into another instance's Service (found by the second reader of
 * 728ea7c). A pod of no workload of ours we can rebuild (an orphan of its own) has only the
 * selector's label.
 */
const ownLabelsOf = (w: Workload, pod: string): Record<string, string> => {
  const index = w.pods.indexOf(pod)
  if (w.resource === "" || index < 0) return { [LABELS.managed]: "true" }
  return podLabelsOf({ workload: w.name, resource: w.resource, account: w.account, region: w.region, instance: w.service }, index)
}

/** Our labels that `pod` lacks or bears with another value (removed or changed by hand), sorted. */
const labelsOwedOf = (w: Workload, pod: V1Pod): string[] => {
  const labels = pod.metadata?.labels ?? {}
  return Object.entries(ownLabelsOf(w, pod.metadata?.name ?? ""))
    .filter(([key, value]) => labels[key] !== value)
    .map(([key]) => key)
    .sort()
}

/** In the list/watch selector (`ecolink.io/managed=true`). */
const isManaged = (pod: V1Pod): boolean => pod.metadata?.labels?.[LABELS.managed] === "true"

/**
 * The workload a pod's annotations name, when the pod bears one of that workload's names
 * (`podNamesOf`): how a control plane rebuilds its workloads, and how a pod of ours that lost
 * its label is still known for ours. Null for any other pod.
 */
const annotatedWorkload = (pod: V1Pod): { readonly workload: string; readonly node_count: number } | null => {
  const a = pod.metadata?.annotations ?? {}
  const workload = a[ANNOTATIONS.workload]
  const node_count = Number(a[ANNOTATIONS.nodeCount] ?? "1")
  const name = pod.metadata?.name
  if (workload === undefined || name === undefined || !(Number.isSafeInteger(node_count) && node_count >= 1 && node_count <= ANNOTATION_NODE_COUNT_MAX)) return null
  return podNamesOf(workload, node_count).includes(name) ? { workload, node_count } : null
}

/** A pod of ours: in the selector, or named for a workload of ours (its label removed or changed by hand). */
const isOurs = (pod: V1Pod): boolean => isManaged(pod) || annotatedWorkload(pod) !== null

/** Loads a kubeconfig the way kubectl does: the file given, else `KUBECONFIG`, else in-cluster or ~/.kube/config. */
export const loadKubeconfig = (file?: string): KubeConfig => {
  const kc = new KubeConfig()
  if (file !== undefined) kc.loadFromFile(file)
  else kc.loadFromDefault()
  return kc
}
