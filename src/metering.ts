/**
 * Metering: per-request API usage billing (SPEC §6), the engine side of `/v1/*`.
 *
 * A request names a model and what it used (tokens in and out, images, seconds of audio
 * or video). `Metering.charge` validates it, resolves the model, prices it, checks the
 * balance and, on success, charges it: one `api_usage` row per request, or (with
 * `aggregate`) one row per (account, model, minute). Expected failures come back as
 * `Either` values with the engine's tagged errors, and a refused request writes nothing.
 *
 * Decisions (the manual is silent on these; each is tested in test/metering.test.ts):
 *
 * - **Prices** are micro-dollars per 1M input tokens, per 1M output tokens, per image and
 *   per second of audio/video. A platform model whose catalog entry is `null` or has no
 *   price field at all is registered but not priced: 402 `model_not_priced`.
 * - **Cost, rounded once.** `(input_tokens × input_price + output_tokens × output_price) /
 *   1,000,000 + images × per_image + seconds × per_second` is computed as one exact
 *   rational number of micros and rounded once to the nearest micro, half up (the engine's
 *   rule, `roundHalfUp` in money.ts). `seconds` may carry at most 3 decimals: it is turned
 *   into whole milliseconds, exactly, before pricing.
 * - **Decision: a priced request is never free.** A cost above 0 that rounds to 0 is
 *   charged `REQUEST_COST_MIN_MICROS` (1 micro): every served request that uses a priced
 *   unit writes its row. Only an exact cost of 0 (a price of "0", no units used) is free.
 * - **A unit the model has no price for** (images sent to a token-priced LLM, say) is
 *   refused with 400 `unit_not_priced` naming the field: usage is never billed at an
 *   implied $0, and the OpenAI-compatible API refuses a request the model cannot serve.
 *   A price field of "0" is a real price (free) and is accepted.
 * - **Order of checks**: shape of the request (400), the account (404
 *   `account_not_found`), the model (404 `model_not_found`, 402 `insufficient_balance` for an
 *   own instance stopped for credit, 503 `no_healthy_pod`), the price (402 `model_not_priced`,
 *   then 400 `unit_not_priced`), then the balance (402 `insufficient_balance`).
 * - **Model ids.** A key of the platform price catalog is a platform model (answer region
 *   `null`: the platform's router picks). Otherwise `"<name>:<instance_id>"` (split at the
 *   last `:`) addresses a user inference instance through the injected
 *   `lookupUserInstance(account, name, instance_id)`, which must answer `missing` for an
 *   instance of another account (no request reads another account's resources). Missing or
 *   terminated → 404 `model_not_found`; a name without the suffix that is not a platform
 *   model → 404; active but no healthy region → 503 `no_healthy_pod`; otherwise the answer
 *   carries the first healthy region in the lookup's (deterministic) order.
 * - **Decision (the manual over SPEC §4/§7's blanket 404): an own instance stopped for credit
 *   is 402.** The manual's "402 on my own user inference instance. Cause: balance hit $0 on
 *   the previous 24h cycle; instance was terminated … Restore balance and launch again." So
 *   when the lookup answers `terminated` with `termination_reason` `credit_depleted` (the
 *   engine stopped it at a cycle end, and it is still stopping or has stopped), the request
 *   is refused 402 `insufficient_balance` (`InstanceCreditDepleted`) with a message naming the
 *   instance, the cause and the fix. Every other stopped instance (user terminate, duration,
 *   failure) stays 404, and another account's instance is `missing`: 404 word for word as an
 *   unknown id, so neither its existence nor its state leaks. The lookup is asked for the
 *   reason only on this refusal path; a running instance's request costs what it did.
 *   A request at the very instant of the cycle end that stops the instance is a timeline
 *   input, and inputs come before the engine's alarms at one instant (clock.ts lanes): it is
 *   served by the instance still running. Once the stop has happened, a request at that same
 *   instant (the HTTP API, after the alarm fired) or later is 402.
 * - **User instances** are charged per request at the `price` the lookup returns (the
 *   manual: "per-request to instances you've launched"); their GPU time is billed
 *   separately by the instance's hold. A `null` (or empty) price means the per-request
 *   charge is $0: the request is served and writes no row.
 * - **The $0 rule** (SPEC §7, "at $0 API calls get 402"): a request is admitted only when
 *   the spendable balance is above 0 and covers its cost. So a free request to a platform
 *   model on a balance of exactly $0 (or below, after an overage) is refused 402
 *   `insufficient_balance`, and a request costing exactly the whole balance is admitted and
 *   leaves $0. Decision: a user instance's request that costs nothing (no per-request price)
 *   is served whatever the balance, while the instance runs: its GPU time is prepaid by its
 *   hold, a partial hold takes the whole balance, and the manual's only cause of "402 on my
 *   own user inference instance" is that the instance was stopped for credit (the 402
 *   above). The error's
 *   `required_micros` is the least spendable balance that would have admitted the request
 *   (`max(cost, 1)`), its `balance_micros` the spendable balance.
 * - **A request that costs 0 micros** (a free model, a user instance, no units used) writes
 *   no row: the ledger never holds zero-amount rows.
 *
 * Aggregation (`aggregate: true`, the manual's "or aggregated for bulk visibility"):
 *
 * - Each request is still priced and rounded on its own; it is kept in memory as a pending
 *   charge in the bucket of (account, model, minute of `at`), and the bucket's row is the
 *   exact sum of its requests' rounded costs. Requests that cost 0 join no bucket.
 * - The spendable balance is the wallet balance minus the account's pending charges, so
 *   the two modes admit exactly the same requests. `balance_after_micros` in a charge's
 *   answer is that spendable balance after the request, in both modes.
 * - Between flushes the wallet (the ledger) does not yet show the pending charges. Other
 *   money movements (a hold placed by a launch) see only the wallet; the supervisor should
 *   subtract `pendingMicros(account)` where it admits them, or pending charges may take the
 *   balance below 0 when they post.
 * - `flush(at)` posts one row for every bucket whose minute has ended (`at ≥ end`), with the
 *   row's `at` = the end of the minute; `flushAll(at)` posts every bucket (before a stop or
 *   the end of a run), an open bucket's row at `min(end, at)`. Rows are posted in one
 *   transaction, sorted by account, then model, then minute (code-unit string order, never
 *   the order buckets were opened). A request arriving after `flushAll` in the same minute
 *   opens a new bucket, so that minute gets a second row.
 * - Conservation holds at every flush, asserted in code: the pending total before a flush
 *   equals the amount it posted plus the pending total after it.
 * - Pending charges live in memory only: a crash loses at most the open minute of usage
 *   (under-billing, never double billing). `nextFlushAt()` gives the supervisor the one
 *   instant to arm a clock timer for.
 *
 * No wall clock and no randomness here: every instant is the engine clock's `at`, passed in.
 * The limits below bound every input; they belong with the others in policy.ts (and
 * docs/POLICY.md) when this module is wired in.
 */
