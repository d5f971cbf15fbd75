/**
 * A Kubernetes API test server, written in the project, that speaks the real wire protocol
 * over plain HTTP (node:http), so the real @kubernetes/client-node (and `kubectl`) can drive
 * it through a kubeconfig. No real cluster is available to the tests or CI (issue 5).
 *
 * What it serves, in Kubernetes' own shapes:
 * - core/v1 pods (with the `status` subresource and graceful deletion: a pod bound to a node
 *   gets a `deletionTimestamp` and stays until its kubelet removes it), core/v1 services,
 *   core/v1 persistentvolumeclaims (validated as the API server does: an access mode and a
 *   storage request; `volumeMode` defaulted; `Pending`, as no provisioner binds them here; the
 *   `kubernetes.io/pvc-protection` finalizer: a claim a pod still mounts gets a
 *   `deletionTimestamp` and goes when its last such pod is gone), and
 *   coordination.k8s.io/v1 leases: create, get, list, replace (PUT, optimistic concurrency on
 *   `metadata.resourceVersion` → 409 Conflict), JSON merge patch (what `kubectl label` sends; a
 *   `metadata.uid` that differs → 422, a `metadata.resourceVersion` that differs → 409; a patch
 *   that changes nothing writes nothing), delete (with preconditions).
 * - core/v1 events, written in-process by the scheduler and kubelet of the tests (`recordEvent`,
 *   named `<object>.<hex>` as the recorders name them), listed with the field selectors the API
 *   server allows on Events (`involvedObject.kind`, `involvedObject.uid`, `reason`, `source`, …,
 *   comma-joined: all must hold; any other field 400), and gone `event_ttl_ms` (1 h) after they
 *   were written, as the API server's TTL does.
 * - list with `labelSelector` (equality, inequality, existence, `in`, `notin`) and
 *   `fieldSelector` (`=`, `==`, `!=`, comma-joined; `metadata.name`, `metadata.namespace`, any
 *   dotted path on kinds other than Events; one it cannot parse 400); `limit` and `continue`
 *   (pages of matching objects in key order, namespace/name; a token as the API server's:
 *   base64url JSON of the resourceVersion and the next key, 400 if it is not one, 410 once
 *   `compact` passed its resourceVersion); the list's resourceVersion.
 * - watch (`?watch=true` or `watch=1`, or `/watch/` paths are not served): from a
 *   resourceVersion (events after it, replayed from a bounded history), or without one
 *   (synthetic ADDED for what exists, then changes); chunked newline-delimited JSON events
 *   ADDED / MODIFIED / DELETED / BOOKMARK / ERROR. An object whose change moves it into a
 *   watch's selector is ADDED there, one moving out (a label removed) DELETED, carrying the
 *   object as it was before, under the change's resourceVersion, as the API server's watch cache. A resourceVersion older than the history
 *   is 410 Gone: as an ERROR event carrying a 410 `Expired` Status (what the real API server
 *   does from its watch cache), or, when asked, as an HTTP 410 response.
 * - errors as `Status` objects: 404 NotFound, 409 AlreadyExists / Conflict, 410 Expired,
 *   422 Invalid, 415 UnsupportedMediaType, 405 MethodNotAllowed.
 * - discovery (`/api`, `/api/v1`, `/apis`, `/apis/coordination.k8s.io/v1`, `/version`), enough
 *   for kubectl.
 *
 * Test hooks: in-process reads and writes (`object`, `objects`, `update`, `remove`,
 * `deletePod`) for the scripted kubelet, a synchronous listener of every change, dropping
 * every watch stream (cleanly or abruptly) or freezing it (silent, left open: a half-open
 * connection), compacting the history so old resourceVersions
 * get 410, BOOKMARKs on demand (the harness's "caught up" barrier), injected failures or
 * requests never answered (`hung` counts those whose client closed the connection), and a
 * log of requests.
 *
 * Timestamps on objects come from the injected `now()` (the test's virtual clock), so what
 * the server stores is deterministic too.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** A stored object, as JSON. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type KubeObject = Record<string, any> & { metadata: KubeMeta }
export interface KubeMeta {
  name: string
  namespace?: string
  uid?: string
  resourceVersion?: string
  labels?: Record<string, string>
  annotations?: Record<string, string>
  creationTimestamp?: string
  deletionTimestamp?: string
  deletionGracePeriodSeconds?: number
  generation?: number
  [key: string]: unknown
}

interface ResourceType {
  readonly group: string
  readonly version: string
  readonly plural: string
  readonly singular: string
  readonly kind: string
  readonly shortNames: ReadonlyArray<string>
  readonly subresources: ReadonlyArray<string>
}

const RESOURCES: ReadonlyArray<ResourceType> = [
  { group: "", version: "v1", plural: "pods", singular: "pod", kind: "Pod", shortNames: ["po"], subresources: ["status"] },
  { group: "", version: "v1", plural: "services", singular: "service", kind: "Service", shortNames: ["svc"], subresources: ["status"] },
  { group: "", version: "v1", plural: "persistentvolumeclaims", singular: "persistentvolumeclaim", kind: "PersistentVolumeClaim", shortNames: ["pvc"], subresources: ["status"] },
  { group: "coordination.k8s.io", version: "v1", plural: "leases", singular: "lease", kind: "Lease", shortNames: [], subresources: [] },
  { group: "", version: "v1", plural: "events", singular: "event", kind: "Event", shortNames: ["ev"], subresources: [] }
]

/**
 * The fields a field selector may name on core/v1 Events, and where each is read, as the API
 * server has them: its field label conversion for v1 Events (`AddFieldLabelConversionsForEvent`,
 * pkg/apis/core/v1/conversion.go) refuses any other with 400 `field label not supported: <f>`,
 * and its event strategy (`EventToSelectableFields`, pkg/registry/core/event/strategy.go) reads
 * `source` as the source's component and every unset field as "" (so `reason=` matches none set).
 */
