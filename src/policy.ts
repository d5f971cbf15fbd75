/**
 * The policy module: every rule the manual leaves to us (SPEC.md "Decision" lines), every
 * number the manual gives, every user-visible text, and every limit, in one place so each
 * can be read, documented (docs/POLICY.md) and changed without hunting through the engine.
 */

// ── Time ────────────────────────────────────────────────────────────────────────────────
export const MS_PER_SECOND = 1_000
export const MS_PER_MINUTE = 60_000
export const MS_PER_HOUR = 3_600_000

// ── GPU instance lifecycle (SPEC §3) ────────────────────────────────────────────────────
/** The watchdog runs every 5 minutes of engine time, aligned to whole 5-minute marks (UTC). */
export const WATCHDOG_INTERVAL_MS = 5 * MS_PER_MINUTE
/**
 * Every watchdog tick reconciles each live resource with what the cluster shows (a lost pod
 * event heals within one tick) and deletes workloads no live resource owns (orphans). Every
 * live drive's and filesystem's volume is re-ensured at start and on this coarser mark: in
 * Kubernetes that is one request per volume (answered 409 when it exists), too many to send
 * every 5 minutes, and a missing volume only delays a pod that mounts it.
 */
export const VOLUME_RESYNC_INTERVAL_MS = 1 * MS_PER_HOUR
/**
 * A tick reconciles incrementally (what the cluster's change feed reports and the machines
 * that ran); every live resource and every workload is scanned at start and on this mark, a
 * resync as a Kubernetes informer's (controller-runtime's default is 10 h). Tests check every
 * tick against a full scan (`ReconcileAudit`), so the resync is a safety net, not a need.
 */
export const RECONCILE_RESYNC_INTERVAL_MS = 6 * MS_PER_HOUR
/** An instance pending for longer than this is checked against the cluster by the watchdog. */
export const PENDING_TIMEOUT_MS = 15 * MS_PER_MINUTE
/**
 * How late a stop may come after the deadline and still be "the watchdog lag" of the manual
 * ("up to ~1 min"). It bounds overage (SPEC §9.4) and overrun past the deadline (SPEC §9.7).
 */
export const WATCHDOG_LAG_MS = 1 * MS_PER_MINUTE

/**
 * Decision (SPEC §3): billable time is time the GPUs are held by a pod that was started:
 * `loading` and `running`; not `pending` (image pull, or waiting for capacity), not
 * `preempted`. `started_at` is the first entry into `loading` (or into `running`, when the
 * loading event never came). Billing starts when the engine learns the GPUs are held: a
 * pod whose Ready event was missed is billed from the watchdog's heal, not before, since the
 * user saw it pending until then.
 */
export const BILLABLE_STATES = ["loading", "running"] as const

/** Duration warnings before the deadline (SPEC §3), in the order they fire. */
export const DURATION_WARNINGS: ReadonlyArray<{ readonly minutes: number; readonly severity: Severity }> = [
  { minutes: 30, severity: "warning" },
  { minutes: 20, severity: "warning" },
  { minutes: 10, severity: "critical" },
  { minutes: 5, severity: "critical" },
  { minutes: 1, severity: "critical" }
]

/** Termination reasons (SPEC §3 Decision). */
export const TERMINATION_REASONS = ["duration_expired", "credit_depleted", "user_requested", "failed"] as const
export type TerminationReason = (typeof TERMINATION_REASONS)[number]

// ── When the balance runs low (SPEC §7) ─────────────────────────────────────────────────
/** Minutes-remaining thresholds of the low-balance warnings, in firing order. */
export const BALANCE_WARNINGS: ReadonlyArray<{ readonly minutes: number; readonly severity: Severity }> = [
  { minutes: 60, severity: "warning" },
  { minutes: 30, severity: "warning" },
  { minutes: 20, severity: "warning" },
  { minutes: 10, severity: "critical" },
  { minutes: 5, severity: "critical" },
  { minutes: 3, severity: "critical" },
  { minutes: 1, severity: "critical" }
]