import { Either } from "effect"
import { assert, InstanceCreditDepleted, InsufficientBalance, ModelNotPriced, NoHealthyPod, NotFound, ValidationError } from "./errors.js"
import type { LedgerStore } from "./ledger/store.js"
import { parseDollars, roundHalfUp, type Micros } from "./money.js"
import { MS_PER_MINUTE, MS_PER_SECOND, type TerminationReason } from "./policy.js"

// ── Limits ──────────────────────────────────────────────────────────────────────────────
/** Tokens of one kind (input or output) in one request: far above any context window. */
export const TOKENS_PER_REQUEST_MAX = 10_000_000
/** Images generated by one request. */
export const IMAGES_PER_REQUEST_MAX = 1_000
/** Seconds of audio or video in one request: 24 hours. */
export const SECONDS_PER_REQUEST_MAX = 86_400
/** `seconds` is priced in whole milliseconds, so it may carry at most 3 decimals. */
export const SECONDS_DECIMALS_MAX = 3
/** Longest model id: a 128-character model name, `:`, a 63-character instance id, and room. */
export const MODEL_ID_LENGTH_MAX = 256
/** Models in one price catalog. */
export const CATALOG_MODELS_MAX = 10_000
/** One aggregated `api_usage` row covers one minute of one model's requests of one account. */
export const AGGREGATION_WINDOW_MS = MS_PER_MINUTE
/** Open aggregation buckets held in memory before the process stops loudly (a flush timer that never fired). */
export const PENDING_BUCKETS_MAX = 1_000_000

