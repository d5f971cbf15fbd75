/**
 * A Stripe-compatible test server (node:http) for the few endpoints the engine uses, so the
 * real `stripe` package can be tested end to end:
 *
 *   POST /v1/payment_intents               (confirm + off_session charges the saved card)
 *   POST /v1/payment_intents/:id/confirm   (the customer's browser confirming a top-up)
 *   POST /v1/customers, POST /v1/customers/:id
 *   POST /v1/payment_methods/:id/attach
 *   POST /v1/refunds                       (a refund from the dashboard)
 *   GET  /v1/refunds?charge=…              (a charge's refunds, newest first, paged as Stripe pages:
 *                                           `limit` 1–100, default 10; `starting_after`/`ending_before`)
 *   POST /v1/disputes/:id                  (evidence: `winning_evidence` wins, `losing_evidence` loses)
 *   POST /v1/disputes/:id/close            (the merchant accepts the dispute: lost)
 *
 * Disputes (chargebacks) as Stripe makes them in test mode: a charge confirmed with
 * `pm_card_createDispute` is disputed at once (reason `fraudulent`), and `dispute` disputes any
 * charge (for an amount, e.g. the full charge after a partial refund, which card issuers do).
 * A dispute (stripe-node 23's `Dispute`) takes its amount from the balance at once: a balance
 * transaction of −amount (and Stripe's $15 fee) in `balance_transactions`, with
 * `charge.dispute.created` and `charge.dispute.funds_withdrawn`. Won, Stripe gives it all back
 * (a +amount transaction, `charge.dispute.funds_reinstated`, then `charge.dispute.closed`);
 * lost, it keeps it, except the part of a full-amount dispute that had been refunded before
 * (Stripe's "partially won": reinstated, status `lost`). A disputed charge cannot be refunded
 * (`charge_disputed`) until its dispute is won.
 *
 * A refund is made `succeeded` and the charge's `amount_refunded` grows by it, with a
 * `charge.refunded` whose `previous_attributes` say what it was before (as Stripe's do,
 * though Stripe documents them for `*.updated` events only: `sendsPreviousAttributes`), a
 * `refund.created` when the endpoint gets it (`sendsRefundCreated`: Stripe sends it for card
 * refunds since API version 2024-10-28.acacia), and the charge's refunds listed in the
 * charge when the endpoint's API version includes them (`listsRefunds`: before 2022-11-15).
 * `failRefund` is what Stripe does later to a refund the card's bank refuses (a refund of a
 * `pm_card_refundFail` charge at Stripe goes `succeeded` → `failed` with
 * `expired_or_canceled_card`): the refund turns `failed` (or `canceled`), the charge's
 * `amount_refunded` goes back down, and Stripe sends the Refund in `charge.refund.updated`,
 * `refund.updated` and (when failed) `refund.failed`, to an endpoint subscribed to all three.
 *
 * Bodies are form-encoded like Stripe's (`metadata[payment_id]=…`); an `Idempotency-Key`
 * seen before answers the first answer again and does nothing. Cards: `pm_card_visa`
 * succeeds, `pm_card_chargeDeclined` declines, `pm_card_chargeDeclinedProcessingError` fails
 * with a `card_error` whose code is `processing_error` (Stripe's test card names; the last is
 * not the card's fault, Stripe says to retry), and `pm_test_provider_outage` makes Stripe
 * answer 500 `api_error` (not the card's fault either). Events are signed
 * with `stripe.webhooks.generateTestHeaderString` at the world clock's instant and queued;
 * a test delivers them when and as often as it likes (in order, reversed, twice).
 */
import http from "node:http"
import type { AddressInfo } from "node:net"
import Stripe from "stripe"

export interface SentEvent {
  readonly id: string
  readonly type: string
  readonly payload: string
}

type Obj = Record<string, unknown>

