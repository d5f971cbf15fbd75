/**
 * A synthetic fleet for the benchmark (`npm run bench`): a timeline (TIMELINE.md) with many
 * accounts and GPU resources over several virtual days, with the traffic a real fleet sees:
 * launches of instances and clusters, extensions, user terminations, preemptions that later
 * resume, pod failures and top-ups, at random instants.
 *
 * It returns the parsed-JSON shape of a timeline file, to be fed to `decodeTimeline`, so the
 * benchmark exercises the same decoding path as `npm run sim`. Everything random comes from
 * the seeded `Prng`: the same seed and options give the same fleet, byte for byte.
 */
import { Prng } from "./prng.js"

export interface FleetOptions {
  /** Accounts opened at the start. Default 1,000. */
  readonly accounts?: number
  /** GPU resources launched over the run (instances and clusters). Default 10,000. */
  readonly resources?: number
  /** Virtual days the timeline spans (`until`). Default 7. */
  readonly days?: number
  /** User inference instances, one model registered per instance. Default 0. */
  readonly inference?: number
  /** Cloud drives and shared filesystems, half each, created at the start. Default 0. */
  readonly storage?: number
  /** `/v1` requests spread evenly over the run (a steady stream). Default 0. */
  readonly api_requests?: number
}

/** The issue-3 fleet: every resource kind and a steady API stream over 30 virtual days. */
export const FULL_FLEET: FleetOptions = { accounts: 1_000, resources: 10_000, days: 30, inference: 1_000, storage: 2_000, api_requests: 200_000 }

const SECONDS_PER_HOUR = 3_600
const SECONDS_PER_DAY = 86_400

/** Three GPU types at realistic per-GPU-hour rates. */
const GPUS: ReadonlyArray<readonly [string, string]> = [
  ["H100", "2.49"],
  ["A100", "1.60"],
  ["L40S", "0.89"]
]

/**
 * Three regions of 400 nodes × 8 GPUs (9,600 GPUs). The default fleet keeps on average about
 * 1,400 resources alive (≈ 8,000 GPUs if every launch were admitted), so capacity suffices
 * most of the time and a launch now and then waits pending for room.
 */
const REGIONS = ["us-east", "us-west", "eu-central"] as const
const REGION_SPEC = { nodes: 400, gpus_per_node: 8, image_pull: "PT2M", container_start: "PT30S" }

const MODELS = ["llama-3-8b", "qwen-72b", "flux-schnell"] as const

/** Probabilities per resource of each follow-up event (independent draws). */
const P_CLUSTER = 0.15
const P_EXTEND = 0.3
const P_SECOND_EXTEND = 0.1
const P_TERMINATE = 0.25
const P_PREEMPT = 0.1
const P_POD_FAIL = 0.03
/** Top-ups per account over the run, on average. */
const TOP_UPS_PER_ACCOUNT = 3

type Json = Record<string, unknown>

/** A generated event with its instant in whole seconds after start, before rendering. */
interface Draft {
  readonly at_s: number
  readonly event: Json
}

/** Cents as a dollar string: 12345 → "123.45". */
const dollarsOfCents = (cents: number): string => `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, "0")}`

const pad = (n: number, width: number): string => String(n).padStart(width, "0")

