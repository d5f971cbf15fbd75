import { Either } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  costMicros,
  dollars,
  dollarsAsNumber,
  formatDollars,
  holdMicros,
  parseDollars,
  roundHalfUp
} from "../src/money.js"

/** The micros a dollar string parses to; fails the test when it is rejected. */
const parsed = (input: string): bigint => {
  const result = parseDollars(input)
  if (Either.isLeft(result)) throw new Error(`expected ${JSON.stringify(input)} to parse, got ${result.left.message}`)
  return result.right
}

/** The largest magnitude parseDollars accepts: 12 whole digits and 6 decimals. */
const MICROS_ABS_MAX = 10n ** 18n - 1n

describe("parseDollars / formatDollars", () => {
  it("round-trips every amount in range", () => {
    // Proves formatting then parsing any micro amount with at most 12 whole digits gives it back exactly.
    fc.assert(
      fc.property(fc.bigInt({ min: -MICROS_ABS_MAX, max: MICROS_ABS_MAX }), (micros) => {
        expect(parsed(formatDollars(micros))).toBe(micros)
      }),
      { numRuns: 2_000 }
    )
  })

  it("round-trips the edges of the range and the smallest units", () => {
    // Proves the extremes (one micro, the largest accepted amount, zero) survive a round trip.
    for (const micros of [0n, 1n, -1n, 999_999n, 1_000_000n, MICROS_ABS_MAX, -MICROS_ABS_MAX]) {
      expect(parsed(formatDollars(micros))).toBe(micros)
    }
  })

  it("prints two decimals at least, more only when the micros need them", () => {
    // Proves the exact strings the manual and the ledger show.
    expect(formatDollars(3_200_000n)).toBe("3.20")
    expect(formatDollars(-4_800_000n)).toBe("-4.80")
    expect(formatDollars(445n)).toBe("0.000445")
    expect(formatDollars(100_000_000n)).toBe("100.00")
    expect(formatDollars(0n)).toBe("0.00")
    expect(formatDollars(-1n)).toBe("-0.000001")
    expect(formatDollars(1_234_500n)).toBe("1.2345")
    expect(formatDollars(307_600_000n)).toBe("307.60")
  })

  it("parses plain, signed and short-decimal dollar strings into exact micros", () => {
    // Proves the accepted forms map to the exact micro amounts.
    expect(parsed("1.60")).toBe(1_600_000n)
    expect(parsed("-3.2")).toBe(-3_200_000n)
    expect(parsed("100")).toBe(100_000_000n)
    expect(parsed("0.000445")).toBe(445n)
    expect(parsed("0.000001")).toBe(1n)
    expect(parsed("999999999999.999999")).toBe(MICROS_ABS_MAX)
    expect(dollars("4.80")).toBe(4_800_000n)
  })

  it("rejects exponents, spaces, more than six decimals, empty and non-numeric input", () => {
    // Proves every malformed dollar string is refused with InvalidAmount naming the input.
    for (const input of ["1e3", " 1", "1 ", "1.1234567", "", "abc", "1,000", "+1", "1.", ".5", "--1", "0x10", "1000000000000"]) {
      const result = parseDollars(input)
      expect(Either.isLeft(result), `input ${JSON.stringify(input)}`).toBe(true)
      if (Either.isLeft(result)) {
        expect(result.left._tag).toBe("InvalidAmount")
        expect(result.left.input).toBe(input)
      }
    }
  })

  it("dollars() throws on input parseDollars rejects", () => {
    // Proves the literal helper fails loudly instead of returning a wrong amount.
    expect(() => dollars("1e3")).toThrow(/not a dollar amount/)
  })

  it("dollarsAsNumber gives the manual's JSON numbers", () => {
    // Proves the API's numeric form of an extension's additional cost is 4.8, not a float artefact.
    expect(dollarsAsNumber(4_800_000n)).toBe(4.8)
    expect(dollarsAsNumber(-3_200_000n)).toBe(-3.2)
  })
})

