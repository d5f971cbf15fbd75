import { Either } from "effect"
import fc from "fast-check"
import { afterEach, describe, expect, it } from "vitest"
import { errorStatus, InstanceCreditDepleted, InsufficientBalance, ModelNotPriced, NoHealthyPod, NotFound, type EngineError } from "../src/errors.js"
import { LedgerStore } from "../src/ledger/store.js"
import {
  AGGREGATION_WINDOW_MS,
  IMAGES_PER_REQUEST_MAX,
  Metering,
  MODEL_ID_LENGTH_MAX,
  parseModelCatalog,
  parseModelPrice,
  REQUEST_COST_MIN_MICROS,
  requestCostMicros,
  SECONDS_PER_REQUEST_MAX,
  TOKENS_PER_REQUEST_MAX,
  type ApiRequest,
  type FlushedBucket,
  type LookupUserInstance,
  type MeteringError,
  type ModelPrice,
  type UserInstanceInfo
} from "../src/metering.js"

const ACME = "acme"
const BETA = "beta"
/** 2026-03-01T00:00:00Z, a whole minute. */
const T0 = Date.parse("2026-03-01T00:00:00Z")
const MIN = AGGREGATION_WINDOW_MS

/** The platform catalog of these tests, in micros (the timeline's "0.15" is 150,000). */
const PRICES: ReadonlyMap<string, ModelPrice | null> = new Map<string, ModelPrice | null>([
  ["llama-3-8b", { input_per_1m_tokens: 150_000n, output_per_1m_tokens: 600_000n }],
  ["half", { input_per_1m_tokens: 500_000n, output_per_1m_tokens: 500_000n }],
  ["sdxl", { per_image: 40_000n }],
  ["whisper", { per_second: 6_000n }],
  ["tick", { per_second: 1n }],
  ["unpriced", null],
  ["empty-price", {}]
])

/** The inference module's answers, per (account, name, instance id); anything else is missing. */
const INSTANCES: Record<string, UserInstanceInfo> = {
  "acme/my-llm/inf-1": { status: "active", healthy_regions: ["eu-west", "us-east"], termination_reason: null, price: { input_per_1m_tokens: 1_000_000n, output_per_1m_tokens: 2_000_000n } },
  "acme/my-llm/inf-2": { status: "terminated", healthy_regions: [], termination_reason: "user_requested", price: { input_per_1m_tokens: 1_000_000n } },
  "acme/my-llm/inf-3": { status: "active", healthy_regions: [], termination_reason: null, price: { input_per_1m_tokens: 1_000_000n } },
  "acme/free-llm/inf-4": { status: "active", healthy_regions: ["us-east"], termination_reason: null, price: null },
  "acme/my-llm/inf-5": { status: "terminated", healthy_regions: [], termination_reason: "credit_depleted", price: null },
  "acme/my-llm/inf-6": { status: "terminated", healthy_regions: [], termination_reason: "duration_expired", price: null },
  "acme/my-llm/inf-7": { status: "terminated", healthy_regions: [], termination_reason: "failed", price: null }
}
const lookup: LookupUserInstance = (account, name, id) => INSTANCES[`${account}/${name}/${id}`] ?? { status: "missing", healthy_regions: [], termination_reason: null, price: null }

const stores: LedgerStore[] = []
afterEach(() => {
  for (const s of stores.splice(0)) s.close()
})

/** A ledger with `acme` (and `beta`) opened and credited by one adjustment row each. */
const ledgerWith = (balances: Record<string, bigint>): LedgerStore => {
  const ledger = LedgerStore.open(":memory:")
  stores.push(ledger)
  for (const [account, micros] of Object.entries(balances)) {
    if (Either.isLeft(ledger.openAccount(account, T0))) throw new Error(`cannot open ${account}`)
    if (micros !== 0n) ledger.post({ account, at: T0, kind: "adjustment", amount_micros: micros, description: "Opening balance" })
  }
  return ledger
}

const setup = (balances: Record<string, bigint>, aggregate = false) => {
  const ledger = ledgerWith(balances)
  return { ledger, metering: new Metering(ledger, PRICES, lookup, { aggregate }) }
}

const right = <A, E>(result: Either.Either<A, E>): A => {
  if (Either.isLeft(result)) throw new Error(`expected Right, got Left ${JSON.stringify(result.left, (_, v) => (typeof v === "bigint" ? `${v}n` : v))}`)
  return result.right
}
const left = <A, E>(result: Either.Either<A, E>): E => {
  if (Either.isRight(result)) throw new Error(`expected Left, got Right`)
  return result.left
}
/** Status and stable code of a refusal, as the HTTP edge would answer it. */
const refusal = (result: Either.Either<unknown, MeteringError>) => {
  const e = left(result)
  const mapped = errorStatus(e as EngineError)
  return { status: mapped.status, error: mapped.error, ...("field" in e ? { field: e.field } : {}) }
}

