/**
 * The ledger store: wallets, holds, ledger rows, notifications, resource snapshots,
 * transitions and the input journal, all in one SQLite database so that a money movement
 * and the actor snapshot it belongs to commit in the same transaction.
 *
 * better-sqlite3 is synchronous, so is this store. Expected failures (a hold the balance
 * cannot cover) come back as `Either` values; broken invariants throw.
 */
import { chmodSync, closeSync, constants, fstatSync, fchmodSync, openSync } from "node:fs"
import Database from "better-sqlite3"
import { Either } from "effect"
import { assert, Conflict, DatabaseBusy, InsufficientBalance, NotLeader } from "../errors.js"
import type { Micros } from "../money.js"
import type { Severity } from "../policy.js"
import { migrate, type LedgerRowKind } from "./migrations.js"

export interface LedgerRow {
  readonly id: number
  readonly account: string
  readonly at: number
  readonly kind: LedgerRowKind
  readonly amount_micros: Micros
  readonly balance_after_micros: Micros
  readonly resource: string | null
  readonly hold_id: string | null
  readonly description: string
}

export interface Hold {
  readonly id: string
  readonly account: string
  readonly resource: string
  readonly status: "open" | "settled"
  readonly held_micros: Micros
  readonly consumed_micros: Micros | null
  readonly refunded_micros: Micros | null
  readonly overage_micros: Micros | null
  readonly placed_at: number
  readonly settled_at: number | null
}

export interface Settlement {
  readonly hold_id: string
  readonly held_micros: Micros
  readonly consumed_micros: Micros
  readonly refunded_micros: Micros
  readonly overage_micros: Micros
  /** False when the hold was already settled: this call wrote nothing (idempotent). */
  readonly applied: boolean
}

export interface NotificationInput {
  readonly account: string
  readonly resource: string | null
  readonly at: number
  readonly severity: Severity
  readonly kind: string
  readonly text: string
  /** Structured facts for programs (a warning's `minutes` and `deadline_at`), or null. */
  readonly data?: Readonly<Record<string, number | string | null>> | null
}

export interface Notification {
  readonly id: number
  readonly account: string
  readonly resource: string | null
  readonly at: number
  readonly severity: Severity
  readonly kind: string
  readonly text: string
  /** JSON text of the notification's structured facts, or null. */
  readonly data: string | null
}

export interface Transition {
  readonly id: number
  readonly at: number
  readonly resource: string
  readonly from_state: string | null
  readonly to_state: string
  readonly reason: string | null
}

export interface ResourceRecord {
  readonly id: string
  readonly account: string
  readonly kind: string
  readonly status: string
  readonly live: boolean
  readonly snapshot: string
  readonly created_at: number
  readonly updated_at: number
  /** The snapshot's format (src/snapshots.ts `SNAPSHOT_VERSION`); 0: written before formats were recorded. */
  readonly snapshot_version: number
}

export interface JournalEntry {
  readonly seq: number
  readonly at: number
  readonly kind: string
  readonly payload: string
}

export interface ModelRecord {
  readonly account: string
  readonly name: string
  readonly source: "huggingface" | "platform" | "shared_fs"
  readonly filesystem: string | null
  readonly gpu: string
  readonly gpu_count: number
  readonly created_at: number
}

/**
 * SQLite `synchronous` in WAL mode, and what each can lose (docs/ENGINE.md "Durability"):
 * - `FULL` (the default): the WAL is synced at every commit. A commit that returned survives
 *   a power loss or an OS crash. The ledger's setting: a webhook credit acknowledged to Stripe
 *   is never redelivered, so it must not be rolled back.
 * - `NORMAL`: the WAL is synced only at checkpoints. A process crash loses nothing, but a power
 *   loss or an OS crash can roll back the last commits (the database stays consistent). Faster
 *   commits, for an operator who accepts that.
 * - `OFF`: nothing is synced; an OS crash can corrupt the file. The simulator's, whose runs can
 *   always be made again.
 */
export const SYNCHRONOUS_MODES = ["FULL", "NORMAL", "OFF"] as const
export type Synchronous = (typeof SYNCHRONOUS_MODES)[number]

export interface OpenOptions {
  /** SQLite `synchronous` (see `Synchronous`): `FULL` unless given. */
  readonly synchronous?: Synchronous
  /**
   * Every live process takes the next leader term when it opens the file (`npm start` and
   * each Kubernetes replica that starts leading), and every later transaction first checks
   * that no process took a newer one: if one did, it throws `NotLeader` and writes nothing (a
   * fencing token, checked under the write lock of the transaction that writes, so no write
   * of a superseded process lands after its successor's claim). The newest process wins: a
   * second `npm start` on the same file supersedes the first. Off in the simulator.
   */
  readonly claim_leader_term?: boolean
  /** Called once, when this connection first finds that another one took a newer leader term. */
  readonly on_superseded?: () => void
}

/**
 * The mode of a database file this store creates: its owner's alone (it holds API key hashes,
 * invite secrets and the demo key). SQLite gives the `-wal` and `-shm` files the database
 * file's mode.
 */
export const DATABASE_FILE_MODE = 0o600

/**
 * The page cache of a ledger connection, in KiB: 64 MiB instead of SQLite's 2 MiB. The ledger
 * and notification indexes are keyed by account, so consecutive rows land on pages far apart;
 * with 2 MiB a simulator batch evicts and re-reads them (full fleet: 0.3 s less in inserts and
 * commits with 64 MiB, BENCHMARKS.md).
 */
const PAGE_CACHE_KIB = 65_536

/** How long a leading replica's connection waits for another's write lock (`claim_leader_term`). */
const LEADER_BUSY_TIMEOUT_MS = 2_000

