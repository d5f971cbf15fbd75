/**
 * `npm start` serves the control plane on a SQLite file until SIGTERM, then exits 0; started
 * again on the same file it rehydrates instead of crediting the demo twice, and prints the
 * same demo key.
 */
import { describe, expect, it } from "vitest"
import { startServerProcess } from "./api/spawn.js"
import { tmpDb } from "./helpers.js"

describe("npm start", () => {
  it("serves on a SQLite file, prints the URL and demo key, stops on SIGTERM, and restarts idempotently", async () => {
    // Proves the production wiring end to end: listen, answer, graceful stop, same demo key after a restart.
    const db = tmpDb()
    const first = await startServerProcess(["--db", db, "--port", "0"])
    expect(first.stdout()).toContain(`ledger:    ${db} (SQLite, WAL, schema migrated)`)
    expect(first.stdout()).toContain("account:   demo, balance $100.00")
    const r = await fetch(`${first.url}/billing/balance`, { headers: { authorization: `Bearer ${first.demoKey}` } })
    expect(r.status).toBe(200)
    expect(await r.json()).toEqual({ balance: "100.00" })
    expect(r.headers.get("x-ecolink-request-id")).toMatch(/^req_/)
    expect(await first.stop("SIGTERM")).toBe(0)
    expect(first.stderr()).toContain("SIGTERM: closing")

    const second = await startServerProcess(["--db", db, "--port", "0"])
    expect(second.stdout()).toContain("account:   demo, balance $100.00")
    expect(second.demoKey).toBe(first.demoKey)
    expect((await fetch(`${second.url}/account`, { headers: { authorization: `Bearer ${second.demoKey}` } })).status).toBe(200)
    // Invite links carry the address actually listened on (the port was 0).
    const invite = await fetch(`${second.url}/team/invites`, {
      method: "POST",
      headers: { authorization: `Bearer ${second.demoKey}`, "content-type": "application/json" },
      body: JSON.stringify({ email: "friend@example.com" })
    })
    expect(invite.status).toBe(201)
    expect(((await invite.json()) as { invite_url: string }).invite_url.startsWith(`${second.url}/invites/inv-`)).toBe(true)
    expect(await second.stop("SIGINT")).toBe(0)
  })

  it("refuses a bad configuration with exit code 2", async () => {
    // Proves a bad flag stops the start before anything opens.
    await expect(startServerProcess(["--db", tmpDb(), "--clock-speed", "fast"])).rejects.toThrow(/start exited 2.*--clock-speed must be a number from 1 to 100000/s)
  })
})