/** Api usage rows as finance reads them. */
const apiRows = (ledger: LedgerStore) =>
  ledger
    .ledgerRows()
    .filter((r) => r.kind === "api_usage")
    .map((r) => ({ account: r.account, at: r.at, kind: r.kind, amount_micros: r.amount_micros, balance_after_micros: r.balance_after_micros, resource: r.resource, description: r.description }))

const req = (fields: Partial<ApiRequest> & { model: string }): ApiRequest => ({ account: ACME, at: T0 + 5_000, ...fields })

describe("pricing", () => {
  it("charges tokens exactly and writes one api_usage row", () => {
    // Proves 1,200 in at $0.15/1M + 300 out at $0.60/1M = 180 + 180 = 360 micros, one row with the model as resource.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    const result = right(metering.charge(req({ model: "llama-3-8b", input_tokens: 1_200, output_tokens: 300 })))
    expect(result).toEqual({ charged_micros: 360n, balance_after_micros: 999_640n, region: null })
    expect(apiRows(ledger)).toEqual([
      {
        account: ACME,
        at: T0 + 5_000,
        kind: "api_usage",
        amount_micros: -360n,
        balance_after_micros: 999_640n,
        resource: "llama-3-8b",
        description: "API usage: llama-3-8b, 1200 in / 300 out tokens"
      }
    ])
    expect(ledger.balance(ACME)).toBe(999_640n)
  })

  it("rounds once, half up, over the whole request", () => {
    // Proves an exact half rounds up (1 token at 0.5 micro → 1), below half rounds down, and the parts are not rounded separately.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    expect(right(metering.charge(req({ model: "half", input_tokens: 1 }))).charged_micros).toBe(1n)
    expect(right(metering.charge(req({ model: "half", input_tokens: 3 }))).charged_micros).toBe(2n)
    // 0.5 + 0.5 = 1 exactly; rounding each part first would give 2.
    expect(right(metering.charge(req({ model: "half", input_tokens: 1, output_tokens: 1 }))).charged_micros).toBe(1n)
    expect(apiRows(ledger).map((r) => [r.amount_micros, r.balance_after_micros, r.description])).toEqual([
      [-1n, 999_999n, "API usage: half, 1 in / 0 out tokens"],
      [-2n, 999_997n, "API usage: half, 3 in / 0 out tokens"],
      [-1n, 999_996n, "API usage: half, 1 in / 1 out tokens"]
    ])
    expect(requestCostMicros({ input_per_1m_tokens: 1_499_999n }, { input_tokens: 1, output_tokens: 0, images: 0, media_ms: 0 })).toBe(1n)
    expect(requestCostMicros({ input_per_1m_tokens: 1_500_000n }, { input_tokens: 1, output_tokens: 0, images: 0, media_ms: 0 })).toBe(2n)
  })

  it("never prices a request that uses a priced unit at $0: under half a micro is REQUEST_COST_MIN_MICROS, an exact 0 stays free", () => {
    // Proves the Decision (docs/POLICY.md, API usage): 1 input token at $0.15/1M (0.15 micro)
    // and 0.499 s at 1 micro/s round to 0 and are charged 1 micro, each with its row; a price
    // of "0", or no units used, is an exact 0 and writes no row.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    expect(right(metering.charge(req({ model: "llama-3-8b", input_tokens: 1 })))).toEqual({ charged_micros: REQUEST_COST_MIN_MICROS, balance_after_micros: 999_999n, region: null })
    expect(right(metering.charge(req({ model: "tick", seconds: 0.499 }))).charged_micros).toBe(1n)
    expect(right(metering.charge(req({ model: "llama-3-8b" }))).charged_micros).toBe(0n)
    expect(apiRows(ledger).map((r) => [r.amount_micros, r.balance_after_micros, r.description])).toEqual([
      [-1n, 999_999n, "API usage: llama-3-8b, 1 in / 0 out tokens"],
      [-1n, 999_998n, "API usage: tick, 0.499 s"]
    ])
    const usage = { input_tokens: 1, output_tokens: 0, images: 0, media_ms: 0 }
    expect(requestCostMicros({ input_per_1m_tokens: 1n }, usage)).toBe(1n)
    expect(requestCostMicros({ input_per_1m_tokens: 0n }, { ...usage, input_tokens: 1_000_000 })).toBe(0n)
    expect(requestCostMicros({ input_per_1m_tokens: 150_000n }, { ...usage, input_tokens: 0 })).toBe(0n)
  })

  it("charges images and seconds, seconds to the millisecond", () => {
    // Proves 2 images at $0.04 = 80,000 micros, 12.345 s at $0.006/s = 74,070 micros, and 0.5 s at 1 micro/s rounds half up to 1, 1.499 s down to 1.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    expect(right(metering.charge(req({ model: "sdxl", images: 2 }))).charged_micros).toBe(80_000n)
    expect(right(metering.charge(req({ model: "whisper", seconds: 12.345 }))).charged_micros).toBe(74_070n)
    expect(right(metering.charge(req({ model: "tick", seconds: 0.5 }))).charged_micros).toBe(1n)
    expect(right(metering.charge(req({ model: "tick", seconds: 1.499 }))).charged_micros).toBe(1n)
    expect(apiRows(ledger).map((r) => [r.amount_micros, r.balance_after_micros, r.resource, r.description])).toEqual([
      [-80_000n, 920_000n, "sdxl", "API usage: sdxl, 2 images"],
      [-74_070n, 845_930n, "whisper", "API usage: whisper, 12.345 s"],
      [-1n, 845_929n, "tick", "API usage: tick, 0.5 s"],
      [-1n, 845_928n, "tick", "API usage: tick, 1.499 s"]
    ])
  })
})