/** How every ledger connection is set up (the bench's floors open theirs the same way). */
export const configureConnection = (db: Database.Database, options: OpenOptions = {}): void => {
  db.pragma("journal_mode = WAL")
  const synchronous = options.synchronous ?? "FULL"
  assert(SYNCHRONOUS_MODES.includes(synchronous), () => `synchronous must be one of ${SYNCHRONOUS_MODES.join(", ")}, got ${String(synchronous)}`)
  db.pragma(`synchronous = ${synchronous}`)
  db.pragma("foreign_keys = ON")
  db.pragma(`cache_size = -${PAGE_CACHE_KIB}`)
}

/**
 * Creates the database file owner-only before SQLite opens it, and narrows one that already
 * exists to its owner (a file an earlier version made 0644), with its `-wal` and `-shm`.
 * Another user's file, which this process may not chmod, is left as it is.
 */
const makePrivate = (path: string): void => {
  if (path === ":memory:" || path === "" || path.startsWith("file:")) return
  const fd = openSync(path, constants.O_RDONLY | constants.O_CREAT, DATABASE_FILE_MODE)
  try {
    const mode = fstatSync(fd).mode & 0o777
    if ((mode & 0o077) !== 0) fchmodSync(fd, mode & 0o700)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") throw e
  } finally {
    closeSync(fd)
  }
  for (const suffix of ["-wal", "-shm"]) {
    try {
      chmodSync(`${path}${suffix}`, DATABASE_FILE_MODE)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code !== "ENOENT" && code !== "EPERM") throw e
    }
  }
}

/**
 * Rows that wait inside a batch before they are inserted (the batch stays open). Enough for
 * each table's inserts to run together; few enough that they die young: a batch's worth of
 * waiting rows outlives several scavenges and costs more in promotion than it saves
 * (full fleet: 1.7 s of garbage collection without a cap, 1.34 s with this one).
 */
const PENDING_ROWS_MAX = 2_048

/** SQLite refused a lock another connection holds (`SQLITE_BUSY` and its extended codes). */
const isBusy = (e: unknown): boolean => typeof (e as { code?: unknown }).code === "string" && (e as { code: string }).code.startsWith("SQLITE_BUSY")

export class LedgerStore {
  private readonly s: ReturnType<typeof prepare>
  private readonly tx: Database.Transaction<(fn: () => unknown) => unknown>
  /**
   * Write-through cache of wallet balances: this store is the database's only writer (a live
   * one holds the leader term, and stops on the first sign of a newer one), so a balance read
   * back is the one it last wrote. Dropped whole when a transaction rolls back.
   */
  private readonly balances = new Map<string, Micros>()
  /** Balances changed inside the open transaction, written once just before it commits. */
  private readonly dirtyBalances = new Set<string>()
  /** Write-through cache of the low-balance monitor's state, same rule. */
  private readonly warnedCache = new Map<string, number[]>()
  /** Accounts known to exist: an account is never deleted, so a hit never goes stale. */
  private readonly knownAccounts = new Set<string>()
  /**
   * Write-through cache of open holds (the ones read again and again: at every renewal,
   * extension and deadline). A hold leaves it when it settles, so it stays as small as the
   * set of running resources; a settled hold is read from the database.
   */
  private readonly openHolds = new Map<string, Hold>()
  /**
   * Inside a batch (`beginBatch`), the rows nothing reads back while the batch is open
   * (ledger, notifications, transitions, journal) wait here, flat, one table each, and are
   * inserted table by table just before the commit (`drain`). Each table's rows keep their
   * order, so every id is the one a direct insert would have given. Every read of those
   * tables goes through this store (the API's own store keeps to its own tables) and drains
   * first.
   */
  private readonly pending = { ledger: [] as unknown[], notifications: [] as unknown[], transitions: [] as unknown[], journal: [] as unknown[] }
  private batchOpen = false
  private pendingRows = 0

  /** The leader term this connection claimed (`claim_leader_term`), or null. */
  private term: number | null = null
  /** Set once another connection took a newer term: this one writes nothing more. */
  private superseded = false
  /** `PRAGMA data_version` when the term was last found ours: it moves only when another connection commits. */
  private seenDataVersion = -1
  /**
   * The latest instant of a row this store wrote (journal, ledger, transitions, notifications),
   * kept once `latestInstant` was asked (a live clock's store) for the clock mark at `close`.
   */
  private latestAt: number | null = null

  private constructor(
    readonly db: Database.Database,
    private readonly onSuperseded: (() => void) | undefined
  ) {
    this.s = prepare(db)
    this.tx = db.transaction((fn: () => unknown) => fn())
  }

  /** Whether this connection claimed a leader term (`OpenOptions.claim_leader_term`): only such a one is refused at BEGIN (`DatabaseBusy`). */
  get claimedLeaderTerm(): boolean {
    return this.term !== null
  }

  /** Takes the next leader term (`OpenOptions.claim_leader_term`). */
  private claimLeaderTerm(): void {
    this.term = (this.db.prepare(`UPDATE leader_term SET term = term + 1 WHERE id = 1 RETURNING term`).get() as { term: number }).term
    this.seenDataVersion = this.s.dataVersion.get() as number
  }

  /** Opens (creating if needed) the database at `path` (`:memory:` in tests only), WAL, migrated. */
  static open(path: string, options: OpenOptions = {}): LedgerStore {
    makePrivate(path)
    const db = new Database(path)
    try {
      // Live processes may share the file for a moment (a successor starting while the
      // process it supersedes still writes): wait for the other's write lock, migrations
      // included, rather than fail at once.
      if (options.claim_leader_term === true) db.pragma(`busy_timeout = ${LEADER_BUSY_TIMEOUT_MS}`)
      configureConnection(db, options)
      migrate(db)
      const store = new LedgerStore(db, options.on_superseded)
      if (options.claim_leader_term === true) store.claimLeaderTerm()
      return store
    } catch (e) {
      // A database this engine refuses (a newer schema, say) is not left open behind it.
      db.close()
      throw e
    }
  }

