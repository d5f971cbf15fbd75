/** The readable summary `npm run sim` prints without --json. */
import type { SimOutput } from "./runner.js"

export const summarize = (output: SimOutput): string => {
  const lines: string[] = []
  lines.push(`Ledger (${output.ledger.length} rows)`)
  for (const r of output.ledger) {
    lines.push(`  ${r.at}  ${String(r.account).padEnd(10)} ${String(r.kind).padEnd(15)} ${String(r.amount).padStart(12)}  → ${String(r.balance_after).padStart(12)}  ${r.resource ?? ""}  ${r.description}`)
  }
  lines.push(`Notifications (${output.notifications.length})`)
  for (const n of output.notifications) lines.push(`  ${n.at}  ${String(n.severity).padEnd(8)} ${String(n.resource ?? "").padEnd(10)} ${n.text}`)
  lines.push(`Transitions (${output.transitions.length})`)
  for (const t of output.transitions) lines.push(`  ${t.at}  ${String(t.resource).padEnd(10)} ${t.from} → ${t.to}${t.reason ? ` (${t.reason})` : ""}`)
  if (output.rejected.length > 0) {
    lines.push(`Rejected inputs (${output.rejected.length})`)
    for (const r of output.rejected) lines.push(`  ${r.at}  event #${r.event} ${r.do}: ${r.status} ${r.error} — ${r.message}`)
  }
  lines.push("Accounts")
  for (const [id, a] of Object.entries(output.accounts)) lines.push(`  ${id.padEnd(10)} balance ${a.balance}`)
  lines.push("Resources")
  for (const [id, r] of Object.entries(output.resources)) lines.push(`  ${id.padEnd(10)} ${r.kind} ${r.status}${r.termination_reason ? ` (${r.termination_reason})` : ""}`)
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
