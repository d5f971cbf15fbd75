/**
 * The server half of the API benchmark (scripts/benchApi.ts), run in its own process so that
 * the load generator and the server each have a core. Two modes:
 *
 * - `engine`: the control plane exactly as `npm start` runs it (startServer: SQLite file,
 *   simulated cluster on the live clock, the demo account and key), with rate limiting and
 *   logging off, so the measure is the routes and the engine, not a 429 or a log line.
 * - `bare`: a Fastify instance with one route answering a constant, the same Fastify version
 *   and settings: the ceiling any route of ours can reach on this machine.
 *
 * Prints one JSON line `{ "url": …, "key": … }` when it listens; stops on SIGTERM.
 */
import { parseArgs } from "node:util"
import Fastify from "fastify"
import { parseConfig, startServer } from "../src/api/server.js"

const { values } = parseArgs({ options: { mode: { type: "string" }, db: { type: "string" } } })

const main = async (): Promise<void> => {
  if (values.mode === "bare") {
    const app = Fastify({ logger: false })
    app.get("/bare", async () => ({ ok: true }))
    const url = await app.listen({ port: 0, host: "127.0.0.1" })
    process.stdout.write(`${JSON.stringify({ url, key: null })}\n`)
    process.once("SIGTERM", () => void app.close().then(() => process.exit(0)))
    return
  }
  if (values.db === undefined) throw new Error("--db FILE is required in engine mode")
  const config = parseConfig(["--db", values.db, "--port", "0", "--rate-limit", "0", "--log-level", "silent"], {})
  const server = await startServer(config)
  process.stdout.write(`${JSON.stringify({ url: server.url, key: server.demo?.key ?? null })}\n`)
  process.once("SIGTERM", () => void server.close().then(() => process.exit(0)))
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`)
  process.exit(1)
})
