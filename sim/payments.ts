/**
 * The simulated payment provider: behaves like Stripe on the virtual clock. PaymentIntents
 * keyed by idempotency key (same key → same intent), cards that succeed or decline, refunds
 * (which may fail later, as a refund to an expired card does), disputes (chargebacks, which
 * may be won later), and webhooks delivered after a delay, sometimes twice, redelivered while
 * the engine is down.
 *
 * It keeps its own books (what it charged, what it refunded, what the engine acknowledged) so
 * the invariant checker can reconcile the provider's side with the ledger to the cent.
 */
import { Either } from "effect"
import { Lane, type EngineClock } from "../src/clock.js"
import type { CardResult, EventOutcome, IntentRequest, IntentResult, PaymentBook, PaymentEvent, PaymentsPort, RefundListing, RefundTold } from "../src/payments.js"
import { errorStatus, NotFound } from "../src/errors.js"
import { LISTED_REFUND, microsOfCents } from "../src/payments.js"
import type { Micros } from "../src/money.js"
import type { WorldOutcome } from "./cluster.js"
import { Prng } from "./prng.js"

export interface SimPaymentsOptions {
  /** How long after the fact a webhook arrives (plus up to as much again of seeded jitter). */
  readonly webhook_delay_ms: number
  /** Each webhook is delivered a second time with this probability (Stripe's at-least-once). */
  readonly duplicate_probability: number
  /**
   * A `charge.refunded` carries `previous_attributes.amount_refunded` (true), or, as on an
   * endpoint of an API version from 2022-11-15 to before 2024-10-28.acacia that Stripe sends
   * none (it documents them for `*.updated` events only), only the cumulative amount: the
   * engine then lists the charge's refunds (`listRefunds`).
   */
  readonly previous_attributes: boolean
}

/** Redelivery of a webhook the engine did not take (it was down): every minute, this many times. */
export const SIM_WEBHOOK_RETRY_MS = 60_000
export const SIM_WEBHOOK_ATTEMPTS_MAX = 1_000

/**
 * Where the provider's webhooks go: the engine's book while it is up (`book()`), through
 * `PaymentBook.receive` (which may list a charge's refunds first); null while the engine is
 * down, or an event it could not book, and the provider delivers it again later.
 */
export const webhookTo =
  (book: () => PaymentBook | null | undefined) =>
  (e: PaymentEvent, answer: (outcome: EventOutcome | null) => void): void => {
    const b = book()
    if (b === null || b === undefined) return answer(null)
    b.receive(e, (r) => {
      // A defect booking it is the run's: it stops the simulation loudly.
      if (Either.isLeft(r)) throw r.left
      answer(r.right.booked && r.right.listing_failed === null ? r.right.outcome : null)
    })
  }

/**
 * The provider of a timeline's world. It has its own seeded source, so adding payments to a
 * timeline leaves the cluster's random draws (and so every other output) as they were.
 */
export const simPaymentsFor = (clock: EngineClock, seed: number, options: SimPaymentsOptions, accounts: Iterable<string>): SimPayments =>
  new SimPayments(clock, new Prng(seed ^ 0x5eed_9a7), options, new Set(accounts))

interface SimRefund {
  readonly id: string
  readonly cents: number
  status: "succeeded" | "failed"
  /** The engine took the `charge.refunded` that reported this refund. */
  made_acked: boolean
  /** The engine took the event that said it failed. */
  failed_acked: boolean
  /** The engine booked a list of the charge's refunds with this one in it: it knows it made, by id. */
  listed: boolean
  /** …and with it failed. */
  failed_listed: boolean
}

/**
 * A dispute (chargeback) of a charge: its amount withdrawn from the provider's balance at once
 * (`charge.dispute.funds_withdrawn`), all of it reinstated if the dispute is won
 * (`charge.dispute.funds_reinstated`).
 */
interface SimDispute {
  readonly id: string
  readonly cents: number
  won: boolean
  /** The engine took an event that told the withdrawal (the withdrawal's, or the reinstatement's, which implies it). */
  withdrawn_acked: boolean
  /** The engine took the event that told the reinstatement. */
  reinstated_acked: boolean
}