describe("refusals write nothing", () => {
  /** Runs `request` and checks the refusal and that neither the rows nor the balance moved. */
  const refused = (metering: Metering, ledger: LedgerStore, request: ApiRequest) => {
    const rows = ledger.ledgerRows().length
    const balance = ledger.balance(ACME)
    const pending = metering.pendingMicros(ACME)
    const answer = refusal(metering.charge(request))
    expect(ledger.ledgerRows().length).toBe(rows)
    expect(ledger.balance(ACME)).toBe(balance)
    expect(metering.pendingMicros(ACME)).toBe(pending)
    return answer
  }

  it("refuses malformed or out-of-bound requests with 400 naming the field", () => {
    // Proves every count must be a whole number within its named bound, seconds carry at most 3 decimals, and the model id is bounded.
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 100_000_000n }, aggregate)
      const count = (field: string) => ({ status: 400, error: "invalid_count", field })
      const seconds = { status: 400, error: "invalid_seconds", field: "seconds" }
      expect(refused(metering, ledger, req({ model: "llama-3-8b", input_tokens: -1 }))).toEqual(count("input_tokens"))
      expect(refused(metering, ledger, req({ model: "llama-3-8b", input_tokens: 1.5 }))).toEqual(count("input_tokens"))
      expect(refused(metering, ledger, req({ model: "llama-3-8b", output_tokens: TOKENS_PER_REQUEST_MAX + 1 }))).toEqual(count("output_tokens"))
      expect(refused(metering, ledger, req({ model: "llama-3-8b", output_tokens: Number.NaN }))).toEqual(count("output_tokens"))
      expect(refused(metering, ledger, req({ model: "sdxl", images: IMAGES_PER_REQUEST_MAX + 1 }))).toEqual(count("images"))
      expect(refused(metering, ledger, req({ model: "whisper", seconds: 1.0005 }))).toEqual(seconds)
      expect(refused(metering, ledger, req({ model: "whisper", seconds: -0.001 }))).toEqual(seconds)
      expect(refused(metering, ledger, req({ model: "whisper", seconds: SECONDS_PER_REQUEST_MAX + 0.001 }))).toEqual(seconds)
      expect(refused(metering, ledger, req({ model: "whisper", seconds: Number.POSITIVE_INFINITY }))).toEqual(seconds)
      expect(refused(metering, ledger, req({ model: "" }))).toEqual({ status: 400, error: "invalid_model", field: "model" })
      expect(refused(metering, ledger, req({ model: "m".repeat(MODEL_ID_LENGTH_MAX + 1) }))).toEqual({ status: 400, error: "invalid_model", field: "model" })
      // A JSON null or a string is not a count, and with two bad fields the first is named.
      expect(refused(metering, ledger, req({ model: "llama-3-8b", input_tokens: null as never }))).toEqual(count("input_tokens"))
      expect(refused(metering, ledger, req({ model: "sdxl", images: "2" as never }))).toEqual(count("images"))
      expect(refused(metering, ledger, req({ model: "whisper", seconds: null as never }))).toEqual(seconds)
      expect(refused(metering, ledger, req({ model: "sdxl", output_tokens: -1, images: -1, seconds: -1 }))).toEqual(count("output_tokens"))
      // Validation comes first: a bad count on an unknown model is a 400, not a 404.
      expect(refused(metering, ledger, req({ model: "no-such-model", images: -1 }))).toEqual(count("images"))
      // The bounds themselves are accepted: 10M tokens at $0.15/1M, 1,000 images at $0.04, 86,400 s at 1 micro/s.
      expect(right(metering.charge(req({ model: "llama-3-8b", input_tokens: TOKENS_PER_REQUEST_MAX }))).charged_micros).toBe(1_500_000n)
      expect(right(metering.charge(req({ model: "sdxl", images: IMAGES_PER_REQUEST_MAX }))).charged_micros).toBe(40_000_000n)
      expect(right(metering.charge(req({ model: "tick", seconds: SECONDS_PER_REQUEST_MAX }))).charged_micros).toBe(86_400n)
    }
  })

  it("refuses an unknown account with 404 account_not_found", () => {
    // Proves the caller's account must exist before anything is resolved or charged.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    expect(refusal(metering.charge(req({ account: "ghost", model: "llama-3-8b", input_tokens: 10 })))).toEqual({ status: 404, error: "account_not_found" })
    expect(ledger.ledgerRows().length).toBe(1)
  })

  it("refuses unknown models and unusable user instances with 404 or 503", () => {
    // Proves the routing rules: unknown platform model, missing suffix, missing, terminated or foreign instance → 404; no healthy pod → 503.
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 1_000_000n, [BETA]: 1_000_000n }, aggregate)
      const notFound = { status: 404, error: "model_not_found" }
      expect(refused(metering, ledger, req({ model: "llama-3-70b", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: "my-llm", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: "my-llm:", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: ":inf-1", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: "my-llm:inf-9", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: "my-llm:inf-2", input_tokens: 10 }))).toEqual(notFound)
      expect(refused(metering, ledger, req({ model: "my-llm:inf-3", input_tokens: 10 }))).toEqual({ status: 503, error: "no_healthy_pod" })
      // Another account's instance is missing for beta: the lookup is asked with the caller's account.
      expect(refusal(metering.charge(req({ account: BETA, model: "my-llm:inf-1", input_tokens: 10 })))).toEqual(notFound)
      expect(ledger.balance(BETA)).toBe(1_000_000n)
      expect(apiRows(ledger)).toEqual([])
      const e = left(metering.charge(req({ model: "my-llm:inf-9" })))
      expect(e).toBeInstanceOf(NotFound)
      expect(left(metering.charge(req({ model: "my-llm:inf-3" })))).toBeInstanceOf(NoHealthyPod)
    }
  })

  it("refuses the caller's own instance stopped for credit with 402 insufficient_balance saying why; other stops stay 404", () => {
    // Proves the manual's "402 on my own user inference instance": stopped with credit_depleted
    // → 402 with a message naming the instance, the cause and the fix; stopped for any other
    // reason → 404; beta asking for acme's instance → the lookup says missing → 404. Nothing is written.
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 1_000_000n, [BETA]: 1_000_000n }, aggregate)
      const stopped = left(metering.charge(req({ model: "my-llm:inf-5", input_tokens: 10 })))
      expect(stopped).toBeInstanceOf(InstanceCreditDepleted)
      expect(errorStatus(stopped as EngineError)).toEqual({
        status: 402,
        error: "insufficient_balance",
        message: "instance inf-5 of model my-llm was stopped because the credit balance was depleted (credit_depleted): add credit, then launch a new instance of my-llm"
      })
      const notFound = { status: 404, error: "model_not_found" }
      for (const id of ["inf-2", "inf-6", "inf-7"]) expect(refused(metering, ledger, req({ model: `my-llm:${id}`, input_tokens: 10 }))).toEqual(notFound)
      expect(refusal(metering.charge(req({ account: BETA, model: "my-llm:inf-5", input_tokens: 10 })))).toEqual(notFound)
      expect(apiRows(ledger)).toEqual([])
      expect(metering.pendingBuckets).toBe(0)
    }
  })

  it("refuses a registered model without a price with 402 model_not_priced, and a unit without a price with 400", () => {
    // Proves null and field-less prices are "not priced", and that usage in a unit the model does not price is refused, not billed at $0.
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 1_000_000n }, aggregate)
      expect(refused(metering, ledger, req({ model: "unpriced", input_tokens: 10 }))).toEqual({ status: 402, error: "model_not_priced" })
      expect(refused(metering, ledger, req({ model: "empty-price", input_tokens: 10 }))).toEqual({ status: 402, error: "model_not_priced" })
      expect(left(metering.charge(req({ model: "unpriced" })))).toBeInstanceOf(ModelNotPriced)
      expect(refused(metering, ledger, req({ model: "llama-3-8b", input_tokens: 10, images: 1 }))).toEqual({ status: 400, error: "unit_not_priced", field: "images" })
      expect(refused(metering, ledger, req({ model: "sdxl", images: 1, seconds: 2 }))).toEqual({ status: 400, error: "unit_not_priced", field: "seconds" })
      expect(refused(metering, ledger, req({ model: "my-llm:inf-1", images: 1 }))).toEqual({ status: 400, error: "unit_not_priced", field: "images" })
    }
  })

  it("refuses a request the balance cannot cover with 402 insufficient_balance, and admits one that spends it exactly", () => {
    // Proves a 360-micro request on 359 micros is refused with the amounts, and on 360 micros leaves exactly 0.
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 359n }, aggregate)
      const request = req({ model: "llama-3-8b", input_tokens: 1_200, output_tokens: 300 })
      expect(refused(metering, ledger, request)).toEqual({ status: 402, error: "insufficient_balance" })
      const e = left(metering.charge(request))
      expect(e).toBeInstanceOf(InsufficientBalance)
      expect([(e as InsufficientBalance).required_micros, (e as InsufficientBalance).balance_micros]).toEqual([360n, 359n])
      ledger.post({ account: ACME, at: T0 + 1, kind: "adjustment", amount_micros: 1n, description: "Correction" })
      expect(right(metering.charge(request))).toEqual({ charged_micros: 360n, balance_after_micros: 0n, region: null })
      metering.flushAll(T0 + 10_000)
      expect(ledger.balance(ACME)).toBe(0n)
    }
  })
})