// ── Storage (SPEC §5) ────────────────────────────────────────────────────────────────
/** Storage is charged once a day, at 00:00 UTC. */
export const STORAGE_BILLING_INTERVAL_MS = 24 * MS_PER_HOUR
export const STORAGE_SIZE_GB_MAX = 65_536

// ── User inference instances (SPEC §4) ─────────────────────────────────────────────────
/** A hold covers one 24-hour cycle of every replica running. */
export const INFERENCE_CYCLE_MS = 24 * MS_PER_HOUR
/** HuggingFace- and platform-backed models run this many replicas, one per region. */
export const INFERENCE_REPLICAS_MULTI_REGION = 2
/**
 * Decision: a partial hold must cover at least one second of running (billing's own unit).
 * Below that the balance is dust: the instance stops with `credit_depleted` as at $0, instead
 * of renewing every few milliseconds on rounding leftovers. (It was one minute, which for a
 * large instance left dollars unused: the manual holds "whatever the balance covers" above $0.)
 */
export const INFERENCE_PARTIAL_HOLD_MIN_MS = MS_PER_SECOND
export const MODEL_SOURCES = ["huggingface", "platform", "shared_fs"] as const
export const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.\/-]{0,127}$/

// ── Limits (TigerBeetle style: every input has a bound) ─────────────────────────────────
/** The manual's minimum duration is 1 hour; durations and extensions are whole hours. */
export const DURATION_HOURS_MIN = 1
/** Decision: one launch or one extension commits at most 30 days at a time. */
export const DURATION_HOURS_MAX = 720
export const GPU_COUNT_MAX = 64
export const NODE_COUNT_MAX = 64
/** Manual top-up bounds (SPEC §1): $1 to $1,000 per transaction, in micros. */
export const TOP_UP_MIN_MICROS = 1_000_000n
export const TOP_UP_MAX_MICROS = 1_000_000_000n
/**
 * A wallet holds at most $1,000,000,000: a credit or adjustment that would lift it higher is
 * 400 `invalid_amount`. Far below what SQLite's 64-bit integers hold (about $9.2 trillion in
 * micros), so no balance, sum or row ever overflows.
 */
export const WALLET_BALANCE_MAX_MICROS = 1_000_000_000_000_000n
/** Card payments are whole cents: a micro-dollar amount must be a multiple of this. */
export const MICROS_PER_CENT = 10_000n

// ── Payments (issue 6) ──────────────────────────────────────────────────────────────────
/** Auto-recharge settings: the threshold may be $0 to $1,000; the amount is a top-up's bounds. */
export const AUTO_RECHARGE_THRESHOLD_MAX_MICROS = 1_000_000_000n
/**
 * After a declined off-session charge, the next attempt waits BASE × 2^(declines − 1), at most
 * MAX: a declining card is not hammered, and a card fixed later is tried again within the day.
 */
export const AUTO_RECHARGE_BACKOFF_BASE_MS = 15 * MS_PER_MINUTE
export const AUTO_RECHARGE_BACKOFF_MAX_MS = 24 * MS_PER_HOUR
/**
 * After an off-session charge the provider failed for a reason that is not the card's (an
 * outage, an API error, a processing error), the next attempt waits this long, doubling with
 * the run of failures since the last success up to AUTO_RECHARGE_PROVIDER_RETRY_MAX_MS: it is
 * not a decline, so it does not grow the card's backoff (an outage must not leave the account
 * without auto-recharge for a day after it ends), but each attempt may reach the issuer, and
 * card networks cap retries (a processing error the issuer keeps returning was retried 73
 * times a day at the burst guard's ceiling).
 */
