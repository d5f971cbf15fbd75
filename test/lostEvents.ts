/**
 * Timelines of stops the engine's watch did not report, shared by the simulated world's rules
 * (test/gpu-rules.test.ts) and the Kubernetes world's replay of them (test/k8s/stops.test.ts),
 * so both worlds are held to the very same inputs. Each is one H100 `gi-1` of the default
 * catalog, launched at 0:00 (test/helpers.ts `launch`).
 */
import { launch } from "./helpers.js"

/** The pod fails at 1:02; its event is lost; the 1:05 tick finds it. */
export const LOST_FAILURE = [launch(), { at: "PT1H", do: "miss_pod_events", id: "gi-1", count: 1 }, { at: "PT1H2M", do: "pod_fail", id: "gi-1" }]

/** Preempted at 1:01 and resumed at 1:04, both events lost; terminated at 1:30. */
export const LOST_PREEMPT_AND_RESUME = [
  launch(),
  { at: "PT1H", do: "miss_pod_events", id: "gi-1", count: 2 },
  { at: "PT1H1M", do: "preempt", id: "gi-1" },
  { at: "PT1H4M", do: "resume", id: "gi-1" },
  { at: "PT1H30M", do: "terminate", id: "gi-1" }
]

/** A 4 h instance preempted at 1:01, resumed at 1:02, preempted at 1:03, all three events lost; terminated at 3:00. */
export const THREE_LOST = [
  launch({ estimated_duration_hours: 4 }),
  { at: "PT1H", do: "miss_pod_events", id: "gi-1", count: 3 },
  { at: "PT1H1M", do: "preempt", id: "gi-1" },
  { at: "PT1H2M", do: "resume", id: "gi-1" },
  { at: "PT1H3M", do: "preempt", id: "gi-1" },
  { at: "PT3H", do: "terminate", id: "gi-1" }
]

/** A 2 h instance preempted at 1:57 with the event lost: the 2:00 deadline comes before any tick. */
export const LOST_BEFORE_DEADLINE = [launch(), { at: "PT1H", do: "miss_pod_events", id: "gi-1", count: 1 }, { at: "PT1H57M", do: "preempt", id: "gi-1" }]
