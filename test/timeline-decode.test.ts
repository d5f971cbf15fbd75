/**
 * The timeline decoder (sim/timeline.ts) refuses what no run can mean, each problem on one
 * line with its exact path in the file, and takes every shipped timeline as it is.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { decodeTimeline } from "../sim/timeline.js"
import { launch, timelineFile } from "./helpers.js"

/** The decoder's problems for `file` (an empty list when it decodes). */
const problems = (file: unknown): ReadonlyArray<string> => {
  const decoded = decodeTimeline(file)
  return Either.isLeft(decoded) ? decoded.left.issues : []
}

describe("seed", () => {
  it("is an integer from 0 to 2^32 − 1, the seeds the PRNG tells apart", () => {
    // Proves F10: 4294967338 ran as 42 (cut to 32 bits), and 1.18e21 said "Expected an integer".
    const message = "seed: an integer from 0 to 4294967295 (the simulator's PRNG takes a 32-bit seed)"
    for (const seed of [4_294_967_296, 4_294_967_338, 1.1805916207174113e21, -1, 1.5]) expect([seed, problems(timelineFile([launch()], { seed }))]).toEqual([seed, [message]])
    for (const seed of [0, 42, 4_294_967_295]) expect([seed, problems(timelineFile([launch()], { seed }))]).toEqual([seed, []])
    expect(problems(timelineFile([launch()], { seed: "x" }))).toEqual(['seed: Expected number, actual "x"'])
  })
})

describe("problem paths", () => {
  const good = timelineFile([launch()]) as { catalog: Record<string, unknown> } & Record<string, unknown>
  const withCatalog = (extra: Record<string, unknown>) => ({ ...good, catalog: { ...good.catalog, ...extra } })

  it("name the field at fault once, without the alternatives of an optional field or the schema's AST", () => {
    // Proves F6: `catalog.models.models.m…` (doubled), `catalog.storage: Expected undefined, actual
    // {…}` after the real problem, `payments: Expected undefined` for a bad value, the Effect AST
    // for accounts given as an array, and a root that is not an object printed back whole.
    const cases: Array<[unknown, ReadonlyArray<string>]> = [
      [withCatalog({ models: { m: { input_per_1m_tokens: "0.1234567" } } }), ["catalog.models.m.input_per_1m_tokens: input_per_1m_tokens must be a non-negative dollar string with at most 6 decimals"]],
      [withCatalog({ models: { m: 5 } }), ["catalog.models.m: a model price must be an object or null"]],
      [withCatalog({ storage: { cloud_drive: { daily_rate_per_gb: 0.004 } } }), ["catalog.storage.cloud_drive.daily_rate_per_gb: Expected string, actual 0.004"]],
      [withCatalog({ storage: { cloud_drive: 5 } }), ["catalog.storage.cloud_drive: Expected an object { daily_rate_per_gb }, actual 5"]],
      [{ ...good, payments: { webhook_delay: "1 minute" } }, ["payments.webhook_delay: an ISO-8601 duration like PT1M30S or P1DT2H"]],
      [{ ...good, payments: 5 }, ["payments: Expected an object { webhook_delay?, duplicate_probability? }, actual 5"]],
      [{ ...good, accounts: [{ id: "acme", balance: "100.00" }] }, ["accounts: Expected an object of accounts by id, actual an array"]],
      [{ ...good, events: {} }, ["events: Expected an array of events, actual an object"]],
      [{ ...good, api_usage_rows: "hourly" }, ['api_usage_rows: Expected "per_request" or "per_minute", actual "hourly"']],
      [{ ...good, start: "x".repeat(500) }, ["start: an ISO-8601 instant like 2026-03-01T00:00:00Z"]],
      [{ ...good, until: { a: "x".repeat(500) } }, ["until: Expected string, actual an object"]],
      [timelineFile([launch({ filesystems: ["fs-1", 5] })]), ["events.0.filesystems.1: Expected string, actual 5"]],
      [timelineFile([[launch()] as unknown as Record<string, unknown>]), ["events.0: Expected an event (an object { at, do, … }), actual an array"]],
      [[good], ["(root): Expected a timeline (an object { start, catalog, accounts, events, … }), actual an array"]],
      [null, ["(root): Expected a timeline (an object { start, catalog, accounts, events, … }), actual null"]]
    ]
    for (const [file, expected] of cases) expect(problems(file)).toEqual(expected)
  })
})