/** Parses Stripe's form encoding: `a=1&b[c]=2&d[]=3` → `{a: "1", b: {c: "2"}, d: ["3"]}` (two levels). */
export const parseForm = (body: string): Obj => {
  const out: Obj = {}
  for (const [key, value] of new URLSearchParams(body)) {
    const m = /^([^[\]]+)((?:\[[^\]]*\])*)$/.exec(key)
    if (m === null) continue
    const path = [m[1]!, ...[...m[2]!.matchAll(/\[([^\]]*)\]/g)].map((x) => x[1]!)]
    let node = out
    for (let i = 0; i < path.length - 1; i++) {
      const k = path[i]!
      if (path[i + 1] === "") {
        node[k] = [...((node[k] as unknown[]) ?? []), value]
        node = {}
        break
      }
      node = (node[k] ??= {}) as Obj
    }
    const last = path[path.length - 1]!
    if (last !== "") node[last] = value
  }
  return out
}

export class StripeTestServer {
  readonly secret = "whsec_test_ecolink_0123456789"
  /** Events signed and not yet delivered, in the order they happened. */
  queue: SentEvent[] = []
  readonly intents = new Map<string, Obj>()
  readonly charges = new Map<string, Obj>()
  readonly refunds = new Map<string, Obj>()
  readonly customers = new Map<string, Obj>()
  readonly disputes = new Map<string, Obj>()
  /** Requests seen per path, for tests that prove a retry did not create a second object. */
  readonly creates: string[] = []
  private readonly idempotent = new Map<string, { status: number; body: string }>()
  /** The next this many requests get 503 before they are looked at (an outage at Stripe). */
  unavailable = 0
  /** A `charge.refunded` says the charge's `amount_refunded` before it (`previous_attributes`). */
  sendsPreviousAttributes = true
  /** A refund made is also told by its Refund object in a `refund.created`. */
  sendsRefundCreated = false
  /** A charge in an event lists its refunds (`refunds.data`). */
  listsRefunds = false
  /** The `GET /v1/refunds` requests seen (their query strings), for tests that count pages. */
  readonly lists: string[] = []
  private readonly server: http.Server
  private seq = 0
  port = 0