export const AUTO_RECHARGE_PROVIDER_RETRY_MS = 15 * MS_PER_MINUTE
export const AUTO_RECHARGE_PROVIDER_RETRY_MAX_MS = 2 * MS_PER_HOUR
/**
 * Burst guard: at most this many auto-recharge charges per account in any window of
 * AUTO_RECHARGE_BURST_WINDOW_MS, whatever the balance does (a runaway workload burning
 * through recharges stops at the guard instead of draining the card).
 */
export const AUTO_RECHARGE_BURST_MAX = 3
export const AUTO_RECHARGE_BURST_WINDOW_MS = 1 * MS_PER_HOUR
/**
 * How long a webhook waits for the provider to list a charge's refunds (every page) when a
 * `charge.refunded` tells too little to book (src/payments.ts, `needsListing`). Stripe wants
 * its webhooks answered promptly, and retries one answered late or not 2xx; past this the
 * event is booked as far as it tells and answered 502, so Stripe's retry completes it.
 */
export const REFUND_LIST_DEADLINE_MS = 5_000
/**
 * Decision: an account has at most TOP_UP_PENDING_MAX manual top-ups awaiting confirmation
 * (a PaymentIntent created, neither paid nor failed) made within TOP_UP_PENDING_WINDOW_MS; one
 * more is 409 `too_many_pending_top_ups`. Each top-up creates a PaymentIntent at Stripe, and
 * creating them costs an account nothing (it need not have a cent): without a bound, one
 * account could make them at the rate limit, a card tester's tool and clutter in our Stripe
 * account. A top-up older than the window counts no more (PaymentIntents do not expire at
 * Stripe, and an abandoned one must not lock the account out); confirmed late, it is still
 * credited.
 */
export const TOP_UP_PENDING_MAX = 10
export const TOP_UP_PENDING_WINDOW_MS = 24 * MS_PER_HOUR
/** Webhook signatures older than this (engine clock) are refused (stripe-node's default). */
export const WEBHOOK_TOLERANCE_S = 300
/**
 * The currency of every card payment. A provider event that tells another currency (a dispute,
 * a refund) books nothing: its amount is not comparable with the payment's (docs/POLICY.md,
 * Disputes).
 */
export const PAYMENT_CURRENCY = "usd"

/** A resource id is what the user or timeline names it; keep it printable and short. */
export const RESOURCE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
export const TIMELINE_EVENTS_MAX = 2_000_000
export const TIMELINE_ACCOUNTS_MAX = 100_000
/** The longest a timeline may run: a simulation is bounded like every other loop. */
export const TIMELINE_SPAN_MS_MAX = 400 * 24 * MS_PER_HOUR

// ── Accounts ────────────────────────────────────────────────────────────────────────────
/**
 * Decision: an account's opening balance in a timeline is credited as an `adjustment` row
 * ("Opening balance"): it is credit granted by the operator, not a card payment.
 */
export const OPENING_BALANCE_DESCRIPTION = "Opening balance"

// ── Replicas (docs/KUBERNETES.md) ────────────────────────────────────────────────────────
/** `retry-after` (seconds) of a 503 `not_leader`, from a standby or a fenced leader: about one lease retry period. */
export const NOT_LEADER_RETRY_AFTER_S = 2
/**
 * `retry-after` (seconds) of a 503 `no_healthy_pod`: a user instance with no replica running
 * (starting, restarting after a failure, preempted) gets one back in tens of seconds to a few
 * minutes; an OpenAI client honours it (up to 60 s) on its own retries.
 */
export const NO_HEALTHY_POD_RETRY_AFTER_S = 10
/** `retry-after` (seconds) of a 503 `database_busy`: another writer held the database past the busy timeout. */
export const DATABASE_BUSY_RETRY_AFTER_S = 1
/**
 * `retry-after` (seconds) of a `/v1` request refused over answers left unread (429
 * `answers_undelivered`): the account's clients have written answers they have not taken off
 * their connections yet. A client reading at all takes megabytes in well under this; one that
 * never reads is cut at the connection timeout, and the request after that is answered.
 */
