-- wrk script for the soak: every request is a KServe V1 predict call from one
-- of SOAK_USERS users, mostly identified by the x-user-id header, some by the
-- user_id cookie, some testers (the rule) and some anonymous (they get the
-- id cookie). Counts every response outside 2xx, and reports one line that
-- tests/soak/soak.py reads.

local users = tonumber(os.getenv("SOAK_USERS") or "100000")
local body = '{"instances":[[6.8,2.8,4.8,1.4]]}'
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  non2xx = 0
end

function request()
  local kind = math.random(100)
  local headers = { ["content-type"] = "application/json" }
  local user = "soak-" .. math.random(users)
  if kind <= 80 then
    headers["x-user-id"] = user
  elseif kind <= 90 then
    headers["cookie"] = "theme=dark; user_id=" .. user
  elseif kind <= 95 then
    headers["x-canary-tester"] = "true"
  end
  return wrk.format("POST", "/v1/models/model:predict", headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    "SOAK_WRK requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d status=%d " ..
    "duration_us=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, bad, e.connect, e.read, e.write, e.timeout, e.status,
    summary.duration, latency:percentile(50), latency:percentile(99), latency.max))
end