  constructor(
    /** The world's clock (ms): event `created` and the signature's timestamp. */
    private readonly now: () => number,
    /** Where webhooks go (the engine's /webhooks/stripe). */
    public endpoint = ""
  ) {
    this.server = http.createServer((req, res) => {
      let body = ""
      req.setEncoding("utf8")
      req.on("data", (c: string) => (body += c))
      req.on("end", () => {
        if (this.unavailable > 0) {
          // Down before it looked at the request: nothing done, nothing kept for the key.
          this.unavailable--
          const down = this.error(503, "api_error", "api_error", "Stripe is temporarily unavailable")
          res.writeHead(down.status, { "content-type": "application/json", "request-id": `req_${++this.seq}` })
          res.end(down.body)
          return
        }
        const key = req.headers["idempotency-key"]
        const cacheKey = typeof key === "string" ? `${req.method} ${req.url} ${key}` : null
        const cached = cacheKey === null ? undefined : this.idempotent.get(cacheKey)
        const [path, query] = (req.url ?? "/").split("?", 2) as [string, string | undefined]
        // Stripe reads a GET's parameters from its query string, a POST's from its form body.
        const answer = cached ?? (req.method === "GET" ? this.read(path, query ?? "") : this.route(req.method ?? "POST", req.url ?? "/", parseForm(body)))
        if (cacheKey !== null && cached === undefined) this.idempotent.set(cacheKey, answer)
        res.writeHead(answer.status, { "content-type": "application/json", "request-id": `req_${++this.seq}` })
        res.end(answer.body)
      })
    })
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve))
    this.port = (this.server.address() as AddressInfo).port
    return this.port
  }

  async close(): Promise<void> {
    // Clients keep connections alive (stripe-node's agent); a test does not wait them out.
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  /** Delivers one queued (or any past) event to the endpoint, signed now; returns the HTTP status. */
  async deliver(e: SentEvent, signature?: string): Promise<{ status: number; body: string }> {
    const header = signature ?? Stripe.webhooks.generateTestHeaderString({ payload: e.payload, secret: this.secret, timestamp: Math.floor(this.now() / 1000) })
    const r = await fetch(this.endpoint, { method: "POST", headers: { "content-type": "application/json", "stripe-signature": header }, body: e.payload })
    return { status: r.status, body: await r.text() }
  }

  /** Delivers and removes every queued event, in order. */
  async flush(): Promise<Array<{ status: number; body: string }>> {
    const events = this.queue
    this.queue = []
    const out = []
    for (const e of events) out.push(await this.deliver(e))
    return out
  }

  /** A refund from the dashboard (what `stripe.refunds.create` does), without the engine. */
  private refund(params: Obj): { status: number; body: string } {
    const intent = typeof params["payment_intent"] === "string" ? this.intents.get(params["payment_intent"]) : undefined
    const chargeId = intent?.["latest_charge"] ?? params["charge"]
    const charge = typeof chargeId === "string" ? this.charges.get(chargeId) : undefined
    if (charge === undefined) return this.error(404, "invalid_request_error", "resource_missing", "No such charge")
    const standing = [...this.disputes.values()].some((d) => d["charge"] === charge["id"] && d["status"] !== "won")
    if (standing) return this.error(400, "invalid_request_error", "charge_disputed", `Charge ${String(charge["id"])} has been charged back; refunds of it are not allowed`)
    const left = (charge["amount"] as number) - (charge["amount_refunded"] as number)
    const amount = params["amount"] === undefined ? left : Number(params["amount"])
    if (!(amount > 0 && amount <= left)) return this.error(400, "invalid_request_error", "amount_too_large", "Refund amount is greater than the charge's unrefunded amount")
    const previous = { amount_refunded: charge["amount_refunded"], refunded: charge["refunded"] }
    charge["amount_refunded"] = (charge["amount_refunded"] as number) + amount
    charge["refunded"] = charge["amount_refunded"] === charge["amount"]
    // A Refund as Stripe returns it (stripe-node 23's `Refund`); `failure_reason` and
    // `failure_balance_transaction` appear once it fails.
    const id = `re_${++this.seq}`
    const refund: Obj = {
      id,
      object: "refund",
      amount,
      balance_transaction: `txn_${id.slice(3)}`,
      charge: charge["id"],
      created: Math.floor(this.now() / 1000),
      currency: "usd",
      customer: null,
      customer_account: null,
      destination_details: { card: { reference_status: "pending", reference_type: "acquirer_reference_number", type: "refund" }, type: "card" },
      metadata: {},
      payment_intent: charge["payment_intent"],
      payment_method: null,
      reason: null,
      receipt_number: null,
      source_transfer_reversal: null,
      status: "succeeded",
      transfer_reversal: null
    }
    this.refunds.set(refund["id"] as string, refund)
    this.event("charge.refunded", this.snapshot(charge), this.sendsPreviousAttributes ? previous : undefined)
    if (this.sendsRefundCreated) this.event("refund.created", { ...refund })
    return this.ok(refund)
  }

  /**
   * Stripe, later, failing (or canceling) a refund it had made: the refund's new status and
   * `failure_reason`, the charge's `amount_refunded` back down by it, and the events that say
   * so (queued like every other). Returns the events' ids.
   */
  failRefund(refund_id: string, status: "failed" | "canceled" = "failed", failure_reason = status === "failed" ? "expired_or_canceled_card" : "merchant_request"): string[] {
    const refund = this.refunds.get(refund_id)
    if (refund === undefined || (refund["status"] !== "succeeded" && refund["status"] !== "pending")) throw new Error(`no refund ${refund_id} to fail`)
    const previous = { status: refund["status"], failure_reason: null }
    refund["status"] = status
    refund["failure_reason"] = failure_reason
    refund["failure_balance_transaction"] = `txn_${++this.seq}`
    const charge = this.charges.get(refund["charge"] as string)!
    charge["amount_refunded"] = (charge["amount_refunded"] as number) - (refund["amount"] as number)
    charge["refunded"] = false
    const before = this.queue.length
    this.event("charge.refund.updated", { ...refund }, previous)
    this.event("refund.updated", { ...refund }, previous)
    if (status === "failed") this.event("refund.failed", { ...refund }, previous)
    return this.queue.slice(before).map((e) => e.id)
  }

  /**
   * `GET /v1/refunds`: the refunds made (of the charge `charge`, or of the PaymentIntent
   * `payment_intent`), in every status, newest first, one page of `limit` (1–100, default 10)
   * after the refund `starting_after` (or before `ending_before`), as Stripe lists them:
   * `{object: "list", url: "/v1/refunds", has_more, data}`. A charge Stripe does not have is
   * `resource_missing`.
   */
  private read(path: string, query: string): { status: number; body: string } {
    if (path !== "/v1/refunds") return this.error(404, "invalid_request_error", "resource_missing", `no route GET ${path}`)
    this.lists.push(query)
    const q = new URLSearchParams(query)
    const limit = q.has("limit") ? Number(q.get("limit")) : 10
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) return this.error(400, "invalid_request_error", "parameter_invalid_integer", "Invalid integer: limit must be from 1 to 100")
    const charge = q.get("charge")
    const intent = q.get("payment_intent")
    if (charge !== null && !this.charges.has(charge)) return this.error(404, "invalid_request_error", "resource_missing", `No such charge: '${charge}'`)
    // Ids grow with time here, so the insertion order is the creation order.
    const all = [...this.refunds.values()].filter((r) => (charge === null || r["charge"] === charge) && (intent === null || r["payment_intent"] === intent)).reverse()
    const cursor = q.get("starting_after") ?? q.get("ending_before")
    const at = cursor === null ? -1 : all.findIndex((r) => r["id"] === cursor)
    if (cursor !== null && at < 0) return this.error(404, "invalid_request_error", "resource_missing", `No such refund: '${cursor}'`)
    const page = q.has("ending_before") ? all.slice(Math.max(0, at - limit), at) : all.slice(at + 1, at + 1 + limit)
    const has_more = q.has("ending_before") ? at - limit > 0 : at + 1 + limit < all.length
    return this.ok({ object: "list", url: "/v1/refunds", has_more, data: page.map((r) => ({ ...r })) })
  }

  private route(method: string, url: string, params: Obj): { status: number; body: string } {
    if (method !== "POST") return this.error(404, "invalid_request_error", "resource_missing", `no route ${method} ${url}`)
    this.creates.push(url)
    if (url === "/v1/customers") {
      const c = { id: `cus_${++this.seq}`, object: "customer", metadata: params["metadata"] ?? {}, invoice_settings: { default_payment_method: null } }
      this.customers.set(c.id, c)
      return this.ok(c)
    }
    let m = /^\/v1\/customers\/([^/]+)$/.exec(url)
    if (m !== null) {
      const c = this.customers.get(m[1]!)
      if (c === undefined) return this.error(404, "invalid_request_error", "resource_missing", "No such customer")
      const settings = params["invoice_settings"] as Obj | undefined
      if (settings !== undefined) c["invoice_settings"] = { default_payment_method: settings["default_payment_method"] ?? null }
      return this.ok(c)
    }
    m = /^\/v1\/payment_methods\/([^/]+)\/attach$/.exec(url)
    if (m !== null) {
      if (!this.customers.has(String(params["customer"]))) return this.error(404, "invalid_request_error", "resource_missing", "No such customer")
      return this.ok({ id: m[1], object: "payment_method", customer: params["customer"], type: "card" })
    }
    if (url === "/v1/refunds") return this.refund(params)
    m = /^\/v1\/disputes\/([^/]+)(\/close)?$/.exec(url)
    if (m !== null) {
      const d = this.disputes.get(m[1]!)
      if (d === undefined) return this.error(404, "invalid_request_error", "resource_missing", `No such dispute: '${m[1]!}'`)
      if (d["status"] === "won" || d["status"] === "lost") return this.error(400, "invalid_request_error", "dispute_already_closed", "This dispute is already closed")
      const evidence = (params["evidence"] as Obj | undefined)?.["uncategorized_text"]
      if (m[2] === undefined && evidence !== "winning_evidence" && evidence !== "losing_evidence") return this.ok({ ...d })
      this.closeDispute(d, m[2] === undefined && evidence === "winning_evidence")
      return this.ok({ ...d })
    }
    if (url === "/v1/payment_intents") {
      const amount = Number(params["amount"])
      if (!Number.isSafeInteger(amount) || amount < 50) return this.error(400, "invalid_request_error", "amount_too_small", "Amount must be at least $0.50 usd")
      const pi: Obj = {
        id: `pi_${++this.seq}`,
        object: "payment_intent",
        amount,
        amount_received: 0,
        currency: params["currency"],
        customer: params["customer"] ?? null,
        metadata: params["metadata"] ?? {},
        status: "requires_payment_method",
        latest_charge: null,
        last_payment_error: null
      }
      pi["client_secret"] = `${pi["id"]}_secret_${this.seq}`
      this.intents.set(pi["id"] as string, pi)
      if (params["confirm"] === "true") return this.confirm(pi, String(params["payment_method"] ?? ""))
      return this.ok(pi)
    }
    m = /^\/v1\/payment_intents\/([^/]+)\/confirm$/.exec(url)
    if (m !== null) {
      const pi = this.intents.get(m[1]!)
      if (pi === undefined) return this.error(404, "invalid_request_error", "resource_missing", "No such payment_intent")
      return this.confirm(pi, String(params["payment_method"] ?? ""))
    }
    return this.error(404, "invalid_request_error", "resource_missing", `no route POST ${url}`)
  }

  private confirm(pi: Obj, payment_method: string): { status: number; body: string } {
    if (pi["status"] === "succeeded") return this.error(400, "invalid_request_error", "payment_intent_unexpected_state", "This PaymentIntent has already succeeded")
    // Not a card problem: Stripe itself fails (an outage); stripe-node raises StripeAPIError.
    if (payment_method === "pm_test_provider_outage") return this.error(500, "api_error", "api_error", "An unknown error occurred")
    const refused: Record<string, Obj> = {
      pm_card_chargeDeclined: { type: "card_error", code: "card_declined", decline_code: "generic_decline", message: "Your card was declined." },
      pm_card_chargeDeclinedProcessingError: { type: "card_error", code: "processing_error", message: "An error occurred while processing your card. Try again in a little bit." }
    }
    const error = refused[payment_method]
    if (error !== undefined) {
      pi["status"] = "requires_payment_method"
      pi["last_payment_error"] = error
      this.event("payment_intent.payment_failed", { ...pi })
      return { status: 402, body: JSON.stringify({ error: { ...error, payment_intent: pi } }) }
    }
    const charge: Obj = {
      id: `ch_${++this.seq}`,
      object: "charge",
      amount: pi["amount"],
      amount_refunded: 0,
      refunded: false,
      paid: true,
      status: "succeeded",
      payment_intent: pi["id"],
      metadata: pi["metadata"]
    }
    this.charges.set(charge["id"] as string, charge)
    pi["status"] = "succeeded"
    pi["amount_received"] = pi["amount"]
    pi["latest_charge"] = charge["id"]
    this.event("charge.succeeded", { ...charge })
    this.event("payment_intent.succeeded", { ...pi })
    // Stripe's test card that is disputed as soon as it is charged.
    if (payment_method === "pm_card_createDispute") this.dispute(charge["id"] as string)
    return this.ok(pi)
  }

  /**
   * The cardholder's bank disputes the charge (of the charge or PaymentIntent `id`) for
   * `amount` (default: the charge's amount): a Dispute in `needs_response` whose withdrawal
   * is in its `balance_transactions`, with `charge.dispute.created` and
   * `charge.dispute.funds_withdrawn` queued. Returns the dispute's id.
   */
  dispute(id: string, options: { readonly amount?: number; readonly reason?: string } = {}): string {
    const charge = this.charges.get(id) ?? this.charges.get(String(this.intents.get(id)?.["latest_charge"]))
    if (charge === undefined) throw new Error(`no charge ${id} to dispute`)
    const amount = options.amount ?? (charge["amount"] as number)
    const dispute_id = `du_${++this.seq}`
    const dispute: Obj = {
      id: dispute_id,
      object: "dispute",
      amount,
      balance_transactions: [this.balanceTransaction(dispute_id, -amount, 1500, `Chargeback withdrawal for ${String(charge["id"])}`, "dispute")],
      charge: charge["id"],
      created: Math.floor(this.now() / 1000),
      currency: "usd",
      enhanced_eligibility_types: [],
      evidence: { uncategorized_text: null },
      evidence_details: { due_by: Math.floor(this.now() / 1000) + 7 * 86_400, enhanced_eligibility: {}, has_evidence: false, past_due: false, submission_count: 0 },
      intended_submission_method: null,
      is_charge_refundable: false,
      livemode: false,
      metadata: {},
      payment_intent: charge["payment_intent"],
      reason: options.reason ?? "fraudulent",
      status: "needs_response"
    }
    this.disputes.set(dispute_id, dispute)
    charge["disputed"] = true
    this.event("charge.dispute.created", this.copy(dispute))
    this.event("charge.dispute.funds_withdrawn", this.copy(dispute))
    return dispute_id
  }

  /**
   * The dispute decided: won gives the whole amount back; lost keeps it, but for the part a
   * full-amount dispute of a partially refunded charge disputed twice (Stripe reinstates it
   * and marks the dispute lost, "partially won").
   */
  private closeDispute(d: Obj, won: boolean): void {
    const charge = this.charges.get(d["charge"] as string)!
    const amount = d["amount"] as number
    const overlap = Math.max(0, Math.min(amount, amount + (charge["amount_refunded"] as number) - (charge["amount"] as number)))
    const back = won ? amount : overlap
    d["status"] = won ? "won" : "lost"
    if (back > 0) {
      ;(d["balance_transactions"] as Obj[]).push(this.balanceTransaction(d["id"] as string, back, 0, `Chargeback reversal for ${String(charge["id"])}`, "dispute_reversal"))
      this.event("charge.dispute.funds_reinstated", this.copy(d))
    }
    this.event("charge.dispute.closed", this.copy(d))
  }

  private balanceTransaction(source: string, amount: number, fee: number, description: string, reporting_category: string): Obj {
    const created = Math.floor(this.now() / 1000)
    return { id: `txn_${++this.seq}`, object: "balance_transaction", amount, available_on: created, created, currency: "usd", description, fee, net: amount - fee, reporting_category, source, status: "pending", type: "adjustment" }
  }

  /** An object as an event carries it: a copy, so later changes do not reach queued events. */
  private copy(o: Obj): Obj {
    return JSON.parse(JSON.stringify(o)) as Obj
  }

  /** The charge as an event carries it: with its refunds listed when `listsRefunds`. */
  private snapshot(charge: Obj): Obj {
    if (!this.listsRefunds) return { ...charge }
    const data = [...this.refunds.values()].filter((r) => r["charge"] === charge["id"]).map((r) => ({ ...r }))
    return { ...charge, refunds: { object: "list", data, has_more: false, total_count: data.length, url: `/v1/charges/${String(charge["id"])}/refunds` } }
  }

  private event(type: string, object: Obj, previous_attributes?: Obj): void {
    const id = `evt_${++this.seq}`
    const data = previous_attributes === undefined ? { object } : { object, previous_attributes }
    const payload = JSON.stringify({ id, object: "event", api_version: Stripe.API_VERSION, created: Math.floor(this.now() / 1000), type, livemode: false, data }, null, 2)
    this.queue.push({ id, type, payload })
  }

  private ok(body: unknown): { status: number; body: string } {
    return { status: 200, body: JSON.stringify(body) }
  }

  private error(status: number, type: string, code: string, message: string): { status: number; body: string } {
    return { status, body: JSON.stringify({ error: { type, code, message } }) }
  }
}
