/**
 * The timeline decoder (sim/timeline.ts) refuses what no run can mean, each problem on one
 * line with its exact path in the file, and takes every shipped timeline as it is.
 */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { decodeTimeline } from "../sim/timeline.js"
import { launch, timelineFile } from "./helpers.js"

/** The decoder's problems for `file` (an empty list when it decodes). */
const problems = (file: unknown): ReadonlyArray<string> => {
  const decoded = decodeTimeline(file)
  return Either.isLeft(decoded) ? decoded.left.issues : []
}

describe("seed", () => {
  it("is an integer from 0 to 2^32 − 1, the seeds the PRNG tells apart", () => {
    // Proves F10: 4294967338 ran as 42 (cut to 32 bits), and 1.18e21 said "Expected an integer".
    const message = "seed: an integer from 0 to 4294967295 (the simulator's PRNG takes a 32-bit seed)"
    for (const seed of [4_294_967_296, 4_294_967_338, 1.1805916207174113e21, -1, 1.5]) expect([seed, problems(timelineFile([launch()], { seed }))]).toEqual([seed, [message]])
    for (const seed of [0, 42, 4_294_967_295]) expect([seed, problems(timelineFile([launch()], { seed }))]).toEqual([seed, []])
    expect(problems(timelineFile([launch()], { seed: "x" }))).toEqual(['seed: Expected number, actual "x"'])
  })
})
