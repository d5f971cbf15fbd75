/**
 * The timeline decoder (sim/timeline.ts) refuses what no run can mean, each problem on one
 * line with its exact path in the file, and takes every shipped timeline as it is.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { decodeTimeline, parseTimeline } from "../sim/timeline.js"
import { launch, run, timelineFile } from "./helpers.js"

const ROOT = join(import.meta.dirname, "..")
const shipped = ["sim/examples", "test/regressions"].flatMap((dir) =>
  readdirSync(join(ROOT, dir))
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((f) => join(dir, f))
)

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

describe("a file that is not JSON", () => {
  const parseProblems = (text: string): ReadonlyArray<string> => {
    const parsed = parseTimeline(text)
    return Either.isLeft(parsed) ? parsed.left.issues : []
  }

  it("is refused on one line that says where the parser stopped, by line and column", () => {
    // Proves a syntax error points at a line a developer can open (Node 20 names only the
    // character offset), and that a message quoting the text stays on one line: the quoted
    // piece's newlines used to break the CLI's one line per problem.
    expect(parseProblems('{\n  "start": "2026-03-01T00:00:00Z",\n  "events": [\n    {"at": "PT0S", "do": "terminate" "id": "x"}\n  ]\n}\n')).toEqual([
      "not JSON: Expected ',' or '}' after property value in JSON at position 88 (line 4, column 38)"
    ])
    const [quoted] = parseProblems('{\n\n  "a": x}')
    expect(quoted).toMatch(/^not JSON: Unexpected token 'x'/)
    expect(quoted).not.toContain("\n")
    expect(parseProblems("")).toEqual(["not JSON: the file is empty"])
    expect(parseProblems(" \n")).toEqual(["not JSON: the file is empty"])
  })

  it("is read past a UTF-8 byte order mark, which is not part of the JSON", () => {
    // Proves a timeline saved with a BOM (as editors on Windows save it) runs as without one: it
    // was refused with "Unexpected token '\uFEFF'" over two lines.
    const text = JSON.stringify(timelineFile([launch()]), null, 2)
    expect(parseProblems(`\uFEFF${text}`)).toEqual([])
    expect(Either.getOrThrow(parseTimeline(`\uFEFF${text}`))).toEqual(Either.getOrThrow(parseTimeline(text)))
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
      // Every bad model at once, not the first of them (developer review).
      [
        withCatalog({ models: { b: 5, a: { input_per_1m_tokens: "-1" }, ok: { input_per_1m_tokens: "0.15" }, c: { per_image: "x" } } }),
        [
          "catalog.models.a.input_per_1m_tokens: input_per_1m_tokens must be a non-negative dollar string with at most 6 decimals",
          "catalog.models.b: a model price must be an object or null",
          "catalog.models.c.per_image: per_image must be a non-negative dollar string with at most 6 decimals"
        ]
      ],
      [withCatalog({ storage: { cloud_drive: { daily_rate_per_gb: 0.004 } } }), ["catalog.storage.cloud_drive.daily_rate_per_gb: Expected string, actual 0.004"]],
      [withCatalog({ storage: { cloud_drive: 5 } }), ["catalog.storage.cloud_drive: Expected an object { daily_rate_per_gb }, actual 5"]],
      [{ ...good, payments: { webhook_delay: "1 minute" } }, ["payments.webhook_delay: an ISO-8601 duration like PT1M30S or P1DT2H"]],
      [{ ...good, payments: 5 }, ["payments: Expected an object { webhook_delay?, duplicate_probability?, previous_attributes? }, actual 5"]],
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

describe("a duration in months", () => {
  it("is refused with why, since P1M reads as a minute and is a month", () => {
    // Proves the commonest slip in a hand-written timeline is named: `P1M` (a month) for `PT1M`
    // was refused only as "an ISO-8601 duration", which it is.
    expect(problems(timelineFile([launch({ at: "P1M" })]))).toEqual([
      "events.0.at: an ISO-8601 duration after start (PT2H) or an instant (2026-03-01T02:00:00Z) (P1M counts months or years, which have no fixed length: minutes are PT…M, days P…D)"
    ])
    expect(problems(timelineFile([launch()], { payments: { webhook_delay: "P1Y2DT1M" } }))).toEqual([
      "payments.webhook_delay: an ISO-8601 duration like PT1M30S or P1DT2H (P1Y2DT1M counts months or years, which have no fixed length: minutes are PT…M, days P…D)"
    ])
    expect(problems(timelineFile([launch({ at: "PT1H30" })]))).toEqual(["events.0.at: an ISO-8601 duration after start (PT2H) or an instant (2026-03-01T02:00:00Z)"])
  })
})

describe("the run's span", () => {
  it("names the event that makes it too long when the file has no until, and what an early event is before", () => {
    // Proves a developer is pointed at what is in the file: a run without `until` that ended past
    // 400 days because of one far event was refused with "until: …", a field the file lacks, and
    // an event before start did not say which instants it was compared with.
    const { until: _until, ...noUntil } = timelineFile([launch(), { at: "P999W", do: "terminate", id: "gi-1" }]) as Record<string, unknown>
    expect(problems(noUntil)).toEqual(["events.1.at: without until the run ends one day after the last event, at 2045-04-24T00:00:00.000Z, and a timeline spans at most 400 days"])
    expect(problems(timelineFile([launch()], { until: "P999W" }))).toEqual(["until: a timeline spans at most 400 days"])
    expect(problems(timelineFile([launch({ at: "2026-02-28T23:00:00Z" })]))).toEqual(["events.0.at: 2026-02-28T23:00:00Z is before start (2026-03-01T00:00:00.000Z)"])
  })
})

describe("unknown keys outside events", () => {
  const good = timelineFile([launch()]) as { catalog: Record<string, unknown> } & Record<string, unknown>
  const region = { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }

  it("are refused at the top level, in the catalog and its entries, in payments and in accounts", () => {
    // Proves F7: a typo was ignored and the run quietly used a default (`untill`: the run ended a
    // day after the last event; `image_pul`: the default pull; `cloud_drvie`: storage unpriced).
    const cases: Array<[unknown, string]> = [
      [{ ...good, untill: "PT1H" }, "untill: is unexpected (known: start, seed, until, catalog, payments, api_usage_rows, accounts, events)"],
      [{ ...good, catalog: { ...good.catalog, regions: { "us-east": { ...region, image_pul: "PT5M" } } } }, "catalog.regions.us-east.image_pul: is unexpected (known: nodes, gpus_per_node, image_pull,"],
      [{ ...good, payments: { duplicate_probabilty: 0.5 } }, "payments.duplicate_probabilty: is unexpected (known: webhook_delay, duplicate_probability, previous_attributes)"],
      [{ ...good, catalog: { ...good.catalog, storage: { cloud_drvie: { daily_rate_per_gb: "0.01" } } } }, "catalog.storage.cloud_drvie: is unexpected (known: cloud_drive, shared_fs)"],
      [{ ...good, catalog: { ...good.catalog, storage: { cloud_drive: { daily_rate: "0.01" } } } }, "catalog.storage.cloud_drive.daily_rate: is unexpected (known: daily_rate_per_gb)"],
      [{ ...good, catalog: { ...good.catalog, model: {} } }, "catalog.model: is unexpected (known: gpus, regions, storage, models)"],
      [{ ...good, catalog: { ...good.catalog, gpus: { H100: { hourly_rate: "1.60", vram_gb: 80 } } } }, "catalog.gpus.H100.vram_gb: is unexpected (known: hourly_rate)"],
      [{ ...good, catalog: { ...good.catalog, models: { m: { input_per_1k_tokens: "0.15" } } } }, "catalog.models.m.input_per_1k_tokens: is unexpected (known: input_per_1m_tokens, output_per_1m_tokens, per_image, per_second)"],
      [{ ...good, accounts: { acme: { balance: "1.00", currency: "usd" } } }, "accounts.acme.currency: is unexpected (known: balance)"]
    ]
    for (const [file, message] of cases) expect(problems(file)).toContainEqual(expect.stringContaining(message))
  })

  it("starting with _ are comments anywhere, and change nothing", () => {
    // Proves the allow-list: the examples' top-level `_why`, and the same anywhere else.
    const plain = timelineFile([launch(), { at: "PT1H", do: "terminate", id: "gi-1" }], {
      catalog: { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": region }, storage: { cloud_drive: { daily_rate_per_gb: "0.004" } }, models: { m: { per_image: "0.01" } } },
      payments: { webhook_delay: "PT1S" }
    })
    const commented = timelineFile([{ ...launch(), _note: "the launch" }, { at: "PT1H", do: "terminate", id: "gi-1", _: 1 }], {
      _why: "comments everywhere",
      catalog: {
        _: "catalog",
        gpus: { _about: "prices", H100: { hourly_rate: "1.60", _source: "list" } },
        regions: { _r: 1, "us-east": { ...region, _pull: "fast" } },
        storage: { _s: null, cloud_drive: { daily_rate_per_gb: "0.004", _unit: "GB-day" } },
        models: { _m: "not a model", m: { per_image: "0.01", _unit: "image" } }
      },
      payments: { webhook_delay: "PT1S", _p: true },
      accounts: { _a: "not an account", acme: { balance: "100.00", _owner: "finance" } }
    })
    expect(problems(commented)).toEqual([])
    expect(JSON.stringify(run(commented).output)).toBe(JSON.stringify(run(plain).output))
  })

  it("leave every shipped timeline as it decodes", () => {
    // Proves the examples and regression files (with their `_why`) still decode untouched.
    for (const path of shipped) expect([path, problems(JSON.parse(readFileSync(join(ROOT, path), "utf8")))]).toEqual([path, []])
  })
})
