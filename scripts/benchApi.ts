/**
 * The HTTP API benchmark (issue 4), part of `npm run bench` (`--profile api` alone):
 * requests per second and p99 latency, measured by autocannon, of
 *
 * 1. a bare Fastify route answering a constant (the ceiling on this machine),
 * 2. the read route `GET /gpu-instances/:id` of the real control plane, and
 * 3. launch + terminate (`POST /gpu-instances`, then `DELETE /gpu-instances/:id`), a pair
 *    of money-moving writes, each a SQLite transaction with its hold or refund.
 *
 * Each server runs in its own process (scripts/benchApiServer.ts) on a fresh SQLite file, so
 * the load generator and the server have a core each; the three are measured in the same
 * run, one after another, `runs` times each, and the median is quoted.
 */
import { spawn, type ChildProcess } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { createInterface } from "node:readline"
import autocannon from "autocannon"

/** Seconds each measurement lasts, and the concurrent connections that load it. */
export const API_BENCH_DURATION_S = 5
export const API_BENCH_CONNECTIONS = 10
/** How long a server child may take to print its address. */
const SERVER_START_TIMEOUT_MS = 30_000

interface Served {
  readonly url: string
  readonly key: string | null
  readonly child: ChildProcess
}

const serve = (mode: "engine" | "bare", db: string): Promise<Served> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "benchApiServer.ts"), "--mode", mode, "--db", db], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`the ${mode} server did not start within ${SERVER_START_TIMEOUT_MS} ms`))
    }, SERVER_START_TIMEOUT_MS)
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`the ${mode} server exited with ${code} before listening`))
    })
    createInterface({ input: child.stdout! }).once("line", (line) => {
      clearTimeout(timer)
      child.removeAllListeners("exit")
      const { url, key } = JSON.parse(line) as { url: string; key: string | null }
      resolve({ url, key, child })
    })
  })

const stop = (s: Served): Promise<void> =>
  new Promise((resolve) => {
    if (s.child.exitCode !== null) return resolve()
    s.child.once("exit", () => resolve())
    s.child.kill("SIGTERM")
  })

export interface ApiMeasure {
  /** Requests per second (autocannon's mean over the run). */
  readonly rps: number
  readonly p99_ms: number
  readonly requests: number
  /** Answers that were not 2xx, and socket errors: a valid run has none. */
  readonly bad: number
}

const load = async (opts: autocannon.Options): Promise<ApiMeasure> => {
  const r = await autocannon({ connections: API_BENCH_CONNECTIONS, duration: API_BENCH_DURATION_S, ...opts })
  return { rps: r.requests.average, p99_ms: r.latency.p99, requests: r.requests.total, bad: r.non2xx + r.errors + r.timeouts }
}

const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

const LAUNCH = JSON.stringify({ gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1 })

/** One measurement of each target against fresh servers. */
const measureOnce = async (dir: string, round: number): Promise<{ bare: ApiMeasure; read: ApiMeasure; pair: ApiMeasure }> => {
  const bareServer = await serve("bare", path.join(dir, `bare-${round}.sqlite`))
  let bare: ApiMeasure
  try {
    bare = await load({ url: `${bareServer.url}/bare` })
  } finally {
    await stop(bareServer)
  }

  const engine = await serve("engine", path.join(dir, `engine-${round}.sqlite`))
  try {
    const auth = { authorization: `Bearer ${engine.key}`, "content-type": "application/json" }
    const launched = await fetch(`${engine.url}/gpu-instances`, { method: "POST", headers: auth, body: LAUNCH })
    if (launched.status !== 201) throw new Error(`launch for the read benchmark answered ${launched.status}: ${await launched.text()}`)
    const { id } = (await launched.json()) as { id: string }
    const read = await load({ url: `${engine.url}/gpu-instances/${id}`, headers: { authorization: `Bearer ${engine.key}` } })
    let seq = 0
    const pair = await load({
      url: engine.url,
      requests: [
        {
          method: "POST",
          path: "/gpu-instances",
          headers: auth,
          body: LAUNCH,
          // A real client sends a fresh Idempotency-Key with every launch.
          setupRequest: (req) => ({ ...req, headers: { ...auth, "idempotency-key": `bench-${round}-${++seq}` } }),
          onResponse: (status, body, context) => {
            if (status === 201) (context as Record<string, string>)["id"] = (JSON.parse(body) as { id: string }).id
          }
        },
        {
          method: "DELETE",
          setupRequest: (req, context) => ({ ...req, path: `/gpu-instances/${String((context as Record<string, string>)["id"])}`, headers: { authorization: auth.authorization } })
        }
      ]
    })
    return { bare, read, pair }
  } finally {
    await stop(engine)
  }
}

export const benchApi = async (runs: number, out: (line?: string) => void): Promise<void> => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "ecolink-bench-api-"))
  try {
    out(`API: autocannon, ${API_BENCH_CONNECTIONS} connections, ${API_BENCH_DURATION_S} s per measurement, ${runs} run(s), server in its own process`)
    const all: Array<{ bare: ApiMeasure; read: ApiMeasure; pair: ApiMeasure }> = []
    for (let round = 1; round <= runs; round++) {
      const m = await measureOnce(dir, round)
      all.push(m)
      out(`  run ${round}/${runs}: bare ${Math.round(m.bare.rps)} req/s, read ${Math.round(m.read.rps)} req/s, launch+terminate ${Math.round(m.pair.rps)} req/s`)
    }
    const row = (label: string, pick: (m: (typeof all)[number]) => ApiMeasure): { rps: number } => {
      const ms = all.map(pick)
      const rps = median(ms.map((m) => m.rps))
      const p99 = median(ms.map((m) => m.p99_ms))
      const bad = ms.reduce((n, m) => n + m.bad, 0)
      out(`${label.padEnd(44)} ${`${Math.round(rps).toLocaleString("en-US")} req/s`.padStart(14)}  p99 ${p99.toFixed(1)} ms  runs ${ms.map((m) => Math.round(m.rps)).join(" / ")}${bad > 0 ? `  NON-2XX OR ERRORS: ${bad}` : ""}`)
      return { rps }
    }
    row("bare Fastify route (constant)", (m) => m.bare)
    row("GET /gpu-instances/:id", (m) => m.read)
    const pair = row("POST /gpu-instances + DELETE (requests)", (m) => m.pair)
    // The ratio is taken within each run (both measured minutes apart on the same machine
    // state), and its median quoted: a ratio of medians would pair different runs.
    const ratios = all.map((m) => m.read.rps / m.bare.rps)
    const ratio = median(ratios)
    out(`  read ÷ bare, per run                       ${ratios.map((r) => `${(r * 100).toFixed(0)}%`).join(" / ")}; median ${(ratio * 100).toFixed(0)}%`)
    out(`  launch+terminate pairs / s                 ${Math.round(pair.rps / 2).toLocaleString("en-US")}`)
    out(`target: read route ≥ 50% of the bare route   ${ratio >= 0.5 ? "met" : "NOT met"} (${(ratio * 100).toFixed(0)}%)`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