const EVENT_SELECTABLE_FIELDS: ReadonlyMap<string, string> = new Map([
  ["metadata.name", "metadata.name"],
  ["metadata.namespace", "metadata.namespace"],
  ["involvedObject.kind", "involvedObject.kind"],
  ["involvedObject.namespace", "involvedObject.namespace"],
  ["involvedObject.name", "involvedObject.name"],
  ["involvedObject.uid", "involvedObject.uid"],
  ["involvedObject.apiVersion", "involvedObject.apiVersion"],
  ["involvedObject.resourceVersion", "involvedObject.resourceVersion"],
  ["involvedObject.fieldPath", "involvedObject.fieldPath"],
  ["reason", "reason"],
  ["reportingComponent", "reportingComponent"],
  ["source", "source.component"],
  ["type", "type"]
])
/** How long the API server keeps an Event (`--event-ttl`, 1 h by default): it is gone after. */
export const EVENT_TTL_MS_DEFAULT = 60 * 60_000
const VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR"

/** One change, as the in-process listener sees it. */
export interface Change {
  readonly type: "ADDED" | "MODIFIED" | "DELETED"
  readonly plural: string
  readonly object: KubeObject
  /** The object before the change (MODIFIED, DELETED). */
  readonly old: KubeObject | null
}

interface HistoryEntry {
  readonly rv: number
  readonly plural: string
  readonly type: "ADDED" | "MODIFIED" | "DELETED"
  readonly object: KubeObject
  readonly old: KubeObject | null
}

interface Watcher {
  readonly plural: string
  readonly namespace: string | null
  readonly selector: Selector
  readonly fields: FieldSelector
  readonly bookmarks: boolean
  readonly res: ServerResponse
  readonly token: string | null
  closed: boolean
  /** Frozen (`freezeWatches`): nothing more is written, and the connection stays open. */
  silent: boolean
  timer: NodeJS.Timeout | null
}

export interface RequestRecord {
  readonly method: string
  readonly path: string
  readonly query: Readonly<Record<string, string>>
  readonly token: string | null
}

export interface InjectedFailure {
  readonly method?: string
  /** A substring of the path. */
  readonly path?: string
  /** Only requests bearing this token (`Authorization: Bearer …`). */
  readonly token?: string
  /** Only requests whose query has these parameters with these values (one list of several). */
  readonly query?: Readonly<Record<string, string>>
  /** Only watches (true), or only other requests (false). */
  readonly watch?: boolean
  readonly status: number
  /** Never answer instead (the socket stays open until the server closes): a hung API server. */
  readonly hang?: boolean
  /**
   * Seconds to come back after, as API Priority and Fairness says it with a 429: the
   * `Retry-After` header and the Status's `details.retryAfterSeconds`.
   */
  readonly retryAfter?: number
  /** How many requests it hits; Infinity until cleared. */
  times: number
}

export interface ApiServerOptions {
  /** Timestamps on stored objects (creation, deletion). The test's virtual clock. */
  readonly now: () => number
  /** Events kept for watches from a resourceVersion; older ones get 410. */
  readonly history_events_max?: number
  /** How a too-old resourceVersion is refused on watch: an ERROR event (default) or HTTP 410. */
  readonly expired_as?: "event" | "status"
  /** How long an Event is kept after it was written (`--event-ttl`). */
  readonly event_ttl_ms?: number
}

/** Bound on the request body the server reads: a test object is a few kilobytes. */
const REQUEST_BODY_BYTES_MAX = 1_000_000
export const HISTORY_EVENTS_MAX_DEFAULT = 10_000

const clone = <T>(x: T): T => structuredClone(x)

const status = (code: number, reason: string, message: string, details?: Record<string, unknown>): KubeObject => ({
  kind: "Status",
  apiVersion: "v1",
  metadata: {} as KubeMeta,
  status: code < 400 ? "Success" : "Failure",
  message,
  reason,
  ...(details === undefined ? {} : { details }),
  code
})

const groupResource = (t: ResourceType): string => (t.group === "" ? t.plural : `${t.plural}.${t.group}`)

// ── selectors ─────────────────────────────────────────────────────────────────────────────
type Requirement =
  | { readonly op: "=" | "!="; readonly key: string; readonly value: string }
  | { readonly op: "in" | "notin"; readonly key: string; readonly values: ReadonlyArray<string> }
  | { readonly op: "exists" | "!exists"; readonly key: string }
type Selector = ReadonlyArray<Requirement>
/** A field selector: its requirements, ANDed; `read` gives the field's value on an object. */
type FieldSelector = ReadonlyArray<{ readonly path: string; readonly op: "=" | "!="; readonly value: string; readonly read: (o: KubeObject) => string | undefined }>

/** Splits on commas that are not inside parentheses (`a in (x,y),b=c`). */
const splitTop = (s: string): string[] => {
  const parts: string[] = []
  let depth = 0
  let cur = ""
  for (const ch of s) {
    if (ch === "(") depth++
    if (ch === ")") depth--
    if (ch === "," && depth === 0) {
      parts.push(cur)
      cur = ""
    } else cur += ch
  }
  if (cur.trim() !== "") parts.push(cur)
  return parts.map((p) => p.trim()).filter((p) => p !== "")
}

