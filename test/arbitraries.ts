/**
 * fast-check generators of whole timeline files: small catalogs, a few accounts, and random
 * inputs (launch, cluster launch, extend, terminate, preempt, resume, pod failure, top-up,
 * missed watch events, region outages, storage, inference instances, and `/v1` traffic priced
 * per token, per image and per second) at random times with random rates, GPU counts and
 * durations. Small pools of ids and accounts make the inputs collide often, which is where
 * the bugs live. Instants and region durations are mostly whole seconds (often whole minutes,
 * to meet the timers), and sometimes any millisecond, as ISO durations allow (`PT0.001S`).
 */
import fc from "fast-check"
import { dollars, formatDollars } from "../src/money.js"
import { START } from "./helpers.js"

const IDS = ["gi-0", "gi-1", "gi-2", "gi-3", "gc-0", "gc-1"]
const ACCOUNTS = ["acme", "beta", "zed"]
const REGIONS = ["us-east", "eu-west"]

const dollarsArb = (min: number, max: number) => fc.bigInt({ min: BigInt(min), max: BigInt(max) }).map(formatDollars)
/** `PT90S`, or `PT90.25S` with milliseconds: ISO-8601 durations carry up to 3 decimals of a second (sim/iso.ts). */
const durationText = (ms: number): string => `PT${Math.floor(ms / 1_000)}${ms % 1_000 === 0 ? "" : `.${String(ms % 1_000).padStart(3, "0")}`}S`
/**
 * Milliseconds up to `max_s` seconds: mostly whole seconds, sometimes any millisecond, so that
 * inputs, pod moves and timers also fall between seconds (`PT0.001S` in TIMELINE-EXTENSIONS.md)
 * and a rule that only holds on whole seconds shows.
 */
const msUpTo = (max_s: number) => fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: max_s }).map((s) => s * 1_000) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: max_s * 1_000 }) })
const seconds = (max: number) => msUpTo(max).map(durationText)
/** Offsets (ms) with a bias to whole minutes, so inputs often share an instant with timers. */
const offsetMs = fc.oneof(msUpTo(86_400), fc.integer({ min: 0, max: 1_440 }).map((m) => m * 60_000))
const offset = offsetMs.map(durationText)

const regionArb = fc.record({
  nodes: fc.integer({ min: 1, max: 3 }),
  gpus_per_node: fc.integer({ min: 1, max: 8 }),
  image_pull: seconds(1_200),
  container_start: seconds(300),
  pod_stop: seconds(120)
})

/** A wait of up to `max` hours, in ms. */
const hours = (max: number) => msUpTo(max * 3_600)

/** Follow-ups of one resource, at offsets after its launch, so they meet it alive. */
const followUp = (id: string) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.record({ after: hours(7), do: fc.constant("extend"), id: fc.constant(id), hours: fc.integer({ min: 1, max: 4 }) }) },
    { weight: 3, arbitrary: fc.record({ after: hours(7), do: fc.constant("terminate"), id: fc.constant(id) }) },
    { weight: 3, arbitrary: fc.record({ after: hours(5), do: fc.constant("preempt"), id: fc.constant(id) }) },
    { weight: 3, arbitrary: fc.record({ after: hours(6), do: fc.constant("resume"), id: fc.constant(id) }) },
    { weight: 1, arbitrary: fc.record({ after: hours(6), do: fc.constant("pod_fail"), id: fc.constant(id) }) },
    { weight: 1, arbitrary: fc.record({ after: hours(1), do: fc.constant("miss_pod_events"), id: fc.constant(id), count: fc.integer({ min: 1, max: 3 }) }) }
  )

const STORAGE = ["dr-0", "dr-1", "fs-0"]

