/**
 * Timeline files (TIMELINE.md), decoded once at the boundary with Effect Schema. Inside the
 * simulator everything is trusted: instants are epoch milliseconds, money is micros, the
 * events are in the order they apply (time, then file order).
 */
import { Either, ParseResult, Schema } from "effect"
import { parseModelCatalog, PRICE_FIELDS, type ModelPrice, type ModelPriceJson } from "../src/metering.js"
import { dollars, formatDollars, type Micros } from "../src/money.js"
import * as policy from "../src/policy.js"
import type { SimRegion } from "./cluster.js"
import { parseAt, parseDurationMs, parseInstantMs } from "./iso.js"
import { PRNG_SEED_MAX } from "./prng.js"

const Dollars = Schema.String.pipe(
  Schema.pattern(/^-?\d{1,12}(\.\d{1,6})?$/, { message: () => "a decimal string of dollars with at most 6 decimals, like \"1.60\"" })
)
const PositiveDollars = Dollars.pipe(Schema.filter((s) => dollars(s) > 0n, { message: () => "a positive amount" }))
const NonNegativeDollars = Dollars.pipe(Schema.filter((s) => dollars(s) >= 0n, { message: () => "not negative" }))
/**
 * Why a duration with months or years in its date part is refused (sim/iso.ts): `P1M` reads as
 * a minute to many a writer, and is a month, whose length depends on the calendar.
 */
const calendarHint = (issue: ParseResult.ParseIssue): string => {
  const text = issue.actual
  if (typeof text !== "string" || !/^P[^T]*[YM]/.test(text)) return ""
  return ` (${text} counts months or years, which have no fixed length: minutes are PT…M, days P…D)`
}
const Duration = Schema.String.pipe(
  Schema.filter((s) => parseDurationMs(s) !== undefined, { message: (issue) => `an ISO-8601 duration like PT1M30S or P1DT2H${calendarHint(issue)}` })
)
const At = Schema.String.pipe(
  Schema.filter((s) => parseDurationMs(s) !== undefined || parseInstantMs(s) !== undefined, {
    message: (issue) => `an ISO-8601 duration after start (PT2H) or an instant (2026-03-01T02:00:00Z)${calendarHint(issue)}`
  })
)
const Id = Schema.String.pipe(Schema.pattern(policy.RESOURCE_ID_RE, { message: () => "an id of letters, digits, '.', '_' or '-' (at most 63)" }))
const Count = (max: number) => Schema.Int.pipe(Schema.between(1, max))
const Probability = Schema.Number.pipe(Schema.between(0, 1))
/** Only the seeds the PRNG tells apart: a larger one was silently cut to 32 bits (4294967338 ran as 42). */
const Seed = Schema.Number.pipe(
  Schema.filter((n) => Number.isInteger(n) && n >= 0 && n <= PRNG_SEED_MAX, { message: () => `an integer from 0 to ${PRNG_SEED_MAX} (the simulator's PRNG takes a 32-bit seed)` })
)

/**
 * A short picture of a value for a message: a file that is not the right shape must not be
 * printed back whole (a root array once dumped the whole file on one line).
 */
const ACTUAL_TEXT_MAX = 40
const actualOf = (value: unknown): string => {
  if (Array.isArray(value)) return "an array"
  if (value === null) return "null"
  if (typeof value === "object") return "an object"
  const text = JSON.stringify(value) ?? String(value)
  return text.length > ACTUAL_TEXT_MAX ? `${text.slice(0, ACTUAL_TEXT_MAX)}…` : text
}
/** `schema`'s message when the value is not even of its shape: `Expected <what>, actual <value>`, not its AST. */
const shaped = <S extends Schema.Annotable.All>(schema: S, what: string): S =>
  schema.annotations({ message: (issue: ParseResult.ParseIssue) => `Expected ${what}, actual ${actualOf(issue.actual)}` }) as S