export const parseLabelSelector = (s: string | undefined): Selector => {
  if (s === undefined || s.trim() === "") return []
  return splitTop(s).map((part): Requirement => {
    const set = /^([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(part)
    if (set !== null) return { op: set[2] as "in" | "notin", key: set[1]!, values: set[3]!.split(",").map((v) => v.trim()).filter((v) => v !== "") }
    const ne = /^([^\s!=]+)\s*!=\s*(.*)$/.exec(part)
    if (ne !== null) return { op: "!=", key: ne[1]!, value: ne[2]!.trim() }
    const eq = /^([^\s!=]+)\s*==?\s*(.*)$/.exec(part)
    if (eq !== null) return { op: "=", key: eq[1]!, value: eq[2]!.trim() }
    if (part.startsWith("!")) return { op: "!exists", key: part.slice(1).trim() }
    return { op: "exists", key: part }
  })
}

/** An object's key in the store, and the order of lists: namespace/name. */
const keyOf = (o: KubeObject): string => `${o.metadata.namespace}/${o.metadata.name}`

/** The version the API server's continue token carries (`meta.k8s.io/v1`). */
const CONTINUE_VERSION = "meta.k8s.io/v1"
/** A continue token as the API server makes one: base64url of `{"v","rv","start"}`, the next page's first key. */
const continueToken = (rv: number, start: string): string => Buffer.from(JSON.stringify({ v: CONTINUE_VERSION, rv, start })).toString("base64url")

const matchesLabels = (selector: Selector, labels: Readonly<Record<string, string>> | undefined): boolean =>
  selector.every((r) => {
    const v = labels?.[r.key]
    switch (r.op) {
      case "=":
        return v === r.value
      case "!=":
        return v !== r.value
      case "in":
        return v !== undefined && r.values.includes(v)
      case "notin":
        return v === undefined || !r.values.includes(v)
      case "exists":
        return v !== undefined
      case "!exists":
        return v === undefined
    }
  })

/**
 * A field selector as the API server parses it: comma-separated requirements (`a=b`, `a==b`,
 * `a!=b`), all of which must hold. One it cannot parse is 400; on Events, a field the API server
 * does not select on is 400 `field label not supported` (list and watch alike).
 */
const parseFieldSelector = (plural: string, s: string | undefined): FieldSelector => {
  if (s === undefined || s.trim() === "") return []
  return s.split(",").map((part) => {
    const ne = /^([^!=]+)!=(.*)$/.exec(part)
    const eq = ne === null ? /^([^!=]+)==?(.*)$/.exec(part) : null
    const m = ne ?? eq
    if (m === null) return fail(400, "BadRequest", `invalid field selector: ${s}: ${part}: no operator`)
    const path = m[1]!.trim()
    const value = m[2]!.trim()
    const op = ne !== null ? ("!=" as const) : ("=" as const)
    if (plural !== "events") return { path, op, value, read: (o: KubeObject) => fieldOf(o, path) }
    const at = EVENT_SELECTABLE_FIELDS.get(path)
    if (at === undefined) return fail(400, "BadRequest", `field label not supported: ${path}`)
    return { path, op, value, read: (o: KubeObject) => fieldOf(o, at) ?? "" }
  })
}

const fieldOf = (o: KubeObject, path: string): string | undefined => {
  let cur: unknown = o
  for (const k of path.split(".")) cur = cur !== null && typeof cur === "object" ? (cur as Record<string, unknown>)[k] : undefined
  return cur === undefined || cur === null ? undefined : String(cur)
}

const matchesFields = (fields: FieldSelector, o: KubeObject): boolean => fields.every((f) => (f.op === "=" ? f.read(o) === f.value : f.read(o) !== f.value))

/** JSON merge patch (RFC 7386): objects merge, null deletes, anything else replaces. */
const mergePatch = (target: unknown, patch: unknown): unknown => {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch)
  const out: Record<string, unknown> = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {}
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/

/** Thrown inside a handler: answered as the Status it carries. */
class StatusError extends Error {
  constructor(readonly body: KubeObject) {
    super(String(body.message))
  }
}
const fail = (code: number, reason: string, message: string, details?: Record<string, unknown>): never => {
  throw new StatusError(status(code, reason, message, details))
}

/** The RFC 3339 form Kubernetes uses for `Time` fields (whole seconds). */
export const kubeTime = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z")

export class KubeApiServer {
  private readonly server: Server
  private readonly store = new Map<string, Map<string, KubeObject>>()
  private readonly history: HistoryEntry[] = []
  private historyStart = 0
  /** Watches from a resourceVersion below this get 410: their events are gone. */
  private compactedRv = 0
  private rv = 0
  private uid = 0
  private readonly watchers = new Set<Watcher>()
  private readonly listeners: Array<(change: Change) => void> = []
  private readonly failures: InjectedFailure[] = []
  readonly requests: RequestRecord[] = []
  /**
   * Requests an injected `hang` left unanswered, and how many of them the client gave up on:
   * their connection closed before any answer (a client that cancels a request it timed out).
   */
  readonly hung = { requests: 0, closed: 0 }
  /** Watch requests received, and those of them an injected `hang` holds open now. */
  readonly watches = { requests: 0, held: 0 }
  private readonly historyMax: number
  /** Events written in one millisecond, so that two get two names (the recorders use nanoseconds). */
  private eventSeq = 0
  expiredAs: "event" | "status"
  url = ""

  private constructor(private readonly options: ApiServerOptions) {
    this.historyMax = options.history_events_max ?? HISTORY_EVENTS_MAX_DEFAULT
    this.expiredAs = options.expired_as ?? "event"
    for (const t of RESOURCES) this.store.set(t.plural, new Map())
    this.server = createServer((req, res) => void this.handle(req, res))
  }

  static async start(options: ApiServerOptions): Promise<KubeApiServer> {
    const s = new KubeApiServer(options)
    await new Promise<void>((resolve) => s.server.listen(0, "127.0.0.1", resolve))
    s.url = `http://127.0.0.1:${(s.server.address() as AddressInfo).port}`
    return s
  }

  async close(): Promise<void> {
    for (const w of this.watchers) this.endWatch(w, true)
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  // ── in-process API (the kubelet, the tests) ────────────────────────────────────────────
  /** The current resourceVersion of the whole store, as a number. */
  get resourceVersion(): number {
    return this.rv
  }

  object(plural: string, namespace: string, name: string): KubeObject | undefined {
    const o = this.table(plural).get(`${namespace}/${name}`)
    return o === undefined ? undefined : clone(o)
  }

  /** Every stored object of a kind (in a namespace), sorted by namespace and name. */
  objects(plural: string, namespace?: string): KubeObject[] {
    return [...this.table(plural).entries()]
      .filter(([, o]) => namespace === undefined || o.metadata.namespace === namespace)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, o]) => clone(o))
  }

  /** Changes an object in place (a kubelet's status update); a MODIFIED event follows. */
  update(plural: string, namespace: string, name: string, mutate: (o: KubeObject) => void): KubeObject {
    const key = `${namespace}/${name}`
    const old = this.table(plural).get(key)
    if (old === undefined) throw new Error(`no ${plural} ${key}`)
    const next = clone(old)
    mutate(next)
    return this.commit(plural, "MODIFIED", next, old)
  }

  /** Removes an object at once (a kubelet confirming a pod is gone); a DELETED event follows. */
  remove(plural: string, namespace: string, name: string): KubeObject | undefined {
    const key = `${namespace}/${name}`
    const old = this.table(plural).get(key)
    if (old === undefined) return undefined
    return this.commit(plural, "DELETED", clone(old), old)
  }

  /** What `DELETE …/pods/name` does, from inside (the scheduler deleting a preemption victim). */
  deletePod(namespace: string, name: string, grace_seconds?: number): KubeObject | undefined {
    const pod = this.table("pods").get(`${namespace}/${name}`)
    if (pod === undefined) return undefined
    return this.deleteObject(RESOURCES[0]!, pod, grace_seconds)
  }

  /** Creates an object from inside (a test planting a stray pod). */
  create(plural: string, namespace: string, body: KubeObject): KubeObject {
    return this.createObject(this.type(plural), namespace, clone(body))
  }

  /**
   * Writes an Event about an object, as a recorder does (`POST …/events`): `event` without its
   * metadata, which the server fills (a name `<involved object>.<hex>`, the namespace, a uid).
   */
  recordEvent(namespace: string, event: Omit<KubeObject, "metadata">): KubeObject {
    const involved = (event.involvedObject as { name?: string } | undefined)?.name ?? "event"
    const name = `${involved}.${(BigInt(Math.trunc(this.options.now())) * 1_000_000n + BigInt(++this.eventSeq)).toString(16)}`
    return this.createObject(this.type("events"), namespace, { apiVersion: "v1", kind: "Event", ...clone(event), metadata: { name, namespace } })
  }

  /** Every change, synchronously, after watchers were told. */
  onChange(listener: (change: Change) => void): () => void {
    this.listeners.push(listener)
    return () => {
      const i = this.listeners.indexOf(listener)
      if (i >= 0) this.listeners.splice(i, 1)
    }
  }

  /** Open watch streams (of a kind). */
  watchCount(plural?: string): number {
    return [...this.watchers].filter((w) => !w.closed && (plural === undefined || w.plural === plural)).length
  }

  /** Ends every watch stream: cleanly (`end`) or abruptly (the socket destroyed mid-stream). */
  /**
   * Every open watch goes silent and stays open: nothing more is written on it, not even a
   * BOOKMARK or its end at `timeoutSeconds`, as a client sees a half-open connection (the
   * server's end gone without a reset). Returns how many.
   */
  freezeWatches(): number {
    const open = [...this.watchers].filter((w) => !w.closed && !w.silent)
    for (const w of open) {
      w.silent = true
      if (w.timer !== null) clearTimeout(w.timer)
    }
    return open.length
  }

  /** Open watches frozen by `freezeWatches`. */
  get frozenWatches(): number {
    return [...this.watchers].filter((w) => !w.closed && w.silent).length
  }

  dropWatches(options: { readonly abrupt?: boolean } = {}): number {
    const open = [...this.watchers].filter((w) => !w.closed)
    for (const w of open) this.endWatch(w, options.abrupt ?? false)
    return open.length
  }

  /** Forgets every event so far: a watch from any earlier resourceVersion now gets 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv
    this.history.length = 0
    this.historyStart = 0
  }

  /** Sends a BOOKMARK at the current resourceVersion to every watch that allows bookmarks. */
  bookmark(): number {
    let sent = 0
    for (const w of this.watchers) {
      if (w.closed || w.silent || !w.bookmarks) continue
      const t = this.type(w.plural)
      this.send(w, "BOOKMARK", { kind: t.kind, apiVersion: apiVersionOf(t), metadata: { resourceVersion: String(this.rv) } as KubeMeta })
      sent++
    }
    return sent
  }

  /** Makes matching requests fail with `status` (a Status body), `times` times. */
  inject(failure: Omit<InjectedFailure, "times"> & { times?: number }): InjectedFailure {
    const f: InjectedFailure = { ...failure, times: failure.times ?? Infinity }
    this.failures.push(f)
    return f
  }

  /**
   * Holds the answer to the next GET of one object whose path contains `path`: read when the
   * request comes, sent once `until` settles. A slow answer, overtaken by the watch events of
   * changes made meanwhile (the client sees an older version after newer ones).
   */
  holdGet(path: string, until: Promise<void>): void {
    this.heldGets.push({ path, until })
  }

  private readonly heldGets: Array<{ readonly path: string; readonly until: Promise<void> }> = []

  clearFailures(): void {
    this.failures.length = 0
  }

  // ── HTTP ───────────────────────────────────────────────────────────────────────────────
  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://localhost")
    const query = Object.fromEntries(url.searchParams.entries())
    const auth = req.headers.authorization
    const token = auth?.startsWith("Bearer ") ? auth.slice("Bearer ".length) : null
    const method = req.method ?? "GET"
    this.requests.push({ method, path: url.pathname, query, token })
    const isWatch = query.watch === "true" || query.watch === "1"
    if (isWatch) this.watches.requests++
    try {
      const body = await readBody(req)
      const failure = this.failures.find(
        (f) => f.times > 0 && (f.method === undefined || f.method === method) && (f.path === undefined || url.pathname.includes(f.path)) && (f.token === undefined || f.token === token) && (f.watch === undefined || f.watch === isWatch) &&
          Object.entries(f.query ?? {}).every(([k, v]) => query[k] === v)
      )
      if (failure !== undefined) {
        failure.times--
        if (failure.hang === true) {
          this.hung.requests++
          if (isWatch) this.watches.held++
          res.on("close", () => {
            this.hung.closed++
            if (isWatch) this.watches.held--
          })
          return
        }
        if (failure.retryAfter !== undefined) {
          res.setHeader("Retry-After", String(failure.retryAfter))
          fail(failure.status, failure.status === 429 ? "TooManyRequests" : "InternalError", "Too many requests, please try again later.", { retryAfterSeconds: failure.retryAfter })
        }
        fail(failure.status, failure.status >= 500 ? "InternalError" : "BadRequest", `injected failure ${failure.status}`)
      }
      const discovery = this.discovery(url.pathname)
      if (discovery !== undefined) return json(res, 200, discovery)
      const route = this.route(url.pathname)
      if (route === undefined) fail(404, "NotFound", `the server could not find the requested resource`)
      const { type, namespace, name, subresource } = route!
      const watching = query.watch === "true" || query.watch === "1"
      if (method === "GET" && name === null) return watching ? this.watch(type, namespace, query, token, res) : json(res, 200, this.list(type, namespace, query))
      if (method === "POST" && name === null) {
        if (namespace === null) return fail(405, "MethodNotAllowed", "create needs a namespace")
        return json(res, 201, this.createObject(type, namespace, parseJson(body)))
      }
      if (name === null) return fail(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`)
      if (namespace === null) return fail(404, "NotFound", `${type.plural} must be addressed in a namespace`)
      if (method === "GET") {
        const answer = this.get(type, namespace, name)
        const held = this.heldGets.findIndex((h) => url.pathname.includes(h.path))
        if (held >= 0) await this.heldGets.splice(held, 1)[0]!.until
        return json(res, 200, answer)
      }
      if (method === "PUT") return json(res, 200, this.replace(type, namespace, name, subresource, parseJson(body)))
      if (method === "PATCH") return json(res, 200, this.patch(type, namespace, name, subresource, String(req.headers["content-type"] ?? ""), parseJson(body)))
      if (method === "DELETE") {
        const options: Record<string, unknown> = body.length > 0 ? parseJson(body) : {}
        const grace = query.gracePeriodSeconds !== undefined ? Number(query.gracePeriodSeconds) : (options.gracePeriodSeconds as number | undefined)
        const existing = this.table(type.plural).get(`${namespace}/${name}`)
        if (existing === undefined) fail(404, "NotFound", `${groupResource(type)} "${name}" not found`, { name, kind: type.plural })
        const pre = options.preconditions as { uid?: string; resourceVersion?: string } | undefined
        if (pre?.uid !== undefined && pre.uid !== existing!.metadata.uid) {
          fail(409, "Conflict", `Operation cannot be fulfilled on ${groupResource(type)} "${name}": Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${existing!.metadata.uid}`, { name, kind: type.plural })
        }
        if (pre?.resourceVersion !== undefined && pre.resourceVersion !== existing!.metadata.resourceVersion) {
          fail(409, "Conflict", `Operation cannot be fulfilled on ${groupResource(type)} "${name}": Precondition failed: ResourceVersion in precondition: ${pre.resourceVersion}, ResourceVersion in object meta: ${existing!.metadata.resourceVersion}`, { name, kind: type.plural })
        }
        return json(res, 200, this.deleteObject(type, existing!, grace))
      }
      fail(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`)
    } catch (e) {
      if (e instanceof StatusError) return json(res, e.body.code as number, e.body)
      return json(res, 500, status(500, "InternalError", String(e)))
    }
  }

  private discovery(path: string): KubeObject | undefined {
    const resourcesOf = (group: string) =>
      RESOURCES.filter((t) => t.group === group).flatMap((t) => [
        { name: t.plural, singularName: t.singular, namespaced: true, kind: t.kind, verbs: VERBS, shortNames: t.shortNames },
        ...t.subresources.map((s) => ({ name: `${t.plural}/${s}`, singularName: "", namespaced: true, kind: t.kind, verbs: ["get", "patch", "update"] }))
      ])
    switch (path) {
      case "/version":
        return { major: "1", minor: "32", gitVersion: "v1.32.0-ecolink-test", platform: "linux/amd64" } as unknown as KubeObject
      case "/api":
        return { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress: this.url.replace("http://", "") }] } as unknown as KubeObject
      case "/api/v1":
        return { kind: "APIResourceList", groupVersion: "v1", resources: resourcesOf("") } as unknown as KubeObject
      case "/apis":
        return {
          kind: "APIGroupList",
          apiVersion: "v1",
          groups: [{ name: "coordination.k8s.io", versions: [{ groupVersion: "coordination.k8s.io/v1", version: "v1" }], preferredVersion: { groupVersion: "coordination.k8s.io/v1", version: "v1" } }]
        } as unknown as KubeObject
      case "/apis/coordination.k8s.io/v1":
        return { kind: "APIResourceList", apiVersion: "v1", groupVersion: "coordination.k8s.io/v1", resources: resourcesOf("coordination.k8s.io") } as unknown as KubeObject
      default:
        return undefined
    }
  }

  /** `/api/v1[/namespaces/ns]/pods[/name[/status]]`, `/apis/g/v[/namespaces/ns]/leases[/name]`. */
  private route(path: string): { type: ResourceType; namespace: string | null; name: string | null; subresource: string | null } | undefined {
    const parts = path.split("/").filter((p) => p !== "")
    let rest: string[]
    let group: string
    if (parts[0] === "api" && parts[1] === "v1") {
      group = ""
      rest = parts.slice(2)
    } else if (parts[0] === "apis" && parts.length >= 3) {
      group = parts[1]!
      rest = parts.slice(3)
    } else return undefined
    let namespace: string | null = null
    if (rest[0] === "namespaces" && rest.length >= 3) {
      namespace = rest[1]!
      rest = rest.slice(2)
    }
    const type = RESOURCES.find((t) => t.group === group && t.plural === rest[0])
    if (type === undefined || rest.length > 3) return undefined
    const subresource = rest[2] ?? null
    if (subresource !== null && !type.subresources.includes(subresource)) return undefined
    return { type, namespace, name: rest[1] ?? null, subresource }
  }

  private type(plural: string): ResourceType {
    const t = RESOURCES.find((r) => r.plural === plural)
    if (t === undefined) throw new Error(`unknown resource ${plural}`)
    return t
  }

  private table(plural: string): Map<string, KubeObject> {
    const t = this.store.get(plural)
    if (t === undefined) throw new Error(`unknown resource ${plural}`)
    return t
  }

  private get(type: ResourceType, namespace: string, name: string): KubeObject {
    const o = this.table(type.plural).get(`${namespace}/${name}`)
    if (o === undefined) fail(404, "NotFound", `${groupResource(type)} "${name}" not found`, { name, kind: type.plural })
    return clone(o!)
  }

  private list(type: ResourceType, namespace: string | null, query: Record<string, string>): KubeObject {
    const selector = parseLabelSelector(query.labelSelector)
    const fields = parseFieldSelector(type.plural, query.fieldSelector)
    const start = this.continueStart(query)
    if (type.plural === "events") this.expireEvents()
    // Chunks in key order (namespace/name), as etcd keeps them: a page holds the first `limit`
    // objects from `start` that match, however many that skips, and `continue` says where the
    // next begins. Unlike the API server's, a later page is read from the current objects, not
    // from a snapshot at the first page's resourceVersion.
    const from = this.objects(type.plural, namespace ?? undefined).filter((o) => (start === null || keyOf(o) >= start) && matchesLabels(selector, o.metadata.labels) && matchesFields(fields, o))
    const limit = query.limit === undefined || query.limit === "" ? 0 : Number(query.limit)
    if (!(Number.isSafeInteger(limit) && limit >= 0)) fail(400, "BadRequest", `invalid limit: ${query.limit}`)
    const items = limit > 0 ? from.slice(0, limit) : from
    const last = items.at(-1)
    const more = items.length < from.length && last !== undefined
    const metadata = { resourceVersion: String(this.rv), ...(more ? { continue: continueToken(this.rv, `${keyOf(last)}\u0000`) } : {}) }
    return { kind: `${type.kind}List`, apiVersion: apiVersionOf(type), metadata: metadata as unknown as KubeMeta, items }
  }

  /**
   * Where a list's `continue` token says its page begins (a key), or null without one. As the API
   * server: a token it cannot decode is 400, one given with a resourceVersion is 400, and one
   * whose resourceVersion was compacted is 410 Expired.
   */
  private continueStart(query: Record<string, string>): string | null {
    if (query.continue === undefined || query.continue === "") return null
    if (query.resourceVersion !== undefined && query.resourceVersion !== "") fail(400, "BadRequest", "specifying resource version is not allowed when using continue")
    let token: { v?: unknown; rv?: unknown; start?: unknown }
    try {
      token = JSON.parse(Buffer.from(query.continue, "base64url").toString("utf8")) as typeof token
    } catch {
      return fail(400, "BadRequest", `continue key is not valid: ${query.continue}`)
    }
    if (token.v !== CONTINUE_VERSION || typeof token.rv !== "number" || typeof token.start !== "string" || token.start === "") fail(400, "BadRequest", `continue key is not valid: ${query.continue}`)
    if ((token.rv as number) < this.compactedRv) {
      fail(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
    }
    return token.start as string
  }

  /** The API server's event TTL: an Event written `event_ttl_ms` ago or more is gone. */
  private expireEvents(): void {
    const ttl_ms = this.options.event_ttl_ms ?? EVENT_TTL_MS_DEFAULT
    for (const e of this.objects("events")) {
      const written = Date.parse(String(e.metadata.creationTimestamp))
      if (written + ttl_ms <= this.options.now()) this.remove("events", e.metadata.namespace!, e.metadata.name)
    }
  }

  private createObject(type: ResourceType, namespace: string, body: KubeObject): KubeObject {
    const name = body?.metadata?.name
    if (typeof name !== "string" || name === "") fail(422, "Invalid", `${type.kind} is invalid: metadata.name: Required value`, { kind: type.kind })
    const valid = type.plural === "services" ? DNS1035_LABEL.test(name) && name.length <= 63 : DNS1123_SUBDOMAIN.test(name) && name.length <= 253
    if (!valid) fail(422, "Invalid", `${type.kind} "${name}" is invalid: metadata.name: Invalid value: "${name}"`, { name, kind: type.kind })
    if (body.metadata.namespace !== undefined && body.metadata.namespace !== namespace) {
      fail(400, "BadRequest", `the namespace of the provided object does not match the namespace sent on the request`)
    }
    if (this.table(type.plural).has(`${namespace}/${name}`)) {
      fail(409, "AlreadyExists", `${groupResource(type)} "${name}" already exists`, { name, group: type.group, kind: type.plural })
    }
    const o: KubeObject = {
      ...clone(body),
      kind: type.kind,
      apiVersion: apiVersionOf(type),
      metadata: {
        ...clone(body.metadata),
        namespace,
        uid: this.nextUid(),
        creationTimestamp: kubeTime(this.options.now()),
        generation: 1
      }
    }
    delete o.metadata.resourceVersion
    delete o.metadata.deletionTimestamp
    if (type.plural === "pods") {
      o.spec = { restartPolicy: "Always", terminationGracePeriodSeconds: 30, ...(o.spec ?? {}) }
      o.status = { phase: "Pending", qosClass: "BestEffort" }
    }
    if (type.plural === "services") {
      o.spec = { type: "ClusterIP", ...(o.spec ?? {}), clusterIP: `10.96.${(this.uid >> 8) & 255}.${this.uid & 255}` }
      o.status = { loadBalancer: {} }
    }
    if (type.plural === "persistentvolumeclaims") {
      checkClaim(o)
      // The StorageObjectInUseProtection admission plugin's finalizer (see `releaseClaims`).
      o.metadata.finalizers = [...new Set([...((o.metadata.finalizers as string[] | undefined) ?? []), PVC_PROTECTION])]
      o.spec = { volumeMode: "Filesystem", ...o.spec }
      o.status = { phase: "Pending" }
    }
    return this.commit(type.plural, "ADDED", o, null)
  }

  private replace(type: ResourceType, namespace: string, name: string, subresource: string | null, body: KubeObject): KubeObject {
    const old = this.table(type.plural).get(`${namespace}/${name}`)
    if (old === undefined) fail(404, "NotFound", `${groupResource(type)} "${name}" not found`, { name, kind: type.plural })
    if (body?.metadata?.name !== undefined && body.metadata.name !== name) fail(400, "BadRequest", `the name of the object (${body.metadata.name}) does not match the name on the URL (${name})`)
    const rv = body?.metadata?.resourceVersion
    if (rv !== undefined && rv !== "" && rv !== old!.metadata.resourceVersion) {
      fail(409, "Conflict", `Operation cannot be fulfilled on ${groupResource(type)} "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
        name,
        group: type.group,
        kind: type.plural
      })
    }
    const next: KubeObject =
      subresource === "status"
        ? { ...clone(old!), status: clone(body.status) }
        : { ...clone(body), kind: type.kind, apiVersion: apiVersionOf(type), metadata: { ...clone(body.metadata), ...pick(old!.metadata, ["namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"]) }, ...(old!.status === undefined ? {} : { status: clone(old!.status) }) }
    return this.commit(type.plural, "MODIFIED", next, old!)
  }

  private patch(type: ResourceType, namespace: string, name: string, subresource: string | null, contentType: string, body: KubeObject): KubeObject {
    if (!contentType.startsWith("application/merge-patch+json") && !contentType.startsWith("application/strategic-merge-patch+json")) {
      fail(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json`)
    }
    const old = this.table(type.plural).get(`${namespace}/${name}`)
    if (old === undefined) fail(404, "NotFound", `${groupResource(type)} "${name}" not found`, { name, kind: type.plural })
    // A patch naming `metadata.uid` names the object it means: the uid is immutable, so another
    // object of that name refuses it 422 Invalid (what Kubernetes' own controllers rely on: the
    // ReplicaSet controller's release patch, the garbage collector's owner-reference patch). A
    // `metadata.resourceVersion` in a patch is a precondition: 409 Conflict if it differs.
    const uid = body?.metadata?.uid
    if (subresource === null && uid !== undefined && uid !== old!.metadata.uid) {
      fail(422, "Invalid", `${type.kind} "${name}" is invalid: metadata.uid: Invalid value: "${String(uid)}": field is immutable`, { name, group: type.group, kind: type.kind })
    }
    const rv = body?.metadata?.resourceVersion
    if (rv !== undefined && rv !== old!.metadata.resourceVersion) {
      fail(409, "Conflict", `Operation cannot be fulfilled on ${groupResource(type)} "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
        name,
        group: type.group,
        kind: type.plural
      })
    }
    const patched = mergePatch(old, subresource === "status" ? { status: body.status } : body) as KubeObject
    patched.metadata = { ...patched.metadata, ...pick(old!.metadata, ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"]) }
    // A patch that changes nothing writes nothing: no new resourceVersion, no watch event.
    if (JSON.stringify(patched) === JSON.stringify(old)) return clone(old!)
    return this.commit(type.plural, "MODIFIED", patched, old!)
  }

  /**
   * Deletes at once, except a pod bound to a node with a grace period: it gets a
   * `deletionTimestamp` and stays until its kubelet confirms (`remove`), as on a real cluster.
   */
  private deleteObject(type: ResourceType, existing: KubeObject, grace_seconds: number | undefined): KubeObject {
    const namespace = existing.metadata.namespace!
    const name = existing.metadata.name
    if (type.plural === "pods") {
      const grace = grace_seconds ?? (existing.spec?.terminationGracePeriodSeconds as number | undefined) ?? 30
      const bound = typeof existing.spec?.nodeName === "string" && existing.spec.nodeName !== ""
      if (bound && grace > 0) {
        if (existing.metadata.deletionTimestamp !== undefined) return clone(existing)
        return this.update("pods", namespace, name, (o) => {
          o.metadata.deletionTimestamp = kubeTime(this.options.now() + grace * 1000)
          o.metadata.deletionGracePeriodSeconds = grace
        })
      }
    }
    if (type.plural === "persistentvolumeclaims" && this.claimInUse(namespace, name)) {
      if (existing.metadata.deletionTimestamp !== undefined) return clone(existing)
      return this.update("persistentvolumeclaims", namespace, name, (o) => {
        o.metadata.deletionTimestamp = kubeTime(this.options.now())
        o.metadata.deletionGracePeriodSeconds = 0
      })
    }
    return this.remove(type.plural, namespace, name)!
  }

  /** Whether a pod of the namespace (terminating or not) mounts the claim. */
  private claimInUse(namespace: string, claim: string): boolean {
    return this.objects("pods", namespace).some((p) => claimsOf(p).includes(claim))
  }

  /** The pvc-protection controller: a deleted claim no pod mounts any more is removed. */
  private releaseClaims(namespace: string): void {
    for (const c of this.objects("persistentvolumeclaims", namespace)) {
      if (c.metadata.deletionTimestamp !== undefined && !this.claimInUse(namespace, c.metadata.name)) this.remove("persistentvolumeclaims", namespace, c.metadata.name)
    }
  }

  private nextUid(): string {
    this.uid++
    return `00000000-0000-4000-8000-${this.uid.toString(16).padStart(12, "0")}`
  }

  /** Stores the change under a new resourceVersion, records it, tells watchers and listeners. */
  private commit(plural: string, type: "ADDED" | "MODIFIED" | "DELETED", object: KubeObject, old: KubeObject | null): KubeObject {
    this.rv++
    const key = `${object.metadata.namespace}/${object.metadata.name}`
    object.metadata.resourceVersion = String(this.rv)
    if (type === "DELETED") this.table(plural).delete(key)
    else this.table(plural).set(key, object)
    const entry: HistoryEntry = { rv: this.rv, plural, type, object: clone(object), old: old === null ? null : clone(old) }
    this.history.push(entry)
    if (this.history.length - this.historyStart > this.historyMax) {
      this.compactedRv = this.history[this.historyStart]!.rv
      this.historyStart++
      // Drop the evicted prefix in chunks, not one shift per event.
      if (this.historyStart > this.historyMax) {
        this.history.splice(0, this.historyStart)
        this.historyStart = 0
      }
    }
    for (const w of [...this.watchers]) this.deliver(w, entry)
    for (const listener of [...this.listeners]) listener({ type, plural, object: clone(object), old: old === null ? null : clone(old) })
    if (plural === "pods" && type === "DELETED") this.releaseClaims(object.metadata.namespace!)
    return clone(object)
  }

  private matches(w: Watcher, o: KubeObject | null): boolean {
    return o !== null && (w.namespace === null || o.metadata.namespace === w.namespace) && matchesLabels(w.selector, o.metadata.labels) && matchesFields(w.fields, o)
  }

  /**
   * An object moving into a watch's selector is ADDED to it, one moving out DELETED, as the API
   * server's watch cache has it (`cacheWatcher.convertToWatchEvent`,
   * staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go: `!curObjPasses &&
   * oldObjPasses` is `watch.Deleted`): the DELETED of a move-out carries the object as it was
   * before the change (still matching the selector: a label removed by hand is still there, and
   * nothing says the object is being deleted) under the change's resourceVersion.
   */
  private deliver(w: Watcher, e: HistoryEntry): void {
    if (w.closed || w.plural !== e.plural) return
    const now = this.matches(w, e.object)
    const before = e.type === "ADDED" ? false : this.matches(w, e.old)
    if (e.type === "DELETED") {
      if (before || now) this.send(w, "DELETED", e.object)
    } else if (now && !before) this.send(w, "ADDED", e.object)
    else if (now && before) this.send(w, "MODIFIED", e.object)
    else if (!now && before) this.send(w, "DELETED", { ...e.old!, metadata: { ...e.old!.metadata, resourceVersion: e.object.metadata.resourceVersion } })
  }

  private watch(type: ResourceType, namespace: string | null, query: Record<string, string>, token: string | null, res: ServerResponse): void {
    const rvParam = query.resourceVersion ?? ""
    const from = rvParam === "" || rvParam === "0" ? null : Number(rvParam)
    if (from !== null && (!Number.isSafeInteger(from) || from < 0)) fail(400, "BadRequest", `invalid resource version: ${rvParam}`)
    const expired = from !== null && from < this.compactedRv
    if (expired && this.expiredAs === "status") fail(410, "Expired", `too old resource version: ${from} (${this.compactedRv})`)
    // Refused (400) before the stream opens, as a list's are.
    const fields = parseFieldSelector(type.plural, query.fieldSelector)
    res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-cache, private" })
    res.flushHeaders()
    const w: Watcher = {
      plural: type.plural,
      namespace,
      selector: parseLabelSelector(query.labelSelector),
      fields,
      bookmarks: query.allowWatchBookmarks === "true" || query.allowWatchBookmarks === "1",
      res,
      token,
      closed: false,
      silent: false,
      timer: null
    }
    if (expired) {
      this.send(w, "ERROR", status(410, "Expired", `too old resource version: ${from} (${this.compactedRv})`))
      res.end()
      return
    }
    this.watchers.add(w)
    res.on("close", () => {
      w.closed = true
      if (w.timer !== null) clearTimeout(w.timer)
      this.watchers.delete(w)
    })
    const timeout_s = Number(query.timeoutSeconds ?? "0")
    if (timeout_s > 0) {
      w.timer = setTimeout(() => this.endWatch(w, false), timeout_s * 1000)
      w.timer.unref()
    }
    if (from === null) {
      for (const o of this.objects(type.plural, namespace ?? undefined)) if (this.matches(w, o)) this.send(w, "ADDED", o)
    } else {
      for (let i = this.historyStart; i < this.history.length; i++) {
        const e = this.history[i]!
        if (e.rv > from) this.deliver(w, e)
      }
    }
  }

  private send(w: Watcher, type: WatchEventType, object: KubeObject): void {
    if (w.closed || w.silent) return
    w.res.write(`${JSON.stringify({ type, object })}\n`)
  }

  private endWatch(w: Watcher, abrupt: boolean): void {
    if (w.closed) return
    w.closed = true
    if (w.timer !== null) clearTimeout(w.timer)
    this.watchers.delete(w)
    if (abrupt) w.res.destroy()
    else w.res.end()
  }
}

const PVC_PROTECTION = "kubernetes.io/pvc-protection"
const ACCESS_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
/** A resource quantity as the API server accepts it (`100Gi`, `1.5T`, `500M`, `1e3`). */
const QUANTITY = /^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$/

/** The PersistentVolumeClaims a pod mounts. */
export const claimsOf = (pod: KubeObject): string[] =>
  ((pod.spec?.volumes ?? []) as Array<{ persistentVolumeClaim?: { claimName?: string } }>).flatMap((v) => (v.persistentVolumeClaim?.claimName === undefined ? [] : [v.persistentVolumeClaim.claimName]))

/** What the API server's validation of a new claim refuses (422): no access mode, no size. */
const checkClaim = (o: KubeObject): void => {
  const name = o.metadata.name
  const modes = o.spec?.accessModes as unknown
  if (!Array.isArray(modes) || modes.length === 0) fail(422, "Invalid", `PersistentVolumeClaim "${name}" is invalid: spec.accessModes: Required value: at least 1 access mode is required`, { name, kind: "PersistentVolumeClaim" })
  for (const m of modes as unknown[]) {
    if (typeof m !== "string" || !ACCESS_MODES.includes(m)) fail(422, "Invalid", `PersistentVolumeClaim "${name}" is invalid: spec.accessModes: Unsupported value: "${String(m)}"`, { name, kind: "PersistentVolumeClaim" })
  }
  const storage = o.spec?.resources?.requests?.storage as unknown
  if (storage === undefined) fail(422, "Invalid", `PersistentVolumeClaim "${name}" is invalid: spec.resources[storage]: Required value`, { name, kind: "PersistentVolumeClaim" })
  if (typeof storage !== "string" || !QUANTITY.test(storage)) fail(422, "Invalid", `PersistentVolumeClaim "${name}" is invalid: spec.resources.requests[storage]: Invalid value: "${String(storage)}"`, { name, kind: "PersistentVolumeClaim" })
}

const apiVersionOf = (t: ResourceType): string => (t.group === "" ? t.version : `${t.group}/${t.version}`)

const pick = (o: Record<string, unknown>, keys: ReadonlyArray<string>): Record<string, unknown> =>
  Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]))

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    let size = 0
    const chunks: Buffer[] = []
    req.on("data", (c: Buffer) => {
      size += c.length
      if (size > REQUEST_BODY_BYTES_MAX) {
        reject(new StatusError(status(413, "RequestEntityTooLarge", "request body too large")))
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")))
    req.on("error", reject)
  })

const parseJson = (body: string): KubeObject => {
  try {
    return JSON.parse(body) as KubeObject
  } catch {
    return fail(400, "BadRequest", "the request body is not JSON")
  }
}

const json = (res: ServerResponse, code: number, body: unknown): void => {
  const text = JSON.stringify(body)
  res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) })
  res.end(text)
}

/**
 * Writes a kubeconfig for `server` and returns its path: a plain-HTTP cluster (which the
 * client accepts only with `insecure-skip-tls-verify`), a bearer token (so the server can
 * tell clients apart), and the namespace as the context's default.
 */
export const writeKubeconfig = (server: { readonly url: string }, options: { readonly token?: string; readonly namespace?: string; readonly dir?: string } = {}): string => {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), "ecolink-kube-"))
  const path = join(dir, `kubeconfig-${options.token ?? "default"}.yaml`)
  const text = [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: ecolink-test",
    "  cluster:",
    `    server: ${server.url}`,
    "    insecure-skip-tls-verify: true",
    "users:",
    "- name: ecolink-test",
    "  user:",
    `    token: ${options.token ?? "ecolink-test-token"}`,
    "contexts:",
    "- name: ecolink-test",
    "  context:",
    "    cluster: ecolink-test",
    "    user: ecolink-test",
    `    namespace: ${options.namespace ?? "default"}`,
    "current-context: ecolink-test",
    ""
  ].join("\n")
  writeFileSync(path, text)
  return path
}