const launchArb = (id: string) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.record({ do: fc.constant("launch_gpu_instance"), account: fc.constantFrom(...ACCOUNTS), id: fc.constant(id), gpu: fc.constantFrom("H100", "A100"), gpu_count: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 4 }) }, { weight: 1, arbitrary: fc.integer({ min: 5, max: 9 }) }), region: fc.constantFrom(...REGIONS), estimated_duration_hours: fc.integer({ min: 1, max: 6 }) }, { requiredKeys: ["do", "account", "id", "gpu", "gpu_count", "region", "estimated_duration_hours"] }) },
    { weight: 1, arbitrary: fc.record({ do: fc.constant("launch_gpu_instance"), account: fc.constantFrom(...ACCOUNTS), id: fc.constant(id), gpu: fc.constantFrom("H100", "A100"), gpu_count: fc.integer({ min: 1, max: 2 }), region: fc.constantFrom(...REGIONS), estimated_duration_hours: fc.integer({ min: 1, max: 6 }), drive: fc.constantFrom("dr-0", "dr-1"), filesystems: fc.subarray(["fs-0"]) }) },
    { weight: 1, arbitrary: fc.record({ do: fc.constant("launch_gpu_cluster"), account: fc.constantFrom(...ACCOUNTS), id: fc.constant(id), gpu: fc.constantFrom("H100", "A100"), node_count: fc.integer({ min: 1, max: 3 }), gpu_count: fc.integer({ min: 1, max: 4 }), region: fc.constantFrom(...REGIONS), estimated_duration_hours: fc.integer({ min: 1, max: 4 }) }) }
  )

/** One resource's story: a launch at some instant, then a few things that happen to it. */
const storyArb = (id: string) =>
  fc.tuple(offsetMs, launchArb(id), fc.array(followUp(id), { maxLength: 5 })).map(([t0, launch, rest]) => [
    { at: durationText(t0), ...launch },
    ...rest.map(({ after, ...e }) => ({ at: durationText(t0 + after), ...e }))
  ])

const INFERENCE_IDS = ["ii-0", "ii-1"]

/** An inference instance's story: its model registered, launched, then things happen to it. */
const inferenceStoryArb = (id: string) =>
  fc
    .tuple(
      offsetMs,
      fc.constantFrom(...ACCOUNTS),
      fc.constantFrom("H100", "A100"),
      fc.integer({ min: 1, max: 2 }),
      fc.constantFrom("huggingface", "platform", "shared_fs"),
      fc.array(
        fc.oneof(
          fc.record({ after: hours(40), do: fc.constant("terminate") }),
          fc.record({ after: hours(30), do: fc.constantFrom("pod_fail", "preempt", "resume"), region: fc.constantFrom(...REGIONS) }),
          fc.record({ after: hours(30), do: fc.constant("api_request"), input_tokens: fc.integer({ min: 0, max: 5_000 }) })
        ),
        { maxLength: 4 }
      )
    )
    .map(([t0, account, gpu, gpu_count, source, rest]) => [
      { at: durationText(t0), do: "register_model", account, model: `m-${id}`, source, gpu, gpu_count, ...(source === "shared_fs" ? { filesystem: "fs-0" } : {}) },
      { at: durationText(t0), do: "launch_inference_instance", account, id, model: `m-${id}` },
      ...rest.map(({ after, ...e }) =>
        e.do === "api_request" ? { at: durationText(t0 + after), do: "api_request", account, model: `m-${id}:${id}`, input_tokens: e.input_tokens } : { at: durationText(t0 + after), ...e, id }
      )
    ])

const worldArb = fc.oneof(
  { weight: 2, arbitrary: fc.record({ at: offset, do: fc.constantFrom("create_drive"), account: fc.constantFrom(...ACCOUNTS), id: fc.constantFrom("dr-0", "dr-1"), size_gb: fc.integer({ min: 1, max: 2_000 }), region: fc.constantFrom(...REGIONS) }) },
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("create_filesystem"), account: fc.constantFrom(...ACCOUNTS), id: fc.constant("fs-0"), size_gb: fc.integer({ min: 1, max: 5_000 }), region: fc.constantFrom(...REGIONS) }) },
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("delete_storage"), id: fc.constantFrom(...STORAGE) }) },
  // Tokens to any model: unpriced, unknown, and units a model has no price for are refused.
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("api_request"), account: fc.constantFrom(...ACCOUNTS), model: fc.constantFrom("chat", "draw", "unpriced", "nope"), input_tokens: fc.integer({ min: 0, max: 200_000 }), output_tokens: fc.integer({ min: 0, max: 200_000 }) }) },
  // Any amount (refused unless whole cents, $1 to $1,000), or whole cents (taken).
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("top_up"), account: fc.constantFrom(...ACCOUNTS), amount: dollarsArb(500_000, 1_200_000_000) }) },
  { weight: 2, arbitrary: fc.record({ at: offset, do: fc.constant("top_up"), account: fc.constantFrom(...ACCOUNTS), amount: fc.integer({ min: 100, max: 100_000 }).map((cents) => formatDollars(BigInt(cents) * 10_000n)) }) },
  { weight: 2, arbitrary: fc.record({ at: offset, do: fc.constantFrom("region_down", "region_up"), region: fc.constantFrom(...REGIONS) }) },
  // Stray inputs naming resources that may not exist (yet, or any more).
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constantFrom("terminate", "preempt", "resume"), id: fc.constantFrom(...IDS) }) }
)

