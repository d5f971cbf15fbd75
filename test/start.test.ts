/**
 * `npm start` opens the control plane on a SQLite file and exits cleanly (the API that keeps
 * it serving arrives later); run twice, it rehydrates instead of crediting the demo twice.
 */
import { spawnSync } from "node:child_process"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { tmpDb } from "./helpers.js"

const ROOT = join(import.meta.dirname, "..")
const start = (db: string) => spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "start.ts"), "--db", db], { cwd: ROOT, encoding: "utf8" })

describe("npm start", () => {
  it("starts on a SQLite file, prints the demo account, exits 0, and is idempotent", () => {
    const db = tmpDb()
    const first = start(db)
    expect(first.status).toBe(0)
    expect(first.stdout).toContain(`ledger:    ${db} (SQLite, WAL, schema migrated)`)
    expect(first.stdout).toContain("account:   demo, balance $100.00")
    const second = start(db)
    expect(second.status).toBe(0)
    expect(second.stdout).toContain("account:   demo, balance $100.00")
  })
})
