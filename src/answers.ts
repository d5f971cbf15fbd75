/**
 * Engine results encoded as the manual shows them to users. The HTTP API (and any other
 * edge) uses these, so the numbers a user reads come from one place.
 */
import { dollarsAsNumber } from "./money.js"
import type { ExtendResult } from "./resources.js"

/** `POST /gpu-instances/:id/extend` → `{"additional_cost": 4.80, "new_balance": 83.15}`. */
export const extendAnswer = (r: ExtendResult): { additional_cost: number; new_balance: number } => ({
  additional_cost: dollarsAsNumber(r.additional_cost_micros),
  new_balance: dollarsAsNumber(r.new_balance_micros)
})
