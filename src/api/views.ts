/**
 * How the engine's views and rows are written in HTTP answers, with the JSON schema of each.
 * One encoding everywhere:
 *
 * - Money is a decimal string of dollars (`"3.20"`, `"0.000445"`, `formatDollars`): exact,
 *   never a float. The one exception is the manual's extend answer (`answers.ts`), which the
 *   manual shows as JSON numbers.
 * - Instants are ISO-8601 UTC strings on the engine clock; durations are whole seconds
 *   (`elapsed_seconds`), floored.
 * - Rates name their unit: `hourly_rate` per GPU-hour, `daily_rate_per_gb` per GB-day.
 */
import { formatDollars } from "../money.js"
import type { GpuView, InferenceView, StorageView } from "../resources.js"
import type { LedgerRow, ModelRecord } from "../ledger/store.js"

export const iso = (ms: number): string => new Date(ms).toISOString()
const isoOrNull = (ms: number | null): string | null => (ms === null ? null : iso(ms))
const seconds = (ms: number): number => Math.floor(ms / 1000)

const ACTIVE_GPU = new Set(["loading", "running", "preempted"])

export const gpuJson = (v: GpuView, now: number) => {
  const started = v.started_at !== null && ACTIVE_GPU.has(v.status)
  return {
    id: v.id,
    kind: v.kind,
    status: v.status,
    gpu: v.gpu,
    gpu_count: v.gpu_count,
    node_count: v.node_count,
    region: v.region,
    image: v.image,
    drive: v.drive,
    filesystems: v.filesystems,
    hourly_rate: formatDollars(v.hourly_rate_micros),
    estimated_duration_hours: v.hours_committed,
    created_at: iso(v.created_at),
    started_at: isoOrNull(v.started_at),
    deadline_at: isoOrNull(v.deadline_at),
    elapsed_seconds: started ? seconds(Math.max(0, now - v.started_at!)) : null,
    remaining_seconds: started && v.deadline_at !== null ? seconds(Math.max(0, v.deadline_at - now)) : null,
    billable_seconds: seconds(v.billable_ms),
    termination_reason: v.termination_reason
  }
}

export const inferenceJson = (v: InferenceView) => ({
  id: v.id,
  kind: v.kind,
  status: v.status,
  model: v.model,
  gpu: v.gpu,
  gpu_count: v.gpu_count,
  replicas: v.regions.length,
  regions: v.regions.map((r) => ({ region: r.region, status: r.status })),
  hourly_rate: formatDollars(v.hourly_rate_micros),
  created_at: iso(v.created_at),
  cycle: v.cycle,
  cycle_hold: formatDollars(v.cycle_hold_micros),
  cycle_ends_at: isoOrNull(v.cycle_ends_at),
  termination_reason: v.termination_reason
})

export const storageJson = (v: StorageView) => ({
  id: v.id,
  kind: v.kind,
  status: v.status,
  in_use: v.in_use,
  size_gb: v.size_gb,
  region: v.region,
  attached_to: [...v.attached_to],
  daily_rate_per_gb: formatDollars(v.daily_rate_micros)
})

export const modelJson = (m: ModelRecord) => ({
  name: m.name,
  source: m.source,
  filesystem: m.filesystem,
  gpu: m.gpu,
  gpu_count: m.gpu_count,
  created_at: iso(m.created_at)
})

export const ledgerJson = (r: LedgerRow) => ({
  id: r.id,
  at: iso(r.at),
  kind: r.kind,
  amount: formatDollars(r.amount_micros),
  balance_after: formatDollars(r.balance_after_micros),
  resource: r.resource,
  description: r.description
})

/**
 * How a field of a notification's `data` is written in an answer: its name there and its
 * value. The engine stores what its own readers use (micros, epoch milliseconds: the
 * invariant checker reads them, and the simulator's output has no `data`), and the answer
 * follows this module's one encoding. One name has one meaning in every kind that uses it.
 */
const DATA_FIELDS: Readonly<Record<string, (value: unknown) => readonly [string, unknown]>> = {
  // partial_hold: the hold in micros (a string) and the run it covers in milliseconds.
  hold: (v) => ["hold", formatDollars(BigInt(v as string))],
  window_ms: (v) => ["window_seconds", seconds(v as number)],
  // duration_warning's deadline, auto_recharge_declined / _failed's next attempt: instants.
  deadline_at: (v) => ["deadline_at", isoOrNull(v as number | null)],
  retry_at: (v) => ["retry_at", isoOrNull(v as number | null)]
}

/** A notification's stored `data` (JSON text) as the API answers it: money in dollars, instants ISO, durations in seconds. */
export const notificationDataJson = (data: string | null): Record<string, unknown> | null => {
  if (data === null) return null
  const stored = JSON.parse(data) as Record<string, unknown>
  return Object.fromEntries(Object.entries(stored).map(([name, value]) => DATA_FIELDS[name]?.(value) ?? [name, value]))
}