/**
 * Decision: the least a request that uses priced units costs. Its exact cost rounds half up
 * to the micro, but never down to nothing: a served request is never free unless its price
 * is (a price of "0", a user instance's request). Before, a request under half a micro (an
 * embedding of a few words at $0.02 per 1M tokens) cost $0 and wrote no row, however many.
 */
export const REQUEST_COST_MIN_MICROS = 1n

/** Token prices are per million tokens; the cost's exact rational has this denominator. */
const TOKENS_PER_PRICE_UNIT = 1_000_000n
/** `ms × per_second / 1000` over the same denominator: `ms × per_second × (1,000,000 / 1,000)`. */
const MS_SCALE = TOKENS_PER_PRICE_UNIT / BigInt(MS_PER_SECOND)

// ── Types ───────────────────────────────────────────────────────────────────────────────
/** A model's prices in micros: per 1M input tokens, per 1M output tokens, per image, per second. */
export interface ModelPrice {
  readonly input_per_1m_tokens?: Micros
  readonly output_per_1m_tokens?: Micros
  readonly per_image?: Micros
  readonly per_second?: Micros
}

export const PRICE_FIELDS = ["input_per_1m_tokens", "output_per_1m_tokens", "per_image", "per_second"] as const
export type PriceField = (typeof PRICE_FIELDS)[number]

/** What the inference module answers about `"<name>:<instance_id>"` for the calling account. */
export interface UserInstanceInfo {
  readonly status: "active" | "terminated" | "missing"
  readonly healthy_regions: ReadonlyArray<string>
  /**
   * Why a `terminated` instance of this name stopped (also while it is still stopping);
   * `null` when it is active, missing, or the name is not the instance's.
   */
  readonly termination_reason: TerminationReason | null
  readonly price: ModelPrice | null
}

export type LookupUserInstance = (account: string, name: string, instance_id: string) => UserInstanceInfo

/** One `/v1` request as the API edge (or a timeline's `api_request`) hands it over. */
export interface ApiRequest {
  readonly account: string
  readonly model: string
  /** Engine-clock instant of the request, epoch ms. */
  readonly at: number
  readonly input_tokens?: number
  readonly output_tokens?: number
  readonly images?: number
  /** Seconds of audio or video, at most 3 decimals. */
  readonly seconds?: number
}

/** A request's usage, validated: whole counts, media time in whole milliseconds. */
export interface Usage {
  readonly input_tokens: number
  readonly output_tokens: number
  readonly images: number
  readonly media_ms: number
}

export interface ChargeResult {
  readonly charged_micros: Micros
  /** The spendable balance after this request: the wallet less the account's pending charges. */
  readonly balance_after_micros: Micros
  /** The region that serves a user instance; `null` for a platform model. */
  readonly region: string | null
}

export type MeteringError = ValidationError | NotFound | InstanceCreditDepleted | NoHealthyPod | ModelNotPriced | InsufficientBalance

export interface MeteringOptions {
  readonly aggregate: boolean
}

/** One aggregated row that a flush posted. */
export interface FlushedBucket {
  readonly account: string
  readonly model: string
  readonly minute_start: number
  readonly at: number
  readonly requests: number
  readonly amount_micros: Micros
  readonly balance_after_micros: Micros
}

// ── Pure leaves ─────────────────────────────────────────────────────────────────────────
const invalid = (code: string, field: string, message: string) => Either.left(new ValidationError({ code, field, message }))

const isCount = (value: unknown, max: number): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0 && value <= max

/** A count, 0 when absent; `null` when it is not a whole number from 0 to `max`. */
const countOf = (value: unknown, max: number): number | null => (value === undefined ? 0 : isCount(value, max) ? value : null)

