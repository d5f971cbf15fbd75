/**
 * What the simulated payments refuse is reported in `rejected` with its code, as TIMELINE.md
 * asks of every refused input: a `card_decline` for an account the timeline does not have,
 * and a top-up the card declined.
 */
import { describe, expect, it } from "vitest"
import { runTimeline } from "../../sim/runner.js"
import { decode, launch, run, timelineFile, tmpDb } from "../helpers.js"
import { expectSameAsSimulated, runTimelineInKubernetes } from "../k8s/timelineWorld.js"

const catalog = {
  gpus: { H100: { hourly_rate: "1.60" } },
  regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
}
const rowsOf = (out: { ledger: ReadonlyArray<Record<string, unknown>> }) => out.ledger.map((r) => [String(r["at"]).slice(11, 19), r["kind"], r["amount"], r["resource"]])

describe("card_decline", () => {
  it("for an account the timeline does not have is refused 404 account_not_found, and declines nothing", () => {
    // Proves F5: `acmee` (a typo) was silently accepted, and acme's top-up went through as if
    // the decline had been meant for it or for no one; now the typo shows, as for every event.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "card_decline", account: "acmee" },
          { at: "PT1M", do: "top_up", account: "acme", amount: "20.00" }
        ],
        { catalog, until: "PT1H" }
      )
    ).output
    expect(out.rejected).toEqual([{ at: "2026-03-01T00:00:00.000Z", event: 0, do: "card_decline", status: 404, error: "account_not_found", message: "account acmee not found" }])
    expect(rowsOf(out).slice(1)).toEqual([["00:01:00", "topup", "20.00", "pay_00000001"]])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })
})

describe("a top-up the card declined", () => {
  const declined = (event: number, payment: string) => ({ at: "2026-03-01T00:00:00.000Z", event, do: "top_up", status: 402, error: "payment_failed", message: `Your card was declined. (payment ${payment}: card_declined)` })

  it("is reported in rejected with the API's 402 payment_failed, and changes nothing", () => {
    // Proves F4: the engine's payments had the top-ups failed with card_declined, but the output
    // showed nothing (rejected, notifications and transitions empty). As in the live engine, a
    // declined top-up notifies no one: the customer is told at the card form.
    const out = run(
      timelineFile(
        [
          { at: "PT0S", do: "card_decline", account: "acme", count: 100 },
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" }
        ],
        { catalog, until: "P3D" }
      )
    ).output
    expect(out.rejected).toEqual([declined(1, "pay_00000001"), declined(2, "pay_00000002")])
    expect(rowsOf(out)).toEqual([["00:00:00", "adjustment", "100.00", null]])
    expect(out.accounts).toEqual({ acme: { balance: "100.00" } })
    expect([out.notifications, out.transitions]).toEqual([[], []])
    expect(out.invariants).toEqual({ ok: true, violations: [] })
  })

  it("takes its place among the other refusals in the order the inputs applied, whenever its webhook comes", () => {
    // Proves the order of `rejected` stays the inputs' (instant, then file position) though the
    // decline is learnt a webhook later, across a restart, and that a top-up after the declines
    // are used up is credited and not reported.
    const file = timelineFile(
      [
        { at: "PT0S", do: "card_decline", account: "acme" },
        launch({ gpu_count: 99 }),
        { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
        { at: "PT0S", do: "top_up", account: "acme", amount: "0.50" },
        { at: "PT1M", do: "top_up", account: "acme", amount: "30.00" },
        { at: "PT1M", do: "extend", id: "nothing", hours: 1 }
      ],
      { catalog, until: "PT1H", payments: { webhook_delay: "PT20S" } }
    )
    const straight = run(file).output
    expect(straight.rejected.map((r) => [r.at.slice(11, 19), r.event, r.status, r.error])).toEqual([
      ["00:00:00", 1, 400, "invalid_gpu_count"],
      ["00:00:00", 2, 402, "payment_failed"],
      ["00:00:00", 3, 400, "invalid_amount"],
      ["00:01:00", 5, 404, "resource_not_found"]
    ])
    expect(rowsOf(straight).slice(1).map((r) => [r[1], r[2], r[3]])).toEqual([["topup", "30.00", "pay_00000002"]])
    expect(straight.invariants).toEqual({ ok: true, violations: [] })
    // The engine dropped while the failure's webhook is on its way: the same story.
    const restarted = run(file, { db: tmpDb(), restartAt: [Date.parse("2026-03-01T00:00:05Z")] }).output
    expect(JSON.stringify(restarted)).toBe(JSON.stringify(straight))
  })

  it("is reported the same in the Kubernetes world", async () => {
    // Proves the two worlds still tell the same story, refusals included.
    const timeline = decode(
      timelineFile(
        [
          { at: "PT0S", do: "card_decline", account: "acme" },
          { at: "PT0S", do: "top_up", account: "acme", amount: "20.00" },
          launch({ at: "PT1M" })
        ],
        { catalog, until: "PT3H" }
      )
    )
    const sim = runTimeline(timeline)
    const k8s = await runTimelineInKubernetes(timeline)
    try {
      expect(sim.output.rejected).toEqual([declined(1, "pay_00000001")])
      expectSameAsSimulated(k8s, sim)
    } finally {
      await k8s.finish()
    }
  })
})
