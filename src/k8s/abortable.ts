/**
 * Per-call options that let a caller cancel one request of @kubernetes/client-node 1.4.
 *
 * The generated client (openapi-generator's "typescript" fetch client) builds a
 * `RequestContext` for every call, runs the call's middleware `pre` hooks on it, then sends it
 * with node-fetch, passing `context.getSignal()` as fetch's `signal`. So a middleware that sets
 * the signal on the context makes `controller.abort()` cancel that one HTTP request: node-fetch
 * destroys its socket and the call rejects with an AbortError. The merge strategy is "append"
 * because the default, "replace", would drop any middleware of the client's configuration.
 */
import { Observable, type ConfigurationOptions, type ObservableMiddleware, type RequestContext, type ResponseContext } from "@kubernetes/client-node"

/** The options to pass as the last argument of a generated API call. */
export const abortable = (signal: AbortSignal): ConfigurationOptions => {
  const middleware: ObservableMiddleware = {
    pre: (context: RequestContext) => {
      context.setSignal(signal)
      return new Observable(Promise.resolve(context))
    },
    post: (context: ResponseContext) => new Observable(Promise.resolve(context))
  }
  return { middleware: [middleware], middlewareMergeStrategy: "append" }
}