interface SimIntent {
  readonly id: string
  readonly payment_id: string
  readonly account: string
  readonly amount_cents: number
  status: "succeeded" | "failed"
  readonly charge_id: string
  /** The charge's `amount_refunded`: its refunds that did not fail (Stripe takes a failed one back out). */
  refunded_cents: number
  readonly refunds: SimRefund[]
  /** The charge's disputes (Stripe has at most one standing: a charge disputed again only after one was won). */
  readonly disputes: SimDispute[]
  /** The engine took an event proving the payment (succeeded, or a refund of its charge). */
  paid_acked: boolean
  /** The largest cumulative refund the engine took in a `charge.refunded`. */
  refunded_acked_cents: number
}

/** The charge has a dispute not won: its money is with the cardholder's bank. */
const disputeStands = (i: SimIntent): boolean => i.disputes.some((d) => !d.won)

/** What the simulated provider says of a declined card (Stripe's text for `card_declined`). */
export const SIM_DECLINE_MESSAGE = "Your card was declined."

/** Why a simulated refund fails: Stripe's test card `pm_card_refundFail` fails its refunds so. */
export const SIM_REFUND_FAILURE_REASON = "expired_or_canceled_card"

export class SimPayments implements PaymentsPort {
  /** Where webhooks go (`webhookTo`); answers null while the engine is down (the provider retries). */
  deliver: (e: PaymentEvent, answer: (outcome: EventOutcome | null) => void) => void = (_, answer) => answer(null)
  private readonly intents = new Map<string, SimIntent>()
  private readonly byCharge = new Map<string, SimIntent>()
  private readonly order: string[] = []
  private readonly byKey = new Map<string, IntentResult>()
  private readonly declines = new Map<string, number>()
  private events = 0
  private refundCount = 0
  private disputeCount = 0
  /** The charge's refunds as a list answered just now hands them to the engine (see `listRefunds`). */
  private answering: { readonly charge_id: string; readonly refunds: ReadonlyArray<SimRefund> } | null = null

  constructor(
    private readonly clock: EngineClock,
    private readonly prng: Prng,
    private readonly options: SimPaymentsOptions,
    /** The timeline's accounts: the provider has a customer for each, and for no one else. */
    private readonly accounts: ReadonlySet<string>
  ) {}

  createIntent(req: IntentRequest, done: (r: IntentResult) => void): void {
    this.intent(req, false, done)
  }

  chargeOffSession(req: IntentRequest, done: (r: IntentResult) => void): void {
    this.intent(req, true, done)
  }

  saveCard(req: { readonly account: string; readonly payment_method: string }, done: (r: CardResult) => void): void {
    this.later(`card:${req.account}`, () => done({ ok: true, customer: `cus_${req.account}`, payment_method: req.payment_method }))
  }

  /**
   * The account's card declines its next `count` charges. An account the timeline does not
   * have is refused as the engine refuses one (404 `account_not_found`), not remembered: a
   * typo would otherwise decline nothing, silently.
   */
  declineNext(account: string, count: number): WorldOutcome {
    if (!this.accounts.has(account)) return { ok: false, ...errorStatus(new NotFound({ code: "account_not_found", id: account })) }
    this.declines.set(account, (this.declines.get(account) ?? 0) + count)
    return { ok: true }
  }

