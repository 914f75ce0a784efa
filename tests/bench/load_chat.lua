-- wrk script for `make bench-models` (tests/bench/models.py): every request
-- POSTs one JSON body, read from the file BENCH_BODY, to BENCH_PATH
-- (default /v1/chat/completions), with content-type: application/json.
-- Where the body holds the marker @USER@, each request puts its own user id
-- there (user-1, user-2, ... in order, as tests/bench/load.lua does), and
-- sends the same id in x-user-id; x-canary-version as load.lua sends it
-- (model-v2 on every tenth request: the "none" variant routes on it).
-- BENCH_LIMIT=N stops after N responses (the memory part).
-- Run wrk with one thread (-t1) so the counter is unique.
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local file = assert(io.open(assert(os.getenv("BENCH_BODY"), "BENCH_BODY unset"), "rb"))
local text = file:read("*a")
file:close()
local at = text:find("@USER@", 1, true)
local prefix = at and text:sub(1, at - 1) or text
local suffix = at and text:sub(at + 6) or ""
local n = 0

request = function()
  n = n + 1
  local id = "user-" .. n
  local version = (n % 10 == 0) and "model-v2" or "model-v1"
  local body = at and (prefix .. id .. suffix) or text
  return wrk.format("POST", path, {
    ["content-type"] = "application/json",
    ["x-user-id"] = id,
    ["x-canary-version"] = version,
  }, body)
end

local limit = tonumber(os.getenv("BENCH_LIMIT") or "")
if limit then
  local responses = 0
  response = function(status, headers, body)
    responses = responses + 1
    if responses >= limit then
      wrk.thread:stop()
    end
  end
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
