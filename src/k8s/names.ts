/**
 * How the engine's names become Kubernetes names, labels and annotations. Everything here is
 * a pure function of its input, so a restarted (or a second, standby) control plane computes
 * the same pod name for the same workload, and the API server refuses a duplicate create.
 *
 * The engine's workload names (`podNameFor(resource)`: `eco-<id>`, `eco-<id>@<region>` for an
 * inference replica) may hold characters a pod name cannot (`@`, `_`, capitals). A name that
 * is already a valid DNS-1123 label is used as it is; any other is cleaned and given a short
 * hash of the original, so two engine names never share a pod name.
 */
import { createHash } from "node:crypto"

/** The prefix of every label and annotation the driver writes. */
export const LABEL_PREFIX = "ecolink.io"
export const LABELS = {
  /** `"true"` on every pod and service the driver creates: the list/watch selector. */
  managed: `${LABEL_PREFIX}/managed`,
  resource: `${LABEL_PREFIX}/resource`,
  account: `${LABEL_PREFIX}/account`,
  region: `${LABEL_PREFIX}/region`,
  /** The pod's workload (one per GPU resource or inference replica), as a label value. */
  workload: `${LABEL_PREFIX}/workload`,
  /** An inference replica's instance: what the instance's Service selects. */
  instance: `${LABEL_PREFIX}/instance`,
  nodeIndex: `${LABEL_PREFIX}/node-index`
} as const

/** Exact values (labels are lossy: 63 characters, a narrow alphabet). */
export const ANNOTATIONS = {
  workload: `${LABEL_PREFIX}/workload`,
  resource: `${LABEL_PREFIX}/resource`,
  account: `${LABEL_PREFIX}/account`,
  region: `${LABEL_PREFIX}/region`,
  nodeCount: `${LABEL_PREFIX}/node-count`,
  /** An inference replica's instance (the Service it sits behind). */
  service: `${LABEL_PREFIX}/service`,
  /** On a replacement pod (after a preemption): which replacement of the workload it is. */
  replacement: `${LABEL_PREFIX}/replacement`
} as const

export const MANAGED_SELECTOR = `${LABELS.managed}=true`

/** What a pod's labels are made from: its workload (the engine's spec, or what a restarted driver rebuilt from its pods' annotations). */
export interface PodLabelSource {
  readonly workload: string
  readonly resource: string
  readonly account: string
  readonly region: string
  /** An inference replica's instance (the Service that selects it), or null. */
  readonly instance: string | null
}

/**
 * Every label the driver puts on the pod `index` of a workload, and only those: what it creates
 * the pod with, and what it puts back when one of them is removed or changed by hand (a label
 * an operator adds is none of these, and is left alone). Pure, so a restarted control plane,
 * which rebuilds its workloads from the pods' annotations, computes the same labels
 * (src/k8s/cluster.ts `ownLabelsOf`).
 */
export const podLabelsOf = (w: PodLabelSource, index: number): Record<string, string> => ({
  [LABELS.managed]: "true",
  [LABELS.resource]: labelValue(w.instance ?? w.resource),
  [LABELS.account]: labelValue(w.account),
  [LABELS.region]: labelValue(w.region),
  [LABELS.workload]: labelValue(w.workload),
  [LABELS.nodeIndex]: String(index),
  ...(w.instance === null ? {} : { [LABELS.instance]: labelValue(w.instance) })
})

/** A DNS-1123 label: pod hostnames, service names (which also start with a letter). */
const DNS_LABEL_CHARS_MAX = 63
const HASH_CHARS = 8

const shortHash = (s: string): string => createHash("sha256").update(s).digest("hex").slice(0, HASH_CHARS)

/**
 * `name` as a DNS-1123 label of at most `63 - reserve` characters: unchanged when it already
 * is one, otherwise lower-cased, every other character turned into `-`, cut, and suffixed
 * with a hash of the original.
 */
export const dnsLabel = (name: string, reserve = 0): string => {
  const max = DNS_LABEL_CHARS_MAX - reserve
  if (/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) && name.length <= max) return name
  const clean = name
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/-+/g, "-")
    .replace(/^-+|-+$/g, "")
  const head = clean.slice(0, max - HASH_CHARS - 1).replace(/-+$/, "")
  return head === "" ? shortHash(name) : `${head}-${shortHash(name)}`
}

/** A label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends; hashed when lossy. */
export const labelValue = (value: string): string => {
  if (/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(value) && value.length <= DNS_LABEL_CHARS_MAX) return value
  const clean = value.replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "")
  const head = clean.slice(0, DNS_LABEL_CHARS_MAX - HASH_CHARS - 1).replace(/[^A-Za-z0-9]+$/, "")
  return head === "" ? shortHash(value) : `${head}-${shortHash(value)}`
}

/**
 * The pods of a workload: one pod named after the workload, or `node_count` pods
 * `<name>-0`, `<name>-1`, … for a GPU cluster.
 */
export const podNamesOf = (workload: string, node_count: number): string[] => {
  if (node_count === 1) return [dnsLabel(workload)]
  const digits = String(node_count - 1).length
  const base = dnsLabel(workload, digits + 1)
  return Array.from({ length: node_count }, (_, i) => `${base}-${i}`)
}

/** An inference replica's resource is `<instance>@<region>` (src/resources.ts `replicaResource`). */
export const replicaOf = (resource: string): { readonly instance: string; readonly region: string } | null => {
  const at = resource.indexOf("@")
  return at < 0 ? null : { instance: resource.slice(0, at), region: resource.slice(at + 1) }
}

/** The Service in front of an inference instance's replicas (a DNS-1035 label: `eco-` leads). */
export const serviceNameOf = (instance: string): string => dnsLabel(`eco-${instance}`)

/** The PersistentVolumeClaim of a drive or shared filesystem. */
export const claimNameOf = (storage: string): string => dnsLabel(`eco-${storage}`)