  /** Closes the connection; a live clock's store first marks the latest instant it wrote (`latestInstant`). */
  close(): void {
    if (!this.db.open) return
    if (this.latestAt !== null && !this.superseded && !this.db.inTransaction) {
      try {
        this.transaction(() => this.s.closeClockMark.run(this.latestAt))
      } catch {
        // Best effort: the mark only spares the next start a scan. Superseded, the successor
        // owns it; the database busy (another writer holding its lock past the busy timeout),
        // the next start scans from the old mark. Either way the connection still closes.
      }
    }
    this.db.close()
  }

  /**
   * True while no other connection took a newer leader term than this one's (always true for
   * a connection that claimed none). Cheap enough for every request: the term is read again
   * only when `data_version` says another connection committed since the last look. The first
   * `false` marks this store superseded (`on_superseded`).
   */
  holdsLeaderTerm(): boolean {
    if (this.term === null) return true
    if (this.superseded) return false
    if (this.db.inTransaction || !this.db.open) return true
    const version = this.s.dataVersion.get() as number
    if (version === this.seenDataVersion) return true
    this.seenDataVersion = version
    if ((this.s.leaderTerm.get() as { term: number }).term === this.term) return true
    this.supersede()
    return false
  }

  private supersede(): void {
    if (this.superseded) return
    this.superseded = true
    this.onSuperseded?.()
  }

  /**
   * The latest instant the database holds: the clock mark's, or a later one of a row written
   * after it (journal, ledger, transitions, notifications, scanned by id from the mark). Moves
   * the mark up to them, and from now on keeps the latest instant this store writes, to mark
   * it at `close`, so the next start scans only what was written after (everything, after a
   * crash). A live clock starts no earlier than this (src/clock.ts `notBefore`).
   */
  latestInstant(): number {
    const at = this.transaction(() => {
      this.drain()
      const mark = this.s.clockMarkScan.get() as { at: number }
      this.s.setClockMark.run(mark.at)
      return mark.at
    })
    this.latestAt = at
    return at
  }

  /** Keeps the latest instant written, for the clock mark (only once `latestInstant` was asked). */
  private wrote(at: number): void {
    if (this.latestAt !== null && at > this.latestAt) this.latestAt = at
  }

  /**
   * The engine's clock reached `at` (a live process, as it closes): the clock mark written at
   * `close` is at least that, so the next start's clock begins no earlier, though nothing was
   * written since. Without it a fast clock (`--clock-speed`) restarted at the last write, and
   * what `GET` had answered as billed since was billed again from there.
   */
  reached(at: number): void {
    this.wrote(at)
  }

  /**
   * Group commit for the simulator: `beginBatch` opens a transaction that every unit of work
   * joins until `commitBatch`. A simulation commits many clock steps at once (a commit costs
   * far more than the rows in it); the live control plane never batches.
   */
  beginBatch(): void {
    // Rows wait only for a batch's own commit: a batch begun inside another transaction would
    // leave them behind when that one commits.
    assert(!this.db.inTransaction || this.batchOpen, () => "beginBatch inside a transaction that is not a batch")
    if (!this.db.inTransaction) this.db.exec("BEGIN")
    this.batchOpen = true
  }

  commitBatch(): void {
    this.batchOpen = false
    if (!this.db.inTransaction) return
    this.drain()
    this.writeBalances()
    this.db.exec("COMMIT")
  }

  /** One more row waits; at `PENDING_ROWS_MAX` the waiting rows are inserted (the batch stays open). */
  private waited(): void {
    if (++this.pendingRows >= PENDING_ROWS_MAX) this.drain()
  }

  /** Inserts the batch's waiting rows, table by table, each in its own order. */
  private drain(): void {
    const { ledger, notifications, transitions, journal } = this.pending
    const { insertRow, insertNotification, insertTransition, insertJournal } = this.s
    for (let i = 0; i < ledger.length; i += 8) insertRow.run(ledger[i], ledger[i + 1], ledger[i + 2], ledger[i + 3], ledger[i + 4], ledger[i + 5], ledger[i + 6], ledger[i + 7])
    for (let i = 0; i < notifications.length; i += 7) {
      insertNotification.run(notifications[i], notifications[i + 1], notifications[i + 2], notifications[i + 3], notifications[i + 4], notifications[i + 5], notifications[i + 6])
    }
    for (let i = 0; i < transitions.length; i += 5) insertTransition.run(transitions[i], transitions[i + 1], transitions[i + 2], transitions[i + 3], transitions[i + 4])
    for (let i = 0; i < journal.length; i += 3) insertJournal.run(journal[i], journal[i + 1], journal[i + 2])
    this.pendingRows = 0
    ledger.length = 0
    notifications.length = 0
    transitions.length = 0
    journal.length = 0
  }

  /** Runs `fn` in a transaction; inside an open one it simply runs (the outer one commits). */
  transaction<T>(fn: () => T): T {
    if (this.db.inTransaction) return fn()
    let began = false
    try {
      // A term holder takes the write lock at BEGIN (IMMEDIATE), so the term it reads stays
      // the latest until it commits: a successor's claim waits for it, or comes first and is
      // seen here. A deferred BEGIN would read the term in a snapshot, and a claim committed
      // between that read and the first write would fail the write with SQLITE_BUSY_SNAPSHOT.
      return (this.term === null ? this.tx : this.tx.immediate)(() => {
        began = true
        if (this.term !== null && (this.superseded || this.term !== (this.s.leaderTerm.get() as { term: number }).term)) {
          this.supersede()
          throw new NotLeader()
        }
        const result = fn()
        this.writeBalances()
        return result
      }) as T
    } catch (e) {
      this.forgetCaches()
      // BEGIN itself refused (another connection held the write lock past the busy timeout):
      // nothing ran, nothing was written, so it is a refusal of this moment, not a defect.
      if (!began && isBusy(e)) throw new DatabaseBusy()
      throw e
    }
  }