  /**
   * A refund from the dashboard: of the payment `payment_id` (our id), or else of the account's
   * latest payment with anything left to refund; `amount_cents` or all that is left. With
   * `fail_after_ms`, the refund fails that long after (as Stripe's do when the card is closed):
   * the charge's `amount_refunded` goes back down and a `charge.refund.updated` in status
   * `failed` is sent.
   */
  refund(account: string, payment_id: string | null, amount_cents: number | null, fail_after_ms: number | null = null): WorldOutcome {
    const candidates = this.order.map((id) => this.intents.get(id)!).filter((i) => i.account === account && i.status === "succeeded" && i.refunded_cents < i.amount_cents)
    // Stripe refuses to refund a charge whose dispute stands (`charge_disputed`).
    const intent = payment_id === null ? candidates.filter((i) => !disputeStands(i)).pop() : candidates.find((i) => i.payment_id === payment_id)
    if (intent === undefined) return { ok: false, status: 404, error: "payment_not_found", message: `no refundable payment of ${account}${payment_id === null ? "" : ` named ${payment_id}`}` }
    if (disputeStands(intent)) return { ok: false, status: 409, error: "charge_disputed", message: `${intent.payment_id} has been charged back; it cannot be refunded` }
    const left = intent.amount_cents - intent.refunded_cents
    const cents = amount_cents ?? left
    if (cents <= 0 || cents > left) return { ok: false, status: 400, error: "invalid_amount", message: `a refund of ${intent.payment_id} is 1 to ${left} cents` }
    const refund: SimRefund = { id: `re_sim_${++this.refundCount}`, cents, status: "succeeded", made_acked: false, failed_acked: false, listed: false, failed_listed: false }
    intent.refunds.push(refund)
    const previous = intent.refunded_cents
    intent.refunded_cents += cents
    const reported = intent.refunded_cents
    this.emit(
      {
        id: this.eventId(),
        type: "charge.refunded",
        charge_id: intent.charge_id,
        intent_id: intent.id,
        amount_cents: intent.amount_cents,
        amount_refunded_cents: reported,
        previous_refunded_cents: this.options.previous_attributes ? previous : null,
        created_ms: this.clock.now(),
        // As Stripe's charge.refunded since API version 2022-11-15: no list of the charge's refunds.
        refunds: [],
        payment_id: intent.payment_id
      },
      () => {
        intent.paid_acked = true
        refund.made_acked = true
        intent.refunded_acked_cents = Math.max(intent.refunded_acked_cents, reported)
        // The engine booked the charge's refunds listed for this event with it.
        if (this.answering?.charge_id === intent.charge_id) {
          for (const r of this.answering.refunds) {
            r.listed = true
            if (r.status === "failed") r.failed_listed = true
          }
        }
      }
    )
    if (fail_after_ms !== null) {
      this.clock.schedule(this.clock.now() + fail_after_ms, () => this.failRefund(intent, refund), { lane: Lane.world, key: `refund-fail:${refund.id}` })
    }
    return { ok: true }
  }

  /**
   * The cardholder's bank disputes the payment `payment_id` (our id), or else the account's
   * latest payment with something left that was neither refunded nor disputed: `amount_cents`,
   * or all that is left (as card issuers correct a full-amount dispute of a partially refunded
   * charge). The amount leaves the provider's balance at once (`charge.dispute.funds_withdrawn`);
   * with `won_after_ms` the dispute is won that long after and all of it comes back
   * (`charge.dispute.funds_reinstated`).
   */
  dispute(account: string, payment_id: string | null, amount_cents: number | null, won_after_ms: number | null = null): WorldOutcome {
    const candidates = this.order.map((id) => this.intents.get(id)!).filter((i) => i.account === account && i.status === "succeeded" && i.refunded_cents < i.amount_cents)
    const intent = payment_id === null ? candidates.filter((i) => !disputeStands(i)).pop() : candidates.find((i) => i.payment_id === payment_id)
    if (intent === undefined) return { ok: false, status: 404, error: "payment_not_found", message: `no disputable payment of ${account}${payment_id === null ? "" : ` named ${payment_id}`}` }
    if (disputeStands(intent)) return { ok: false, status: 409, error: "charge_disputed", message: `${intent.payment_id} is disputed already` }
    const left = intent.amount_cents - intent.refunded_cents
    const cents = amount_cents ?? left
    if (cents <= 0 || cents > left) return { ok: false, status: 400, error: "invalid_amount", message: `a dispute of ${intent.payment_id} is 1 to ${left} cents` }
    const dispute: SimDispute = { id: `du_sim_${++this.disputeCount}`, cents, won: false, withdrawn_acked: false, reinstated_acked: false }
    intent.disputes.push(dispute)
    const told = (event_type: string, reinstated: boolean): PaymentEvent => ({
      id: this.eventId(),
      type: "dispute",
      event_type,
      dispute_id: dispute.id,
      charge_id: intent.charge_id,
      intent_id: intent.id,
      amount_cents: cents,
      withdrawn_cents: cents,
      reinstated_cents: reinstated ? cents : 0,
      status: reinstated ? "won" : "needs_response",
      reason: "fraudulent",
      payment_id: null
    })
    this.emit(told("charge.dispute.funds_withdrawn", false), () => {
      intent.paid_acked = true
      dispute.withdrawn_acked = true
    })
    if (won_after_ms !== null) {
      this.clock.schedule(
        this.clock.now() + won_after_ms,
        () => {
          dispute.won = true
          this.emit(told("charge.dispute.funds_reinstated", true), () => {
            intent.paid_acked = true
            dispute.withdrawn_acked = true
            dispute.reinstated_acked = true
          })
        },
        { lane: Lane.world, key: `dispute-won:${dispute.id}` }
      )
    }
    return { ok: true }
  }

