-- wrk script for `make bench`: every request is the same KServe-style call
-- with a different user id (user-1, user-2, ... in order, so every variant
-- and every run sees the identical request sequence). Each request also
-- carries x-canary-version as a client would route itself (model-v2 for one
-- request in ten): the "none" variant routes on it; the filters replace it.
-- Run wrk with one thread (-t1) so the counter is unique.
local n = 0
local path = "/v1/models/model:predict"

request = function()
  n = n + 1
  local version = (n % 10 == 0) and "model-v2" or "model-v1"
  return wrk.format("GET", path, { ["x-user-id"] = "user-" .. n, ["x-canary-version"] = version })
end

-- One JSON line for tests/bench/bench.py (latencies in microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