describe("user instances", () => {
  it("charges a user instance at its own price and answers with the first healthy region", () => {
    // Proves 1,000 in at $1/1M + 500 out at $2/1M = 2,000 micros, resource "my-llm:inf-1", region eu-west.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n })
    expect(right(metering.charge(req({ model: "my-llm:inf-1", input_tokens: 1_000, output_tokens: 500 })))).toEqual({
      charged_micros: 2_000n,
      balance_after_micros: 998_000n,
      region: "eu-west"
    })
    expect(apiRows(ledger).map((r) => [r.kind, r.amount_micros, r.balance_after_micros, r.resource, r.description])).toEqual([
      ["api_usage", -2_000n, 998_000n, "my-llm:inf-1", "API usage: my-llm:inf-1, 1000 in / 500 out tokens"]
    ])
  })

  it("serves an unpriced user instance for free, writing no row", () => {
    // Proves a user instance without a per-request price is charged 0 (its GPU time is billed by its hold) and writes nothing.
    const { ledger, metering } = setup({ [ACME]: 1_000n })
    expect(right(metering.charge(req({ model: "free-llm:inf-4", input_tokens: 5_000, images: 3 })))).toEqual({
      charged_micros: 0n,
      balance_after_micros: 1_000n,
      region: "us-east"
    })
    expect(ledger.ledgerRows().length).toBe(1)
  })
})

