/**
 * `npm run sim -- <timeline.json> [--json] [--db FILE] [--restart-at PT1H]... [--outage PT1H/PT20M]... [--no-determinism-check]`
 *
 * Runs a timeline on the virtual clock and prints what happened: a readable summary, or the
 * JSON contract of TIMELINE.md with --json. Exit code 0 when every invariant holds, 1 when
 * one breaks (each violation named with invariant, account, resource and time), 2 when the
 * timeline or the command line is wrong.
 */
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import Database from "better-sqlite3"
import { parseArgs } from "node:util"
import { Either } from "effect"
import { parseAt, parseDurationMs } from "../sim/iso.js"
import { summarize } from "../sim/report.js"
import { checkDeterminism, drillProblem, runTimeline, type Drill } from "../sim/runner.js"
import { parseTimeline } from "../sim/timeline.js"

const usage =
  "usage: npm run sim -- <timeline.json> [--json] [--db FILE] [--restart-at AT]... [--outage AT/DURATION]... [--no-determinism-check]\n" +
  "  AT is an ISO-8601 duration after the timeline's start (PT1H) or an instant; --restart-at and\n" +
  "  --outage drop the engine after the work of AT and start a new one on the same ledger file\n" +
  "  (--db FILE, or a fresh file in the temporary directory, named on stderr)."

/**
 * What is wrong with `--db FILE`, as the one line to print, or null. SQLite gives two names a
 * meaning of their own: `:memory:` is a ledger that dies with its engine (so a restart or an
 * outage would start the next engine on nothing) and `""` a temporary database of each
 * connection's own (so every engine, restarted or not, would). A run opens its accounts on a
 * fresh ledger: an existing file would clash with them.
 */
const dbProblem = (db: string, drills: boolean): string | null => {
  if (db === "") return `--db must name a file: SQLite gives an empty name a temporary database of each connection's own`
  if (db === ":memory:") return drills ? `--db :memory: cannot be used with --restart-at or --outage: an in-memory ledger dies with its engine; name a file or leave --db out` : null
  if (existsSync(db)) return `--db ${db}: exists: the simulator writes a fresh ledger; remove it or name another file`
  if (!existsSync(dirname(resolve(db)))) return `--db ${db}: its directory does not exist`
  return null
}

const main = (): number => {
  let args
  try {
    args = parseArgs({
      allowPositionals: true,
      options: {
        json: { type: "boolean", default: false },
        db: { type: "string" },
        "restart-at": { type: "string", multiple: true },
        outage: { type: "string", multiple: true },
        "no-determinism-check": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false }
      }
    })
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}\n`)
    return 2
  }
  if (args.values.help) {
    process.stdout.write(`${usage}\n`)
    return 0
  }
  const file = args.positionals[0]
  if (file === undefined || args.positionals.length > 1) {
    process.stderr.write(`${usage}\n`)
    return 2
  }
  let text: string
  try {
    text = readFileSync(file, "utf8")
  } catch (e) {
    process.stderr.write(`cannot read ${file}: ${(e as Error).message}\n`)
    return 2
  }
  const parsed = parseTimeline(text)
  if (Either.isLeft(parsed)) {
    // One line per problem, each whole on its own (file: path: what is wrong), like a compiler's.
    for (const issue of parsed.left.issues) process.stderr.write(`${file}: ${issue}\n`)
    return 2
  }
  const timeline = parsed.right
  const restartAt: number[] = []
  const drills: Drill[] = []
  for (const r of args.values["restart-at"] ?? []) {
    const at = parseAt(r, timeline.start_ms)
    if (at === undefined) {
      process.stderr.write(`--restart-at ${r}: not an ISO-8601 duration or instant\n`)
      return 2
    }
    restartAt.push(at)
    drills.push({ at_ms: at, duration_ms: 0, label: `--restart-at ${r}` })
  }
  const outages: Array<{ at_ms: number; duration_ms: number }> = []
  for (const o of args.values.outage ?? []) {
    const parts = o.split("/")
    const [atText = "", durationText = ""] = parts
    const at_ms = parseAt(atText, timeline.start_ms)
    const duration_ms = parseDurationMs(durationText)
    if (parts.length !== 2 || at_ms === undefined || duration_ms === undefined) {
      process.stderr.write(`--outage ${o}: expected AT/DURATION, like PT1H50M/PT20M\n`)
      return 2
    }
    outages.push({ at_ms, duration_ms })
    drills.push({ at_ms, duration_ms, label: `--outage ${o}` })
  }
  // A drill the run would skip or move must not be reported as passed.
  const drillError = drillProblem(timeline, drills)
  if (drillError !== null) {
    process.stderr.write(`${drillError}\n`)
    return 2
  }
  // Every check of the command line comes before the run: a refused command runs nothing.
  if (args.values.db !== undefined) {
    const problem = dbProblem(args.values.db, restartAt.length + outages.length > 0)
    if (problem !== null) {
      process.stderr.write(`${problem}\n`)
      return 2
    }
  }
  // The ledger is a SQLite file, a fresh one unless --db names one; it stays for inspection.
  const db = args.values.db ?? join(mkdtempSync(join(tmpdir(), "ecolink-sim-")), "ledger.sqlite")
  if (args.values.db === undefined) process.stderr.write(`ledger: ${db}\n`)
  let result
  try {
    result = runTimeline(timeline, { db, restartAt, outages })
  } catch (e) {
    // The file could not be opened or written (permissions, a full disk): the command's fault,
    // not the timeline's. Anything else is a defect and stays loud.
    if (e instanceof Database.SqliteError) {
      process.stderr.write(`--db ${db}: ${e.message}\n`)
      return 2
    }
    throw e
  }
  const output = result.output
  let deterministic = true
  // The second run gets a ledger file of its own, beside the first.
  if (!args.values["no-determinism-check"]) deterministic = checkDeterminism(timeline, output, join(mkdtempSync(join(tmpdir(), "ecolink-sim-")), "ledger.sqlite"), { restartAt, outages })
  const final = deterministic
    ? output
    : {
        ...output,
        invariants: {
          ok: false,
          violations: [
            ...output.invariants.violations,
            { invariant: 8, name: "determinism", account: null, resource: null, at: null, message: "a second run of the same timeline gave different output" }
          ]
        }
      }
  process.stdout.write(args.values.json ? `${JSON.stringify(final, null, 2)}\n` : summarize(final))
  return final.invariants.ok ? 0 : 1
}

process.exitCode = main()
