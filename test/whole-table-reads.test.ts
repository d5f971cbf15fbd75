/**
 * The store's whole-table reads (ledger rows, holds, notifications, transitions, resources),
 * which build each row from a raw column array, give exactly what better-sqlite3's own row
 * objects give: the same keys in the same order, money as bigint, ids and instants as
 * numbers, `live` as a boolean. The simulator's output and invariant checks rest on them.
 */
import Database from "better-sqlite3"
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { LedgerStore } from "../src/ledger/store.js"
import { run, tmpDb } from "./helpers.js"

const EXAMPLES = join(import.meta.dirname, "..", "sim", "examples")
const examples = readdirSync(EXAMPLES).filter((f) => f.endsWith(".json")).sort()

/** JSON that tells a bigint from a number and keeps key order, so shapes compare exactly. */
const exact = (value: unknown): string => JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))

/** Every row of `sql` as better-sqlite3's row objects, with `numbers` turned from bigint into numbers. */
const objects = (db: Database.Database, sql: string, money: boolean, numbers: ReadonlyArray<string>): Array<Record<string, unknown>> =>
  (db.prepare(sql).safeIntegers(money).all() as Array<Record<string, unknown>>).map((row) => {
    for (const key of numbers) if (typeof row[key] === "bigint") row[key] = Number(row[key])
    return row
  })

const opened: Array<{ close(): void }> = []
afterEach(() => {
  for (const o of opened.splice(0)) o.close()
})

describe("whole-table reads", () => {
  for (const name of examples) {
    it(`read back exactly what SQLite holds after ${name}`, () => {
      // Proves each read against better-sqlite3's row objects on a real run's database.
      const path = tmpDb()
      run(JSON.parse(readFileSync(join(EXAMPLES, name), "utf8")), { db: path })
      const store = LedgerStore.open(path)
      const db = new Database(path, { readonly: true })
      opened.push(store, db)

      const rows = store.ledgerRows()
      expect(rows.length).toBeGreaterThan(0)
      expect(exact(rows)).toBe(exact(objects(db, `SELECT * FROM ledger ORDER BY id`, true, ["id", "at"])))
      expect(exact(store.holds())).toBe(exact(objects(db, `SELECT * FROM holds ORDER BY placed_at, id`, true, ["placed_at", "settled_at"])))
      expect(exact(store.notifications())).toBe(exact(objects(db, `SELECT id, account, resource, at, severity, kind, text, data FROM notifications ORDER BY id`, false, [])))
      expect(exact(store.transitions())).toBe(exact(objects(db, `SELECT * FROM transitions ORDER BY id`, false, [])))
      const resources = objects(db, `SELECT * FROM resources ORDER BY id`, false, []).map((r) => ({ ...r, live: r.live === 1 }))
      expect(exact(store.resources())).toBe(exact(resources))
    })
  }
})