const badCount = (field: string, max: number) => invalid("invalid_count", field, `${field} must be a whole number from 0 to ${max}`)

/** Seconds with at most 3 decimals, as exact whole milliseconds; `null` when not such a number. */
const mediaMsOf = (value: unknown): number | null => {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || value > SECONDS_PER_REQUEST_MAX) return null
  const ms = Math.round(value * MS_PER_SECOND)
  // Exactly the doubles nearest to a number with 3 decimals survive the round trip.
  return ms / MS_PER_SECOND === value ? ms : null
}

/** Checks the shape and bounds of a request: 400 `ValidationError` naming the field. */
export const validateRequest = (req: ApiRequest): Either.Either<Usage, ValidationError> => {
  if (typeof req.model !== "string" || req.model.length === 0 || req.model.length > MODEL_ID_LENGTH_MAX) {
    return invalid("invalid_model", "model", `model must be a non-empty string of at most ${MODEL_ID_LENGTH_MAX} characters`)
  }
  // Field by field, in this order: the first bad one is named. (Once per `/v1` call: no Either per field.)
  const input_tokens = countOf(req.input_tokens, TOKENS_PER_REQUEST_MAX)
  if (input_tokens === null) return badCount("input_tokens", TOKENS_PER_REQUEST_MAX)
  const output_tokens = countOf(req.output_tokens, TOKENS_PER_REQUEST_MAX)
  if (output_tokens === null) return badCount("output_tokens", TOKENS_PER_REQUEST_MAX)
  const images = countOf(req.images, IMAGES_PER_REQUEST_MAX)
  if (images === null) return badCount("images", IMAGES_PER_REQUEST_MAX)
  const media_ms = req.seconds === undefined ? 0 : mediaMsOf(req.seconds)
  if (media_ms === null) {
    return invalid("invalid_seconds", "seconds", `seconds must be a number from 0 to ${SECONDS_PER_REQUEST_MAX} with at most ${SECONDS_DECIMALS_MAX} decimals`)
  }
  return Either.right({ input_tokens, output_tokens, images, media_ms })
}

/** A price with no field set prices nothing: the model is registered but not priced. */
export const isPriced = (price: ModelPrice | null | undefined): price is ModelPrice =>
  price != null && PRICE_FIELDS.some((f) => price[f] !== undefined)

const PRICED: Either.Either<void, ValidationError> = Either.right(undefined)

/** Every unit the request used must have a price: 400 `unit_not_priced` naming the first that has none. */
export const checkUnitsPriced = (model: string, price: ModelPrice, usage: Usage): Either.Either<void, ValidationError> => {
  // In this order, the first unit used without a price is the one named.
  const unpriced =
    usage.input_tokens > 0 && price.input_per_1m_tokens === undefined
      ? "input_tokens"
      : usage.output_tokens > 0 && price.output_per_1m_tokens === undefined
        ? "output_tokens"
        : usage.images > 0 && price.per_image === undefined
          ? "images"
          : usage.media_ms > 0 && price.per_second === undefined
            ? "seconds"
            : null
  return unpriced === null ? PRICED : invalid("unit_not_priced", unpriced, `model ${model} has no price for ${unpriced}`)
}

/**
 * The cost of one request: one exact rational number of micros over 1,000,000, rounded
 * once, half up. A unit without a price contributes nothing (callers refuse such usage
 * first, with `checkUnitsPriced`).
 */
export const requestCostMicros = (price: ModelPrice, usage: Usage): Micros => {
  const numerator =
    BigInt(usage.input_tokens) * (price.input_per_1m_tokens ?? 0n) +
    BigInt(usage.output_tokens) * (price.output_per_1m_tokens ?? 0n) +
    BigInt(usage.images) * (price.per_image ?? 0n) * TOKENS_PER_PRICE_UNIT +
    BigInt(usage.media_ms) * (price.per_second ?? 0n) * MS_SCALE
  if (numerator === 0n) return 0n
  const rounded = roundHalfUp(numerator, TOKENS_PER_PRICE_UNIT)
  return rounded < REQUEST_COST_MIN_MICROS ? REQUEST_COST_MIN_MICROS : rounded
}