const Region = shaped(
  Schema.Struct({
    nodes: Count(10_000),
    gpus_per_node: Count(policy.GPU_COUNT_MAX),
    image_pull: Schema.optional(Duration),
    image_pull_jitter: Schema.optional(Duration),
    container_start: Schema.optional(Duration),
    pod_stop: Schema.optional(Duration),
    pull_failure_probability: Schema.optional(Probability),
    preemption_mean_interval: Schema.optional(Duration),
    preemption_duration: Schema.optional(Duration)
  }),
  "an object of region fields"
)
const Gpu = shaped(Schema.Struct({ hourly_rate: PositiveDollars }), "an object { hourly_rate }")
const StorageRate = shaped(Schema.Struct({ daily_rate_per_gb: NonNegativeDollars }), "an object { daily_rate_per_gb }")
const Storage = shaped(Schema.Struct({ cloud_drive: Schema.optional(StorageRate), shared_fs: Schema.optional(StorageRate) }), "an object { cloud_drive?, shared_fs? }")

const Catalog = shaped(
  Schema.Struct({
    gpus: shaped(Schema.Record({ key: Schema.String, value: Gpu }), "an object of GPU types"),
    regions: shaped(Schema.Record({ key: Schema.String, value: Region }), "an object of regions"),
    storage: Schema.optional(Storage),
    /**
     * Platform models and their per-request prices (`null` for a model without a price), each
     * decoded by the engine's own `parseModelCatalog`, which names the field at fault.
     */
    models: Schema.optional(shaped(Schema.Record({ key: Schema.String, value: Schema.Unknown }), "an object of models"))
  }),
  "an object { gpus, regions, storage?, models? }"
)

const base = { at: At }

const LaunchGpuInstance = Schema.Struct({
  ...base,
  do: Schema.Literal("launch_gpu_instance"),
  account: Schema.String,
  id: Id,
  gpu: Schema.String,
  gpu_count: Schema.Number,
  region: Schema.String,
  estimated_duration_hours: Schema.Number,
  image: Schema.optional(Schema.String),
  drive: Schema.optional(Schema.String),
  filesystems: Schema.optional(Schema.Array(Schema.String))
})
const LaunchGpuCluster = Schema.Struct({
  ...base,
  do: Schema.Literal("launch_gpu_cluster"),
  account: Schema.String,
  id: Id,
  gpu: Schema.String,
  node_count: Schema.Number,
  gpu_count: Schema.Number,
  region: Schema.String,
  estimated_duration_hours: Schema.Number,
  image: Schema.optional(Schema.String)
})
const Extend = Schema.Struct({ ...base, do: Schema.Literal("extend"), id: Schema.String, hours: Schema.Number })
const Terminate = Schema.Struct({ ...base, do: Schema.Literal("terminate"), id: Schema.String })
const TopUp = Schema.Struct({ ...base, do: Schema.Literal("top_up"), account: Schema.String, amount: Dollars })
const WorldPodEvent = Schema.Struct({
  ...base,
  do: Schema.Literal("preempt", "resume", "pod_fail"),
  id: Schema.String,
  region: Schema.optional(Schema.String)
})
const RegionEvent = Schema.Struct({ ...base, do: Schema.Literal("region_down", "region_up"), region: Schema.String })
const RegisterModel = Schema.Struct({
  ...base,
  do: Schema.Literal("register_model"),
  account: Schema.String,
  model: Schema.String,
  source: Schema.String,
  filesystem: Schema.optional(Schema.String),
  gpu: Schema.String,
  gpu_count: Schema.Number
})
const DeleteModel = Schema.Struct({ ...base, do: Schema.Literal("delete_model"), account: Schema.String, model: Schema.String })
const Count0 = Schema.Number
const ApiRequestEvent = Schema.Struct({
  ...base,
  do: Schema.Literal("api_request"),
  account: Schema.String,
  model: Schema.String,
  input_tokens: Schema.optional(Count0),
  output_tokens: Schema.optional(Count0),
  images: Schema.optional(Count0),
  seconds: Schema.optional(Count0)
})
const CreateStorage = Schema.Struct({
  ...base,
  do: Schema.Literal("create_drive", "create_filesystem"),
  account: Schema.String,
  id: Id,
  size_gb: Schema.Number,
  region: Schema.String
})
const DeleteStorage = Schema.Struct({ ...base, do: Schema.Literal("delete_storage"), id: Schema.String })
const LaunchInference = Schema.Struct({ ...base, do: Schema.Literal("launch_inference_instance"), account: Schema.String, id: Id, model: Schema.String })
/** Extension (not in TIMELINE.md's first table): the watcher misses the next `count` pod events. */
const MissPodEvents = Schema.Struct({ ...base, do: Schema.Literal("miss_pod_events"), id: Schema.String, count: Schema.optional(Count(100)) })
/** Payments (issue 6; docs/TIMELINE-EXTENSIONS.md). */
const SetAutoRecharge = Schema.Struct({
  ...base,
  do: Schema.Literal("set_auto_recharge"),
  account: Schema.String,
  threshold: NonNegativeDollars,
  amount: PositiveDollars,
  payment_method: Schema.optional(Schema.String)
})
const CardDecline = Schema.Struct({ ...base, do: Schema.Literal("card_decline"), account: Schema.String, count: Schema.optional(Count(100)) })
/** `fail_after`: the refund fails at the provider that long after it is made (docs/TIMELINE-EXTENSIONS.md). */
const StripeRefund = Schema.Struct({
  ...base,
  do: Schema.Literal("stripe_refund"),
  account: Schema.String,
  payment: Schema.optional(Schema.String),
  amount: Schema.optional(PositiveDollars),
  fail_after: Schema.optional(Duration)
})
/** `won_after`: the dispute is won that long after it is made, and its money comes back (docs/TIMELINE-EXTENSIONS.md). */
const StripeDispute = Schema.Struct({
  ...base,
  do: Schema.Literal("stripe_dispute"),
  account: Schema.String,
  payment: Schema.optional(Schema.String),
  amount: Schema.optional(PositiveDollars),
  won_after: Schema.optional(Duration)
})
/** Event kinds TIMELINE.md names for capabilities not built yet: accepted, then refused with 501. */
export const LATER_EVENT_KINDS = ["attach_storage", "detach_storage"] as const
const LaterEvent = Schema.Struct({ ...base, do: Schema.Literal(...LATER_EVENT_KINDS) })

