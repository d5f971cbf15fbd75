/** The readable summary `npm run sim` prints without --json. */
import type { SimOutput } from "./runner.js"

/** How each column lines up: text to the left, amounts to the right. */
type Align = "left" | "right"

/**
 * Rows of cells as lines, each column as wide as its widest cell (ids of any length stay
 * lined up); the last column is not padded. Indented two spaces, columns two apart.
 */
const table = (cellsOf: ReadonlyArray<ReadonlyArray<unknown>>, align: ReadonlyArray<Align> = []): string[] => {
  const rows = cellsOf.map((row) => row.map(String))
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) => {
    const cells = row.map((cell, i) => (i === row.length - 1 ? cell : align[i] === "right" ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
    return `  ${cells.join("  ")}`.trimEnd()
  })
}

export const summarize = (output: SimOutput): string => {
  const lines: string[] = []
  lines.push(`Ledger (${output.ledger.length} rows)`)
  lines.push(
    ...table(
      output.ledger.map((r) => [r.at, r.account, r.kind, r.amount, `→ ${r.balance_after}`, r.resource ?? "", r.description]),
      ["left", "left", "left", "right", "right"]
    )
  )
  lines.push(`Notifications (${output.notifications.length})`)
  lines.push(...table(output.notifications.map((n) => [n.at, n.account, n.severity, n.kind, n.resource ?? "", n.text])))
  lines.push(`Transitions (${output.transitions.length})`)
  lines.push(...table(output.transitions.map((t) => [t.at, t.resource, `${t.from ?? "(new)"} → ${t.to}${t.reason ? ` (${t.reason})` : ""}`])))
  if (output.rejected.length > 0) {
    lines.push(`Rejected inputs (${output.rejected.length})`)
    lines.push(...table(output.rejected.map((r) => [r.at, `event #${r.event}`, r.do, `${r.status} ${r.error} — ${r.message}`])))
  }
  // Each account's balance beside the sums of its rows by kind (they add up to it) and its holds'
  // parts: what finance reconciles it with (docs/TIMELINE-EXTENSIONS.md).
  lines.push("Accounts (balance = the sum of its rows by kind; holds: consumed, refunded, overage of the settled ones, still open)")
  lines.push(
    ...table(
      [
        ["", "balance", "topup", "adjustment", "gpu_usage", "refund", "api_usage", "storage_billing", "consumed", "refunded", "overage", "open holds"],
        ...Object.entries(output.accounts).map(([id, a]) => {
          const t = output.account_totals[id]!
          return [id, a.balance, t.by_kind.topup, t.by_kind.adjustment, t.by_kind.gpu_usage, t.by_kind.refund, t.by_kind.api_usage, t.by_kind.storage_billing, t.holds.consumed, t.holds.refunded, t.holds.overage, t.holds.open]
        })
      ],
      ["left", ...Array<Align>(11).fill("right")]
    )
  )
  lines.push("Resources")
  lines.push(...table(Object.entries(output.resources).map(([id, r]) => [id, r.kind, `${r.status}${r.termination_reason ? ` (${r.termination_reason})` : ""}`])))
  if (output.invariants.ok) {
    lines.push("Invariants: all hold")
  } else {
    lines.push(`Invariants: ${output.invariants.violations.length} violated`)
    for (const v of output.invariants.violations) {
      lines.push(`  #${v.invariant} ${v.name}  account=${v.account ?? "-"} resource=${v.resource ?? "-"} at=${v.at ?? "-"}: ${v.message}`)
    }
  }
  return `${lines.join("\n")}\n`
}