describe("the $0 rule", () => {
  it("refuses even a free platform request at $0 or below, but serves a user instance's free request", () => {
    // Proves SPEC §7 "at $0 API calls get 402" for platform models (a request that rounds to 0
    // is refused, required 1 micro), and the Decision for a user instance: its free request is
    // prepaid by the instance's hold and served at any balance (the manual's only cause of a 402
    // on one's own instance is that it was stopped).
    for (const aggregate of [false, true]) {
      const { ledger, metering } = setup({ [ACME]: 0n }, aggregate)
      const free = req({ model: "free-llm:inf-4", input_tokens: 10 })
      expect(right(metering.charge(free))).toEqual({ charged_micros: 0n, balance_after_micros: 0n, region: "us-east" })
      const e = left(metering.charge(req({ model: "llama-3-8b", input_tokens: 1 })))
      expect(errorStatus(e as EngineError)).toMatchObject({ status: 402, error: "insufficient_balance" })
      expect([(e as InsufficientBalance).required_micros, (e as InsufficientBalance).balance_micros]).toEqual([1n, 0n])
      expect(ledger.ledgerRows().length).toBe(0)
      ledger.post({ account: ACME, at: T0 + 1, kind: "adjustment", amount_micros: 1n, description: "Correction" })
      // Spending the last micro takes the account to $0; the next platform request is refused again.
      expect(right(metering.charge(req({ model: "half", input_tokens: 1 }))).balance_after_micros).toBe(0n)
      expect(refusal(metering.charge(req({ model: "llama-3-8b", input_tokens: 1 })))).toEqual({ status: 402, error: "insufficient_balance" })
      expect(right(metering.charge(free)).charged_micros).toBe(0n)
    }
  })
})