const Event = Schema.Union(LaunchGpuInstance, LaunchGpuCluster, Extend, Terminate, TopUp, WorldPodEvent, RegionEvent, MissPodEvents, RegisterModel, DeleteModel, LaunchInference, ApiRequestEvent, CreateStorage, DeleteStorage, SetAutoRecharge, CardDecline, StripeRefund, StripeDispute, LaterEvent)
export type TimelineEventInput = Schema.Schema.Type<typeof Event>

/** The schema of each event kind, so an event is checked against its own kind only. */
const EVENT_SCHEMAS: ReadonlyMap<string, Schema.Schema.AnyNoContext> = new Map<string, Schema.Schema.AnyNoContext>([
  ["launch_gpu_instance", LaunchGpuInstance],
  ["launch_gpu_cluster", LaunchGpuCluster],
  ["extend", Extend],
  ["terminate", Terminate],
  ["top_up", TopUp],
  ["preempt", WorldPodEvent],
  ["resume", WorldPodEvent],
  ["pod_fail", WorldPodEvent],
  ["region_down", RegionEvent],
  ["region_up", RegionEvent],
  ["miss_pod_events", MissPodEvents],
  ["register_model", RegisterModel],
  ["delete_model", DeleteModel],
  ["launch_inference_instance", LaunchInference],
  ["api_request", ApiRequestEvent],
  ["create_drive", CreateStorage],
  ["create_filesystem", CreateStorage],
  ["delete_storage", DeleteStorage],
  ["set_auto_recharge", SetAutoRecharge],
  ["card_decline", CardDecline],
  ["stripe_refund", StripeRefund],
  ["stripe_dispute", StripeDispute],
  ...LATER_EVENT_KINDS.map((k) => [k, LaterEvent] as const)
])
/** Each kind's field names (its Struct's), for the unexpected-field check. */
const FIELDS_OF: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  [...EVENT_SCHEMAS].map(([kind, schema]) => [kind, new Set(Object.keys((schema as unknown as { fields: Record<string, unknown> }).fields))])
)