export const ANSWERS_UNDELIVERED_RETRY_AFTER_S = 5
/**
 * `retry-after` (seconds) of a `/v1` request refused 503 `server_busy`: all accounts' clients
 * together leave too many answers unread. The same wait as `ANSWERS_UNDELIVERED_RETRY_AFTER_S`:
 * the answers leave as those clients read them or their connections are cut.
 */
export const SERVER_BUSY_RETRY_AFTER_S = 5
/**
 * How often (engine ms) the engine asks again for the database's write lock while its own
 * units of work (alarms, cluster events, payment answers) wait for it: another connection held
 * it past the busy timeout (src/backlog.ts, docs/ENGINE.md "When another connection holds the
 * database"). Each ask takes no time (it does not wait for the lock), so the process serves on.
 */
export const DATABASE_BUSY_RETRY_MS = 1_000
/**
 * The most units of work (and timers) that may wait for the database at once. Past it the
 * engine stops, as after a defect, and a restart recovers from the database: hours of a held
 * lock at a busy fleet's rate, far more than a backup or an operator's shell takes.
 */
export const DATABASE_BUSY_BACKLOG_MAX = 100_000

// ── The simulated world's defaults (TIMELINE.md: "Omitted, they have documented defaults") ──
export const SIM_IMAGE_PULL_DEFAULT = "PT1M"
export const SIM_CONTAINER_START_DEFAULT = "PT30S"
export const SIM_POD_STOP_DEFAULT = "PT0S"

// ── Notifications: kinds, severities and the exact texts the manual gives ──────────────
export type Severity = "info" | "warning" | "critical"

/** What a GPU resource is called in its notices: "Instance gi-1", "Cluster gc-1". */
export const gpuNoun = (kind: "gpu_instance" | "gpu_cluster"): string => (kind === "gpu_cluster" ? "Cluster" : "Instance")

