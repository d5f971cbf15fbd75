/**
 * `isoInstant` remembers the last instant it formatted; these tests prove the memory never
 * changes an answer: it is `Date.prototype.toISOString` for repeated, alternating and
 * invalid instants alike.
 */
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { isoInstant, parseInstantMs } from "../sim/iso.js"

const MS_MAX = 8.64e15

describe("isoInstant", () => {
  it("formats every instant as toISOString does, however calls repeat", () => {
    // Proves the one-entry memory is keyed exactly: runs of one instant, then others, and back.
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -MS_MAX, max: MS_MAX }), { minLength: 1, maxLength: 20 }), fc.array(fc.nat(19), { maxLength: 60 }), (instants, picks) => {
        for (const i of picks.length === 0 ? [0] : picks) {
          const ms = instants[i % instants.length]!
          expect(isoInstant(ms)).toBe(new Date(ms).toISOString())
        }
      })
    )
  })

  it("throws for an invalid instant, also right after formatting a valid one", () => {
    // Proves an invalid instant never returns the remembered text: NaN and out-of-range both throw.
    expect(isoInstant(0)).toBe("1970-01-01T00:00:00.000Z")
    expect(() => isoInstant(Number.NaN)).toThrow(RangeError)
    expect(() => isoInstant(Number.NaN)).toThrow(RangeError)
    expect(() => isoInstant(MS_MAX + 1)).toThrow(RangeError)
    expect(isoInstant(0)).toBe("1970-01-01T00:00:00.000Z")
    expect(isoInstant(-0)).toBe(new Date(-0).toISOString())
  })
})

describe("parseInstantMs", () => {
  it("refuses a day that does not exist instead of rolling it into the next month", () => {
    expect(parseInstantMs("2026-02-28T00:00:00Z")).toBe(Date.UTC(2026, 1, 28))
    expect(parseInstantMs("2028-02-29T12:00:00+02:00")).toBe(Date.UTC(2028, 1, 29, 10))
    expect(parseInstantMs("2026-02-29T00:00:00Z")).toBeUndefined()
    expect(parseInstantMs("2026-02-31T00:00:00Z")).toBeUndefined()
    expect(parseInstantMs("2026-04-31T00:00:00Z")).toBeUndefined()
    expect(parseInstantMs("2026-00-10T00:00:00Z")).toBeUndefined()
  })
})