const Payments = shaped(
  Schema.Struct({ webhook_delay: Schema.optional(Duration), duplicate_probability: Schema.optional(Probability), previous_attributes: Schema.optional(Schema.Boolean) }),
  "an object { webhook_delay?, duplicate_probability?, previous_attributes? }"
)
const Account = shaped(
  Schema.Struct({
    balance: NonNegativeDollars.pipe(
      Schema.filter((s) => dollars(s) <= policy.WALLET_BALANCE_MAX_MICROS, { message: () => `at most $${formatDollars(policy.WALLET_BALANCE_MAX_MICROS)} (a wallet's limit)` })
    )
  }),
  "an object { balance }"
)

/** One message for the union, not its first member's ("Expected \"per_request\"" for "per_minute" too). */
const UsageRows = Schema.Literal("per_request", "per_minute").annotations({
  message: (issue: ParseResult.ParseIssue) => ({ message: `Expected "per_request" or "per_minute", actual ${actualOf(issue.actual)}`, override: true })
})

const TimelineFile = Schema.Struct({
  start: Schema.String.pipe(Schema.filter((s) => parseInstantMs(s) !== undefined, { message: () => "an ISO-8601 instant like 2026-03-01T00:00:00Z" })),
  seed: Schema.optionalWith(Seed, { default: () => 0 }),
  until: Schema.optional(At),
  catalog: Catalog,
  /** Extension: `"per_minute"` aggregates API usage into one row per account, model and minute. */
  /** Extension: the simulated payment provider's webhook delay and duplicate deliveries. */
  payments: Schema.optional(Payments),
  api_usage_rows: Schema.optionalWith(UsageRows, { default: () => "per_request" as const }),
  accounts: shaped(Schema.Record({ key: Id, value: Account }), "an object of accounts by id"),
  events: shaped(Schema.Array(Schema.Unknown), "an array of events").pipe(Schema.maxItems(policy.TIMELINE_EVENTS_MAX))
})

/**
 * The keys each object of a file may hold outside its events (whose kinds have their own
 * check): `fields` a fixed set (a struct's), `entries` any name (a map of regions, accounts…)
 * each of the inner shape; null, a value not looked into. Taken from the schemas' own fields,
 * so a field added to a schema is known here too.
 */
type Shape = { readonly fields: ReadonlyMap<string, Shape | null> } | { readonly entries: Shape | null }
const fieldsOf = (schema: { readonly fields: Readonly<Record<string, unknown>> }, nested: Readonly<Record<string, Shape>> = {}): Shape => ({
  fields: new Map(Object.keys(schema.fields).map((k) => [k, nested[k] ?? null]))
})
const FILE_SHAPE: Shape = fieldsOf(TimelineFile, {
  catalog: fieldsOf(Catalog, {
    gpus: { entries: fieldsOf(Gpu) },
    regions: { entries: fieldsOf(Region) },
    storage: fieldsOf(Storage, { cloud_drive: fieldsOf(StorageRate), shared_fs: fieldsOf(StorageRate) }),
    models: { entries: { fields: new Map(PRICE_FIELDS.map((k) => [k, null])) } }
  }),
  payments: fieldsOf(Payments),
  accounts: { entries: fieldsOf(Account) }
})

/** A key starting with `_` is a comment, wherever it is (the examples' `_why`). */
const isComment = (key: string): boolean => key.startsWith("_")

/**
 * `value` without its comment keys, as far as `shape` reaches; each key `shape` does not know
 * is a problem: a typo (`untill`, `image_pul`, `cloud_drvie`) would otherwise be ignored and
 * the run would quietly use a default. A value of another type is left for the schema to refuse.
 */
const withoutComments = (value: unknown, shape: Shape | null, path: string, issues: string[]): unknown => {
  if (shape === null || typeof value !== "object" || value === null || Array.isArray(value)) return value
  const kept: Array<[string, unknown]> = []
  for (const [key, inner] of Object.entries(value)) {
    if (isComment(key)) continue
    if ("entries" in shape) {
      kept.push([key, withoutComments(inner, shape.entries, `${path}${key}.`, issues)])
    } else if (shape.fields.has(key)) {
      kept.push([key, withoutComments(inner, shape.fields.get(key)!, `${path}${key}.`, issues)])
    } else {
      issues.push(`${path}${key}: is unexpected (known: ${[...shape.fields.keys()].join(", ")})`)
    }
  }
  // fromEntries defines each key as the file's own ("__proto__" too), never through a setter.
  return Object.fromEntries(kept)
}