  /**
   * The provider's net by account, in micros: what it charged, less what it really refunded
   * (the charge's `amount_refunded`), as far as the engine acknowledged the webhooks. While
   * some refund of a charge is not known to the engine yet (neither its `charge.refunded`
   * acknowledged nor a list with it booked, or its failure not told), its refunds are counted
   * by the rule the engine books by (src/payments.ts): the refunds reported made (by size when
   * `charge.refunded` carries `previous_attributes`, by id when listed or told failed, or the
   * largest cumulative amount) less those known failed, from 0 to the charge; once all are,
   * by what the provider really refunded, so a wrong rule shows. Disputes: what the engine was
   * told withdrawn less reinstated, at most what the refunds leave of the charge (the engine
   * books a dispute no further; the simulated bank never disputes more than is left).
   */
  netByAccount(): Map<string, Micros> {
    const net = new Map<string, Micros>()
    const sum = (refunds: ReadonlyArray<SimRefund>, counts: (r: SimRefund) => boolean) => refunds.reduce((total, r) => total + (counts(r) ? r.cents : 0), 0)
    for (const id of this.order) {
      const i = this.intents.get(id)!
      const settled = i.refunds.every((r) => (r.made_acked || r.listed) && (r.status !== "failed" || r.failed_acked || r.failed_listed))
      const sizes = this.options.previous_attributes ? sum(i.refunds, (r) => r.made_acked) : 0
      const byId = sum(i.refunds, (r) => r.listed || r.failed_acked)
      const made = Math.max(i.refunded_acked_cents, sizes, byId)
      const failed = sum(i.refunds, (r) => r.failed_acked || r.failed_listed)
      const refunded = settled ? i.refunded_cents : Math.min(i.amount_cents, Math.max(0, made - failed))
      const told = i.disputes.reduce((sum, d) => sum + (d.withdrawn_acked ? d.cents : 0) - (d.reinstated_acked ? d.cents : 0), 0)
      const disputed = Math.min(told, i.amount_cents - refunded)
      const cents = (i.paid_acked ? i.amount_cents : 0) - refunded - disputed
      net.set(i.account, (net.get(i.account) ?? 0n) + microsOfCents(cents))
    }
    return net
  }

  /**
   * The charge's refunds, oldest first, as Stripe's `GET /v1/refunds?charge=…` has them when
   * the answer comes (on the world's lane, at once: never inside the caller's call). The
   * engine books them in that answer; while it does, the provider notes which refunds the
   * engine now knows by id (`answering`, read when the event that asked is acknowledged).
   */
  listRefunds(charge_id: string, done: (r: RefundListing) => void): void {
    this.later(`list:${charge_id}`, () => {
      const intent = this.byCharge.get(charge_id)
      const refunds = intent?.refunds ?? []
      const told = refunds.map((r): RefundTold => {
        const common = { id: `${r.id}@list`, event_type: LISTED_REFUND, refund_id: r.id, charge_id, intent_id: intent!.id, amount_cents: r.cents, payment_id: null }
        return r.status === "failed" ? { ...common, type: "refund.failed", status: "failed", failure_reason: SIM_REFUND_FAILURE_REASON } : { ...common, type: "refund.made" }
      })
      this.answering = { charge_id, refunds }
      try {
        done({ ok: true, refunds: told })
      } finally {
        this.answering = null
      }
    })
  }

