/**
 * Control-plane replicas of the Kubernetes world in this process (`startServer` with a
 * kubeconfig, as `npm start` runs it), against the project's Kubernetes API test server on
 * the live clock, sharing one SQLite file and one Lease with short timings (3 s lease). Each
 * replica's log lines (the process's one pino logger) are kept for the test to read.
 */
import { writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { parseConfig, serverLogger, startServer, type RunningServer } from "../../src/api/server.js"
import { LiveClock } from "../../src/clock.js"
import { KubeApiServer, writeKubeconfig } from "../k8s/apiServer.js"
import { tmpDb } from "../helpers.js"

export const NAMESPACE = "ecolink"
export const OPERATOR_KEY = "op_test_0123456789abcdefghijklmnopqrstuvwxyz"
/** Short lease timings, so a test sees a takeover within seconds. */
export const LEASE = { lease_duration_ms: 3_000, renew_deadline_ms: 2_000, retry_period_ms: 500 }

/** One pino line, parsed. */
export type LogLine = Record<string, unknown> & { readonly level: number; readonly time: number; readonly msg: string }

export interface Replica {
  readonly identity: string
  readonly running: RunningServer
  readonly lines: LogLine[]
}

export interface Replicas {
  readonly api: KubeApiServer
  readonly db: string
  readonly kubeconfig: string
  readonly clusterFile: string
  /** Starts a replica; `argv` and `env` add to its flags and environment variables. */
  start(identity: string, argv?: ReadonlyArray<string>, env?: Record<string, string>): Promise<Replica>
  close(): Promise<void>
}

export const replicas = async (options: { readonly db?: string } = {}): Promise<Replicas> => {
  const clock = new LiveClock()
  const api = await KubeApiServer.start({ now: () => clock.now() })
  const db = options.db ?? tmpDb()
  const kubeconfig = writeKubeconfig(api, { namespace: NAMESPACE, dir: dirname(db) })
  const clusterFile = join(dirname(db), "cluster.json")
  writeFileSync(clusterFile, JSON.stringify({ namespace: NAMESPACE, regions: { "us-east": { nodes: 2, gpus_per_node: 8 } }, leader_election: LEASE }))
  const started: RunningServer[] = []
  return {
    api,
    db,
    kubeconfig,
    clusterFile,
    start: async (identity, argv = [], env = {}) => {
      const config = parseConfig(["--db", db, "--port", "0", "--kubeconfig", kubeconfig, "--cluster", clusterFile, "--identity", identity, ...argv], {
        ECOLINK_OPERATOR_KEY: OPERATOR_KEY,
        ECOLINK_LOG_LEVEL: "info",
        ...env
      })
      const lines: LogLine[] = []
      const logger = serverLogger(config, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) })
      const running = await startServer(config, { logger })
      started.push(running)
      return { identity, running, lines }
    },
    close: async () => {
      for (const r of started.splice(0).reverse()) await r.close()
      await api.close()
    }
  }
}

/** Polls `probe` every 50 ms until it answers something, for at most `timeout_ms`. */
export const until = async <T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeout_ms = 15_000): Promise<T> => {
  const started = performance.now()
  for (;;) {
    // A replica between standby and leader refuses connections for a moment: try again.
    const v = await Promise.resolve()
      .then(probe)
      .catch(() => undefined)
    if (v !== undefined) return v
    if (performance.now() - started > timeout_ms) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}
