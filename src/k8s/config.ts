/**
 * The Kubernetes world's configuration and limits, in one place (STYLE.md: every queue, loop
 * and retry has a named bound). docs/KUBERNETES.md explains each choice.
 */

/** A region of the cluster: static facts the engine's admission needs synchronously. */
export interface KubernetesRegion {
  readonly name: string
  readonly nodes: number
  readonly gpus_per_node: number
}

export interface KubernetesClusterConfig {
  /** The namespace every pod, service and lease of the engine lives in. */
  readonly namespace: string
  /** Regions, their node counts and GPUs per node (admission: `gpu_count exceeds GPUs per node`). */
  readonly regions: ReadonlyArray<KubernetesRegion>
  /** The node label a pod's region is selected by. */
  readonly region_label: string
  /** A node label that carries the GPU type (`H100`), or null to select nodes by region only. */
  readonly gpu_label: string | null
  /** The extended resource a pod asks for, per GPU. */
  readonly gpu_resource: string
  /** PriorityClass of GPU instances and clusters: preemptible by higher-priority work. */
  readonly preemptible_priority_class: string
  /** PriorityClass of inference replicas, or null for the cluster's default. */
  readonly inference_priority_class: string | null
  /** The image of a workload launched without one. */
  readonly default_image: string
  /** The port an inference replica serves on, and its Service's. */
  readonly inference_port: number
  /**
   * The HTTP path of an inference replica's readiness probe, or null for none: Ready (and so
   * `running`, billed and routed to) then means "serving", not merely "started".
   */
  readonly inference_readiness_path: string | null
  /** Seconds a pod has to stop when deleted (its `terminationGracePeriodSeconds`). */
  readonly termination_grace_s: number
  /**
   * StorageClass of a cloud drive's PersistentVolumeClaim (ReadWriteOnce), or null for the
   * cluster's default class. It should bind `WaitForFirstConsumer`, so the volume is provisioned
   * where its first pod is placed: in the drive's region (docs/KUBERNETES.md, "Storage").
   */
  readonly cloud_drive_storage_class: string | null
  /** StorageClass of a shared filesystem's claim (ReadWriteMany: an NFS-like provisioner), or null. */
  readonly shared_fs_storage_class: string | null
  readonly limits: KubernetesLimits
}

export interface KubernetesLimits {
  /** First wait before re-opening a dropped pod watch; doubles per failure. */
  readonly pods_watch_backoff_ms_min: number
  /** The longest wait between two attempts to re-open the pod watch. */
  readonly pods_watch_backoff_ms_max: number
  /**
   * A re-opened watch first replays what happened while it was down: what it delivers within
   * this long of opening is taken as learned late (dated from the pods' records), what comes
   * later as live, even if the API server sends no BOOKMARK (a hint it may never give).
   */
  readonly pods_watch_replay_window_ms: number
  /** Server-side watch timeout asked for (`timeoutSeconds`): the stream is re-opened after it. */
  readonly pods_watch_timeout_s: number
  /** Requests to the API server in flight at once; more wait in a queue. */
  readonly requests_in_flight_max: number
  /** Requests waiting for a slot; more is a programmer error (a runaway loop), not load. */
  readonly requests_queued_max: number
  /**
   * The longest the driver waits for an answer to one request (a create, a delete, a list; not
   * the watch, which has `pods_watch_timeout_s`), on the engine clock: a request still
   * unanswered then has failed like a network error (retried, its slot freed), and its late
   * answer is ignored.
   */
  readonly request_timeout_ms: number
  /** Attempts of one create or delete (pod, service, claim) that fails with a retriable error (5xx, network). */
  readonly request_attempts_max: number
  /** First wait before retrying a create or delete; doubles per attempt. */
  readonly request_backoff_ms_min: number
  readonly request_backoff_ms_max: number
  /**
   * A refusal that says when to come back (`Retry-After`, in seconds, on a 429 from API Priority
   * and Fairness or a 503) is retried no sooner, however short the backoff; a wait longer than
   * this is cut to it, so a wrong header never parks a write for hours.
   */
  readonly retry_after_ms_max: number
  /** Replacement pods created for one workload (preemptions); beyond it the workload fails. */
  readonly pod_replacements_max: number
  /**
   * The driver's own writes (a replacement pod, the delete of a kubelet-preempted pod) that gave
   * up after `request_attempts_max` are tried again after this wait, doubling per consecutive
   * give-up up to `own_retry_ms_max`, for as long as the workload is wanted: nothing else asks
   * for them (the engine only knows the workload is preempted).
   */
  readonly own_retry_ms_min: number
  readonly own_retry_ms_max: number
  /**
   * Workloads whose pods are all gone that a passive driver (a standby's: no engine subscribed)
   * keeps, newest first; beyond, the oldest is forgotten. Nobody deletes them on a standby (the
   * leader deletes its own workloads, which the standby sees go as lost pods), and they are kept
   * at all for what a new leader may ask of them (`firstStopAt`, a replacement still owed).
   */
  readonly passive_gone_workloads_max: number
  /**
   * A pod still terminating this long after we first saw it going (its node lost, its kubelet
   * silent) is deleted again with no grace period, at the engine's next delete (the watchdog
   * repeats it every tick), so a stopping resource always reaches `terminated`.
   */
  readonly pod_force_delete_after_ms: number
  /**
   * Events one round of lists reads in all: the driver lists the namespace's pod stop Events (one
   * list per reason, every page) once per start and per relist that finds a pod gone with no record
   * of its stop (docs/KUBERNETES.md, "A pod gone unseen: its Events"). Beyond, the rest are not
   * read, and a stop they alone told of is dated when found.
   */
  readonly events_listed_max: number
  /**
   * Events one page of those lists asks for (`limit`; a `continue` token brings the next): the
   * API server reads and the driver holds one page at a time. 500 is client-go's pager's default.
   */
  readonly events_page_max: number
}