describe("aggregation", () => {
  it("writes one row per (account, model, minute) whose amount is the exact sum of the rounded requests", () => {
    // Proves 3 requests of 0.5 micro each are 1 micro each (sum 3, not round(1.5) = 2), one row at the minute's end, and the wallet moves only at the flush.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n }, true)
    for (const s of [1, 20, 59]) {
      expect(right(metering.charge(req({ model: "half", input_tokens: 1, at: T0 + s * 1_000 }))).charged_micros).toBe(1n)
    }
    right(metering.charge(req({ model: "llama-3-8b", input_tokens: 1_200, output_tokens: 300, at: T0 + 30_000 })))
    right(metering.charge(req({ model: "llama-3-8b", input_tokens: 1_201, output_tokens: 300, at: T0 + 40_000 })))
    expect(metering.pendingMicros(ACME)).toBe(3n + 360n + 360n)
    expect(ledger.balance(ACME)).toBe(1_000_000n)
    expect(metering.nextFlushAt()).toBe(T0 + MIN)
    expect(metering.flush(T0 + MIN - 1)).toEqual([])
    expect(apiRows(ledger)).toEqual([])
    const flushed = metering.flush(T0 + MIN)
    expect(flushed.map((f) => [f.model, f.requests, f.amount_micros])).toEqual([
      ["half", 3, 3n],
      ["llama-3-8b", 2, 720n]
    ])
    expect(apiRows(ledger)).toEqual([
      {
        account: ACME,
        at: T0 + MIN,
        kind: "api_usage",
        amount_micros: -3n,
        balance_after_micros: 999_997n,
        resource: "half",
        description: "API usage: half, 3 requests, 3 in / 0 out tokens, minute 2026-03-01T00:00Z"
      },
      {
        account: ACME,
        at: T0 + MIN,
        kind: "api_usage",
        amount_micros: -720n,
        balance_after_micros: 999_277n,
        resource: "llama-3-8b",
        description: "API usage: llama-3-8b, 2 requests, 2401 in / 600 out tokens, minute 2026-03-01T00:00Z"
      }
    ])
    expect(metering.pendingMicros(ACME)).toBe(0n)
    expect(metering.nextFlushAt()).toBeUndefined()
    expect(metering.flush(T0 + 10 * MIN)).toEqual([])
  })

  it("flushes in account, model, minute order whatever the order of the requests", () => {
    // Proves rows come out sorted by account, then model, then minute, each at its minute's end, and only ended minutes are flushed.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n, [BETA]: 1_000_000n }, true)
    const charge = (account: string, model: string, at: number) => right(metering.charge(req({ account, model, images: model === "sdxl" ? 1 : 0, input_tokens: model === "half" ? 2 : 0, at })))
    charge(BETA, "sdxl", T0 + MIN + 5)
    charge(BETA, "half", T0 + 10)
    charge(ACME, "sdxl", T0 + MIN + 1)
    charge(ACME, "sdxl", T0 + 3)
    charge(ACME, "half", T0 + MIN + 2)
    charge(BETA, "sdxl", T0 + 7)
    charge(ACME, "sdxl", T0 + 2 * MIN + 1)
    expect(metering.pendingBuckets).toBe(7)
    expect(metering.nextFlushAt()).toBe(T0 + MIN)
    expect(metering.flush(T0 + 2 * MIN).map((f) => [f.account, f.model, f.minute_start - T0, f.at - T0, f.amount_micros])).toEqual([
      [ACME, "half", MIN, 2 * MIN, 1n],
      [ACME, "sdxl", 0, MIN, 40_000n],
      [ACME, "sdxl", MIN, 2 * MIN, 40_000n],
      [BETA, "half", 0, MIN, 1n],
      [BETA, "sdxl", 0, MIN, 40_000n],
      [BETA, "sdxl", MIN, 2 * MIN, 40_000n]
    ])
    expect(apiRows(ledger).map((r) => [r.account, r.resource, r.at - T0, r.balance_after_micros])).toEqual([
      [ACME, "half", 2 * MIN, 999_999n],
      [ACME, "sdxl", MIN, 959_999n],
      [ACME, "sdxl", 2 * MIN, 919_999n],
      [BETA, "half", MIN, 999_999n],
      [BETA, "sdxl", MIN, 959_999n],
      [BETA, "sdxl", 2 * MIN, 919_999n]
    ])
    expect(metering.nextFlushAt()).toBe(T0 + 3 * MIN)
    expect(metering.pendingMicros(ACME)).toBe(40_000n)
  })

  it("checks the balance against the wallet less the pending charges", () => {
    // Proves pending charges count against the balance before they are posted: 100,000 micros admit two $0.04 images, not a third.
    const { ledger, metering } = setup({ [ACME]: 100_000n }, true)
    const image = (at: number) => metering.charge(req({ model: "sdxl", images: 1, at }))
    expect(right(image(T0 + 1)).balance_after_micros).toBe(60_000n)
    expect(right(image(T0 + 2)).balance_after_micros).toBe(20_000n)
    const e = left(image(T0 + 3))
    expect([e._tag, (e as InsufficientBalance).required_micros, (e as InsufficientBalance).balance_micros]).toEqual(["InsufficientBalance", 40_000n, 20_000n])
    expect(ledger.balance(ACME)).toBe(100_000n)
    // The bucket stays as it was: two requests, 80,000 micros.
    expect(metering.flush(T0 + MIN)).toMatchObject([{ requests: 2, amount_micros: 80_000n, balance_after_micros: 20_000n }])
    expect(ledger.balance(ACME)).toBe(20_000n)
  })

  it("flushAll posts every bucket, an open one at the flush instant", () => {
    // Proves flushAll leaves nothing pending, ended buckets at their minute's end and the open one at `at`, and a later request opens a new bucket.
    const { ledger, metering } = setup({ [ACME]: 1_000_000n }, true)
    right(metering.charge(req({ model: "sdxl", images: 1, at: T0 + 1 })))
    right(metering.charge(req({ model: "sdxl", images: 2, at: T0 + MIN + 1 })))
    expect(metering.flushAll(T0 + MIN + 30_000).map((f) => [f.at - T0, f.amount_micros, f.balance_after_micros])).toEqual([
      [MIN, 40_000n, 960_000n],
      [MIN + 30_000, 80_000n, 880_000n]
    ])
    expect(metering.pendingBuckets).toBe(0)
    expect(metering.pendingMicros(ACME)).toBe(0n)
    expect(metering.nextFlushAt()).toBeUndefined()
    expect(metering.flushAll(T0 + MIN + 30_000)).toEqual([])
    right(metering.charge(req({ model: "sdxl", images: 1, at: T0 + MIN + 40_000 })))
    expect(metering.flush(T0 + 2 * MIN)).toMatchObject([{ minute_start: T0 + MIN, amount_micros: 40_000n, requests: 1 }])
    expect(apiRows(ledger).map((r) => [r.at - T0, r.amount_micros, r.description])).toEqual([
      [MIN, -40_000n, "API usage: sdxl, 1 request, 1 image, minute 2026-03-01T00:00Z"],
      [MIN + 30_000, -80_000n, "API usage: sdxl, 1 request, 2 images, minute 2026-03-01T00:01Z"],
      [2 * MIN, -40_000n, "API usage: sdxl, 1 request, 1 image, minute 2026-03-01T00:01Z"]
    ])
    expect(ledger.balance(ACME)).toBe(840_000n)
  })

  it("admits the same requests and ends at the same balance as per-request billing", () => {
    // Proves, for random request sequences, both modes accept exactly the same requests, and after flushAll both balances equal opening − Σ accepted costs.
    /** Each model with the units it prices, so most requests get past `unit_not_priced`. */
    type ModelUnit = readonly [string, "tokens" | "images" | "seconds"]
    const served: ReadonlyArray<ModelUnit> = [
      ["llama-3-8b", "tokens"],
      ["half", "tokens"],
      ["sdxl", "images"],
      ["whisper", "seconds"],
      ["tick", "seconds"],
      ["my-llm:inf-1", "tokens"],
      ["free-llm:inf-4", "tokens"]
    ]
    const refusing: ReadonlyArray<ModelUnit> = [
      ["unpriced", "tokens"],
      ["nope", "tokens"],
      ["my-llm", "tokens"],
      ["my-llm:inf-2", "tokens"],
      ["my-llm:inf-3", "tokens"]
    ]
    const request = fc.record({
      account: fc.constantFrom(ACME, BETA),
      model: fc.oneof({ arbitrary: fc.constantFrom(...served), weight: 5 }, { arbitrary: fc.constantFrom(...refusing), weight: 1 }),
      // Mostly a few seconds apart, so minutes fill with several requests; sometimes a minute or more.
      gap_ms: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 1_500 }), weight: 10 }, { arbitrary: fc.integer({ min: 0, max: 90_000 }), weight: 1 }),
      input_tokens: fc.option(fc.integer({ min: 0, max: 3_000 }), { nil: undefined }),
      output_tokens: fc.option(fc.integer({ min: 0, max: 3_000 }), { nil: undefined }),
      images: fc.integer({ min: 0, max: 3 }),
      seconds_ms: fc.integer({ min: 0, max: 20_000 }),
      // One request in ten carries every unit, whatever the model prices.
      every_unit: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
      flush_first: fc.integer({ min: 0, max: 3 }).map((n) => n === 0)
    })
    // Opening balances from nothing (the $0 rule) to enough for a few hundred requests.
    const balance = fc.oneof(fc.constantFrom(0n, 1n, 360n), fc.bigInt({ min: 0n, max: 3_000_000n }))
    const seen = { merged_buckets: 0, insufficient_balance: 0, charged: 0 }
    fc.assert(
      fc.property(balance, balance, fc.array(request, { minLength: 10, maxLength: 80 }), (acme, beta, requests) => {
        const opening: Record<string, bigint> = { [ACME]: acme, [BETA]: beta }
        const plain = setup(opening, false)
        const aggregated = setup(opening, true)
        const charged: Record<string, bigint> = { [ACME]: 0n, [BETA]: 0n }
        // Σ of each (account, model, minute)'s individually rounded costs, and what the flushes posted for it.
        const expectedByBucket = new Map<string, bigint>()
        const postedByBucket = new Map<string, bigint>()
        const bucketOf = (account: string, model: string, instant: number) => `${account} ${model} ${instant - (instant % MIN)}`
        const record = (flushed: ReadonlyArray<FlushedBucket>) => {
          for (const f of flushed) {
            const key = bucketOf(f.account, f.model, f.minute_start)
            expect(postedByBucket.has(key)).toBe(false)
            postedByBucket.set(key, f.amount_micros)
          }
          return flushed
        }
        let at = T0
        for (const r of requests) {
          at += r.gap_ms
          const [model, unit] = r.model
          const api: ApiRequest = {
            account: r.account,
            model,
            at,
            ...(r.every_unit || unit === "tokens" ? { input_tokens: r.input_tokens, output_tokens: r.output_tokens } : {}),
            ...(r.every_unit || unit === "images" ? { images: r.images } : {}),
            ...(r.every_unit || unit === "seconds" ? { seconds: r.seconds_ms / 1000 } : {})
          }
          if (r.flush_first) record(aggregated.metering.flush(at))
          const a = plain.metering.charge(api)
          const b = aggregated.metering.charge(api)
          // Same answer in both modes: same refusal, or same charge, spendable balance and region.
          expect(Either.isRight(a) ? a.right : errorStatus(a.left as EngineError)).toEqual(Either.isRight(b) ? b.right : errorStatus(b.left as EngineError))
          if (Either.isRight(a)) {
            charged[r.account]! += a.right.charged_micros
            if (a.right.charged_micros > 0n) {
              seen.charged++
              const key = bucketOf(r.account, model, at)
              expectedByBucket.set(key, (expectedByBucket.get(key) ?? 0n) + a.right.charged_micros)
            }
          } else if (a.left._tag === "InsufficientBalance") seen.insufficient_balance++
        }
        seen.merged_buckets += record(aggregated.metering.flushAll(at)).filter((f) => f.requests > 1).length
        expect(aggregated.metering.pendingBuckets).toBe(0)
        // One row per (account, model, minute), each the exact sum of its requests' rounded costs.
        expect([...postedByBucket.entries()].sort()).toEqual([...expectedByBucket.entries()].sort())
        // Both ledgers hold the same API usage in total, the aggregated one in no more rows.
        const usage = (ledger: LedgerStore) => apiRows(ledger).reduce((sum, row) => sum + row.amount_micros, 0n)
        expect(usage(aggregated.ledger)).toBe(usage(plain.ledger))
        expect(apiRows(aggregated.ledger).length).toBeLessThanOrEqual(apiRows(plain.ledger).length)
        for (const account of [ACME, BETA]) {
          const expected = opening[account]! - charged[account]!
          expect(plain.ledger.balance(account)).toBe(expected)
          expect(aggregated.ledger.balance(account)).toBe(expected)
          // The ledger rows sum to the balance in both modes.
          for (const { ledger } of [plain, aggregated]) {
            expect(ledger.ledgerRows().filter((row) => row.account === account).reduce((sum, row) => sum + row.amount_micros, 0n)).toBe(expected)
          }
        }
        expect(apiRows(aggregated.ledger).length).toBe(postedByBucket.size)
        plain.ledger.close()
        aggregated.ledger.close()
      }),
      { numRuns: 300 }
    )
    // The generator reached the interesting cases: charges, merged buckets, refusals for balance.
    expect(seen.charged).toBeGreaterThan(500)
    expect(seen.merged_buckets).toBeGreaterThan(50)
    expect(seen.insufficient_balance).toBeGreaterThan(200)
  })
})

