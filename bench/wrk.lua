-- wrk script for `make bench`: one fixed POST, and the results as one JSON line.
--
-- The request is set at the top level (each wrk thread runs this file), so wrk keeps
-- its static fast path: no Lua call per request. Settings come from the environment:
--   BENCH_BODY_FILE      file whose bytes are the request body (required)
--   BENCH_AUTHORIZATION  value of the Authorization header (optional)
-- done() prints "BENCH_RESULT {...}" with exact percentiles from wrk's histogram
-- (microseconds); errors.status counts responses with a status of 400 or more.

local body_file = assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set")
local handle = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = handle:read("*a")
handle:close()
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, '
      .. '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "mean_us": %.1f, '
      .. '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