/** "12.5" for 12,500 ms: whole milliseconds as seconds, no trailing zeros. */
const secondsText = (ms: bigint): string => {
  const whole = ms / 1000n
  const frac = (ms % 1000n).toString().padStart(3, "0").replace(/0+$/, "")
  return frac.length === 0 ? `${whole}` : `${whole}.${frac}`
}

interface UnitTotals {
  readonly input_tokens: bigint
  readonly output_tokens: bigint
  readonly images: bigint
  readonly media_ms: bigint
}

/** "1200 in / 300 out tokens, 2 images, 12.5 s": only the units used. */
const unitsText = (u: UnitTotals): string => {
  const parts: string[] = []
  if (u.input_tokens > 0n || u.output_tokens > 0n) parts.push(`${u.input_tokens} in / ${u.output_tokens} out tokens`)
  if (u.images > 0n) parts.push(`${u.images} image${u.images === 1n ? "" : "s"}`)
  if (u.media_ms > 0n) parts.push(`${secondsText(u.media_ms)} s`)
  return parts.length === 0 ? "no billable units" : parts.join(", ")
}

const totalsOf = (usage: Usage): UnitTotals => ({
  input_tokens: BigInt(usage.input_tokens),
  output_tokens: BigInt(usage.output_tokens),
  images: BigInt(usage.images),
  media_ms: BigInt(usage.media_ms)
})

/**
 * "2026-03-01T14:03Z" for a minute's start. A flush posts every bucket of one minute
 * together, so the last minute's text is kept: one `Date` per minute, not per row.
 */
const minuteText = (() => {
  let last_ms = NaN
  let last_text = ""
  return (minute_start: number): string => {
    if (minute_start !== last_ms) {
      last_ms = minute_start
      last_text = `${new Date(minute_start).toISOString().slice(0, 16)}Z`
    }
    return last_text
  }
})()

export const apiUsageDescriptions = {
  request: (model: string, usage: Usage) => `API usage: ${model}, ${unitsText(totalsOf(usage))}`,
  bucket: (model: string, requests: number, totals: UnitTotals, minute_start: number) =>
    `API usage: ${model}, ${requests} request${requests === 1 ? "" : "s"}, ${unitsText(totals)}, minute ${minuteText(minute_start)}`
} as const

// ── Price catalog decoding (the timeline's `catalog.models`) ───────────────────────────
export type ModelPriceJson = {
  readonly input_per_1m_tokens?: string
  readonly output_per_1m_tokens?: string
  readonly per_image?: string
  readonly per_second?: string
} | null

/**
 * Decodes one model's price strings of dollars (`"0.15"`), via `parseDollars`. `null` or an
 * object without fields decodes to `null`: registered, not priced. A negative amount, a
 * non-string, or an unknown field (a typo would silently leave a unit unpriced) is refused.
 * `field_prefix` lets a catalog decoder name the offending field in full.
 */
export const parseModelPrice = (json: ModelPriceJson, field_prefix = ""): Either.Either<ModelPrice | null, ValidationError> => {
  if (json === null) return Either.right(null)
  if (typeof json !== "object" || Array.isArray(json)) return invalid("invalid_price", field_prefix || "price", "a model price must be an object or null")
  const price: { -readonly [F in PriceField]?: Micros } = {}
  for (const key of Object.keys(json).sort()) {
    const field = `${field_prefix}${key}`
    if (!(PRICE_FIELDS as ReadonlyArray<string>).includes(key)) {
      return invalid("invalid_price", field, `unknown price field ${key}; expected one of ${PRICE_FIELDS.join(", ")}`)
    }
    const value: unknown = (json as Record<string, unknown>)[key]
    if (value === undefined) continue
    const micros = typeof value === "string" ? parseDollars(value) : undefined
    if (micros === undefined || Either.isLeft(micros) || micros.right < 0n) {
      return invalid("invalid_price", field, `${key} must be a non-negative dollar string with at most 6 decimals`)
    }
    price[key as PriceField] = micros.right
  }
  return Either.right(isPriced(price) ? price : null)
}

