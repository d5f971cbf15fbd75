/**
 * What the simulated payments refuse is reported in `rejected` with its code, as TIMELINE.md
 * asks of every refused input: a `card_decline` for an account the timeline does not have,
 * and a top-up the card declined.
 */
import { describe, expect, it } from "vitest"
import { run, timelineFile } from "../helpers.js"

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