export const DEFAULT_LIMITS: KubernetesLimits = {
  pods_watch_backoff_ms_min: 500,
  pods_watch_backoff_ms_max: 30_000,
  pods_watch_replay_window_ms: 10_000,
  pods_watch_timeout_s: 300,
  requests_in_flight_max: 32,
  requests_queued_max: 100_000,
  request_timeout_ms: 30_000,
  request_attempts_max: 5,
  request_backoff_ms_min: 250,
  request_backoff_ms_max: 10_000,
  retry_after_ms_max: 60_000,
  pod_replacements_max: 100,
  own_retry_ms_min: 10_000,
  own_retry_ms_max: 60_000,
  passive_gone_workloads_max: 1_000,
  pod_force_delete_after_ms: 10 * 60_000,
  events_listed_max: 10_000,
  events_page_max: 500
}

/** The configuration with every default filled in, checked. */
export const kubernetesConfig = (
  config: Partial<Omit<KubernetesClusterConfig, "limits">> & { readonly regions: ReadonlyArray<KubernetesRegion>; readonly limits?: Partial<KubernetesLimits> }
): KubernetesClusterConfig => {
  const full: KubernetesClusterConfig = {
    namespace: "ecolink",
    region_label: "topology.kubernetes.io/region",
    gpu_label: null,
    gpu_resource: "nvidia.com/gpu",
    preemptible_priority_class: "ecolink-preemptible",
    inference_priority_class: null,
    default_image: "ecolink/gpu-workload:latest",
    inference_port: 8000,
    inference_readiness_path: "/health",
    termination_grace_s: 30,
    cloud_drive_storage_class: "ecolink-cloud-drive",
    shared_fs_storage_class: "ecolink-shared-fs",
    ...config,
    limits: { ...DEFAULT_LIMITS, ...(config.limits ?? {}) }
  }
  const l = full.limits
  if (!(l.pods_watch_backoff_ms_min > 0 && l.pods_watch_backoff_ms_min <= l.pods_watch_backoff_ms_max)) throw new Error("pods_watch_backoff_ms_min must be in (0, max]")
  if (!(l.request_backoff_ms_min > 0 && l.request_backoff_ms_min <= l.request_backoff_ms_max)) throw new Error("request_backoff_ms_min must be in (0, max]")
  if (!(l.retry_after_ms_max > 0)) throw new Error("retry_after_ms_max must be positive")
  if (!(l.own_retry_ms_min > 0 && l.own_retry_ms_min <= l.own_retry_ms_max)) throw new Error("own_retry_ms_min must be in (0, max]")
  if (!(l.request_timeout_ms > 0)) throw new Error("request_timeout_ms must be positive")
  if (!(l.pods_watch_replay_window_ms >= 0)) throw new Error("pods_watch_replay_window_ms must not be negative")
  if (!(Number.isSafeInteger(l.events_listed_max) && l.events_listed_max >= 1)) throw new Error("events_listed_max must be a positive integer")
  if (!(Number.isSafeInteger(l.events_page_max) && l.events_page_max >= 1)) throw new Error("events_page_max must be a positive integer")
  if (!(l.requests_in_flight_max >= 1 && l.request_attempts_max >= 1)) throw new Error("requests_in_flight_max and request_attempts_max must be at least 1")
  for (const r of full.regions) {
    if (!(Number.isSafeInteger(r.nodes) && r.nodes > 0 && Number.isSafeInteger(r.gpus_per_node) && r.gpus_per_node > 0)) throw new Error(`region ${r.name}: nodes and gpus_per_node must be positive integers`)
  }
  return full
}

/** The wait before attempt `attempt` (1 = the first retry): doubling from min, capped at max. */
export const backoffMs = (attempt: number, min_ms: number, max_ms: number): number => Math.min(max_ms, min_ms * 2 ** Math.min(Math.max(0, attempt - 1), 30))