  /**
   * Whether the write lock is free now: asked without waiting for it (busy timeout 0 for the
   * ask), so a process whose units of work wait for another connection's lock (src/backlog.ts)
   * is not held up for the busy timeout at every retry. The lock is taken and given back at
   * once; nothing is written. Free may not last: the unit that follows waits the busy timeout
   * as every unit does, and may still be refused.
   */
  writeLockFree(): boolean {
    assert(!this.db.inTransaction, () => "writeLockFree inside a transaction")
    const wait_ms = this.db.pragma("busy_timeout", { simple: true }) as number
    this.db.pragma("busy_timeout = 0")
    try {
      this.db.exec("BEGIN IMMEDIATE")
      this.db.exec("ROLLBACK")
      return true
    } catch (e) {
      if (isBusy(e)) return false
      throw e
    } finally {
      this.db.pragma(`busy_timeout = ${wait_ms}`)
    }
  }

  private forgetCaches(): void {
    this.pending.ledger.length = 0
    this.pending.notifications.length = 0
    this.pending.transitions.length = 0
    this.pending.journal.length = 0
    this.pendingRows = 0
    this.balances.clear()
    this.dirtyBalances.clear()
    this.warnedCache.clear()
    this.knownAccounts.clear()
    this.openHolds.clear()
  }

  /** Writes each wallet balance changed in this transaction once (not once per row). */
  private writeBalances(): void {
    for (const account of this.dirtyBalances) this.s.setBalance.run(this.balances.get(account)!, account)
    this.dirtyBalances.clear()
  }

  // ── accounts ──────────────────────────────────────────────────────────────────────────
  openAccount(id: string, at: number): Either.Either<void, Conflict> {
    if (this.hasAccount(id)) {
      return Either.left(new Conflict({ code: "already_exists", id, status: "open", message: `account ${id} already exists` }))
    }
    this.s.insertAccount.run(id, at)
    return Either.right(undefined)
  }

  hasAccount(id: string): boolean {
    if (this.knownAccounts.has(id)) return true
    if (this.s.accountExists.get(id) === undefined) return false
    this.knownAccounts.add(id)
    return true
  }

  balance(account: string): Micros {
    const cached = this.balances.get(account)
    if (cached !== undefined) return cached
    const row = this.s.balance.get(account) as { balance_micros: bigint } | undefined
    assert(row !== undefined, () => `balance of unknown account ${account}`)
    this.balances.set(account, row.balance_micros)
    return row.balance_micros
  }

  accounts(): ReadonlyArray<{ id: string; balance_micros: Micros }> {
    // Inside a transaction the wallet rows wait for its commit; the read must see them.
    this.writeBalances()
    return this.s.accounts.all() as Array<{ id: string; balance_micros: Micros }>
  }

  /** Moves money in or out of a wallet: one ledger row, the new balance in `balance_after`. */
  post(row: {
    account: string
    at: number
    kind: LedgerRowKind
    amount_micros: Micros
    resource?: string | null
    hold_id?: string | null
    description: string
  }): Micros {
    assert(row.amount_micros !== 0n, () => `zero-amount ${row.kind} row for ${row.account}`)
    const balance_after = this.balance(row.account) + row.amount_micros
    this.balances.set(row.account, balance_after)
    // Inside a transaction the wallet row is written once, before the commit.
    if (this.db.inTransaction) this.dirtyBalances.add(row.account)
    else this.s.setBalance.run(balance_after, row.account)
    this.wrote(row.at)
    if (this.batchOpen) {
      this.pending.ledger.push(row.account, row.at, row.kind, row.amount_micros, balance_after, row.resource ?? null, row.hold_id ?? null, row.description)
      this.waited()
    } else this.s.insertRow.run(row.account, row.at, row.kind, row.amount_micros, balance_after, row.resource ?? null, row.hold_id ?? null, row.description)
    return balance_after
  }

  // ── holds ─────────────────────────────────────────────────────────────────────────────
  /**
   * Reserves `amount` for a resource: a `gpu_usage −amount` row and an open hold. Refused
   * with `InsufficientBalance`, writing nothing, when the balance cannot cover it.
   */
  placeHold(h: { hold_id: string; account: string; resource: string; amount_micros: Micros; at: number; description: string }): Either.Either<Micros, InsufficientBalance> {
    assert(h.amount_micros > 0n, () => `hold ${h.hold_id} must be positive, got ${h.amount_micros}`)
    const balance = this.balance(h.account)
    if (balance < h.amount_micros) {
      return Either.left(new InsufficientBalance({ account: h.account, required_micros: h.amount_micros, balance_micros: balance }))
    }
    return Either.right(
      this.transaction(() => {
        this.s.insertHold.run(h.hold_id, h.account, h.resource, h.amount_micros, h.at)
        this.openHolds.set(h.hold_id, {
          id: h.hold_id,
          account: h.account,
          resource: h.resource,
          status: "open",
          held_micros: h.amount_micros,
          consumed_micros: null,
          refunded_micros: null,
          overage_micros: null,
          placed_at: h.at,
          settled_at: null
        })
        return this.post({ account: h.account, at: h.at, kind: "gpu_usage", amount_micros: -h.amount_micros, resource: h.resource, hold_id: h.hold_id, description: h.description })
      })
    )
  }

  /** Adds `amount` to an open hold (an extension). Same refusal rule as `placeHold`. */
  extendHold(h: { hold_id: string; amount_micros: Micros; at: number; description: string }): Either.Either<Micros, InsufficientBalance> {
    assert(h.amount_micros > 0n, () => `extension of ${h.hold_id} must be positive`)
    const hold = this.hold(h.hold_id)
    assert(hold !== undefined && hold.status === "open", () => `extend of hold ${h.hold_id} that is not open`)
    const balance = this.balance(hold.account)
    if (balance < h.amount_micros) {
      return Either.left(new InsufficientBalance({ account: hold.account, required_micros: h.amount_micros, balance_micros: balance }))
    }
    return Either.right(
      this.transaction(() => {
        this.s.growHold.run(h.amount_micros, h.hold_id)
        this.openHolds.set(h.hold_id, { ...hold, held_micros: hold.held_micros + h.amount_micros })
        return this.post({ account: hold.account, at: h.at, kind: "gpu_usage", amount_micros: -h.amount_micros, resource: hold.resource, hold_id: h.hold_id, description: h.description })
      })
    )
  }