/** Decodes a whole `catalog.models` section: model id → price (or `null`, not priced). */
export const parseModelCatalog = (json: Readonly<Record<string, ModelPriceJson>>): Either.Either<ReadonlyMap<string, ModelPrice | null>, ValidationError> => {
  const ids = Object.keys(json).sort()
  if (ids.length > CATALOG_MODELS_MAX) return invalid("too_many_models", "models", `at most ${CATALOG_MODELS_MAX} models`)
  const catalog = new Map<string, ModelPrice | null>()
  for (const id of ids) {
    if (id.length === 0 || id.length > MODEL_ID_LENGTH_MAX) return invalid("invalid_model", `models.${id}`, "bad model id")
    const price = parseModelPrice(json[id] ?? null, `models.${id}.`)
    if (Either.isLeft(price)) return Either.left(price.left)
    catalog.set(id, price.right)
  }
  return Either.right(catalog)
}

// ── The metering service ────────────────────────────────────────────────────────────────
interface Resolved {
  /** The price to charge, or `null`: not priced (platform) or free per request (user instance). */
  readonly price: ModelPrice | null
  readonly region: string | null
  readonly platform: boolean
}

/** An open bucket: its sums grow in place, one request at a time, until the flush posts it. */
interface Bucket {
  readonly account: string
  readonly model: string
  readonly minute_start: number
  amount_micros: Micros
  requests: number
  input_tokens: bigint
  output_tokens: bigint
  images: bigint
  media_ms: bigint
}

/** One string per (account, model, minute); the account's length first keeps it unambiguous whatever the ids hold. */
const bucketKey = (account: string, model: string, minute_start: number): string => `${minute_start}|${account.length}|${account}|${model}`

/** Account, then model, then minute: code-unit order, never the order the buckets were opened. */
const bucketOrder = (a: Bucket, b: Bucket): number => {
  if (a.account !== b.account) return a.account < b.account ? -1 : 1
  if (a.model !== b.model) return a.model < b.model ? -1 : 1
  return a.minute_start - b.minute_start
}

export class Metering {
  /** Open aggregation buckets by (account, model, minute). Empty unless `aggregate`. */
  private readonly buckets = new Map<string, Bucket>()
  /** Sum of each account's open buckets: charged to the user, not yet in the wallet. */
  private readonly pending = new Map<string, Micros>()
  /** Open buckets per minute start: the few distinct minutes give `nextFlushAt` without a scan of every bucket. */
  private readonly openMinutes = new Map<number, number>()

  constructor(
    private readonly ledger: LedgerStore,
    private readonly prices: ReadonlyMap<string, ModelPrice | null>,
    private readonly lookupUserInstance: LookupUserInstance,
    private readonly options: MeteringOptions = { aggregate: false }
  ) {
    for (const [model, price] of prices) {
      for (const f of PRICE_FIELDS) {
        const v = price?.[f]
        assert(v === undefined || v >= 0n, () => `price ${f} of ${model} is negative: ${v}`)
      }
    }
  }