  /** The refund fails at the provider: the charge gets its amount back, and the engine is told. */
  private failRefund(intent: SimIntent, refund: SimRefund): void {
    if (refund.status === "failed") return
    refund.status = "failed"
    intent.refunded_cents -= refund.cents
    this.emit(
      {
        id: this.eventId(),
        type: "refund.failed",
        event_type: "charge.refund.updated",
        refund_id: refund.id,
        charge_id: intent.charge_id,
        intent_id: intent.id,
        amount_cents: refund.cents,
        status: "failed",
        failure_reason: SIM_REFUND_FAILURE_REASON,
        payment_id: null
      },
      () => {
        refund.failed_acked = true
      }
    )
  }

  private intent(req: IntentRequest, offSession: boolean, done: (r: IntentResult) => void): void {
    const seen = this.byKey.get(req.idempotency_key)
    if (seen !== undefined) return this.later(req.idempotency_key, () => done(seen))
    const n = this.order.length + 1
    const id = `pi_sim_${n}`
    const pending = this.declines.get(req.account) ?? 0
    const declined = pending > 0
    if (declined) this.declines.set(req.account, pending - 1)
    this.intents.set(id, {
      id,
      payment_id: req.payment_id,
      account: req.account,
      amount_cents: req.amount_cents,
      status: declined ? "failed" : "succeeded",
      charge_id: `ch_sim_${n}`,
      refunded_cents: 0,
      refunds: [],
      disputes: [],
      paid_acked: false,
      refunded_acked_cents: 0
    })
    this.order.push(id)
    this.byCharge.set(`ch_sim_${n}`, this.intents.get(id)!)
    // An off-session decline is the answer itself (Stripe raises a card error); a top-up's
    // intent is created fine and the customer's confirmation then fails.
    const result: IntentResult =
      declined && offSession
        ? { ok: false, intent_id: id, code: "card_declined", message: SIM_DECLINE_MESSAGE, declined: true }
        : { ok: true, intent_id: id, client_secret: `${id}_secret`, status: offSession ? "succeeded" : "requires_payment_method" }
    this.byKey.set(req.idempotency_key, result)
    this.later(req.idempotency_key, () => done(result))
    const metadata = req.payment_id
    const intent = this.intents.get(id)!
    if (declined) this.emit({ id: this.eventId(), type: "payment_intent.payment_failed", intent_id: id, payment_id: metadata, code: "card_declined", declined: true })
    else
      this.emit({ id: this.eventId(), type: "payment_intent.succeeded", intent_id: id, amount_cents: req.amount_cents, payment_id: metadata }, () => {
        intent.paid_acked = true
      })
  }

  private eventId(): string {
    return `evt_sim_${++this.events}`
  }

  /** Answers come back on the world's lane, never inside the caller's call. */
  private later(key: string, fn: () => void): void {
    this.clock.schedule(this.clock.now(), fn, { lane: Lane.world, key: `payments:${key}` })
  }

  /** Sends `e` later (and maybe twice); `acked` records on the provider's books that the engine took it. */
  private emit(e: PaymentEvent, acked: () => void = () => {}): void {
    const delay = this.options.webhook_delay_ms
    const first = this.clock.now() + delay + (delay > 0 ? this.prng.int(0, delay) : 0)
    this.schedule(e, first, 1, acked)
    if (this.prng.chance(this.options.duplicate_probability)) this.schedule(e, first + (delay > 0 ? this.prng.int(1, 2 * delay) : 1_000), 1, acked)
  }

  private schedule(e: PaymentEvent, at: number, attempt: number, acked: () => void): void {
    this.clock.schedule(
      at,
      () =>
        this.deliver(e, (outcome) => {
          if (outcome === null) {
            if (attempt < SIM_WEBHOOK_ATTEMPTS_MAX) this.schedule(e, this.clock.now() + SIM_WEBHOOK_RETRY_MS, attempt + 1, acked)
            return
          }
          if (outcome !== "unmatched") acked()
        }),
      { lane: Lane.world, key: `webhook:${e.id}:${at}` }
    )
  }
}
