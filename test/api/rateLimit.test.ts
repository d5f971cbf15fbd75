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
    for (let i = 0; i < RATE_LIMIT_KEYS_MAX; i++) incr(addressKey(`fd00:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`))
    incr("account:acct_1")
    incr(addressKey("10.0.0.1"))
    expect([counts[0], counts[1], counts[2], counts.at(-2), counts.at(-1)]).toEqual([1, 2, 1, 3, 1])
  })

  it("counts an IPv6 client by its /64 and an IPv4 client of a dual-stack socket by its IPv4 address", () => {
    // Proves the fix of a bypass (found by review): every IPv6 address had its own budget,
    // and one subscriber's /64 holds 2^64 of them: sign-ups from one host were unbounded.
    expect(
      ["2001:db8:1:2::1", "2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:0db8:0001:0002::", "2001:db8:1:2::10.0.0.1", "2001:db8:1:3::1", "fe80::1%eth0", "fe80::2", "::1", "::ffff:192.0.2.1", "192.0.2.1", "192.0.2.2"].map(addressKey)
    ).toEqual(["ip:2001:db8:1:2::/64", "ip:2001:db8:1:2::/64", "ip:2001:db8:1:2::/64", "ip:2001:db8:1:2::/64", "ip:2001:db8:1:3::/64", "ip:fe80:0:0:0::/64", "ip:fe80:0:0:0::/64", "ip:0:0:0:0::/64", "ip:192.0.2.1", "ip:192.0.2.1", "ip:192.0.2.2"])
  })

  it("reads past the port a proxy writes with the client's address", () => {
    // Found by review: behind --trust-proxy, `192.0.2.1:5678` read as IPv6 gave a budget per port.
    expect(["192.0.2.1:5678", "192.0.2.1:80", "[2001:db8:1:2::1]:443", "[2001:db8:1:2::9]:8080"].map(addressKey)).toEqual(["ip:192.0.2.1", "ip:192.0.2.1", "ip:2001:db8:1:2::/64", "ip:2001:db8:1:2::/64"])
  })

  it("reads an IPv6 address in brackets without a port, and a dual-stack IPv4 with one, as their own clients", () => {
    // Found by second review: `[2001:db8::1]` gave the key `ip:NaN:…` and `::ffff:192.0.2.1:80`
    // the key `ip:0:0:0:0::/64`: every client a proxy wrote so shared one budget, and one of
    // them could use it up for all.
    expect(["[2001:db8:1:2::1]", "[2001:db8:7:2::1]", "::ffff:192.0.2.1:80", "::ffff:198.51.100.7:443"].map(addressKey)).toEqual([
      "ip:2001:db8:1:2::/64",
      "ip:2001:db8:7:2::/64",
      "ip:192.0.2.1",
      "ip:198.51.100.7"
    ])
  })
})
