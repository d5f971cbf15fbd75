/** The rate limiter's store (src/api/rateLimit.ts), on its own: what the HTTP tests cannot reach cheaply. */
import { describe, expect, it } from "vitest"
import { addressKey, clockRateLimitStore, RATE_LIMIT_KEYS_MAX } from "../../src/api/rateLimit.js"
import { VirtualClock } from "../../src/clock.js"

describe("the rate limiter's store", () => {
  it("requests from more client addresses than the store holds do not reset an account's count", () => {
    // Proves addresses and accounts are counted apart: a flood of addresses forgets only addresses.
    const clock = new VirtualClock(0)
    const store = new (clockRateLimitStore(clock))()
    const counts: number[] = []
    const incr = (key: string): void => store.incr(key, (_e, r) => counts.push(r.current), 60_000)
    incr("account:acct_1")
    incr("account:acct_1")
    incr(addressKey("10.0.0.1"))
    for (let i = 0; i < RATE_LIMIT_KEYS_MAX; i++) incr(addressKey(`fd00::${i.toString(16)}`))
    incr("account:acct_1")
    incr(addressKey("10.0.0.1"))
    expect([counts[0], counts[1], counts[2], counts.at(-2), counts.at(-1)]).toEqual([1, 2, 1, 3, 1])
  })
})
