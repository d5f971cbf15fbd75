/**
 * What `npm run sim --json` gives finance to reconcile an account with, from the output alone
 * (docs/TIMELINE-EXTENSIONS.md, Output): `account_totals`, each account's sums of its rows by
 * kind and the parts of its holds, each resource's holds, each storage resource's charges,
 * and each ledger row's hold. Before, an account showed only its balance: the consumption and
 * the holds still open that SPEC §9.1 reconciles with were not in the output, and a refund or
 * an overage of an inference instance could not be told apart by cycle.
 */
import { describe, expect, it } from "vitest"
import { run, timelineFile } from "./helpers.js"

const catalog = {
  gpus: { H100: { hourly_rate: "1.60" } },
  regions: {
    "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" },
    "eu-west": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }
  },
  storage: { cloud_drive: { daily_rate_per_gb: "0.004" }, shared_fs: { daily_rate_per_gb: "0.006" } },
  models: { chat: { input_per_1m_tokens: "0.15", output_per_1m_tokens: "0.60" } }
}

const timeline = timelineFile(
  [
    { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 2, region: "us-east", estimated_duration_hours: 4 },
    { at: "PT0S", do: "register_model", account: "acme", model: "m", source: "huggingface", gpu: "H100", gpu_count: 1 },
    { at: "PT0S", do: "launch_inference_instance", account: "acme", id: "ii-1", model: "m" },
    { at: "PT0S", do: "create_drive", account: "acme", id: "dr-1", size_gb: 100, region: "us-east" },
    { at: "PT1H", do: "terminate", id: "gi-1" },
    { at: "PT1H", do: "api_request", account: "acme", model: "chat", input_tokens: 1000, output_tokens: 1000 },
    { at: "PT2H", do: "top_up", account: "acme", amount: "50.00" },
    { at: "PT3H", do: "stripe_refund", account: "acme", amount: "10.00" }
  ],
  { catalog, until: "P1DT1H", accounts: { acme: { balance: "500.00" } } }
)

const m = (dollars: string): bigint => {
  const [whole, frac = ""] = dollars.replace("-", "").split(".")
  const micros = BigInt(whole!) * 1_000_000n + BigInt(frac.padEnd(6, "0"))
  return dollars.startsWith("-") ? -micros : micros
}

describe("the simulator's output, for finance", () => {
  it("gives each account its rows' sums by kind and its holds' parts, to the micro-dollar", () => {
    // Proves the numbers by hand: gi-1 holds 4 h × $1.60 × 2 = $12.80, runs 1 h ($3.20) and gets
    // $9.60 back; ii-1 holds $1.60 × 1 × 2 replicas × 24 = $76.80, consumes it all by 24 h and
    // renews it (open at the end); the drive costs 100 GB × $0.004 = $0.40 at midnight; the
    // request 1,000 × $0.15/1M + 1,000 × $0.60/1M = $0.00075; a $50 top-up, $10 refunded to the card.
    const r = run(timeline)
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
    expect(r.output.accounts.acme).toEqual({ balance: "382.79925" })
    expect(r.output.account_totals.acme).toEqual({
      by_kind: { topup: "50.00", adjustment: "500.00", gpu_usage: "-166.40", refund: "-0.40", api_usage: "-0.00075", storage_billing: "-0.40" },
      holds: { held: "166.40", consumed: "80.00", refunded: "9.60", overage: "0.00", open: "76.80" },
      api_usage_by_model: { chat: "-0.00075" }
    })
    expect(r.output.resources["gi-1"]).toMatchObject({ held: "12.80", consumed: "3.20", refunded: "9.60", overage: "0.00", open_hold: "0.00" })
    expect(r.output.resources["ii-1"]).toMatchObject({ cycle: 2, cycle_hold: "76.80", held: "153.60", consumed: "76.80", refunded: "0.00", overage: "0.00", open_hold: "76.80" })
    expect(r.output.resources["dr-1"]).toMatchObject({ charged: "0.40" })
    expect(r.output.ledger.filter((row) => row.resource === "ii-1").map((row) => [row.kind, row.amount, row.hold])).toEqual([
      ["gpu_usage", "-76.80", "hold:ii-1:1"],
      ["gpu_usage", "-76.80", "hold:ii-1:2"]
    ])
    expect(r.output.ledger.find((row) => row.kind === "refund" && row.resource === "gi-1")).toMatchObject({ amount: "9.60", hold: "hold:gi-1" })
    expect(r.output.ledger.find((row) => row.kind === "topup")).toMatchObject({ hold: null })
  })

  it("reconciles every account of a run from the output alone (SPEC §9.1)", () => {
    // Proves the identities finance checks hold on the output, without the ledger's database:
    // the totals add up to the balance; hold rows are every hold and overage; the refunds of
    // holds are their unused parts (the rest of `refund` went to cards); and
    // balance = topups − card refunds − consumed − usage − storage + adjustments − open holds.
    const r = run(timeline)
    for (const [id, a] of Object.entries(r.output.accounts)) {
      const totals = r.output.account_totals[id]!
      const t = Object.fromEntries(Object.entries(totals.by_kind).map(([k, v]) => [k, m(v)]))
      const h = Object.fromEntries(Object.entries(totals.holds).map(([k, v]) => [k, m(v)]))
      const rows = r.output.ledger.filter((row) => row.account === id)
      expect(Object.values(t).reduce((x, y) => x + y, 0n)).toBe(m(a.balance))
      for (const kind of Object.keys(t)) expect(rows.filter((row) => row.kind === kind).reduce((x, row) => x + m(row.amount as string), 0n)).toBe(t[kind])
      expect(t.gpu_usage).toBe(-(h.held! + h.overage!))
      expect(rows.filter((row) => row.kind === "refund" && row.hold !== null).reduce((x, row) => x + m(row.amount as string), 0n)).toBe(h.refunded)
      expect(h.held! + h.overage!).toBe(h.consumed! + h.refunded! + h.open!)
      const cardRefunds = -(t.refund! - h.refunded!)
      expect(t.topup! - cardRefunds - h.consumed! + t.api_usage! + t.storage_billing! + t.adjustment! - h.open!).toBe(m(a.balance))
      const resources = Object.values(r.output.resources).filter((x) => x.account === id && "open_hold" in x)
      expect(resources.reduce((x, res) => x + m(res.open_hold as string), 0n)).toBe(h.open)
      expect(resources.reduce((x, res) => x + m(res.consumed as string), 0n)).toBe(h.consumed)
    }
  })
})