export const texts = {
  durationWarning: (noun: string, id: string, minutes: number) =>
    `${noun} ${id} reaches its duration in ${minutes} ${minutes === 1 ? "minute" : "minutes"} and will be terminated. Extend it to keep it running.`,
  preempted: (noun: string, id: string) =>
    `${noun} ${id} was preempted: a higher-priority workload took its GPU. It resumes when capacity frees.`,
  resumed: (noun: string, id: string) => `${noun} ${id} resumed: capacity freed and it is running again.`,
  balanceWarning: (minutes: number) =>
    `Your credit runs out in about ${minutes} ${minutes === 1 ? "minute" : "minutes"} at your current usage. Recharge to keep your resources running.`,
  storageSuspended: (id: string) => `Storage ${id} is suspended: your credit cannot cover its daily charge. Its data is kept; recharge to use it again.`,
  storageRestored: (id: string) => `Storage ${id} is usable again.`,
  autoRechargeDeclined: (dollars: string, retry_minutes: number) =>
    `Auto-recharge of $${dollars} was declined by your card. We will try again in ${retry_minutes} minutes; update your card or top up to keep your resources running.`,
  /** A charge the provider could not make for a reason other than the card (an outage, an error). */
  autoRechargeFailed: (dollars: string, retry_minutes: number) =>
    `Auto-recharge of $${dollars} could not be charged: the payment provider did not complete it. We will try again in ${retry_minutes} minutes; top up to keep your resources running.`,
  /** A refund at the provider paused auto-recharge (src/payments.ts; docs/POLICY.md). */
  autoRechargePaused: (refunded: string, threshold: string) =>
    `Auto-recharge is paused: $${refunded} was refunded to your card. It resumes when your balance is back at $${threshold} or when you save your auto-recharge settings again.`,
  /**
   * A refund to the card failed or was canceled at the provider (src/payments.ts;
   * docs/POLICY.md): the money never reached the card, so it stays in the wallet. `resumed`:
   * the auto-recharge pause that refund set is over. `toDispute`: what of it a dispute of the
   * same payment took instead (the bank took the whole payment back, and the refund had kept
   * that part out of the dispute's reach), or null.
   */
  cardRefundFailed: (dollars: string, why: string, resumed: boolean, topUpCredited: boolean, toDispute: { readonly kept: string; readonly taken: string } | null = null) =>
    `A refund of $${dollars} to your card did not go through: ${why}. ${
      toDispute !== null
        ? toDispute.kept === "0.00"
          ? `The $${dollars} does not come back to your credit balance: your bank's dispute of that payment took it.`
          : `$${toDispute.kept} stays in your credit balance; your bank's dispute of that payment took the other $${toDispute.taken}.`
        : topUpCredited
        ? `The $${dollars} stays in your credit balance.`
        : `The $${dollars} stays yours: it reaches your credit balance with the top-up, once the payment provider confirms it.`
    }${resumed ? " Auto-recharge, paused by that refund, is on again." : ""}`,
  /**
   * A payment was disputed (a chargeback) and the provider took its money back
   * (src/payments.ts; docs/POLICY.md): `taken` left the credit balance, which is less than
   * `disputed` when part of the payment had been refunded to the card already.
   * `autoRechargeOff`: the dispute turned the account's auto-recharge off.
   */
  paymentDisputed: (disputed: string, taken: string, autoRechargeOff: boolean) =>
    `A payment of $${disputed} was disputed with your bank; ${
      taken === "0.00" ? "nothing was taken from your credit balance, as it had been refunded to your card already" : `$${taken} was taken from your credit balance`
    }${taken !== "0.00" && taken !== disputed ? " (the rest had been refunded to your card already)" : ""}.${
      autoRechargeOff ? " Auto-recharge is turned off: save your auto-recharge settings again to turn it back on." : ""
    }`,
  /** The provider gave a dispute's money back (the dispute was decided for us): `returned` came back to the credit balance. */
  paymentDisputeReinstated: (reinstated: string, returned: string) =>
    `Your bank closed the dispute of a payment of $${reinstated} in our favor; ${returned === "0.00" ? "your credit balance is unchanged" : `$${returned} was returned to your credit balance`}.`,
  /** The manual's words: "$X credit can cover Y more hours. Recharge to continue." */
  partialHold: (dollars: string, hours: string) => `$${dollars} credit can cover ${hours} more hours. Recharge to continue.`,
  terminated: {
    duration_expired: "Instance terminated — duration reached.",
    credit_depleted: "Instance terminated: credit balance depleted.",
    user_requested: "Instance terminated at your request."
  } satisfies Record<Exclude<TerminationReason, "failed">, string>,
  /** A failure's notice says why (`FailureCause`): a replay of the incident starts there. */
  failed: {
    not_started: `Instance failed: its pod did not start within ${PENDING_TIMEOUT_MS / MS_PER_MINUTE} minutes. Unused credit was refunded.`,
    pod_failed: "Instance failed: its pod stopped unexpectedly. Unused credit was refunded.",
    replicas_failed: "Instance failed: every replica stopped unexpectedly. Unused credit was refunded."
  } satisfies Record<FailureCause, string>
} as const

/**
 * Why an instance failed, in its `terminated` notice (text and `data.cause`): `not_started`,
 * SPEC §3's watchdog (pending for more than 15 minutes, no pod running); `pod_failed`, its pod
 * failed or vanished; `replicas_failed`, an inference instance's last replica failed.
 */
export type FailureCause = "not_started" | "pod_failed" | "replicas_failed"

/** A `terminated` notice's text: a failure's says why. */
export const terminatedText = (reason: TerminationReason, cause: FailureCause): string => (reason === "failed" ? texts.failed[cause] : texts.terminated[reason])

export const TERMINATION_SEVERITY: Record<TerminationReason, Severity> = {
  duration_expired: "info",
  user_requested: "info",
  credit_depleted: "critical",
  failed: "critical"
}

// ── Ledger descriptions ─────────────────────────────────────────────────────────────────
export const descriptions = {
  hold: (id: string, hours: number, rate: string, units: string) => `Credit hold for ${id}: ${hours} h × $${rate}/h × ${units}`,
  extendHold: (id: string, hours: number, rate: string, units: string) =>
    `Extension hold for ${id}: ${hours} h × $${rate}/h × ${units}`,
  refund: (id: string) => `Refund of unused hold for ${id}`,
  storage: (kind: string, id: string, size_gb: number, rate: string, attached: boolean) =>
    `Daily storage for ${kind === "cloud_drive" ? "cloud drive" : "shared filesystem"} ${id}: ${size_gb} GB × $${rate}/GB-day (${attached ? "attached" : "idle"})`,
  inferenceHold: (id: string, cycle: number, rate: string, gpus: number, replicas: number) =>
    `24 h hold for ${id}, cycle ${cycle}: $${rate}/h × ${gpus} GPU${gpus === 1 ? "" : "s"} × ${replicas} replica${replicas === 1 ? "" : "s"}`,
  inferencePartialHold: (id: string, cycle: number, hours: string) => `Partial hold for ${id}, cycle ${cycle}: covers ${hours} h`,
  overage: (id: string) => `Overage for ${id}: ran past its hold`,
  topUp: "Top-up",
  topUpPayment: (payment: string) => `Top-up by card (${payment})`,
  autoRecharge: (payment: string) => `Auto-recharge by card (${payment})`,
  cardRefund: (payment: string) => `Refund to card of top-up ${payment}`,
  /** The credit back of a refund to the card that failed or was canceled at the provider. */
  cardRefundFailed: (payment: string) => `Failed refund to card of top-up ${payment}, credit returned`,
  /** A dispute (chargeback) of a top-up took its money at the provider (a − card `refund` row). */
  disputeWithdrawn: (payment: string, dispute: string | null) => `Dispute (chargeback) of top-up ${payment}${dispute === null ? "" : ` (${dispute})`}`,
  /** A dispute's money came back (won, or a refund of the payment took its place): a + card `refund` row. */
  disputeReturned: (payment: string, dispute: string | null) => `Dispute of top-up ${payment}${dispute === null ? "" : ` (${dispute})`} returned, credit restored`
} as const

/**
 * Why a refund to the card did not go through, in the customer's words, from the provider's
 * `failure_reason` (Stripe's Refund object) or its `canceled` status.
 */
export const cardRefundFailureWhy = (status: "failed" | "canceled", failure_reason: string | null): string => {
  if (status === "canceled") return "it was canceled"
  if (failure_reason === "expired_or_canceled_card") return "the card has expired or was canceled"
  if (failure_reason === "lost_or_stolen_card") return "the card was reported lost or stolen"
  return "the card's bank did not accept it"
}

export const unitsLabel = (gpu_count: number, node_count: number): string =>
  node_count > 1 ? `${node_count} nodes × ${gpu_count} GPU${gpu_count === 1 ? "" : "s"}` : `${gpu_count} GPU${gpu_count === 1 ? "" : "s"}`

/**
 * Hours a window covers, to one decimal, rounded down, in integer arithmetic ("5.6"). Under
 * 0.1 h, to two decimals, rounded down but at least 0.01 ("0.05" for 3 minutes, "0.01" for
 * 20 s), so a window that runs is never shown as "0.0". Display only.
 */
export const hoursToTenths = (window_ms: number): string => {
  const tenths = Math.floor(window_ms / (MS_PER_HOUR / 10))
  if (tenths === 0 && window_ms > 0) return `0.0${Math.max(1, Math.floor(window_ms / (MS_PER_HOUR / 100)))}`
  return `${Math.floor(tenths / 10)}.${tenths % 10}`
}
