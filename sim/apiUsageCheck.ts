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

/**
 * Values by (account, model, instant), made on first use. Nested maps rather than one string key:
 * a full fleet has hundreds of thousands of requests and rows, and printing every instant into a
 * key cost more than all the rest of the check.
 */
class ByAccountModelInstant<V> {
  private readonly byAccount = new Map<string, Map<string, Map<number, V>>>()
  constructor(private readonly make: (account: string, model: string, at: number) => V) {}

  get(account: string, model: string, at: number): V {
    let byModel = this.byAccount.get(account)
    if (byModel === undefined) this.byAccount.set(account, (byModel = new Map()))
    let byAt = byModel.get(model)
    if (byAt === undefined) byModel.set(model, (byAt = new Map()))
    let value = byAt.get(at)
    if (value === undefined) byAt.set(at, (value = this.make(account, model, at)))
    return value
  }

  *values(): IterableIterator<V> {
    for (const byModel of this.byAccount.values()) for (const byAt of byModel.values()) yield* byAt.values()
  }
}

type Slots = ByAccountModelInstant<Slot>

/** Adds the rows the requests call for to their slots. */
const addExpected = (api: ApiUsageFacts, costs: ReadonlyArray<bigint>, end_ms: number, slots: Slots): void => {
  if (api.rows === "per_request") {
    api.requests.forEach((req, i) => {
      if (costs[i]! > 0n) slots.get(req.account, req.model, req.at).wanted.push({ micros: costs[i]!, requests: 1, may_be_lost: false })
    })
    return
  }
  // A bucket is (account, model, minute, engine): a restarted engine opens a new bucket for
  // what comes after its start, and the old one's pending usage is lost. One set of buckets per engine.
  const stops = api.engine_stops_ms
  type Bucket = { readonly account: string; readonly model: string; readonly minute: number; readonly next_stop: number | undefined; micros: bigint; requests: number }
  const engines: Array<ByAccountModelInstant<Bucket>> = []
  api.requests.forEach((req, i) => {
    if (costs[i]! === 0n) return
    // The engine stops before the request (`s < at`); the next one, if any, is at or after it.
    let epoch = 0
    while (epoch < stops.length && stops[epoch]! < req.at) epoch++
    const buckets = (engines[epoch] ??= new ByAccountModelInstant((account, model, minute) => ({ account, model, minute, next_stop: stops[epoch], micros: 0n, requests: 0 })))
    const bucket = buckets.get(req.account, req.model, req.at - (req.at % SPEC_API_AGGREGATION_MS))
    bucket.micros += costs[i]!
    bucket.requests += 1
  })
  for (const buckets of engines) {
    if (buckets === undefined) continue
    for (const b of buckets.values()) {
      const at = Math.min(b.minute + SPEC_API_AGGREGATION_MS, end_ms)
      slots.get(b.account, b.model, at).wanted.push({ micros: b.micros, requests: b.requests, may_be_lost: b.next_stop !== undefined && b.next_stop <= at })
    }
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

/** Checks the `api_usage` rows against the requests, whose costs (`apiRequestCosts`) are given. */
/** A row the requests call for, in the order the engine posts them. */
interface Due {
  readonly account: string
  readonly model: string
  readonly at: number
  readonly micros: bigint
}

/**
 * The rows the requests call for, in the order the engine posts them when nothing stopped it:
 * one per priced request in request order; or per minute (requests come in time order), each
 * minute's buckets by account, then model (src/metering.ts), at the minute's end or the run's.
 */
const dueInOrder = (api: ApiUsageFacts, costs: ReadonlyArray<bigint>, end_ms: number): Due[] => {
  const due: Due[] = []
  if (api.rows === "per_request") {
    api.requests.forEach((req, i) => {
      if (costs[i]! > 0n) due.push({ account: req.account, model: req.model, at: req.at, micros: costs[i]! })
    })
    return due
  }
  let minute = -1
  let open = new Map<string, { account: string; model: string; micros: bigint }>()
  const close = (): void => {
    const at = Math.min(minute + SPEC_API_AGGREGATION_MS, end_ms)
    const buckets = [...open.values()].sort((a, b) => (a.account !== b.account ? (a.account < b.account ? -1 : 1) : a.model < b.model ? -1 : a.model > b.model ? 1 : 0))
    for (const b of buckets) due.push({ account: b.account, model: b.model, at, micros: b.micros })
    open = new Map()
  }
  api.requests.forEach((req, i) => {
    if (costs[i]! === 0n) return
    const m = req.at - (req.at % SPEC_API_AGGREGATION_MS)
    if (m !== minute) {
      if (open.size > 0) close()
      minute = m
    }
    const key = `${req.account}\u0000${req.model}`
    const bucket = open.get(key)
    if (bucket === undefined) open.set(key, { account: req.account, model: req.model, micros: costs[i]! })
    else bucket.micros += costs[i]!
  })
  if (open.size > 0) close()
  return due
}

/** Whether the ledger's `api_usage` rows are exactly `due`, one for one, in order. */
const postedInOrder = (due: ReadonlyArray<Due>, rows: ReadonlyArray<LedgerRow>): boolean => {
  let i = 0
  for (const r of rows) {
    if (r.kind !== "api_usage") continue
    const d = due[i++]
    if (d === undefined || d.at !== r.at || d.account !== r.account || d.model !== r.resource || -r.amount_micros !== d.micros) return false
  }
  return i === due.length
}

/**
 * Checks the `api_usage` rows against the requests, whose costs (`apiRequestCosts`) are given.
 * The usual run posts them in a foreseeable order, checked in one pass; otherwise (an engine
 * stop, a late flush, or a wrong row) they are matched by account, model and instant.
 */
export const checkApiUsage = (api: ApiUsageFacts, costs: ReadonlyArray<bigint>, rows: ReadonlyArray<LedgerRow>, end_ms: number, violate: Violate): void => {
  if ((api.rows === "per_request" || api.engine_stops_ms.length === 0) && postedInOrder(dueInOrder(api, costs, end_ms), rows)) return
  const slots: Slots = new ByAccountModelInstant((account, model, at) => ({ account, model, at, wanted: [], found: [] }))
  addExpected(api, costs, end_ms, slots)
  for (const r of rows) if (r.kind === "api_usage") slots.get(r.account, r.resource ?? "", r.at).found.push(r)
  for (const s of slots.values()) {
    // The usual slot: one row, one row called for, the same amount.
    if (s.found.length === 1 && s.wanted.length === 1 && s.found[0]!.amount_micros === -s.wanted[0]!.micros) continue
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
