/**
 * What an operator relies on when the control plane runs on a SQLite file: one process
 * writes it at a time, and the newest wins.
 */
import { afterEach, describe, expect, it } from "vitest"
import { parseConfig, startServer, type RunningServer } from "../src/api/server.js"
import { LedgerStore } from "../src/ledger/store.js"
import { tmpDb } from "./helpers.js"

const OPERATOR_KEY = "op_test_0123456789abcdefghijklmnopqrstuvwxyz"

const servers: RunningServer[] = []
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close()
})

const configFor = (db: string) => parseConfig(["--db", db, "--port", "0", "--log-level", "silent", "--operator-key", OPERATOR_KEY, "--rate-limit", "0"], {})

const start = async (db: string, lines: string[]): Promise<RunningServer> => {
  const server = await startServer(configFor(db), { log: (line) => lines.push(line) })
  servers.push(server)
  return server
}

const call = async (server: RunningServer, method: string, path: string, key: string, body?: unknown) => {
  const r = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  return { status: r.status, body: (await r.json()) as Record<string, any> }
}

describe("two processes on one SQLite file", () => {
  it("the newest wins: the first answers 503 not_leader to reads and writes, says why once, and the ledger stays conserved", async () => {
    // Proves the review's finding fixed (two `npm start` on one file both credited $10 from
    // $100 and both wrote balance_after 110): A starts, B starts on the same file, A's read
    // and write are refused before either touches A's cached balance, B credits, and the
    // rows add up to the balance.
    const db = tmpDb()
    const linesA: string[] = []
    const linesB: string[] = []
    const a = await start(db, linesA)
    const b = await start(db, linesB)
    const demoKey = a.demo!.key

    const staleRead = await call(a, "GET", "/billing/balance", demoKey)
    expect([staleRead.status, staleRead.body.error]).toEqual([503, "not_leader"])
    const staleWrite = await call(a, "POST", "/operator/accounts/demo/adjustments", OPERATOR_KEY, { amount: "10.00", description: "by A" })
    expect([staleWrite.status, staleWrite.body.error]).toEqual([503, "not_leader"])
    expect(linesA).toEqual([`another process opened ${db}; this one stops serving (every request answers 503 not_leader)`])

    expect((await call(b, "POST", "/operator/accounts/demo/adjustments", OPERATOR_KEY, { amount: "10.00", description: "by B" })).status).toBe(201)
    expect((await call(b, "GET", "/billing/balance", demoKey)).body).toEqual({ balance: "110.00" })
    const rows = (await call(b, "GET", "/billing/transactions", demoKey)).body.data.reverse() as Array<{ amount: string; balance_after: string; description: string }>
    expect(rows.map((r) => [r.amount, r.balance_after, r.description])).toEqual([
      ["100.00", "100.00", "Demo credit"],
      ["10.00", "110.00", "by B"]
    ])
    expect(linesB).toEqual([])
  })

  it("a superseded process's own timers write nothing and say it once", async () => {
    // Proves the background path (a unit of work started by a timer, not a request) fences too:
    // A's next write after B opened is refused by the term, A stops, and the line is said once.
    const db = tmpDb()
    const lines: string[] = []
    const a = await start(db, lines)
    const b = LedgerStore.open(db, { claim_leader_term: true })
    try {
      expect(() => a.opened!.engine.sup.unitOfWork(() => a.opened!.engine.ledger.journal(a.opened!.engine.clock.now(), "probe", {}))).toThrow(/lost the leader lease/)
      expect(a.opened!.engine.sup.fenced).toBe(true)
      expect(lines).toHaveLength(1)
      expect(b.journalEntries().filter((e) => e.kind === "probe")).toEqual([])
    } finally {
      b.close()
    }
  })
})