describe("roundHalfUp", () => {
  it("rounds an exact half up and everything else to the nearest integer", () => {
    // Proves the one rounding rule: halves go up (not to even), below a half goes down.
    expect(roundHalfUp(1n, 2n)).toBe(1n) // 0.5
    expect(roundHalfUp(3n, 2n)).toBe(2n) // 1.5
    expect(roundHalfUp(5n, 2n)).toBe(3n) // 2.5: banker's rounding would give 2
    expect(roundHalfUp(7n, 2n)).toBe(4n) // 3.5
    expect(roundHalfUp(1n, 3n)).toBe(0n) // 0.333…
    expect(roundHalfUp(2n, 3n)).toBe(1n) // 0.666…
    expect(roundHalfUp(499_999n, 1_000_000n)).toBe(0n)
    expect(roundHalfUp(500_000n, 1_000_000n)).toBe(1n)
    expect(roundHalfUp(0n, 7n)).toBe(0n)
    expect(roundHalfUp(12n, 4n)).toBe(3n) // exact
  })

  it("refuses a negative numerator or a non-positive denominator", () => {
    // Proves misuse is a loud programmer error, not a silently wrong amount.
    expect(() => roundHalfUp(-1n, 2n)).toThrow(/roundHalfUp/)
    expect(() => roundHalfUp(1n, 0n)).toThrow(/roundHalfUp/)
  })

  it("is within half a unit of the exact quotient, and a half rounds up", () => {
    // Proves for arbitrary inputs that 2·|n/d − r| ≤ 1, with equality only when r is above n/d.
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 10n ** 15n }), fc.bigInt({ min: 1n, max: 10n ** 9n }), (n, d) => {
        const r = roundHalfUp(n, d)
        const twiceError = 2n * (r * d - n) // 2·(r − n/d)·d
        expect(twiceError <= d && twiceError > -d).toBe(true)
      })
    )
  })
})

describe("costMicros", () => {
  it("charges 1 GPU at $1.60/h for 2 hours exactly $3.20", () => {
    // Proves a whole-hour usage costs exactly the hold of the manual's example.
    expect(costMicros(1_600_000n, 1, 2 * 3_600_000)).toBe(3_200_000n)
  })

  it("charges 1 second at $1.60/h 444 micros (0.444… rounds down)", () => {
    // Proves sub-micro remainders below a half are dropped.
    expect(costMicros(1_600_000n, 1, 1_000)).toBe(444n)
  })

  it("rounds an exact half micro up", () => {
    // Proves 1 ms at $1.80/h (exactly 0.5 micro) costs 1 micro, and 5 ms (2.5) costs 3, not 2.
    expect(costMicros(1_800_000n, 1, 1)).toBe(1n)
    expect(costMicros(1_800_000n, 1, 3)).toBe(2n)
    expect(costMicros(1_800_000n, 1, 5)).toBe(3n)
    // 2 GPUs at $0.90/h for 1 ms is the same half micro.
    expect(costMicros(900_000n, 2, 1)).toBe(1n)
  })

  it("multiplies by units before rounding, once", () => {
    // Proves 8 GPUs for 1 s cost round(8 × 444.44…) = 3556, not 8 × 444 = 3552.
    expect(costMicros(1_600_000n, 8, 1_000)).toBe(3_556n)
  })

  it("costs nothing for zero time or zero units", () => {
    // Proves an instance that never ran consumes nothing.
    expect(costMicros(1_600_000n, 1, 0)).toBe(0n)
    expect(costMicros(1_600_000n, 0, 3_600_000)).toBe(0n)
  })

  it("refuses fractional or negative durations and units", () => {
    // Proves bad inputs are programmer errors, never silently rounded.
    expect(() => costMicros(1_600_000n, 1, 1.5)).toThrow(/duration_ms/)
    expect(() => costMicros(1_600_000n, 1, -1)).toThrow(/duration_ms/)
    expect(() => costMicros(1_600_000n, 1.5, 1)).toThrow(/units/)
    expect(() => costMicros(1_600_000n, -1, 1)).toThrow(/units/)
  })
})

describe("holdMicros", () => {
  it("holds the manual's examples exactly", () => {
    // Proves 1 GPU × $1.60/h × 2 h holds $3.20 and extending 3 h holds $4.80 more.
    expect(formatDollars(holdMicros(1_600_000n, 1, 2))).toBe("3.20")
    expect(holdMicros(1_600_000n, 1, 2)).toBe(3_200_000n)
    expect(formatDollars(holdMicros(1_600_000n, 1, 3))).toBe("4.80")
    expect(holdMicros(1_600_000n, 1, 3)).toBe(4_800_000n)
  })

  it("equals the cost of running for exactly the held hours", () => {
    // Proves a hold fully used leaves nothing to refund: costMicros(rate, units, h hours) == holdMicros(rate, units, h).
    fc.assert(
      fc.property(fc.bigInt({ min: 1n, max: 100_000_000n }), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 720 }), (rate, units, hours) => {
        expect(costMicros(rate, units, hours * 3_600_000)).toBe(holdMicros(rate, units, hours))
      })
    )
  })

  it("refuses fractional or negative hours", () => {
    // Proves holds are whole hours only.
    expect(() => holdMicros(1_600_000n, 1, 1.5)).toThrow(/hours/)
    expect(() => holdMicros(1_600_000n, 1, -1)).toThrow(/hours/)
  })
})