/**
 * An optional field is `X | undefined` and a nullable one `X | null`: a bad value fails each
 * member, so besides the real problem inside it Effect reports "Expected undefined, actual …"
 * at the field and at each optional object around it. That is noise wherever a problem at or
 * below the same path says what is wrong.
 */
const isAlternativeNoise = (message: string): boolean => message.startsWith("Expected undefined, actual ") || message.startsWith("Expected null, actual ")
const within = (path: ReadonlyArray<PropertyKey>, outer: ReadonlyArray<PropertyKey>): boolean => path.length >= outer.length && outer.every((k, n) => k === path[n])

/** Effect's "Expected …, actual <value>" with a long value shortened (no message prints a whole object back). */
const shortened = (message: string): string => {
  const at = message.indexOf(", actual ")
  if (at < 0 || message.length - at - 9 <= ACTUAL_TEXT_MAX) return message
  const actual = message.slice(at + 9)
  const picture = actual.startsWith("[") ? "an array" : actual.startsWith("{") ? "an object" : `${actual.slice(0, ACTUAL_TEXT_MAX)}…`
  return `${message.slice(0, at)}, actual ${picture}`
}

const issuesOf = (error: ParseResult.ParseError, prefix: ReadonlyArray<PropertyKey> = []): string[] => {
  const issues = ParseResult.ArrayFormatter.formatErrorSync(error)
  return issues
    .filter((i) => !(isAlternativeNoise(i.message) && issues.some((j) => j !== i && within(j.path, i.path))))
    .map((i) => {
      const path = [...prefix, ...i.path]
      return `${path.length > 0 ? path.join(".") : "(root)"}: ${shortened(i.message)}`
    })
}

/** Decodes one event against the schema of its own `do`, so errors name that kind's fields. */
const decodeEvent = (input: unknown, index: number): Either.Either<TimelineEventInput, string[]> => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) return Either.left([`events.${index}: Expected an event (an object { at, do, … }), actual ${actualOf(input)}`])
  const kind = (input as { do?: unknown }).do
  const schema = typeof kind === "string" ? EVENT_SCHEMAS.get(kind) : undefined
  if (kind === undefined) return Either.left([`events.${index}.do: is missing`])
  if (schema === undefined) {
    return Either.left([`events.${index}.do: unknown event kind ${JSON.stringify(kind)} (known: ${[...EVENT_SCHEMAS.keys()].join(", ")})`])
  }
  // A field the kind does not have is an error, not ignored: `filesystem` for `filesystems`
  // would otherwise launch without the storage. (Checked here against the kind's field names:
  // the schema's own excess-property check costs half of decoding a large fleet.)
  const fields = FIELDS_OF.get(kind as string)!
  const unexpected = Object.keys(input as object).filter((k) => !fields.has(k) && !isComment(k)).map((k) => `events.${index}.${k}: is unexpected`)
  const decoded = Schema.decodeUnknownEither(schema, { errors: "all" })(input) as Either.Either<TimelineEventInput, ParseResult.ParseError>
  if (unexpected.length > 0) return Either.left([...unexpected, ...(Either.isLeft(decoded) ? issuesOf(decoded.left, ["events", index]) : [])])
  return Either.mapLeft(decoded, (e) => issuesOf(e, ["events", index]))
}

export type TimelineEvent = TimelineEventInput & { readonly at_ms: number; readonly index: number }

export interface Timeline {
  readonly start_ms: number
  readonly seed: number
  readonly until_ms: number
  readonly gpu_rates: ReadonlyMap<string, Micros>
  readonly model_prices: ReadonlyMap<string, ModelPrice | null>
  readonly storage_rates: ReadonlyMap<string, Micros>
  readonly aggregate_api_usage: boolean
  /** The simulated payment provider (defaults: webhooks at once, never twice). */
  readonly payments: { readonly webhook_delay_ms: number; readonly duplicate_probability: number; readonly previous_attributes: boolean }
  readonly regions: ReadonlyArray<SimRegion>
  /** Sorted by id, so that accounts open in the same order whatever the file's key order. */
  readonly accounts: ReadonlyArray<{ readonly id: string; readonly balance_micros: Micros }>
  /** In the order they apply: by instant, then by position in the file. */
  readonly events: ReadonlyArray<TimelineEvent>
}

