/**
 * SPEC §5 through the engine: drives and shared filesystems as machines, attached at launch
 * and released when the instance stops (data kept), charged at 00:00 UTC attached or idle,
 * a drive in use cannot be deleted, suspended when the balance cannot pay, restored by a
 * top-up.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { ledgerOf, START_MS, world } from "./api/harness.js"
import { run, timelineFile, tmpDb } from "./helpers.js"

const example = JSON.parse(readFileSync(join(import.meta.dirname, "..", "sim", "examples", "storage.json"), "utf8"))
const iso = (s: string) => new Date(s).toISOString()

describe("storage", () => {
  it("a top-up landing at the very midnight the daily charge runs restores suspended storage and charges that day once", () => {
    // Proves a suspended drive is not charged by the midnight worker itself (the restore that
    // the top-up makes pays the day): found by mutation, charging suspended storage at midnight
    // passed every test, and here it charged the day twice.
    const r = run(
      // The drive's first day is covered at its creation (the admission rule), not its second.
      timelineFile([{ at: "PT1H", do: "create_drive", account: "acme", id: "dr-1", size_gb: 100, region: "us-east" }, { at: "P3D", do: "top_up", account: "acme", amount: "5.00" }], {
        until: "P3DT1H",
        catalog: { ...(timelineFile([]).catalog as Record<string, unknown>), storage: { cloud_drive: { daily_rate_per_gb: "0.01" }, shared_fs: { daily_rate_per_gb: "0.01" } } },
        accounts: { acme: { balance: "1.00" } }
      })
    )
    expect(r.output.ledger.map((x) => [x.at, x.kind, x.amount, x.balance_after, x.resource])).toEqual([
      [iso("2026-03-01T00:00:00Z"), "adjustment", "1.00", "1.00", null],
      [iso("2026-03-02T00:00:00Z"), "storage_billing", "-1.00", "0.00", "dr-1"],
      [iso("2026-03-04T00:00:00Z"), "topup", "5.00", "5.00", "pay_00000001"],
      [iso("2026-03-04T00:00:00Z"), "storage_billing", "-1.00", "4.00", "dr-1"]
    ])
    expect(r.output.notifications.map((n) => [n.at, n.kind])).toEqual([
      [iso("2026-03-03T00:00:00Z"), "storage_suspended"],
      [iso("2026-03-04T00:00:00Z"), "storage_restored"]
    ])
  })

  it("refuses storage whose first day, with the account's other storage, the balance cannot cover (402), and writes nothing", () => {
    // Proves the admission Decision (docs/POLICY.md, Storage): storage takes no hold, but an
    // account at $0 could otherwise keep any amount of disk for nothing (security review).
    const r = run(
      timelineFile(
        [
          { at: "PT1M", do: "create_drive", account: "acme", id: "dr-1", size_gb: 300, region: "us-east" },
          { at: "PT2M", do: "create_drive", account: "acme", id: "dr-2", size_gb: 300, region: "us-east" },
          { at: "PT3M", do: "create_filesystem", account: "acme", id: "fs-1", size_gb: 200, region: "us-east" }
        ],
        {
          until: "PT1H",
          catalog: { ...(timelineFile([]).catalog as Record<string, unknown>), storage: { cloud_drive: { daily_rate_per_gb: "0.01" }, shared_fs: { daily_rate_per_gb: "0.01" } } },
          accounts: { acme: { balance: "5.00" } }
        }
      )
    )
    expect(r.output.rejected.map((x) => [x.at, x.do, x.status, x.error, x.message])).toEqual([
      [iso("2026-03-01T00:02:00Z"), "create_drive", 402, "insufficient_balance", "balance $5.00 cannot cover $6.00"]
    ])
    expect(Object.keys(r.output.resources)).toEqual(["dr-1", "fs-1"])
    expect(r.output.ledger.map((x) => x.kind)).toEqual(["adjustment"])
  })

  it("charges size_gb × daily rate at 00:00 UTC, one row naming the resource, attached or idle", () => {
    // Proves the daily charge: 100 GB × $0.004 = $0.40 and 500 GB × $0.006 = $3.00 a day.
    const r = run(example)
    const charges = r.output.ledger.filter((x) => x.kind === "storage_billing").map((x) => [x.at, x.resource, x.amount])
    expect(charges).toEqual([
      [iso("2026-03-02T00:00:00Z"), "dr-1", "-0.40"],
      [iso("2026-03-02T00:00:00Z"), "fs-1", "-3.00"],
      [iso("2026-03-03T00:00:00Z"), "dr-1", "-0.40"],
      [iso("2026-03-03T00:00:00Z"), "fs-1", "-3.00"],
      [iso("2026-03-04T00:00:00Z"), "dr-1", "-0.40"],
      // fs-1 was suspended at that midnight; the top-up at 02:00 restores it and pays its day.
      [iso("2026-03-04T02:00:00Z"), "fs-1", "-3.00"]
    ])
    expect(r.output.ledger.find((x) => x.resource === "fs-1")!.description).toBe("Daily storage for shared filesystem fs-1: 500 GB × $0.006/GB-day (idle)")
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("refuses a second attach of a drive and its deletion while attached (409), and releases it when the instance stops", () => {
    // Proves the 409s and that the data outlives the instance (the drive is available again and attaches to gi-3).
    const r = run(example)
    expect(r.output.rejected.map((x) => [x.event, x.status, x.message])).toEqual([
      [3, 409, "drive dr-1 is attached to gi-1"],
      [4, 409, "dr-1 is attached to gi-1; terminate the instance, then delete it"]
    ])
    expect(r.output.transitions.filter((t) => t.resource === "dr-1").map((t) => [t.at, t.from, t.to])).toEqual([
      [iso("2026-03-01T20:01:00Z"), "available", "in_use"],
      [iso("2026-03-01T22:01:00Z"), "in_use", "available"],
      [iso("2026-03-02T01:00:00Z"), "available", "in_use"],
      [iso("2026-03-02T02:00:00Z"), "in_use", "available"]
    ])
  })

  it("restores suspended storage only once the money coming back pays its day, and charges that day then", () => {
    // Proves the restore Decision (docs/POLICY.md): a refund of $0.80 at the midnight that
    // suspends a $1-a-day drive (it lands first, so that midnight suspends it with $0.80 in
    // the wallet) leaves it suspended; a top-up of $5 later that day restores it, with the
    // day's charge at that instant (it used to come back with no charge for the day).
    const catalog = { gpus: { H100: { hourly_rate: "1.60" } }, regions: { "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }, storage: { cloud_drive: { daily_rate_per_gb: "0.01" } } }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "create_drive", account: "acme", id: "d-1", size_gb: 100, region: "us-east" },
          { at: "PT22H30M", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 2 },
          { at: "PT24H", do: "terminate", id: "gi-1" },
          { at: "PT30H", do: "top_up", account: "acme", amount: "5.00" }
        ],
        { catalog, until: "PT36H", accounts: { acme: { balance: "3.20" } } }
      )
    ).output
    expect(r.ledger.filter((x) => x.resource !== "gi-1").map((x) => [x.at, x.kind, x.amount, x.balance_after])).toEqual([
      [iso("2026-03-01T00:00:00Z"), "adjustment", "3.20", "3.20"],
      [iso("2026-03-02T06:00:00Z"), "topup", "5.00", "5.80"],
      [iso("2026-03-02T06:00:00Z"), "storage_billing", "-1.00", "4.80"]
    ])
    expect(r.transitions.filter((t) => t.resource === "d-1").map((t) => [t.at, t.from, t.to])).toEqual([
      [iso("2026-03-02T00:00:00Z"), "available", "suspended"],
      [iso("2026-03-02T06:00:00Z"), "suspended", "available"]
    ])
    expect(r.invariants).toEqual({ ok: true, violations: [] })
  })

  it("charges a day once when money restores storage after 00:00 but before the midnight worker runs (a live clock)", async () => {
    // Proves the guard for the live race: at the midnight instant a credit's unit of work runs
    // before the timers due then (as an HTTP request can, on a live clock), restores the drive
    // and pays its day; the worker that fires next does not charge that day again.
    const w = await world()
    try {
      const a = await w.signup("sam@example.com", "0.40")
      const sup = w.opened.engine.sup.sync
      expect(sup.createStorage({ account: a.account, id: "cd-1", kind: "cloud_drive", size_gb: 100, region: "us-east" })._tag).toBe("Right")
      const day = 24 * 3_600_000
      const midnight = START_MS - (START_MS % day) + 2 * day
      w.advance(midnight - START_MS) // the first midnight pays its $0.40; the second finds $0, suspended
      w.clock.advanceTo(midnight + day, (instant, fire) => {
        // Its own unit of work, committed (and the drive restored) before the timers due now.
        if (instant === midnight + day) expect(sup.credit(a.account, "adjustment", 5_000_000n, "Top-up at the stroke of midnight")._tag).toBe("Right")
        w.opened.engine.sup.unitOfWork(fire)
      })
      expect(ledgerOf(w, a.account)).toEqual([
        ["adjustment", "0.40", null],
        ["storage_billing", "-0.40", "cd-1"],
        ["adjustment", "5.00", null],
        ["storage_billing", "-0.40", "cd-1"]
      ])
    } finally {
      await w.close()
    }
  })

  it("suspends storage whose daily charge the balance cannot cover, keeps it, and restores it on a top-up", () => {
    // Proves the suspension Decision (docs/POLICY.md): a charge the balance cannot cover ($0.80 left
    // for $3.00) takes nothing and leaves no debt; the storage is suspended, then usable again after a top-up.
    const r = run(example)
    expect(r.output.notifications.filter((n) => n.resource === "fs-1").map((n) => [n.at, n.severity, n.text])).toEqual([
      [iso("2026-03-04T00:00:00Z"), "critical", "Storage fs-1 is suspended: your credit cannot cover its daily charge. Its data is kept; recharge to use it again."],
      [iso("2026-03-04T02:00:00Z"), "info", "Storage fs-1 is usable again."]
    ])
    expect(r.output.resources["fs-1"]).toMatchObject({ kind: "shared_fs", status: "available", in_use: false })
  })

  it("refuses to attach suspended, foreign-region, wrong-kind or twice-listed storage, and deletes idle storage", () => {
    // Proves launch-time checks (409, 400) and that a deleted drive is gone (404 after).
    const regions = { "us-east": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" }, "eu-west": { nodes: 1, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
    const launch = (id: string, extra: Record<string, unknown>) => ({ at: "PT1M", do: "launch_gpu_instance", account: "acme", id, gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, ...extra })
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "create_drive", account: "acme", id: "dr-eu", size_gb: 10, region: "eu-west" },
          { at: "PT0S", do: "create_filesystem", account: "acme", id: "fs-1", size_gb: 10, region: "us-east" },
          { at: "PT0S", do: "create_drive", account: "acme", id: "dr-1", size_gb: 10, region: "us-east" },
          launch("a", { drive: "dr-eu" }),
          launch("b", { drive: "fs-1" }),
          launch("c", { filesystems: ["nope"] }),
          launch("e", { filesystems: ["fs-1", "fs-1"] }),
          { at: "PT2M", do: "delete_storage", id: "dr-1" },
          launch("d", { at: "PT3M", drive: "dr-1" })
        ],
        {
          catalog: { gpus: { H100: { hourly_rate: "1.00" } }, regions, storage: { cloud_drive: { daily_rate_per_gb: "0.01" }, shared_fs: { daily_rate_per_gb: "0.02" } } },
          until: "PT1H"
        }
      )
    )
    expect(r.output.rejected.map((x) => [x.event, x.status, x.error])).toEqual([
      [3, 400, "storage_region_mismatch"],
      [4, 400, "wrong_storage_kind"],
      [5, 404, "resource_not_found"],
      // A filesystem listed twice would be attached twice and never released (then billed after a delete).
      [6, 400, "duplicate_storage"],
      [8, 404, "resource_not_found"]
    ])
    expect(r.output.resources["dr-1"]).toMatchObject({ status: "deleted" })
  })

  describe("suspended while attached to a running instance", () => {
    // $48 of $48.05 is held by a 48 h instance with the drive; the drive's $0.10 charge at
    // midnight cannot be covered, so it is suspended, disconnected from gi-1.
    const catalog = {
      gpus: { H100: { hourly_rate: "1.00" } },
      regions: { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } },
      storage: { cloud_drive: { daily_rate_per_gb: "0.01" }, shared_fs: { daily_rate_per_gb: "0.01" } }
    }
    const setup = [
      { at: "PT0S", do: "create_drive", account: "acme", id: "dr-1", size_gb: 10, region: "us-east" },
      { at: "PT0S", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 48, drive: "dr-1" }
    ]
    const drive = (r: ReturnType<typeof run>) => r.output.transitions.filter((t) => t.resource === "dr-1").map((t) => [t.at, t.from, t.to])

    it("goes back to that instance when a top-up restores it, so no other instance can take it", () => {
      // Proves the manual's "Restoring the balance reattaches the storage": in_use again on gi-1, and a second attach is refused.
      const r = run(
        timelineFile(
          [
            ...setup,
            { at: "PT25H", do: "top_up", account: "acme", amount: "10.00" },
            { at: "PT26H", do: "launch_gpu_instance", account: "acme", id: "gi-2", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, drive: "dr-1" }
          ],
          { catalog, until: "PT30H", accounts: { acme: { balance: "48.05" } } }
        )
      )
      expect(drive(r)).toEqual([
        [iso("2026-03-01T00:00:00Z"), "available", "in_use"],
        [iso("2026-03-02T00:00:00Z"), "in_use", "suspended"],
        [iso("2026-03-02T01:00:00Z"), "suspended", "in_use"]
      ])
      expect(r.output.rejected.map((x) => [x.event, x.status, x.message])).toEqual([[3, 409, "drive dr-1 is attached to gi-1"]])
      expect(r.output.resources["dr-1"]).toMatchObject({ status: "in_use", attached_to: ["gi-1"] })
      expect(r.output.invariants).toEqual({ ok: true, violations: [] })
    })

    it("cannot be deleted while that instance runs (409), and can once it has stopped", () => {
      // Proves a suspended drive still belongs to its instance (its pod still mounts it), and that one stopping releases it.
      const r = run(
        timelineFile(
          [
            ...setup,
            { at: "PT25H", do: "delete_storage", id: "dr-1" },
            { at: "PT26H", do: "terminate", id: "gi-1" },
            { at: "PT27H", do: "delete_storage", id: "dr-1" }
          ],
          { catalog, until: "PT30H", accounts: { acme: { balance: "48.05" } } }
        )
      )
      expect(r.output.rejected.map((x) => [x.event, x.status, x.message])).toEqual([
        [2, 409, "dr-1 is suspended and goes back to gi-1 when restored; terminate the instance, then delete it"]
      ])
      // gi-1's terminate refunds what it did not run, which restores the drive (gi-1 let go of it first).
      expect(drive(r)).toEqual([
        [iso("2026-03-01T00:00:00Z"), "available", "in_use"],
        [iso("2026-03-02T00:00:00Z"), "in_use", "suspended"],
        [iso("2026-03-02T02:00:00Z"), "suspended", "available"],
        [iso("2026-03-02T03:00:00Z"), "available", "deleted"]
      ])
      expect(r.output.invariants).toEqual({ ok: true, violations: [] })
    })
  })

  it("comes back when a refund restores the balance, as after a top-up", () => {
    // Proves "Restoring the balance reattaches the storage" whoever restores it: the idle drive
    // is suspended at midnight on $0; gi-1's user terminate refunds $24 at 01:00, the drive is
    // usable again at once, and gi-2 launches with it.
    const regions = { "us-east": { nodes: 2, gpus_per_node: 8, image_pull: "PT0S", container_start: "PT0S" } }
    const r = run(
      timelineFile(
        [
          { at: "PT0S", do: "create_drive", account: "acme", id: "dr-1", size_gb: 100, region: "us-east" },
          { at: "PT1H", do: "launch_gpu_instance", account: "acme", id: "gi-1", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 48 },
          { at: "PT25H", do: "terminate", id: "gi-1" },
          { at: "PT26H", do: "launch_gpu_instance", account: "acme", id: "gi-2", gpu: "H100", gpu_count: 1, region: "us-east", estimated_duration_hours: 1, drive: "dr-1" }
        ],
        { until: "PT30H", accounts: { acme: { balance: "48.00" } }, catalog: { gpus: { H100: { hourly_rate: "1.00" } }, regions, storage: { cloud_drive: { daily_rate_per_gb: "0.01" }, shared_fs: { daily_rate_per_gb: "0.01" } } } }
      )
    )
    expect(r.output.transitions.filter((t) => t.resource === "dr-1").map((t) => [t.at, t.from, t.to])).toEqual([
      [iso("2026-03-02T00:00:00Z"), "available", "suspended"],
      [iso("2026-03-02T01:00:00Z"), "suspended", "available"],
      [iso("2026-03-02T02:00:00Z"), "available", "in_use"],
      [iso("2026-03-02T03:00:00Z"), "in_use", "available"]
    ])
    expect(r.output.rejected).toEqual([])
    expect(r.output.invariants).toEqual({ ok: true, violations: [] })
  })

  it("refuses a second delete of deleted storage 409, in the batch that deleted it and after, restarted or not", () => {
    // Found by review: in a simulator batch the deleted drive stays in memory until the commit,
    // and the second delete answered 404 there but 409 after a restart (and through the API).
    const file = timelineFile(
      [
        { at: "PT0S", do: "create_drive", account: "acme", id: "d1", size_gb: 10, region: "us-east" },
        { at: "PT0S", do: "delete_storage", id: "d1" },
        { at: "PT0S", do: "delete_storage", id: "d1" },
        { at: "PT1M", do: "delete_storage", id: "d1" }
      ],
      { until: "PT2H", catalog: { ...(timelineFile([]).catalog as Record<string, unknown>), storage: { cloud_drive: { daily_rate_per_gb: "0.004" }, shared_fs: { daily_rate_per_gb: "0.006" } } } }
    )
    const straight = run(file)
    expect(straight.output.rejected.map((r) => [r.event, r.status, r.error, r.message])).toEqual([
      [2, 409, "invalid_state", "d1 is already deleted"],
      [3, 409, "invalid_state", "d1 is already deleted"]
    ])
    expect(JSON.stringify(run(file, { db: tmpDb(), restartAt: [START_MS + 30_000] }).output)).toBe(JSON.stringify(straight.output))
  })

  it("finishes with the same output when the engine restarts around midnight", () => {
    // Proves storage actors and the daily worker come back from the snapshot on time.
    const straight = run(example)
    const restarted = run(example, { db: tmpDb(), restartAt: ["2026-03-01T20:01:00Z", "2026-03-02T00:00:00Z", "2026-03-04T00:00:00Z"].map((s) => Date.parse(s)) })
    expect(JSON.stringify(restarted.output)).toBe(JSON.stringify(straight.output))
  })
})
