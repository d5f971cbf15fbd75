/**
 * `parseConfig` (src/api/server.ts): what an operator's flags and environment variables
 * become, and which values are refused with `ConfigError` (exit 2 before anything opens).
 */
import { writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { describe, expect, it } from "vitest"
import { readKubernetesFiles } from "../../src/api/kubernetesServer.js"
import { ConfigError, parseConfig } from "../../src/api/server.js"
import { LedgerStore } from "../../src/ledger/store.js"
import { SNAPSHOT_VERSION } from "../../src/snapshots.js"
import { tmpDb } from "../helpers.js"
import { writeKubeconfig } from "../k8s/apiServer.js"

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

describe("parseConfig: values that look set but are not usable", () => {
  it("refuses an empty or blank value instead of taking it: HOST, ECOLINK_DB, the Stripe secrets, and the rest", () => {
    // Found by review: `HOST=` bound every interface, `ECOLINK_DB=` opened the working
    // directory, and a blank STRIPE_WEBHOOK_SECRET with a Stripe key made every webhook a 400
    // (paid top-ups never credited).
    const stripe = { STRIPE_SECRET_KEY: "sk_test_x", STRIPE_WEBHOOK_SECRET: "whsec_x" }
    expect(refused([], { HOST: "" })).toBe("HOST is empty")
    expect(refused(["--host", " "], {})).toBe("--host is empty")
    expect(refused([], { ECOLINK_DB: "" })).toBe("ECOLINK_DB is empty")
    expect(refused([], { ...stripe, STRIPE_WEBHOOK_SECRET: "" })).toBe("STRIPE_WEBHOOK_SECRET is empty")
    expect(refused([], { ...stripe, STRIPE_WEBHOOK_SECRET: "  \n" })).toBe("STRIPE_WEBHOOK_SECRET is empty")
    expect(refused([], { ...stripe, STRIPE_SECRET_KEY: "" })).toBe("STRIPE_SECRET_KEY is empty")
    expect(refused([], { PORT: "" })).toBe("PORT is empty")
    expect(refused([], { ECOLINK_OPERATOR_KEY: "" })).toBe("ECOLINK_OPERATOR_KEY is empty")
    expect(refused(KUBE.slice(0, 4), { ECOLINK_OPERATOR_KEY: OPERATOR_KEY, POD_NAME: "" })).toBe("POD_NAME is empty")
    expect(refused(["--cluster", "/etc/c.json"], { ECOLINK_OPERATOR_KEY: OPERATOR_KEY, KUBECONFIG: "" })).toBe("KUBECONFIG is empty")
    // KUBECONFIG alone is still ignored, even empty (a developer's shell).
    expect(parseConfig([], { KUBECONFIG: "" }).kubernetes).toBe(null)
    expect(parseConfig([], stripe).stripe).toEqual({ api_key: "sk_test_x", webhook_secret: "whsec_x", api_url: "https://api.stripe.com" })
  })

  it("refuses a secret with spaces or a line break around it: it would match nothing", () => {
    expect(refused([], { STRIPE_SECRET_KEY: "sk_test_x", STRIPE_WEBHOOK_SECRET: "whsec_x\n" })).toMatch(/STRIPE_WEBHOOK_SECRET.*spaces or a line break/)
    expect(refused([], { ECOLINK_OPERATOR_KEY: ` ${OPERATOR_KEY}` })).toMatch(/ECOLINK_OPERATOR_KEY.*spaces or a line break/)
  })

  it("takes --trust-proxy as proxy hops (1–10) or proxy addresses and CIDR ranges, never as 'believe anyone'", () => {
    // Behind an ingress every client shares the ingress's address, and so one rate-limit
    // budget (security review); believing every sender would let any client pick its own.
    expect(parseConfig([], {}).trust_proxy).toBe(null)
    expect(parseConfig(["--trust-proxy", "1"], {}).trust_proxy).toBe(1)
    expect(parseConfig([], { ECOLINK_TRUST_PROXY: "10.0.0.0/8, 192.168.1.7,fd00::/8" }).trust_proxy).toEqual(["10.0.0.0/8", "192.168.1.7", "fd00::/8"])
    for (const bad of ["0", "11", "true", "10.0.0.0/33", "10.0.0.1/8/8", "ingress", "10.0.0.1,", "fd00::/129"]) {
      expect([bad, refused(["--trust-proxy", bad])]).toEqual([
        bad,
        `--trust-proxy (ECOLINK_TRUST_PROXY) must be a number of proxy hops from 1 to 10, or the proxies' addresses or CIDR ranges, comma-separated, got ${JSON.stringify(bad)}`
      ])
    }
  })

  it("takes ECOLINK_PUBLIC_URL only as an absolute http(s) URL: it is the base of invite links", () => {
    for (const bad of ["example.com", "/invites", "ftp://example.com", "https://", "https://example.com/?a=1", "https://example.com/#x", "http://exa mple.com"]) {
      expect(refused([], { ECOLINK_PUBLIC_URL: bad })).toMatch(/--public-url \(ECOLINK_PUBLIC_URL\) must be an absolute http\(s\) URL/)
    }
    expect(parseConfig([], { ECOLINK_PUBLIC_URL: "https://api.example.com/ecolink/" }).public_url).toBe("https://api.example.com/ecolink/")
    expect(parseConfig(["--public-url", "http://10.0.0.1:8080"], {}).public_url).toBe("http://10.0.0.1:8080")
  })
})

describe("parseConfig: the demo account", () => {
  it("is seeded by `npm start` as the README says, never by the Kubernetes world unless asked, and ECOLINK_DEMO is read strictly", () => {
    // Found by review: a Kubernetes leader started as docs/KUBERNETES.md says made `demo` with
    // $100 and printed its key, and ECOLINK_DEMO=false still seeded it (only "0" did not).
    const kube = { ECOLINK_OPERATOR_KEY: OPERATOR_KEY }
    expect(parseConfig([], {}).demo).toBe(true)
    expect(parseConfig(KUBE, kube).demo).toBe(false)
    expect(parseConfig([...KUBE, "--demo"], kube).demo).toBe(true)
    expect(parseConfig(KUBE, { ...kube, ECOLINK_DEMO: "true" }).demo).toBe(true)
    for (const [value, demo] of [["false", false], ["FALSE", false], ["0", false], ["true", true], ["1", true], ["True", true]] as const) {
      expect([value, parseConfig([], { ECOLINK_DEMO: value }).demo]).toEqual([value, demo])
    }
    for (const value of ["no", "off", "yes", "2", "flase"]) expect(refused([], { ECOLINK_DEMO: value })).toBe(`ECOLINK_DEMO must be true, false, 1 or 0, got ${JSON.stringify(value)}`)
    expect(refused([], { ECOLINK_DEMO: "" })).toBe("ECOLINK_DEMO is empty")
    // A flag wins over the variable; the two flags together are refused.
    expect(parseConfig(["--no-demo"], { ECOLINK_DEMO: "true" }).demo).toBe(false)
    expect(parseConfig(["--demo"], { ECOLINK_DEMO: "false" }).demo).toBe(true)
    expect(refused(["--demo", "--no-demo"])).toBe("--demo and --no-demo contradict each other")
  })
})

describe("readKubernetesFiles: the cluster file against the database", () => {
  it("refuses to start, in one line, when the cluster file lost a region where live resources run", () => {
    // Found by review: a region removed from the file under running resources made the start's
    // reconciliation throw on the first of them; every replica crashed in a loop with a stack.
    const db = tmpDb()
    const ledger = LedgerStore.open(db)
    ledger.openAccount("acme", 0)
    const snapshot = (context: Record<string, unknown>) => JSON.stringify({ status: "active", value: "running", context })
    ledger.transaction(() => {
      for (let i = 1; i <= 6; i++) ledger.saveResource({ id: `gi-${i}`, account: "acme", kind: "gpu_instance", status: "running", live: true, snapshot: snapshot({ region: "eu-west" }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
      ledger.saveResource({ id: "gi-old", account: "acme", kind: "gpu_instance", status: "terminated", live: false, snapshot: snapshot({ region: "ap-south" }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
      ledger.saveResource({ id: "ii-1", account: "acme", kind: "inference_instance", status: "running", live: true, snapshot: snapshot({ regions: ["us-east", "eu-west"] }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
      ledger.saveResource({ id: "cd-1", account: "acme", kind: "cloud_drive", status: "available", live: true, snapshot: snapshot({ region: "us-east" }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
    })
    ledger.close()
    const dir = dirname(db)
    const kubeconfig = writeKubeconfig({ url: "https://127.0.0.1:1" }, { dir })
    const cluster = join(dir, "cluster.json")
    const config = (regions: Record<string, unknown>) => {
      writeFileSync(cluster, JSON.stringify({ namespace: "ecolink", regions }))
      return parseConfig(["--db", db, "--kubeconfig", kubeconfig, "--cluster", cluster], { ECOLINK_OPERATOR_KEY: OPERATOR_KEY })
    }
    const region = { nodes: 2, gpus_per_node: 8 }
    expect(() => readKubernetesFiles(config({ "us-east": region }))).toThrow(
      new ConfigError(
        `--cluster ${cluster}: no region eu-west, where 7 live resources of the database run (gi-1, gi-2, gi-3, gi-4, gi-5, and 2 more): put the region back until they are stopped or deleted; the engine cannot reach their pods or volumes without it`
      )
    )
    // Every missing region is named at once, not one a start (second review).
    const db2 = tmpDb()
    const other = LedgerStore.open(db2)
    other.openAccount("acme", 0)
    other.transaction(() => {
      other.saveResource({ id: "gi-1", account: "acme", kind: "gpu_instance", status: "running", live: true, snapshot: snapshot({ region: "eu-west" }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
      other.saveResource({ id: "ii-1", account: "acme", kind: "inference_instance", status: "running", live: true, snapshot: snapshot({ regions: ["ap-south", "eu-west"] }), snapshot_version: SNAPSHOT_VERSION, at: 0 })
    })
    other.close()
    writeFileSync(cluster, JSON.stringify({ namespace: "ecolink", regions: { "us-east": region } }))
    expect(() => readKubernetesFiles(parseConfig(["--db", db2, "--kubeconfig", kubeconfig, "--cluster", cluster], { ECOLINK_OPERATOR_KEY: OPERATOR_KEY }))).toThrow(
      new ConfigError(
        `--cluster ${cluster}: no region ap-south, where 1 live resource of the database runs (ii-1); no region eu-west, where 2 live resources of the database run (gi-1, ii-1): put the regions back until they are stopped or deleted; the engine cannot reach their pods or volumes without them`
      )
    )
    // With the region back, and for a terminated resource's region, nothing is refused.
    expect(readKubernetesFiles(config({ "us-east": region, "eu-west": region })).world.cluster.regions.map((r) => r.name)).toEqual(["us-east", "eu-west"])
  })
})
