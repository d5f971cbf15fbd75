/** Starts `scripts/start.ts` as `npm start` would (a child process) and reads its banner. */
import { spawn, type ChildProcess } from "node:child_process"
import { join } from "node:path"

const ROOT = join(import.meta.dirname, "..", "..")

export interface Started {
  readonly child: ChildProcess
  readonly url: string
  readonly demoKey: string
  readonly stdout: () => string
  readonly stderr: () => string
  /** Sends `signal` and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/** Bound on how long a start may take before the test gives up. */
const START_TIMEOUT_MS = 30_000

/** `demoKey: false`: a replica that starts on standby prints no demo key; wait for the URL alone. */
export const startServerProcess = (args: ReadonlyArray<string>, env: Record<string, string> = {}, wait: { readonly demoKey: boolean } = { demoKey: true }): Promise<Started> =>
  new Promise((resolveStarted, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "start.ts"), ...args], {
      cwd: ROOT,
      env: { ...process.env, ECOLINK_LOG_LEVEL: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      reject(new Error(`start timed out; stdout: ${out}; stderr: ${err}`))
    }, START_TIMEOUT_MS)
    child.stderr!.on("data", (d) => (err += String(d)))
    child.stdout!.on("data", (d) => {
      out += String(d)
      const url = /listening: (http:\/\/\S+)/.exec(out)?.[1]
      const key = /demo key: +(eco_\S+)/.exec(out)?.[1]
      if (url !== undefined && (key !== undefined || !wait.demoKey) && out.includes("operator:")) {
        clearTimeout(timer)
        resolveStarted({
          child,
          url,
          demoKey: key ?? "",
          stdout: () => out,
          stderr: () => err,
          stop: (signal = "SIGTERM") => {
            child.kill(signal)
            return exited
          }
        })
      }
    })
    void exited.then((code) => {
      clearTimeout(timer)
      reject(new Error(`start exited ${code}; stdout: ${out}; stderr: ${err}`))
    })
  })
