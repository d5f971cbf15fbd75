/**
 * Payments in the simulator (sim/payments.ts): the timeline events `top_up`,
 * `set_auto_recharge`, `card_decline`, `stripe_refund`, delayed and duplicated webhooks, an
 * engine outage while webhooks are in flight, and the auto-recharge burst guard, with the
 * exact ledger rows each produces.
 */
import { describe, expect, it } from "vitest"
import { launch, run, timelineFile, tmpDb } from "../helpers.js"

const rowsOf = (out: { ledger: ReadonlyArray<Record<string, unknown>> }) => out.ledger.map((r) => [String(r["at"]).slice(11, 19), r["kind"], r["amount"], r["balance_after"], r["resource"]])

const catalog = {
  gpus: { H100: { hourly_rate: "1.60" } },
  regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
}

describe("the simulated provider", () => {
  it("credits a top-up when its webhook arrives, once, though every webhook comes twice", () => {
    // Proves `top_up` goes through the provider: credit at the delayed webhook, duplicates book nothing.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          { at: "PT1H", do: "stripe_refund", account: "acme", amount: "5.00" },
          { at: "PT2H", do: "stripe_refund", account: "acme" },
          { at: "PT3H", do: "stripe_refund", account: "acme" }
        ],
        { catalog, until: "PT4H", accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT10S", duplicate_probability: 1 } }
      )
    ).output
    // Each webhook's first delivery comes 10 to 20 s late (the seeded delay), its duplicate later.
    expect(rowsOf(out)).toEqual([
      ["00:00:19", "topup", "20.00", "20.00", "pay_00000001"],
      ["01:00:19", "refund", "-5.00", "15.00", "pay_00000001"],
      ["02:00:11", "refund", "-15.00", "0.00", "pay_00000001"]
    ])
    expect(out.rejected.map((r) => [r.do, r.status, r.error])).toEqual([["stripe_refund", 404, "payment_not_found"]])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("gives back a refund that fails at the provider, once, though every webhook comes twice", () => {
    // Proves `stripe_refund` with `fail_after`: the $5 refund is booked when its charge.refunded
    // comes, and its failure two hours later gives the $5 back as one + refund row naming the
    // payment (the refund rows add up to the $0 really refunded), with one notification.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          { at: "PT1H", do: "stripe_refund", account: "acme", amount: "5.00", fail_after: "PT2H" }
        ],
        { catalog, until: "PT4H", accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT10S", duplicate_probability: 1 } }
      )
    ).output
    expect(out.ledger.map((r) => [String(r["at"]).slice(11, 19), r["kind"], r["amount"], r["balance_after"], r["resource"], r["description"]])).toEqual([
      ["00:00:19", "topup", "20.00", "20.00", "pay_00000001", "Top-up by card (pay_00000001)"],
      ["01:00:19", "refund", "-5.00", "15.00", "pay_00000001", "Refund to card of top-up pay_00000001"],
      ["03:00:11", "refund", "5.00", "20.00", "pay_00000001", "Failed refund to card of top-up pay_00000001, credit returned"]
    ])
    expect(out.notifications.map((n) => [String(n["at"]).slice(11, 19), n["kind"], n["severity"], n["text"]])).toEqual([
      ["03:00:11", "card_refund_failed", "warning", "A refund of $5.00 to your card did not go through: the card has expired or was canceled. The $5.00 stays in your credit balance."]
    ])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("books nothing for a refund whose failure arrives before its charge.refunded, and the payment is refundable again", () => {
    // Proves the reverse order in a timeline: the refund fails at once, its failure's webhook
    // overtakes the charge.refunded (seeded delays), and neither books anything; the charge's
    // amount_refunded went back down, so a later refund of all of it is $20.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          { at: "PT1H", do: "stripe_refund", account: "acme", amount: "5.00", fail_after: "PT0S" },
          { at: "PT2H", do: "stripe_refund", account: "acme" }
        ],
        { catalog, until: "PT3H", seed: 7, accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT60S" } }
      )
    ).output
    expect(rowsOf(out)).toEqual([
      ["00:01:50", "topup", "20.00", "20.00", "pay_00000001"],
      ["02:01:58", "refund", "-20.00", "0.00", "pay_00000001"]
    ])
    expect(out.notifications.map((n) => [n["kind"], n["text"]])).toEqual([
      ["card_refund_failed", "A refund of $5.00 to your card did not go through: the card has expired or was canceled. The $5.00 stays in your credit balance."]
    ])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("ends the auto-recharge pause when the refund that set it fails, though the balance is still under the threshold", () => {
    // Proves the Decision in docs/POLICY.md in a timeline: two recharges lift acme to $40
    // (threshold $25); refunding pay_00000002 leaves $20 and pauses auto-recharge; a $19.20
    // hold leaves $0.80; the refund fails an hour later: +$20 = $20.80, still under $25, and
    // the card is charged at once because no money went back to it.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "set_auto_recharge", account: "acme", threshold: "25.00", amount: "20.00" },
          { at: "PT10M", do: "stripe_refund", account: "acme", payment: "pay_00000002", fail_after: "PT1H" },
          launch({ at: "PT20M", gpu_count: 3, estimated_duration_hours: 4 })
        ],
        { catalog, until: "PT2H", accounts: { acme: { balance: "0.00" } } }
      )
    ).output
    expect(rowsOf(out)).toEqual([
      ["00:00:00", "topup", "20.00", "20.00", "pay_00000001"],
      ["00:00:00", "topup", "20.00", "40.00", "pay_00000002"],
      ["00:10:00", "refund", "-20.00", "20.00", "pay_00000002"],
      ["00:20:00", "gpu_usage", "-19.20", "0.80", "gi-1"],
      ["01:10:00", "refund", "20.00", "20.80", "pay_00000002"],
      ["01:10:00", "topup", "20.00", "40.80", "pay_00000003"]
    ])
    expect(out.notifications.filter((n) => String(n["kind"]).startsWith("auto_recharge") || n["kind"] === "card_refund_failed").map((n) => [String(n["at"]).slice(11, 19), n["kind"], n["text"]])).toEqual([
      [
        "00:10:00",
        "auto_recharge_paused",
        "Auto-recharge is paused: $20.00 was refunded to your card. It resumes when your balance is back at $25.00 or when you save your auto-recharge settings again."
      ],
      [
        "01:10:00",
        "card_refund_failed",
        "A refund of $20.00 to your card did not go through: the card has expired or was canceled. The $20.00 stays in your credit balance. Auto-recharge, paused by that refund, is on again."
      ]
    ])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("refuses a card top-up that would lift the wallet above $1,000,000,000, charging nothing", () => {
    // Proves the wallet limit holds for card money too (POLICY.md, Limits): 400 before any payment.
    const out = run(
      timelineFile([{ at: "PT0S", do: "top_up", account: "acme", amount: "1000.00" }], { catalog, until: "PT1H", accounts: { acme: { balance: "999999999.99" } } })
    ).output
    expect(out.rejected.map((r) => [r.do, r.status, r.error, r.message])).toEqual([["top_up", 400, "invalid_amount", "a wallet holds at most $1000000000.00"]])
    expect(rowsOf(out)).toEqual([["00:00:00", "adjustment", "999999999.99", "999999999.99", null]])
  })

  it("auto-recharges on the spendable balance, so per-minute usage rows recharge when per-request ones do", () => {
    // Proves auto-recharge counts API usage admitted but not yet posted: with per-minute rows the
    // $2 of images at 1 s leaves $4 spendable under the $5 threshold, the card is charged then,
    // and the third request is admitted as with per-request rows (it used to get 402 at 3 s).
    const mk = (api_usage_rows: string) =>
      timelineFile(
        [
          { at: "PT0S", do: "set_auto_recharge", account: "acme", threshold: "5.00", amount: "20.00" },
          { at: "PT1S", do: "api_request", account: "acme", model: "img", images: 2 },
          { at: "PT2S", do: "api_request", account: "acme", model: "img", images: 3 },
          { at: "PT3S", do: "api_request", account: "acme", model: "img", images: 2 }
        ],
        { catalog: { ...catalog, models: { img: { per_image: "1.00" } } }, until: "PT5M", accounts: { acme: { balance: "6.00" } }, api_usage_rows }
      )
    const perMinute = run(mk("per_minute")).output
    expect(perMinute.rejected).toEqual([])
    expect(rowsOf(perMinute)).toEqual([
      ["00:00:00", "adjustment", "6.00", "6.00", null],
      ["00:00:01", "topup", "20.00", "26.00", "pay_00000001"],
      ["00:01:00", "api_usage", "-7.00", "19.00", "img"]
    ])
    const perRequest = run(mk("per_request")).output
    expect(perRequest.rejected).toEqual([])
    expect(rowsOf(perRequest).filter((r) => r[1] === "topup")).toEqual([["00:00:01", "topup", "20.00", "24.00", "pay_00000001"]])
  })

  it("redelivers webhooks the engine missed while down, and nothing is lost or doubled", () => {
    // Proves an outage between the charge and its webhook: the credit lands when the engine is back.
    const file = timelineFile([{ at: "PT0S", do: "top_up", account: "acme", amount: "30.00" }], {
      catalog,
      until: "PT1H",
      accounts: { acme: { balance: "0.00" } },
      payments: { webhook_delay: "PT30S", duplicate_probability: 1 }
    })
    const out = run(file, { db: tmpDb(), outages: [{ at_ms: Date.parse("2026-03-01T00:00:01Z"), duration_ms: 5 * 60_000 }] }).output
    expect(rowsOf(out)).toEqual([["00:05:01", "topup", "30.00", "30.00", "pay_00000001"]])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("takes a disputed top-up back once, below $0, and gives it back when the dispute is won", () => {
    // Proves `stripe_dispute`: every webhook comes twice, and each dispute books once. The
    // dispute of pay_00000001, made at once, takes its $20; pay_00000002 ($10, $6.40 of it held
    // by a GPU instance) is taken in full, leaving −$6.40, and given back when it is won two
    // hours later; a refund or a second dispute of the disputed charge is refused 409
    // charge_disputed, as Stripe refuses them; invariant 9 reconciles the provider's side.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          { at: "PT0S", do: "stripe_dispute", account: "acme" },
          { at: "PT1H", do: "top_up", account: "acme", amount: "10.00" },
          launch({ at: "PT1H1M", estimated_duration_hours: 4 }),
          { at: "PT1H2M", do: "stripe_dispute", account: "acme", payment: "pay_00000002", won_after: "PT2H" },
          { at: "PT1H3M", do: "stripe_refund", account: "acme", payment: "pay_00000002" },
          { at: "PT1H4M", do: "stripe_dispute", account: "acme", payment: "pay_00000002" }
        ],
        { catalog, until: "PT6H", accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT10S", duplicate_probability: 1 } }
      )
    ).output
    expect(out.ledger.map((r) => [String(r["at"]).slice(11, 19), r["kind"], r["amount"], r["balance_after"], r["resource"], r["description"]])).toEqual([
      ["00:00:19", "topup", "20.00", "20.00", "pay_00000001", "Top-up by card (pay_00000001)"],
      ["00:00:19", "refund", "-20.00", "0.00", "pay_00000001", "Dispute (chargeback) of top-up pay_00000001 (du_sim_1)"],
      ["01:00:11", "topup", "10.00", "10.00", "pay_00000002", "Top-up by card (pay_00000002)"],
      ["01:01:00", "gpu_usage", "-6.40", "3.60", "gi-1", "Credit hold for gi-1: 4 h × $1.60/h × 1 GPU"],
      ["01:02:18", "refund", "-10.00", "-6.40", "pay_00000002", "Dispute (chargeback) of top-up pay_00000002 (du_sim_2)"],
      ["03:02:15", "refund", "10.00", "3.60", "pay_00000002", "Dispute of top-up pay_00000002 (du_sim_2) returned, credit restored"]
    ])
    expect(out.rejected.map((r) => [r.do, r.status, r.error])).toEqual([
      ["stripe_refund", 409, "charge_disputed"],
      ["stripe_dispute", 409, "charge_disputed"]
    ])
    expect(out.notifications.filter((n) => String(n["kind"]).startsWith("payment_dispute")).map((n) => [String(n["at"]).slice(11, 19), n["kind"], n["text"]])).toEqual([
      ["00:00:19", "payment_disputed", "A payment of $20.00 was disputed with your bank; $20.00 was taken from your credit balance."],
      ["01:02:18", "payment_disputed", "A payment of $10.00 was disputed with your bank; $10.00 was taken from your credit balance."],
      ["03:02:15", "payment_dispute_reinstated", "Your bank closed the dispute of a payment of $10.00 in our favor; $10.00 was returned to your credit balance."]
    ])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("pauses auto-recharge after a refund at the provider, until the balance is back at the threshold", () => {
    // Proves a card refund is not undone by an immediate recharge: the refund leaves $0, below
    // the $5 threshold, and no charge follows; a manual top-up to $10 ends the pause, and the
    // next dip below $5 (a $6.40 hold) is recharged as usual.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "set_auto_recharge", account: "acme", threshold: "5.00", amount: "20.00" },
          { at: "PT10M", do: "stripe_refund", account: "acme" },
          { at: "PT1H", do: "top_up", account: "acme", amount: "10.00" },
          launch({ at: "PT2H", estimated_duration_hours: 4 })
        ],
        { catalog, until: "PT3H", accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT2S" } }
      )
    ).output
    expect(rowsOf(out)).toEqual([
      ["00:00:02", "topup", "20.00", "20.00", "pay_00000001"],
      ["00:10:03", "refund", "-20.00", "0.00", "pay_00000001"],
      ["01:00:03", "topup", "10.00", "10.00", "pay_00000002"],
      ["02:00:00", "gpu_usage", "-6.40", "3.60", "gi-1"],
      ["02:00:02", "topup", "20.00", "23.60", "pay_00000003"]
    ])
    expect(out.notifications.map((n) => [String(n["at"]).slice(11, 19), n["kind"], n["severity"], n["text"]])).toEqual([
      [
        "00:10:03",
        "auto_recharge_paused",
        "warning",
        "Auto-recharge is paused: $20.00 was refunded to your card. It resumes when your balance is back at $5.00 or when you save your auto-recharge settings again."
      ]
    ])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("books a refund of spent credit in full, below $0; the prepaid instance runs to its deadline, and nothing new is admitted", () => {
    // Proves the Decision in docs/POLICY.md (Payments, refunds at the provider): the ledger
    // follows the provider to the cent, SPEC §9.4 exempts the row, a negative balance refuses
    // every hold; and the low-balance monitor counts a balance below $0 as $0, so it warns of
    // the hold's end (12:01), not of a stop "in 1 minute" at the refund.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          launch({ at: "PT1M", estimated_duration_hours: 12 }),
          { at: "PT10M", do: "stripe_refund", account: "acme" },
          launch({ at: "PT20M", id: "gi-2", estimated_duration_hours: 1 })
        ],
        { catalog, until: "PT14H", accounts: { acme: { balance: "0.00" } }, payments: { webhook_delay: "PT2S" } }
      )
    ).output
    expect(rowsOf(out)).toEqual([
      ["00:00:02", "topup", "20.00", "20.00", "pay_00000001"],
      ["00:01:00", "gpu_usage", "-19.20", "0.80", "gi-1"],
      ["00:10:03", "refund", "-20.00", "-19.20", "pay_00000001"]
    ])
    expect(out.rejected.map((r) => [r.do, r.status, r.error, r.message])).toEqual([["launch_gpu_instance", 402, "insufficient_balance", "balance -$19.20 cannot cover $1.60"]])
    const balance = out.notifications.filter((n) => n["kind"] === "balance_warning").map((n) => [String(n["at"]).slice(11, 19), Number(/about (\d+) minute/.exec(String(n["text"]))![1])])
    expect(balance).toEqual([
      ["11:01:00", 60],
      ["11:31:00", 30],
      ["11:41:00", 20],
      ["11:51:00", 10],
      ["11:56:00", 5],
      ["11:58:00", 3],
      ["12:00:00", 1]
    ])
    expect(out.notifications.filter((n) => n["kind"] === "terminated").map((n) => [String(n["at"]).slice(11, 19), n["text"]])).toEqual([["12:01:00", "Instance terminated — duration reached."]])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("auto-recharges below the threshold, backs off after a decline, and stops at the burst guard", () => {
    // Proves one charge at a time, the 15-minute backoff after a decline with its notification,
    // and at most 3 charge attempts (the declined one included) in any hour, even when each
    // leaves the balance below the threshold; the guard's end is a clock alarm.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "card_decline", account: "acme" },
          { at: "PT0S", do: "set_auto_recharge", account: "acme", threshold: "50.00", amount: "10.00" }
        ],
        { catalog, until: "PT3H", accounts: { acme: { balance: "0.00" } } }
      )
    ).output
    expect(rowsOf(out)).toEqual([
      ["00:15:00", "topup", "10.00", "10.00", "pay_00000002"],
      ["00:15:00", "topup", "10.00", "20.00", "pay_00000003"],
      ["01:00:00", "topup", "10.00", "30.00", "pay_00000004"],
      ["01:15:00", "topup", "10.00", "40.00", "pay_00000005"],
      ["01:15:00", "topup", "10.00", "50.00", "pay_00000006"]
    ])
    expect(out.notifications.map((n) => [String(n["at"]).slice(11, 19), n["kind"], n["severity"]])).toEqual([["00:00:00", "auto_recharge_declined", "critical"]])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })
})