/**
 * Seconds of audio, to the millisecond; a third of them whole seconds and a half, which at an
 * odd price per second cost an exact half micro more than a whole number: where "half up"
 * shows. (Found by mutation: ties rounded down passed 200 property runs.)
 */
const halfMicroSecondsArb = fc.oneof(
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 600_000 }).map((ms) => ms / 1_000) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 600 }).map((s) => s + 0.5) }
)

/** `/v1` traffic each model prices: tokens to `chat`, images to `draw`, seconds (to the millisecond) to `speak`. */
const apiTrafficArb = fc.oneof(
  { weight: 2, arbitrary: fc.record({ at: offset, do: fc.constant("api_request"), account: fc.constantFrom(...ACCOUNTS), model: fc.constant("chat"), input_tokens: fc.integer({ min: 0, max: 200_000 }), output_tokens: fc.integer({ min: 0, max: 200_000 }) }) },
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("api_request"), account: fc.constantFrom(...ACCOUNTS), model: fc.constant("draw"), images: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ at: offset, do: fc.constant("api_request"), account: fc.constantFrom(...ACCOUNTS), model: fc.constant("speak"), seconds: halfMicroSecondsArb }) }
)

const eventsArb = fc
  .tuple(
    fc.subarray(IDS, { minLength: 1 }).chain((ids) => fc.tuple(...ids.map(storyArb))),
    fc.subarray(INFERENCE_IDS).chain((ids) => fc.tuple(...ids.map(inferenceStoryArb))),
    fc.array(worldArb, { maxLength: 8 }),
    fc.array(apiTrafficArb, { maxLength: 10 })
  )
  .map(([stories, inference, world, traffic]) => [...stories.flat(), ...inference.flat(), ...world, ...traffic])
  // File order is the order at equal instants; shuffle it so the engine sees every order.
  .chain((events) => fc.shuffledSubarray(events, { minLength: events.length, maxLength: events.length }))

/**
 * A run-down to its end: account `lo` opens with one to three days of an inference instance's
 * full hold (and a fraction more), so its cycles renew in full, then on a partial hold, and it
 * stops for `credit_depleted` within the run, warned at each threshold on the way; a top-up may
 * re-arm them (one kind lands within the hour and a half before the money would run out, worth
 * some minutes of the burn, so it re-arms thresholds already sent), `/v1` traffic moves the
 * instant the money runs out, a preemption lengthens it. Half the time a second instance runs
 * down beside it (`ii-lo2`), so a top-up meets two renewals to come.
 * (Found by mutation: with about one credit stop in 300 random timelines, a skipped or late
 * low-balance warning passed every property run.)
 */