export class TimelineError extends Error {
  constructor(readonly issues: ReadonlyArray<string>) {
    super(`invalid timeline:\n  ${issues.join("\n  ")}`)
    this.name = "TimelineError"
  }
}

const ms = (text: string | undefined, fallback: string): number => parseDurationMs(text ?? fallback)!

/** Decodes a parsed JSON value into a timeline, or every problem found with its path. */
export const decodeTimeline = (input: unknown): Either.Either<Timeline, TimelineError> => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return Either.left(new TimelineError([`(root): Expected a timeline (an object { start, catalog, accounts, events, … }), actual ${actualOf(input)}`]))
  }
  const issues: string[] = []
  const file_input = withoutComments(input, FILE_SHAPE, "", issues) as Record<string, unknown>
  const decoded = Schema.decodeUnknownEither(TimelineFile, { errors: "all" })(file_input)
  if (Either.isLeft(decoded)) issues.push(...issuesOf(decoded.left))
  const rawEvents = Either.isRight(decoded) ? decoded.right.events : Array.isArray(file_input["events"]) ? (file_input["events"] as unknown[]).slice(0, policy.TIMELINE_EVENTS_MAX) : []
  const eventInputs: TimelineEventInput[] = []
  rawEvents.forEach((raw, index) => {
    const e = decodeEvent(raw, index)
    if (Either.isLeft(e)) issues.push(...e.left)
    else eventInputs.push(e.right)
  })
  if (Either.isLeft(decoded) || issues.length > 0) return Either.left(new TimelineError(dedupe(issues)))
  const file = decoded.right
  // A key that is not an id is dropped by the record's schema, not refused: refuse it here.
  for (const key of Object.keys(file_input["accounts"] as object)) {
    if (!Object.hasOwn(file.accounts, key)) issues.push(`accounts.${key}: an id of letters, digits, '.', '_' or '-' (at most 63)`)
  }
  const start_ms = parseInstantMs(file.start)!
  const events = eventInputs.map((e, index) => {
    const at_ms = parseAt(e.at, start_ms)!
    if (at_ms < start_ms) issues.push(`events.${index}.at: ${e.at} is before start (${new Date(start_ms).toISOString()})`)
    return { ...e, at_ms, index }
  })
  // Same instant → file order (TIMELINE.md); a stable sort keeps it.
  const ordered = [...events].sort((a, b) => a.at_ms - b.at_ms || a.index - b.index)
  const last_ms = ordered.length === 0 ? start_ms : ordered[ordered.length - 1]!.at_ms
  // Decision: without `until`, a run ends one day after its last event.
  const until_ms = file.until !== undefined ? parseAt(file.until, start_ms)! : last_ms + 24 * policy.MS_PER_HOUR
  if (until_ms < start_ms) issues.push("until: before start")
  // An event after `until` would never run, and say nothing: refuse the file instead.
  for (const e of ordered) if (e.at_ms > until_ms) issues.push(`events.${e.index}.at: after until (${new Date(until_ms).toISOString()}); lengthen until or remove the event`)
  if (until_ms - start_ms > policy.TIMELINE_SPAN_MS_MAX) {
    const days = policy.TIMELINE_SPAN_MS_MAX / policy.MS_PER_HOUR / 24
    // Without `until`, the run's end comes from the last event: name that event, not a field the file does not have.
    if (file.until !== undefined) issues.push(`until: a timeline spans at most ${days} days`)
    else issues.push(`events.${ordered[ordered.length - 1]!.index}.at: without until the run ends one day after the last event, at ${new Date(until_ms).toISOString()}, and a timeline spans at most ${days} days`)
  }
  if (Object.keys(file.accounts).length > policy.TIMELINE_ACCOUNTS_MAX) issues.push(`accounts: at most ${policy.TIMELINE_ACCOUNTS_MAX}`)
  // parseModelCatalog names its fields from `models`: `models.<id>.<price field>`, or
  // `models.<id>.` for a price that is not an object.
  const models = (file.catalog.models ?? {}) as Record<string, ModelPriceJson>
  const prices = parseModelCatalog(models)
  if (Either.isLeft(prices)) {
    // Every bad model, not only the first (the catalog stops there): the file is fixed in one go.
    const bad = prices.left.code === "too_many_models" ? [prices.left] : Object.keys(models).sort().flatMap((id) => Either.match(parseModelCatalog({ [id]: models[id]! }), { onLeft: (e) => [e], onRight: () => [] }))
    for (const e of bad) issues.push(`catalog.${e.field.replace(/\.$/, "")}: ${e.message}`)
  }
  if (issues.length > 0 || Either.isLeft(prices)) return Either.left(new TimelineError(dedupe(issues)))

  const regions: SimRegion[] = Object.entries(file.catalog.regions).map(([name, r]) => ({
    name,
    nodes: r.nodes,
    gpus_per_node: r.gpus_per_node,
    image_pull_ms: ms(r.image_pull, policy.SIM_IMAGE_PULL_DEFAULT),
    image_pull_jitter_ms: ms(r.image_pull_jitter, "PT0S"),
    container_start_ms: ms(r.container_start, policy.SIM_CONTAINER_START_DEFAULT),
    pod_stop_ms: ms(r.pod_stop, policy.SIM_POD_STOP_DEFAULT),
    pull_failure_probability: r.pull_failure_probability ?? 0,
    preemption_mean_interval_ms: ms(r.preemption_mean_interval, "PT0S"),
    preemption_duration_ms: ms(r.preemption_duration, "PT10M")
  }))
  return Either.right({
    start_ms,
    seed: file.seed,
    until_ms,
    gpu_rates: new Map(Object.entries(file.catalog.gpus).map(([gpu, g]) => [gpu, dollars(g.hourly_rate)])),
    model_prices: prices.right,
    storage_rates: new Map(
      (["cloud_drive", "shared_fs"] as const).flatMap((k) => {
        const rate = file.catalog.storage?.[k]?.daily_rate_per_gb
        return rate === undefined ? [] : [[k, dollars(rate)] as const]
      })
    ),
    aggregate_api_usage: file.api_usage_rows === "per_minute",
    payments: { webhook_delay_ms: ms(file.payments?.webhook_delay, "PT0S"), duplicate_probability: file.payments?.duplicate_probability ?? 0, previous_attributes: file.payments?.previous_attributes ?? true },
    regions,
    accounts: Object.entries(file.accounts)
      .map(([id, a]) => ({ id, balance_micros: dollars(a.balance) }))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
    events: ordered
  })
}

