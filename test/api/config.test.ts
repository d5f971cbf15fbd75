/**
 * `parseConfig` (src/api/server.ts): what an operator's flags and environment variables
 * become, and which values are refused with `ConfigError` (exit 2 before anything opens).
 */
import { describe, expect, it } from "vitest"
import { ConfigError, parseConfig } from "../../src/api/server.js"

const OPERATOR_KEY = "op_test_0123456789abcdefghijklmnopqrstuvwxyz"
/** The flags of a Kubernetes replica; the files need not exist for parsing. */
const KUBE = ["--kubeconfig", "/etc/ecolink/kubeconfig", "--cluster", "/etc/ecolink/cluster.json", "--identity", "replica-a"]

const refused = (argv: ReadonlyArray<string>, env: Record<string, string | undefined> = {}): string => {
  try {
    parseConfig(argv, env)
  } catch (e) {
    if (e instanceof ConfigError) return e.message
    throw e
  }
  throw new Error(`accepted ${JSON.stringify({ argv, env })}`)
}

describe("parseConfig: the Kubernetes world", () => {
  it("needs ECOLINK_OPERATOR_KEY: a key generated per replica would change at every failover", () => {
    // Found by review: without it each replica generated its own operator key.
    expect(refused(KUBE)).toMatch(/Kubernetes world needs ECOLINK_OPERATOR_KEY/)
    expect(parseConfig(KUBE, { ECOLINK_OPERATOR_KEY: OPERATOR_KEY }).operator_key).toBe(OPERATOR_KEY)
    expect(parseConfig([...KUBE, "--operator-key", OPERATOR_KEY], {}).operator_key).toBe(OPERATOR_KEY)
    // The simulated world still generates one for the run.
    expect(parseConfig([], {}).operator_key).toBe(null)
  })
})