  /**
   * Charges one request at engine instant `at`. Checks, in order: the request (400), the
   * account (404), the model (404, 402 for an own instance stopped for credit, 503), its price (402 `model_not_priced`, 400
   * `unit_not_priced`), the balance (402). A refusal writes nothing.
   */
  charge(req: ApiRequest): Either.Either<ChargeResult, MeteringError> {
    assert(Number.isSafeInteger(req.at) && req.at >= 0, () => `charge at a bad instant ${req.at}`)
    const usage = validateRequest(req)
    if (Either.isLeft(usage)) return Either.left(usage.left)
    if (!this.ledger.hasAccount(req.account)) return Either.left(new NotFound({ code: "account_not_found", id: req.account }))
    const resolved = this.resolve(req.account, req.model)
    if (Either.isLeft(resolved)) return Either.left(resolved.left)
    const { price, region, platform } = resolved.right
    if (platform && !isPriced(price)) return Either.left(new ModelNotPriced({ model: req.model }))
    let cost = 0n
    if (isPriced(price)) {
      const units = checkUnitsPriced(req.model, price, usage.right)
      if (Either.isLeft(units)) return Either.left(units.left)
      cost = requestCostMicros(price, usage.right)
    }
    assert(cost >= 0n, () => `negative cost ${cost} for ${req.model}`)
    const spendable = this.spendableMicros(req.account)
    // The $0 rule is about what requests cost: a user instance's free request is paid for by
    // its hold, and served while the instance runs (the manual: its 402 means it was stopped).
    const prepaid = !platform && !isPriced(price)
    if ((spendable <= 0n && !prepaid) || spendable < cost) {
      return Either.left(new InsufficientBalance({ account: req.account, required_micros: cost > 0n ? cost : 1n, balance_micros: spendable }))
    }
    if (cost > 0n) this.book(req, usage.right, cost)
    const after = this.spendableMicros(req.account)
    assert(after === spendable - cost, () => `charge of ${cost} moved ${req.account}'s spendable balance from ${spendable} to ${after}`)
    return Either.right({ charged_micros: cost, balance_after_micros: after, region })
  }

  /** The wallet balance less the account's pending (aggregated, not yet posted) charges. The account must exist. */
  spendableMicros(account: string): Micros {
    return this.ledger.balance(account) - this.pendingMicros(account)
  }

  /** Charges of the account's open buckets: already admitted, not yet in its wallet. */
  pendingMicros(account: string): Micros {
    return this.pending.get(account) ?? 0n
  }

  /** Number of open aggregation buckets. */
  get pendingBuckets(): number {
    return this.buckets.size
  }

  /** The earliest instant a bucket's minute ends, for the supervisor's one flush timer. */
  nextFlushAt(): number | undefined {
    let earliest: number | undefined
    for (const minute_start of this.openMinutes.keys()) {
      if (earliest === undefined || minute_start < earliest) earliest = minute_start
    }
    return earliest === undefined ? undefined : earliest + AGGREGATION_WINDOW_MS
  }

  /** Posts one row per bucket whose minute has ended by `at`, each at its minute's end. */
  flush(at: number): ReadonlyArray<FlushedBucket> {
    const due = [...this.buckets.values()].filter((b) => b.minute_start + AGGREGATION_WINDOW_MS <= at)
    return this.post(due, at)
  }

  /** Posts every bucket, ended or not (before a stop, at the end of a run). */
  flushAll(at: number): ReadonlyArray<FlushedBucket> {
    return this.post([...this.buckets.values()], at)
  }

  // ── internals ───────────────────────────────────────────────────────────────────────
  private resolve(account: string, model: string): Either.Either<Resolved, NotFound | InstanceCreditDepleted | NoHealthyPod> {
    if (this.prices.has(model)) return Either.right({ price: this.prices.get(model) ?? null, region: null, platform: true })
    // Built only when refused: an error captures a stack trace, and most requests succeed.
    const notFound = () => Either.left(new NotFound({ code: "model_not_found", id: model }))
    const colon = model.lastIndexOf(":")
    if (colon <= 0 || colon === model.length - 1) return notFound()
    const info = this.lookupUserInstance(account, model.slice(0, colon), model.slice(colon + 1))
    if (info.status !== "active") {
      // Only the caller's own instance can be found terminated: another account's is `missing`.
      if (info.status === "terminated" && info.termination_reason === "credit_depleted") {
        return Either.left(new InstanceCreditDepleted({ name: model.slice(0, colon), instance: model.slice(colon + 1) }))
      }
      return notFound()
    }
    const region = info.healthy_regions[0]
    if (region === undefined) return Either.left(new NoHealthyPod({ model }))
    return Either.right({ price: info.price, region, platform: false })
  }

