/**
 * SPEC §6 in the invariant checker: each `api_usage` row's amount is recomputed from the
 * requests that made it (what each used, the price catalog) with the checker's own arithmetic
 * (sim/oracle.ts: exact, rounded once to the micro, half up, a priced request never free), and
 * the rows must be exactly those the requests call for: one per request (`per_request`), or one
 * per account, model and minute holding the exact sum of its requests' rounded costs, posted at
 * the minute's end (`per_minute`, or at the end of the run for a minute still open then).
 * Found by mutation: an `api_usage` charge rounded the wrong way passed every property run, as
 * conservation only sums the rows it is given.
 */
import type { LedgerRow } from "../src/ledger/store.js"
import { formatDollars } from "../src/money.js"
import type { ApiUsageFacts, Violate } from "./invariants.js"
import { isoInstant } from "./iso.js"
import { apiRequestMicros, SPEC_API_AGGREGATION_MS } from "./oracle.js"

/**
 * What each admitted request costs, in the order of `api.requests`. A request the engine should
 * have refused (a platform model without a price, a unit the model has no price for) is a
 * violation, and costs nothing here. A model the catalog does not name is a user inference
 * instance's (`<name>:<id>`): its requests cost nothing beyond the instance's hold (docs/POLICY.md).
 */
export const apiRequestCosts = (api: ApiUsageFacts, violate: Violate): bigint[] =>
  api.requests.map((req) => {
    if (!api.prices.has(req.model)) return 0n
    const price = api.prices.get(req.model) ?? null
    if (price === null) {
      violate(3, { account: req.account, resource: req.model, at: req.at, message: `request to ${req.model} admitted, but the model has no price (402 model_not_priced)` })
      return 0n
    }
    const cost = apiRequestMicros(price, req)
    if ("unpriced" in cost) {
      violate(3, { account: req.account, resource: req.model, at: req.at, message: `request to ${req.model} admitted, but it used ${cost.unpriced}, which the model has no price for` })
      return 0n
    }
    return cost.micros
  })

/** One row the requests call for: its amount (a debit of this many micros), and whether it may be missing. */
interface ExpectedRow {
  readonly micros: bigint
  readonly requests: number
  /** A per-minute row whose minute the engine was dropped in before posting it: its usage was lost with memory. */
  readonly may_be_lost: boolean
}

/** The rows of one account, model and instant: those the requests call for, and those the ledger has. */
interface Slot {
  readonly account: string
  readonly model: string
  readonly at: number
  readonly wanted: ExpectedRow[]
  readonly found: LedgerRow[]
}

/** One slot per (account, model, instant), made on first use. */
const slotsOf = () => {
  const slots = new Map<string, Slot>()
  const slot = (account: string, model: string, at: number): Slot => {
    // The account's length first keeps the key unambiguous whatever the ids hold.
    const key = `${at}|${account.length}|${account}|${model}`
    let s = slots.get(key)
    if (s === undefined) slots.set(key, (s = { account, model, at, wanted: [], found: [] }))
    return s
  }
  return { slots, slot }
}

/** Adds the rows the requests call for to their slots. */
const addExpected = (api: ApiUsageFacts, costs: ReadonlyArray<bigint>, end_ms: number, slot: (account: string, model: string, at: number) => Slot): void => {
  if (api.rows === "per_request") {
    api.requests.forEach((req, i) => {
      if (costs[i]! > 0n) slot(req.account, req.model, req.at).wanted.push({ micros: costs[i]!, requests: 1, may_be_lost: false })
    })
    return
  }
  // A bucket is (account, model, minute, engine): a restarted engine opens a new bucket for
  // what comes after its start, and the old one's pending usage is lost.
  const stops = api.engine_stops_ms
  const buckets = new Map<string, { account: string; model: string; minute: number; next_stop: number | undefined; micros: bigint; requests: number }>()
  api.requests.forEach((req, i) => {
    if (costs[i]! === 0n) return
    const minute = req.at - (req.at % SPEC_API_AGGREGATION_MS)
    // The engine stops before the request (`s < at`); the next one, if any, is at or after it.
    let epoch = 0
    while (epoch < stops.length && stops[epoch]! < req.at) epoch++
    const key = `${epoch}|${minute}|${req.account.length}|${req.account}|${req.model}`
    const bucket = buckets.get(key)
    if (bucket === undefined) buckets.set(key, { account: req.account, model: req.model, minute, next_stop: stops[epoch], micros: costs[i]!, requests: 1 })
    else {
      bucket.micros += costs[i]!
      bucket.requests += 1
    }
  })
  for (const b of buckets.values()) {
    const at = Math.min(b.minute + SPEC_API_AGGREGATION_MS, end_ms)
    slot(b.account, b.model, at).wanted.push({ micros: b.micros, requests: b.requests, may_be_lost: b.next_stop !== undefined && b.next_stop <= at })
  }
}

/** Takes the first row of `left` debiting exactly `micros`; whether there was one. */
const take = (left: LedgerRow[], micros: bigint): boolean => {
  const i = left.findIndex((r) => r.amount_micros === -micros)
  if (i < 0) return false
  left.splice(i, 1)
  return true
}

const dollarsList = (amounts: ReadonlyArray<bigint>): string => (amounts.length === 0 ? "none" : amounts.map((a) => `$${formatDollars(a)}`).join(", "))

export const checkApiUsage = (api: ApiUsageFacts, rows: ReadonlyArray<LedgerRow>, end_ms: number, violate: Violate): void => {
  const costs = apiRequestCosts(api, violate)
  const { slots, slot } = slotsOf()
  addExpected(api, costs, end_ms, slot)
  for (const r of rows) if (r.kind === "api_usage") slot(r.account, r.resource ?? "", r.at).found.push(r)
  for (const s of slots.values()) {
    // Rows and requests' rows match as multisets of amounts; a lost minute's row may be absent.
    const left = [...s.found]
    const missing = s.wanted.filter((w) => !w.may_be_lost && !take(left, w.micros))
    for (const w of s.wanted) if (w.may_be_lost) take(left, w.micros)
    if (missing.length === 0 && left.length === 0) continue
    const requests = s.wanted.reduce((n, w) => n + w.requests, 0)
    violate(3, {
      account: s.account,
      resource: s.model,
      at: s.at,
      message: `api_usage rows for ${s.model} at ${isoInstant(s.at)}: ${dollarsList(s.found.map((r) => -r.amount_micros))}; its ${requests} request${requests === 1 ? "" : "s"} price to ${dollarsList(s.wanted.map((w) => w.micros))}`
    })
  }
}
