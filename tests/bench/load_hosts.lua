-- wrk script for `make bench-rollouts` (tests/bench/rollouts.py): load.lua's
-- requests (a new user id on each, x-canary-version as a client would send
-- it), each to the next of BENCH_HOSTS host names, so the requests spread
-- evenly over every host of every rollout of the config. BENCH_HOSTS=0 sends
-- them all to a host no rollout lists. Run wrk with one thread (-t1).
local n = 0
local path = "/v1/models/model:predict"
local hosts = tonumber(os.getenv("BENCH_HOSTS") or "1")

request = function()
  n = n + 1
  local version = (n % 10 == 0) and "model-v2" or "model-v1"
  local host
  if hosts == 0 then
    host = "nowhere.example.org"
  else
    -- Rollout r has the hosts m<r>.models.example.com and
    -- m<r>-predictor.models.example.com (rollouts.py's config).
    local h = n % hosts
    local r = math.floor(h / 2)
    host = (h % 2 == 0) and ("m" .. r .. ".models.example.com") or ("m" .. r .. "-predictor.models.example.com")
  end
  return wrk.format("GET", path, { ["Host"] = host, ["x-user-id"] = "user-" .. n, ["x-canary-version"] = version })
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