describe("price catalog", () => {
  it("decodes the timeline's price strings into micros", () => {
    // Proves "0.15" per 1M tokens is 150,000 micros, null and {} are not priced, and a whole catalog decodes.
    expect(right(parseModelPrice({ input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" }))).toEqual({ input_per_1m_tokens: 150_000n, output_per_1m_tokens: 600_000n })
    expect(right(parseModelPrice({ per_image: "0.04", per_second: "0.000001" }))).toEqual({ per_image: 40_000n, per_second: 1n })
    expect(right(parseModelPrice({ per_image: "0" }))).toEqual({ per_image: 0n })
    expect(right(parseModelPrice(null))).toBeNull()
    expect(right(parseModelPrice({}))).toBeNull()
    const catalog = right(parseModelCatalog({ "llama-3-8b": { input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" }, soon: null }))
    expect([...catalog.entries()]).toEqual([
      ["llama-3-8b", { input_per_1m_tokens: 150_000n, output_per_1m_tokens: 600_000n }],
      ["soon", null]
    ])
  })

  it("refuses bad price strings, negative prices and unknown fields, naming the field", () => {
    // Proves a price is a non-negative dollar string with at most 6 decimals, and a misspelt field is not silently ignored.
    const bad = (json: unknown) => {
      const e = left(parseModelPrice(json as Parameters<typeof parseModelPrice>[0]))
      return [e.code, e.field]
    }
    expect(bad({ input_per_1m_tokens: "0.1234567" })).toEqual(["invalid_price", "input_per_1m_tokens"])
    expect(bad({ per_image: "-0.04" })).toEqual(["invalid_price", "per_image"])
    expect(bad({ per_image: 0.04 })).toEqual(["invalid_price", "per_image"])
    expect(bad({ input_per_1M_tokens: "0.15" })).toEqual(["invalid_price", "input_per_1M_tokens"])
    expect(bad("0.15")).toEqual(["invalid_price", "price"])
    const e = left(parseModelCatalog({ "llama-3-8b": { output_per_1m_tokens: "1e-6" } }))
    expect([e.code, e.field]).toEqual(["invalid_price", "models.llama-3-8b.output_per_1m_tokens"])
  })

  it("maps the new errors to their status codes", () => {
    // Proves the HTTP edge answers 402 model_not_priced, 503 no_healthy_pod and 404 model_not_found.
    expect(errorStatus(new ModelNotPriced({ model: "m" }))).toMatchObject({ status: 402, error: "model_not_priced" })
    expect(errorStatus(new NoHealthyPod({ model: "m:i" }))).toMatchObject({ status: 503, error: "no_healthy_pod" })
    expect(errorStatus(new NotFound({ code: "model_not_found", id: "m" }))).toMatchObject({ status: 404, error: "model_not_found" })
  })
})