const runDownArb = (hourly_rate: string) =>
  fc
    .tuple(
      fc.integer({ min: 1, max: 2 }),
      fc.constantFrom("huggingface", "platform"),
      fc.integer({ min: 100, max: 300 }),
      msUpTo(12 * 3_600),
      // Half the time a second instance of the same model runs down beside it, launched within
      // two hours with its first hold added to the opening balance: two renewals to foresee.
      fc.option(msUpTo(2 * 3_600), { freq: 2 }),
      fc.array(
        fc.oneof(
          // Whole cents, as a top-up must be (any other amount is refused: 400 invalid_amount).
          fc.record({ after: hours(60), do: fc.constant("top_up"), amount: fc.integer({ min: 100, max: 10_000 }).map((cents) => formatDollars(BigInt(cents) * 10_000n)) }),
          // A top-up within the warnings of the first run-down, worth some minutes of the burn.
          fc.record({ before_run_out: msUpTo(90 * 60), do: fc.constant("top_up"), minutes: fc.integer({ min: 1, max: 120 }) }),
          // A top-up within the hour before the first cycle end, worth up to a day and a half of
          // the burn: with two instances, the first may then renew in full and the second stop later.
          fc.record({ before_first_end: msUpTo(60 * 60), do: fc.constant("top_up"), minutes: fc.integer({ min: 1, max: 2_160 }) }),
          fc.record({ after: hours(60), do: fc.constant("api_request"), model: fc.constant("chat"), input_tokens: fc.integer({ min: 1, max: 2_000_000 }) }),
          fc.record({ after: hours(60), do: fc.constantFrom("preempt", "resume"), region: fc.constantFrom(...REGIONS) })
        ),
        { maxLength: 3 }
      )
    )
    .map(([gpu_count, source, percent_of_a_day, t0, second, rest]) => {
      // Two replicas (two regions) × GPUs × rate × 24 h: one cycle's full hold.
      const day = dollars(hourly_rate) * BigInt(gpu_count) * 2n * 24n
      // Where the money runs out if the replicas bill from the launch: the opening balance's days.
      const runOut = percent_of_a_day * 864_000
      // (Within the 60 hours the other inputs fall in, so before the run's end.)
      const when = (e: (typeof rest)[number]): number =>
        "after" in e ? e.after : "before_first_end" in e ? 24 * 3_600_000 - e.before_first_end : Math.min(60 * 3_600_000, Math.max(0, runOut - e.before_run_out))
      // Top-ups are whole cents, $1 to $1,000 (src/policy.ts): at least $1, whatever the minutes.
      const worth = (minutes: number): string => {
        const cents = (day * BigInt(minutes)) / 1_440n / 10_000n
        return formatDollars((cents < 100n ? 100n : cents > 100_000n ? 100_000n : cents) * 10_000n)
      }
      return {
        balance: formatDollars((day * BigInt(percent_of_a_day)) / 100n + (second === null ? 0n : day)),
        events: [
          { at: durationText(t0), do: "register_model", account: "lo", model: "m-lo", source, gpu: "H100", gpu_count },
          { at: durationText(t0), do: "launch_inference_instance", account: "lo", id: "ii-lo", model: "m-lo" },
          ...(second === null ? [] : [{ at: durationText(t0 + second), do: "launch_inference_instance", account: "lo", id: "ii-lo2", model: "m-lo" }]),
          ...rest.map((e) => {
            const at = durationText(t0 + when(e))
            if ("minutes" in e) return { at, do: "top_up", account: "lo", amount: worth(e.minutes) }
            const { after: _after, ...rest_of } = e
            return { at, ...rest_of, ...(e.do === "top_up" || e.do === "api_request" ? { account: "lo" } : { id: "ii-lo" }) }
          })
        ]
      }
    })

const fleetArb = fc.record({
  start: fc.constant(START),
  seed: fc.integer({ min: 0, max: 1_000_000 }),
  until: fc.constant("P3D"),
  catalog: fc.record({
    gpus: fc.record({ H100: fc.record({ hourly_rate: dollarsArb(10_000, 3_000_000) }), A100: fc.record({ hourly_rate: dollarsArb(10_000, 3_000_000) }) }),
    regions: fc.record({ "us-east": regionArb, "eu-west": regionArb }),
    storage: fc.record({ cloud_drive: fc.record({ daily_rate_per_gb: dollarsArb(0, 20_000) }), shared_fs: fc.record({ daily_rate_per_gb: dollarsArb(0, 20_000) }) }),
    models: fc.record({
      chat: fc.record({ input_per_1m_tokens: dollarsArb(0, 2_000_000), output_per_1m_tokens: dollarsArb(0, 8_000_000) }),
      draw: fc.record({ per_image: dollarsArb(1, 50_000) }),
      speak: fc.record({ per_second: dollarsArb(1, 20_000) }),
      unpriced: fc.constant(null)
    })
  }),
  api_usage_rows: fc.constantFrom("per_request", "per_minute"),
  accounts: fc.record({ acme: fc.record({ balance: dollarsArb(0, 500_000_000) }), beta: fc.record({ balance: dollarsArb(0, 100_000_000) }), zed: fc.record({ balance: dollarsArb(0, 5_000_000) }) }),
  events: eventsArb
})

/** A random fleet, and half the time beside it an account run down to a credit stop. */
export const timelineArb = fleetArb.chain((file) =>
  fc.option(runDownArb(file.catalog.gpus.H100.hourly_rate), { freq: 2 }).map((lo) =>
    lo === null ? file : { ...file, accounts: { ...file.accounts, lo: { balance: lo.balance } }, events: [...file.events, ...lo.events] }
  )
)