  /** Books an admitted charge: a row now, or a pending charge in its minute's bucket. */
  private book(req: ApiRequest, usage: Usage, cost: Micros): void {
    if (!this.options.aggregate) {
      this.ledger.transaction(() =>
        this.ledger.post({
          account: req.account,
          at: req.at,
          kind: "api_usage",
          amount_micros: -cost,
          resource: req.model,
          description: apiUsageDescriptions.request(req.model, usage)
        })
      )
      return
    }
    const minute_start = req.at - (req.at % AGGREGATION_WINDOW_MS)
    const key = bucketKey(req.account, req.model, minute_start)
    const open = this.buckets.get(key)
    if (open === undefined && this.buckets.size >= PENDING_BUCKETS_MAX) this.flush(req.at)
    assert(open !== undefined || this.buckets.size < PENDING_BUCKETS_MAX, () => `more than ${PENDING_BUCKETS_MAX} open API usage buckets`)
    if (open === undefined) {
      this.openMinutes.set(minute_start, (this.openMinutes.get(minute_start) ?? 0) + 1)
      this.buckets.set(key, { account: req.account, model: req.model, minute_start, amount_micros: cost, requests: 1, ...totalsOf(usage) })
    } else {
      // Only the units used are added: most requests use one or two of the four.
      open.amount_micros += cost
      open.requests += 1
      if (usage.input_tokens > 0) open.input_tokens += BigInt(usage.input_tokens)
      if (usage.output_tokens > 0) open.output_tokens += BigInt(usage.output_tokens)
      if (usage.images > 0) open.images += BigInt(usage.images)
      if (usage.media_ms > 0) open.media_ms += BigInt(usage.media_ms)
    }
    this.pending.set(req.account, this.pendingMicros(req.account) + cost)
  }

  /** Posts `buckets` in one transaction, in (account, model, minute) order, then forgets them. */
  private post(buckets: ReadonlyArray<Bucket>, at: number): ReadonlyArray<FlushedBucket> {
    assert(Number.isSafeInteger(at) && at >= 0, () => `flush at a bad instant ${at}`)
    if (buckets.length === 0) return []
    const pending_before = this.pendingTotal()
    const ordered = [...buckets].sort(bucketOrder)
    const flushed = this.ledger.transaction(() =>
      ordered.map((b): FlushedBucket => {
        assert(b.amount_micros > 0n, () => `empty bucket for ${b.account} ${b.model} at ${b.minute_start}`)
        const row_at = Math.min(b.minute_start + AGGREGATION_WINDOW_MS, at)
        const balance_after_micros = this.ledger.post({
          account: b.account,
          at: row_at,
          kind: "api_usage",
          amount_micros: -b.amount_micros,
          resource: b.model,
          description: apiUsageDescriptions.bucket(b.model, b.requests, b, b.minute_start)
        })
        return { account: b.account, model: b.model, minute_start: b.minute_start, at: row_at, requests: b.requests, amount_micros: b.amount_micros, balance_after_micros }
      })
    )
    let posted = 0n
    for (const b of ordered) {
      this.buckets.delete(bucketKey(b.account, b.model, b.minute_start))
      const still_open = (this.openMinutes.get(b.minute_start) ?? 0) - 1
      assert(still_open >= 0, () => `minute ${b.minute_start} had no open bucket`)
      if (still_open === 0) this.openMinutes.delete(b.minute_start)
      else this.openMinutes.set(b.minute_start, still_open)
      const left = this.pendingMicros(b.account) - b.amount_micros
      assert(left >= 0n, () => `pending charges of ${b.account} went negative: ${left}`)
      if (left === 0n) this.pending.delete(b.account)
      else this.pending.set(b.account, left)
      posted += b.amount_micros
    }
    const pending_after = this.pendingTotal()
    assert(pending_before === posted + pending_after, () => `flush lost money: ${pending_before} pending became ${posted} posted + ${pending_after} pending`)
    return flushed
  }

  private pendingTotal(): Micros {
    let total = 0n
    for (const amount of this.pending.values()) total += amount
    let in_buckets = 0n
    for (const b of this.buckets.values()) in_buckets += b.amount_micros
    assert(total === in_buckets, () => `pending total ${total} differs from the open buckets' ${in_buckets}`)
    let counted = 0
    for (const n of this.openMinutes.values()) counted += n
    assert(counted === this.buckets.size, () => `${counted} buckets counted by minute, ${this.buckets.size} open`)
    return total
  }
}