/** One line per path: a field that fails several ways is reported by its first reason. */
const dedupe = (issues: ReadonlyArray<string>): string[] => {
  const seen = new Set<string>()
  return issues.filter((i) => {
    const path = i.slice(0, i.indexOf(": "))
    if (seen.has(path)) return false
    seen.add(path)
    return true
  })
}

/**
 * Why `text` is not JSON, on one line, with the line and column where the parser stopped when
 * it says (Node 20's JSON.parse names only a character offset, and quotes a piece of the text,
 * newlines and all, for some errors): a timeline is written by hand, and "at position 4817"
 * does not point at a line.
 */
const notJson = (text: string, error: Error): string => {
  if (text.trim() === "") return "not JSON: the file is empty"
  const position = /at position (\d+)/.exec(error.message)
  const where = position === null ? "" : ` (${lineAndColumn(text, Number(position[1]))})`
  return `not JSON: ${error.message.replace(/\s*\n\s*/g, " ")}${where}`
}

/** `line L, column C` (both from 1) of a character offset in `text`. */
const lineAndColumn = (text: string, offset: number): string => {
  const before = text.slice(0, offset)
  const line_start = before.lastIndexOf("\n") + 1
  return `line ${before.split("\n").length}, column ${offset - line_start + 1}`
}

/** Parses JSON text and decodes it. A UTF-8 byte order mark (editors on Windows write one) is not part of the JSON. */
export const parseTimeline = (text: string): Either.Either<Timeline, TimelineError> => {
  const json_text = text.startsWith("\uFEFF") ? text.slice(1) : text
  let json: unknown
  try {
    json = JSON.parse(json_text)
  } catch (e) {
    return Either.left(new TimelineError([notJson(json_text, e as Error)]))
  }
  return decodeTimeline(json)
}