  /**
   * Settles a hold exactly once: `consumed` is the actual cost; the unused part is refunded
   * (`refund +x`), a rare excess is charged (`gpu_usage −x`). The status flips open → settled
   * by compare-and-swap, so a second settlement of the same hold writes nothing and returns
   * the first one's numbers.
   */
  settleHold(h: { hold_id: string; consumed_micros: Micros; at: number; refund_description: string; overage_description: string }): Settlement {
    assert(h.consumed_micros >= 0n, () => `negative consumption for ${h.hold_id}`)
    return this.transaction(() => {
      const hold = this.hold(h.hold_id)
      assert(hold !== undefined, () => `settle of unknown hold ${h.hold_id}`)
      if (hold.status === "settled") {
        return {
          hold_id: hold.id,
          held_micros: hold.held_micros,
          consumed_micros: hold.consumed_micros!,
          refunded_micros: hold.refunded_micros!,
          overage_micros: hold.overage_micros!,
          applied: false
        }
      }
      const held = hold.held_micros
      const refunded = held > h.consumed_micros ? held - h.consumed_micros : 0n
      const overage = h.consumed_micros > held ? h.consumed_micros - held : 0n
      assert(h.consumed_micros - overage + refunded === held, () => `settlement of ${hold.id} does not add up`)
      const swapped = this.s.settleHold.run(h.consumed_micros, refunded, overage, h.at, hold.id).changes
      assert(swapped === 1, () => `hold ${hold.id} changed under its settlement`)
      this.openHolds.delete(hold.id)
      if (refunded > 0n) {
        this.post({ account: hold.account, at: h.at, kind: "refund", amount_micros: refunded, resource: hold.resource, hold_id: hold.id, description: h.refund_description })
      }
      if (overage > 0n) {
        this.post({ account: hold.account, at: h.at, kind: "gpu_usage", amount_micros: -overage, resource: hold.resource, hold_id: hold.id, description: h.overage_description })
      }
      return { hold_id: hold.id, held_micros: held, consumed_micros: h.consumed_micros, refunded_micros: refunded, overage_micros: overage, applied: true }
    })
  }

  hold(id: string): Hold | undefined {
    const cached = this.openHolds.get(id)
    if (cached !== undefined) return cached
    const hold = this.s.hold.get(id) as unknown as Hold | undefined
    if (hold !== undefined && hold.status === "open") this.openHolds.set(id, hold)
    return hold
  }

  holds(): ReadonlyArray<Hold> {
    return readAll(this.s.holds, holdOf)
  }

  // ── model registry ────────────────────────────────────────────────────────────────────
  registerModel(m: ModelRecord): void {
    this.s.insertModel.run(m.account, m.name, m.source, m.filesystem, m.gpu, m.gpu_count, m.created_at)
  }

  model(account: string, name: string): ModelRecord | undefined {
    return this.s.model.get(account, name) as ModelRecord | undefined
  }

  /** The account's registered models by name, after `after` (keyset pagination). */
  modelsOf(account: string, after: string | null, limit: number): ReadonlyArray<ModelRecord> {
    return this.s.modelsOf.all(account, after ?? "", limit) as ModelRecord[]
  }

  deleteModel(account: string, name: string): boolean {
    return this.s.deleteModel.run(account, name).changes === 1
  }

  // ── low-balance monitor ───────────────────────────────────────────────────────────────
  /** Low-balance thresholds (minutes) already warned in the account's current run-down. */
  warned(account: string): ReadonlyArray<number> {
    const cached = this.warnedCache.get(account)
    if (cached !== undefined) return cached
    const row = this.s.monitor.get(account) as { warned: string } | undefined
    const warned = row === undefined ? [] : (JSON.parse(row.warned) as number[])
    this.warnedCache.set(account, warned)
    return warned
  }

  setWarned(account: string, warned: ReadonlyArray<number>): void {
    this.s.setMonitor.run(account, JSON.stringify(warned))
    this.warnedCache.set(account, [...warned])
  }

  // ── notifications, transitions, resources, journal ───────────────────────────────────
  notify(n: NotificationInput): void {
    const data = n.data == null ? null : JSON.stringify(n.data)
    this.wrote(n.at)
    if (this.batchOpen) {
      this.pending.notifications.push(n.account, n.resource, n.at, n.severity, n.kind, n.text, data)
      this.waited()
    } else this.s.insertNotification.run(n.account, n.resource, n.at, n.severity, n.kind, n.text, data)
  }

  recordTransition(t: { at: number; resource: string; from_state: string | null; to_state: string; reason: string | null }): void {
    this.wrote(t.at)
    if (this.batchOpen) {
      this.pending.transitions.push(t.at, t.resource, t.from_state, t.to_state, t.reason)
      this.waited()
    } else this.s.insertTransition.run(t.at, t.resource, t.from_state, t.to_state, t.reason)
  }

  /**
   * Splits `resource`'s latest transition into `to_state`, logged at `at` (`from → to_state`), in
   * two: `from → via` at `via_at` (no reason), then `via → to_state` at `at` with its reason,
   * appended. For a stop requested while the world was behind: logged at the request, it learns
   * at its settlement that the pods had stopped before (docs/KUBERNETES.md, "A stop asked for
   * during a watch gap"), so the transitions say what was billed. `via_at` is no later than
   * `at`, so the clock mark (every row up to its ids at or before its instant) stays true. Call it
   * before logging anything after that transition.
   */
  splitTransition(resource: string, to_state: string, at: number, via: string, via_at: number): void {
    assert(via_at <= at, () => `transition of ${resource} into ${to_state} split at ${via_at}, after ${at}`)
    // A row still waiting in the batch is inserted first: the update then finds it.
    if (this.batchOpen) this.drain()
    const row = this.s.lastTransitionInto.get(resource, to_state) as { id: number; at: number; reason: string | null } | undefined
    assert(row !== undefined && row.at === at, () => `no transition of ${resource} into ${to_state} at ${at} to split`)
    this.s.splitTransition.run(via_at, via, row.id)
    this.recordTransition({ at, resource, from_state: via, to_state, reason: row.reason })
  }