export const notificationJson = (n: {
  readonly id: number
  readonly at: number
  readonly severity: string
  readonly kind: string
  readonly text: string
  readonly resource: string | null
  readonly data: string | null
  readonly read_at: number | null
}) => ({
  id: n.id,
  at: iso(n.at),
  severity: n.severity,
  kind: n.kind,
  text: n.text,
  resource: n.resource,
  data: notificationDataJson(n.data),
  read: n.read_at !== null,
  read_at: isoOrNull(n.read_at)
})

// ── JSON schemas ──────────────────────────────────────────────────────────────────────────
const str = { type: "string" } as const
const nullableStr = { type: ["string", "null"] } as const
const int = { type: "integer" } as const
const nullableInt = { type: ["integer", "null"] } as const
const money = { type: "string", pattern: "^-?[0-9]+\\.[0-9]{2,6}$", description: "dollars, exact decimal string" } as const
const instant = { type: "string", format: "date-time" } as const
const nullableInstant = { type: ["string", "null"], format: "date-time" } as const

export const obj = (properties: Record<string, unknown>, description?: string) => ({
  type: "object",
  ...(description === undefined ? {} : { description }),
  required: Object.keys(properties),
  additionalProperties: false,
  properties
})

export const page = (item: unknown, cursor: string) =>
  obj({ data: { type: "array", items: item }, [cursor]: { type: ["string", "integer", "null"], description: "pass as the next request's cursor; null on the last page" } })

export const ErrorSchema = {
  $id: "Error",
  type: "object",
  required: ["error", "message"],
  additionalProperties: false,
  properties: { error: str, message: str, field: str }
} as const

export const GpuSchema = obj({
  id: str,
  kind: { type: "string", enum: ["gpu_instance", "gpu_cluster"] },
  status: { type: "string", enum: ["pending", "loading", "running", "preempted", "terminating", "terminated", "failed"] },
  gpu: str,
  gpu_count: { ...int, description: "GPUs per node" },
  node_count: int,
  region: str,
  image: { ...nullableStr, description: "the container image asked for at launch; null for the platform's default" },
  drive: { ...nullableStr, description: "the cloud drive attached at launch (detached when the instance stops)" },
  filesystems: { type: "array", items: str, description: "the shared filesystems mounted at launch" },
  hourly_rate: { ...money, description: "dollars per GPU-hour" },
  estimated_duration_hours: { ...int, description: "hours committed: the launch's estimate plus every extension" },
  created_at: instant,
  started_at: nullableInstant,
  deadline_at: nullableInstant,
  elapsed_seconds: { ...nullableInt, description: "since started_at, while loading, running or preempted" },
  remaining_seconds: { ...nullableInt, description: "until deadline_at, while loading, running or preempted" },
  billable_seconds: int,
  termination_reason: { type: ["string", "null"], enum: ["duration_expired", "credit_depleted", "user_requested", "failed", null] }
})

export const InferenceSchema = obj({
  id: str,
  kind: { type: "string", enum: ["inference_instance"] },
  status: str,
  model: str,
  gpu: str,
  gpu_count: int,
  replicas: int,
  regions: { type: "array", items: obj({ region: str, status: str }) },
  hourly_rate: { ...money, description: "dollars per GPU-hour" },
  created_at: instant,
  cycle: int,
  cycle_hold: money,
  cycle_ends_at: nullableInstant,
  termination_reason: { type: ["string", "null"] }
})

export const StorageSchema = obj({
  id: str,
  kind: { type: "string", enum: ["cloud_drive", "shared_fs"] },
  status: { type: "string", enum: ["available", "in_use", "suspended", "deleted"] },
  in_use: { type: "boolean", description: "at least one instance has it attached" },
  size_gb: int,
  region: str,
  attached_to: { type: "array", items: str },
  daily_rate_per_gb: money
})

export const ModelSchema = obj({ name: str, source: { type: "string", enum: ["huggingface", "platform", "shared_fs"] }, filesystem: nullableStr, gpu: str, gpu_count: int, created_at: instant })

export const LedgerRowSchema = obj({
  id: int,
  at: instant,
  kind: { type: "string", enum: ["topup", "gpu_usage", "refund", "api_usage", "storage_billing", "adjustment"] },
  amount: money,
  balance_after: money,
  resource: nullableStr,
  description: str
})

export const NotificationSchema = obj({
  id: int,
  at: instant,
  severity: { type: "string", enum: ["info", "warning", "critical"] },
  kind: str,
  text: str,
  resource: nullableStr,
  data: {
    type: ["object", "null"],
    additionalProperties: true,
    description:
      "by kind (docs/API.md): duration_warning {minutes, deadline_at}; balance_warning {minutes}; partial_hold {hold (dollars), window_seconds, cycle}; terminated {termination_reason}, and for a failure cause (not_started, pod_failed, replicas_failed); auto_recharge_declined and auto_recharge_failed {payment, code, retry_at}; auto_recharge_paused {payment}; card_refund_failed {payment, refund, status, reason, credited (dollars), auto_recharge}; payment_disputed {payment, dispute, reason, taken (dollars), auto_recharge}; payment_dispute_reinstated {payment, dispute, reinstated, returned (dollars)}; null for the others"
  },
  read: { type: "boolean" },
  read_at: nullableInstant
})

export const moneySchema = money