export const generateFleet = (seed: number, options: FleetOptions = {}): unknown => {
  const accountCount = options.accounts ?? 1_000
  const resourceCount = options.resources ?? 10_000
  const days = options.days ?? 7
  if (!Number.isSafeInteger(accountCount) || accountCount < 1) throw new Error(`accounts must be a positive whole number, got ${accountCount}`)
  if (!Number.isSafeInteger(resourceCount) || resourceCount < 0) throw new Error(`resources must be a whole number, got ${resourceCount}`)
  if (!Number.isSafeInteger(days) || days < 1) throw new Error(`days must be a positive whole number, got ${days}`)

  const prng = new Prng(seed)
  const span_s = days * SECONDS_PER_DAY
  const pick = <T>(items: ReadonlyArray<T>): T => items[prng.int(0, items.length - 1)]!
  /** An instant in [from, to] seconds, clamped to the run: events past `until` never apply. */
  const within = (from: number, to: number): number => prng.int(Math.min(from, span_s - 1), Math.min(to, span_s - 1))

  const accountWidth = String(accountCount - 1).length
  const resourceWidth = String(Math.max(resourceCount - 1, 0)).length
  const accountIds = Array.from({ length: accountCount }, (_, i) => `acct-${pad(i, accountWidth)}`)

  // Opening balances $50 to $5,000: a launch holds hours × rate × GPUs up front, so the
  // small wallets run dry after a launch or two and their later launches are refused (402).
  const accounts: Record<string, { balance: string }> = {}
  // A fleet with inference instances runs for weeks: wallets start larger ($500 to $20,000).
  const richer = (options.inference ?? 0) > 0
  for (const id of accountIds) accounts[id] = { balance: dollarsOfCents(richer ? prng.int(50_000, 2_000_000) : prng.int(5_000, 500_000)) }

  const drafts: Draft[] = []
  for (let i = 0; i < resourceCount; i++) {
    const cluster = prng.chance(P_CLUSTER)
    const id = `${cluster ? "gc" : "gi"}-${pad(i, resourceWidth)}`
    const hours = prng.int(1, 48)
    // Launches stop an hour before the end, so even the last one gets to run a little.
    const launch_s = prng.int(0, Math.max(span_s - SECONDS_PER_HOUR, 0))
    const launch: Json = {
      do: cluster ? "launch_gpu_cluster" : "launch_gpu_instance",
      account: pick(accountIds),
      id,
      gpu: pick(GPUS)[0],
      ...(cluster ? { node_count: prng.int(2, 4) } : {}),
      gpu_count: prng.int(1, 8),
      region: pick(REGIONS),
      estimated_duration_hours: hours
    }
    drafts.push({ at_s: launch_s, event: launch })

    const life_s = hours * SECONDS_PER_HOUR
    if (prng.chance(P_EXTEND)) {
      drafts.push({ at_s: within(launch_s + 60, launch_s + life_s), event: { do: "extend", id, hours: prng.int(1, 24) } })
      if (prng.chance(P_SECOND_EXTEND)) {
        drafts.push({ at_s: within(launch_s + 60, launch_s + life_s), event: { do: "extend", id, hours: prng.int(1, 24) } })
      }
    }
    if (prng.chance(P_PREEMPT)) {
      // After the pod had time to start (pull 2 min + start 30 s); resumed 5 min to 2 h later.
      const preempt_s = within(launch_s + 10 * 60, launch_s + life_s)
      drafts.push({ at_s: preempt_s, event: { do: "preempt", id } })
      drafts.push({ at_s: within(preempt_s + 5 * 60, preempt_s + 2 * SECONDS_PER_HOUR), event: { do: "resume", id } })
    }
    if (prng.chance(P_POD_FAIL)) {
      drafts.push({ at_s: within(launch_s + 5 * 60, launch_s + life_s), event: { do: "pod_fail", id } })
    }
    if (prng.chance(P_TERMINATE)) {
      drafts.push({ at_s: within(launch_s + 60, launch_s + life_s), event: { do: "terminate", id } })
    }
  }

  // Inference instances: a model per instance (HuggingFace or platform: 2 replicas), launched
  // in the first third of the run; a quarter are terminated by their users later.
  for (let i = 0; i < (options.inference ?? 0); i++) {
    const id = `ii-${pad(i, 5)}`
    const account = pick(accountIds)
    const at_s = prng.int(0, Math.floor(span_s / 3))
    drafts.push({ at_s, event: { do: "register_model", account, model: `model-${id}`, source: prng.chance(0.5) ? "huggingface" : "platform", gpu: pick(GPUS)[0], gpu_count: prng.int(1, 2) } })
    drafts.push({ at_s, event: { do: "launch_inference_instance", account, id, model: `model-${id}` } })
    if (prng.chance(0.25)) drafts.push({ at_s: within(at_s + SECONDS_PER_HOUR, span_s), event: { do: "terminate", id } })
    if (prng.chance(0.1)) drafts.push({ at_s: within(at_s + SECONDS_PER_HOUR, span_s), event: { do: "pod_fail", id, region: REGIONS[1] } })
  }
  // Storage: drives and filesystems created at the start, charged every midnight.
  for (let i = 0; i < (options.storage ?? 0); i++) {
    drafts.push({ at_s: 0, event: { do: i % 2 === 0 ? "create_drive" : "create_filesystem", account: pick(accountIds), id: `st-${pad(i, 5)}`, size_gb: prng.int(10, 2_000), region: pick(REGIONS) } })
  }
  // A steady API stream: evenly spaced requests to the platform models, from any account.
  const apiRequests = options.api_requests ?? 0
  for (let i = 0; i < apiRequests; i++) {
    const model = pick(MODELS)
    const usage = model === "flux-schnell" ? { images: prng.int(1, 4) } : { input_tokens: prng.int(10, 4_000), output_tokens: prng.int(10, 1_000) }
    drafts.push({ at_s: Math.floor((i * span_s) / apiRequests), event: { do: "api_request", account: pick(accountIds), model, ...usage } })
  }

  // Top-ups: $1.00 to $1,000.00 (the manual's bounds), at any time, to any account.
  const topUps = accountCount * TOP_UPS_PER_ACCOUNT
  for (let i = 0; i < topUps; i++) {
    drafts.push({ at_s: prng.int(0, span_s - 1), event: { do: "top_up", account: pick(accountIds), amount: dollarsOfCents(prng.int(100, 100_000)) } })
  }

  // Sorted by time; ties keep generation order (Array.prototype.sort is stable), which is
  // the file order the runner applies same-instant events in.
  drafts.sort((a, b) => a.at_s - b.at_s)

  return {
    start: "2026-03-01T00:00:00Z",
    seed,
    until: `P${days}D`,
    catalog: {
      gpus: Object.fromEntries(GPUS.map(([gpu, rate]) => [gpu, { hourly_rate: rate }])),
      regions: Object.fromEntries(REGIONS.map((r) => [r, { ...REGION_SPEC }])),
      storage: { cloud_drive: { daily_rate_per_gb: "0.004" }, shared_fs: { daily_rate_per_gb: "0.006" } },
      models: {
        "llama-3-8b": { input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" },
        "qwen-72b": { input_per_1m_tokens: "0.90", output_per_1m_tokens: "0.90" },
        "flux-schnell": { per_image: "0.003" }
      }
    },
    // Many requests a minute: aggregated into one row per account, model and minute.
    ...(apiRequests > 0 ? { api_usage_rows: "per_minute" } : {}),
    accounts,
    events: drafts.map((d) => ({ at: `PT${d.at_s}S`, ...d.event }))
  }
}