  saveResource(r: { id: string; account: string; kind: string; status: string; live: boolean; snapshot: string; snapshot_version: number; at: number }): void {
    this.s.upsertResource.run(r.id, r.account, r.kind, r.status, r.live ? 1 : 0, r.snapshot, r.snapshot_version, r.at, r.at)
  }

  resource(id: string): ResourceRecord | undefined {
    const row = this.s.resource.get(id) as (Omit<ResourceRecord, "live"> & { live: number }) | undefined
    return row === undefined ? undefined : { ...row, live: row.live === 1 }
  }

  liveResources(): ReadonlyArray<ResourceRecord> {
    return (this.s.liveResources.all() as Array<Omit<ResourceRecord, "live"> & { live: number }>).map((r) => ({ ...r, live: true }))
  }

  /**
   * A row, live or finished, whose snapshot a format newer than `known` wrote (the first by id),
   * or undefined: a rollback onto a newer engine's file (src/snapshots.ts), refused at start.
   */
  newerSnapshot(known: number): { readonly id: string; readonly snapshot_version: number } | undefined {
    return this.s.newerSnapshot.get(known) as { id: string; snapshot_version: number } | undefined
  }

  resources(): ReadonlyArray<ResourceRecord> {
    return readAll(this.s.resources, resourceOf)
  }

  // ── read models for the API (one account at a time, paginated by id) ──────────────────
  /** The account's resources of `kinds`, by id, after the id `after` (keyset pagination). */
  resourcesOf(account: string, kinds: ReadonlyArray<string>, after: string | null, limit: number): ReadonlyArray<ResourceRecord> {
    const rows = this.s.resourcesOf.all(account, JSON.stringify(kinds), after ?? "", limit) as Array<Omit<ResourceRecord, "live"> & { live: number }>
    return rows.map((r) => ({ ...r, live: r.live === 1 }))
  }

  /** The account's ledger rows, newest first, before row id `before` (keyset), optionally filtered. */
  ledgerPage(account: string, filter: { readonly kinds: ReadonlyArray<string> | null; readonly resource: string | null; readonly before: number | null; readonly limit: number }): ReadonlyArray<LedgerRow> {
    this.drain()
    return this.s.ledgerPage.all({
      account,
      kinds: filter.kinds === null ? null : JSON.stringify(filter.kinds),
      resource: filter.resource,
      before: filter.before ?? Number.MAX_SAFE_INTEGER,
      limit: filter.limit
    }) as unknown as LedgerRow[]
  }

  /** API usage of the account by model over [from, to): what it cost and in how many rows. */
  apiUsageByModel(account: string, from: number, to: number): ReadonlyArray<{ readonly model: string; readonly amount_micros: Micros; readonly rows: number }> {
    this.drain()
    return (this.s.apiUsageByModel.all(account, from, to) as Array<{ model: string; amount_micros: bigint; rows: bigint }>).map((r) => ({
      model: r.model,
      amount_micros: -r.amount_micros,
      rows: Number(r.rows)
    }))
  }

  /** The account's notifications, newest first, before id `before`; only unread ones if asked. */
  notificationsOf(account: string, filter: { readonly unread: boolean; readonly before: number | null; readonly limit: number }): ReadonlyArray<Notification & { readonly read_at: number | null }> {
    this.drain()
    return this.s.notificationsOf.all({ account, unread: filter.unread ? 1 : 0, before: filter.before ?? Number.MAX_SAFE_INTEGER, limit: filter.limit }) as Array<
      Notification & { read_at: number | null }
    >
  }

  /** Who a notification belongs to and whether it was read; undefined if there is none. */
  notificationOwner(id: number): { readonly account: string; readonly read_at: number | null } | undefined {
    this.drain()
    return this.s.notificationOwner.get(id) as { account: string; read_at: number | null } | undefined
  }

  unreadCount(account: string): number {
    this.drain()
    return (this.s.unreadCount.get(account) as { n: number }).n
  }

  /** Marks the account's notifications read (the given ids, or all); returns how many changed. */
  markRead(account: string, ids: ReadonlyArray<number> | "all", at: number): number {
    this.drain()
    return this.transaction(() =>
      ids === "all" ? this.s.markAllRead.run(at, account).changes : ids.reduce((n, id) => n + this.s.markRead.run(at, account, id).changes, 0)
    )
  }

  journal(at: number, kind: string, payload: unknown): void {
    this.wrote(at)
    if (this.batchOpen) {
      this.pending.journal.push(at, kind, JSON.stringify(payload))
      this.waited()
    } else this.s.insertJournal.run(at, kind, JSON.stringify(payload))
  }

  journalLength(): number {
    this.drain()
    return (this.s.journalLength.get() as { n: number }).n
  }

  journalEntries(): ReadonlyArray<JournalEntry> {
    this.drain()
    return this.s.journal.all() as JournalEntry[]
  }

  ledgerRows(): ReadonlyArray<LedgerRow> {
    this.drain()
    return readAll(this.s.rows, ledgerRowOf)
  }

  notifications(): ReadonlyArray<Notification> {
    this.drain()
    return readAll(this.s.notifications, notificationOf)
  }

  transitions(): ReadonlyArray<Transition> {
    this.drain()
    return readAll(this.s.transitions, transitionOf)
  }
}

/** Moves the clock mark to the last row of each table, at the instant `at` (an SQL expression). */
const CLOCK_MARK_UPDATE = (at: string): string =>
  `UPDATE clock_mark SET
     journal_seq = coalesce((SELECT max(seq) FROM journal), 0),
     ledger_id = coalesce((SELECT max(id) FROM ledger), 0),
     transition_id = coalesce((SELECT max(id) FROM transitions), 0),
     notification_id = coalesce((SELECT max(id) FROM notifications), 0),
     at = ${at}
   WHERE id = 1`

/** The integer columns of `ledger` and `holds` that are not money. */
const LEDGER_NUMBERS = ["id", "at"] as const
const HOLD_NUMBERS = ["placed_at", "settled_at"] as const

const prepare = (db: Database.Database) => {
  const money = <S extends Database.Statement>(stmt: S): S => stmt.safeIntegers(true) as S
  /** A whole-table read for `readAll`: rows as arrays of columns, in the SELECT's order. */
  const columns = <S extends Database.Statement>(stmt: S): S => stmt.raw(true) as S
  return {
    leaderTerm: db.prepare(`SELECT term FROM leader_term WHERE id = 1`),
    dataVersion: db.prepare(`PRAGMA data_version`).pluck(),
    // The latest instant: the mark's, or a later one of a row after it (rowid range scans).
    clockMarkScan: db.prepare(
      `SELECT max(m.at,
         coalesce((SELECT max(at) FROM journal WHERE seq > m.journal_seq), m.at),
         coalesce((SELECT max(at) FROM ledger WHERE id > m.ledger_id), m.at),
         coalesce((SELECT max(at) FROM transitions WHERE id > m.transition_id), m.at),
         coalesce((SELECT max(at) FROM notifications WHERE id > m.notification_id), m.at)) AS at
       FROM clock_mark m WHERE m.id = 1`
    ),
    setClockMark: db.prepare(CLOCK_MARK_UPDATE("?")),
    // At close: every row is at or before the latest instant this store wrote, or the mark's.
    closeClockMark: db.prepare(CLOCK_MARK_UPDATE("max(at, ?)")),
    insertAccount: db.prepare(`INSERT INTO accounts (id, balance_micros, created_at) VALUES (?, 0, ?)`),
    accountExists: db.prepare(`SELECT 1 FROM accounts WHERE id = ?`),
    balance: money(db.prepare(`SELECT balance_micros FROM accounts WHERE id = ?`)),
    accounts: money(db.prepare(`SELECT id, balance_micros FROM accounts ORDER BY id`)),
    setBalance: db.prepare(`UPDATE accounts SET balance_micros = ? WHERE id = ?`),
    insertRow: db.prepare(
      `INSERT INTO ledger (account, at, kind, amount_micros, balance_after_micros, resource, hold_id, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
    ),
    rows: columns(money(db.prepare(`SELECT ${LEDGER_COLUMNS} FROM ledger ORDER BY id`))),
    insertHold: db.prepare(`INSERT INTO holds (id, account, resource, status, held_micros, placed_at) VALUES (?, ?, ?, 'open', ?, ?)`),
    growHold: db.prepare(`UPDATE holds SET held_micros = held_micros + ? WHERE id = ? AND status = 'open'`),
    settleHold: db.prepare(
      `UPDATE holds SET status = 'settled', consumed_micros = ?, refunded_micros = ?, overage_micros = ?, settled_at = ? WHERE id = ? AND status = 'open'`
    ),
    hold: moneyRows(db.prepare(`SELECT * FROM holds WHERE id = ?`), HOLD_NUMBERS),
    holds: columns(money(db.prepare(`SELECT ${HOLD_COLUMNS} FROM holds ORDER BY placed_at, id`))),
    insertNotification: db.prepare(`INSERT INTO notifications (account, resource, at, severity, kind, text, data) VALUES (?, ?, ?, ?, ?, ?, ?)`),
    notifications: columns(db.prepare(`SELECT ${NOTIFICATION_COLUMNS} FROM notifications ORDER BY id`)),
    insertTransition: db.prepare(`INSERT INTO transitions (at, resource, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)`),
    lastTransitionInto: db.prepare(`SELECT id, at, reason FROM transitions WHERE resource = ? AND to_state = ? ORDER BY id DESC LIMIT 1`),
    splitTransition: db.prepare(`UPDATE transitions SET at = ?, to_state = ?, reason = NULL WHERE id = ?`),
    transitions: columns(db.prepare(`SELECT ${TRANSITION_COLUMNS} FROM transitions ORDER BY id`)),
    upsertResource: db.prepare(
      `INSERT INTO resources (id, account, kind, status, live, snapshot, snapshot_version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(id) DO UPDATE SET status = excluded.status, live = excluded.live, snapshot = excluded.snapshot, snapshot_version = excluded.snapshot_version, updated_at = excluded.updated_at`
    ),
    resource: db.prepare(`SELECT * FROM resources WHERE id = ?`),
    liveResources: db.prepare(`SELECT * FROM resources WHERE live = 1 ORDER BY id`),
    newerSnapshot: db.prepare(`SELECT id, snapshot_version FROM resources WHERE snapshot_version > ? ORDER BY id LIMIT 1`),
    resources: columns(db.prepare(`SELECT ${RESOURCE_COLUMNS} FROM resources ORDER BY id`)),
    resourcesOf: db.prepare(`SELECT * FROM resources WHERE account = ? AND kind IN (SELECT value FROM json_each(?)) AND id > ? ORDER BY id LIMIT ?`),
    ledgerPage: moneyRows(
      db.prepare(
        `SELECT * FROM ledger WHERE account = @account AND (@kinds IS NULL OR kind IN (SELECT value FROM json_each(@kinds)))
           AND (@resource IS NULL OR resource = @resource) AND id < @before ORDER BY id DESC LIMIT @limit`
      ),
      LEDGER_NUMBERS
    ),
    apiUsageByModel: money(
      db.prepare(
        `SELECT resource AS model, sum(amount_micros) AS amount_micros, count(*) AS rows FROM ledger WHERE account = ? AND kind = 'api_usage' AND at >= ? AND at < ? GROUP BY resource ORDER BY resource`
      )
    ),
    notificationsOf: db.prepare(
      `SELECT id, account, resource, at, severity, kind, text, data, read_at FROM notifications
       WHERE account = @account AND (@unread = 0 OR read_at IS NULL) AND id < @before ORDER BY id DESC LIMIT @limit`
    ),
    unreadCount: db.prepare(`SELECT count(*) AS n FROM notifications WHERE account = ? AND read_at IS NULL`),
    markRead: db.prepare(`UPDATE notifications SET read_at = ? WHERE account = ? AND id = ? AND read_at IS NULL`),
    markAllRead: db.prepare(`UPDATE notifications SET read_at = ? WHERE account = ? AND read_at IS NULL`),
    insertModel: db.prepare(`INSERT INTO models (account, name, source, filesystem, gpu, gpu_count, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`),
    model: db.prepare(`SELECT * FROM models WHERE account = ? AND name = ?`),
    deleteModel: db.prepare(`DELETE FROM models WHERE account = ? AND name = ?`),
    modelsOf: db.prepare(`SELECT * FROM models WHERE account = ? AND name > ? ORDER BY name LIMIT ?`),
    notificationOwner: db.prepare(`SELECT account, read_at FROM notifications WHERE id = ?`),
    monitor: db.prepare(`SELECT warned FROM account_monitor WHERE account = ?`),
    setMonitor: db.prepare(`INSERT INTO account_monitor (account, warned) VALUES (?, ?) ON CONFLICT(account) DO UPDATE SET warned = excluded.warned`),
    insertJournal: db.prepare(`INSERT INTO journal (at, kind, payload) VALUES (?, ?, ?)`),
    journal: db.prepare(`SELECT * FROM journal ORDER BY seq`),
    journalLength: db.prepare(`SELECT count(*) AS n FROM journal`)
  }
}

/**
 * Reads rows with every INTEGER as `bigint`, then turns the non-money integers (ids,
 * instants: `numbers`) back into numbers so that only `*_micros` columns are bigint.
 */
const moneyRows = (stmt: Database.Statement, numbers: ReadonlyArray<string>) => {
  stmt.safeIntegers(true)
  const fix = (row: Record<string, unknown> | undefined) => {
    if (row === undefined) return row
    for (const key of numbers) {
      const v = row[key]
      if (typeof v === "bigint") row[key] = Number(v)
    }
    return row
  }
  return {
    get: (...args: unknown[]) => fix(stmt.get(...args) as Record<string, unknown> | undefined),
    all: (...args: unknown[]) => (stmt.all(...args) as Array<Record<string, unknown>>).map((r) => fix(r)!)
  }
}

// ── whole-table reads ───────────────────────────────────────────────────────────────────
// The simulator reads every ledger row, hold, notification, transition and resource back
// after a run: on the full bench fleet, 291k ledger rows. better-sqlite3 builds a row object
// key by key, and that took longer than the query (0.87 s for those rows); a raw row is a
// plain array of columns, from which one object literal per row, one shape for V8, is cheap
// (0.47 s in all). Each read names its columns, in the array's order, next to the function
// that builds its rows.

/**
 * Every row of a `columns` statement, built by `build`. Iterating, rather than `all()`,
 * lets each array die young instead of keeping the whole table twice (arrays and rows)
 * until the last row is read: less for the garbage collector to copy.
 */
const readAll = <Columns, Row>(stmt: Database.Statement, build: (c: Columns) => Row): Row[] => {
  const rows: Row[] = []
  for (const c of stmt.iterate() as IterableIterator<Columns>) rows.push(build(c))
  return rows
}

/** Read with `safeIntegers`: every INTEGER is a bigint, and `id` and `at` become numbers. */
const LEDGER_COLUMNS = "id, account, at, kind, amount_micros, balance_after_micros, resource, hold_id, description"
type LedgerColumns = readonly [bigint, string, bigint, LedgerRowKind, Micros, Micros, string | null, string | null, string]
const ledgerRowOf = (c: LedgerColumns): LedgerRow => ({
  id: Number(c[0]),
  account: c[1],
  at: Number(c[2]),
  kind: c[3],
  amount_micros: c[4],
  balance_after_micros: c[5],
  resource: c[6],
  hold_id: c[7],
  description: c[8]
})

/** Read with `safeIntegers`: the instants become numbers, the money stays bigint. */
const HOLD_COLUMNS = "id, account, resource, status, held_micros, consumed_micros, refunded_micros, overage_micros, placed_at, settled_at"
type HoldColumns = readonly [string, string, string, Hold["status"], Micros, Micros | null, Micros | null, Micros | null, bigint, bigint | null]
const holdOf = (c: HoldColumns): Hold => ({
  id: c[0],
  account: c[1],
  resource: c[2],
  status: c[3],
  held_micros: c[4],
  consumed_micros: c[5],
  refunded_micros: c[6],
  overage_micros: c[7],
  placed_at: Number(c[8]),
  settled_at: c[9] === null ? null : Number(c[9])
})

const NOTIFICATION_COLUMNS = "id, account, resource, at, severity, kind, text, data"
type NotificationColumns = readonly [number, string, string | null, number, Severity, string, string, string | null]
const notificationOf = (c: NotificationColumns): Notification => ({
  id: c[0],
  account: c[1],
  resource: c[2],
  at: c[3],
  severity: c[4],
  kind: c[5],
  text: c[6],
  data: c[7]
})

const TRANSITION_COLUMNS = "id, at, resource, from_state, to_state, reason"
type TransitionColumns = readonly [number, number, string, string | null, string, string | null]
const transitionOf = (c: TransitionColumns): Transition => ({ id: c[0], at: c[1], resource: c[2], from_state: c[3], to_state: c[4], reason: c[5] })

// In the table's column order (`snapshot_version` came with migration 20), as `SELECT *` reads a row.
const RESOURCE_COLUMNS = "id, account, kind, status, live, snapshot, created_at, updated_at, snapshot_version"
type ResourceColumns = readonly [string, string, string, string, number, string, number, number, number]
const resourceOf = (c: ResourceColumns): ResourceRecord => ({
  id: c[0],
  account: c[1],
  kind: c[2],
  status: c[3],
  live: c[4] === 1,
  snapshot: c[5],
  created_at: c[6],
  updated_at: c[7],
  snapshot_version: c[8]
})
