-- The Lua peer of canary-selector: what a mesh user writes today as a Lua
-- EnvoyFilter for sticky canaries. It is the fair equivalent of the bench's
-- canary-selector config (tests/bench/bench.py), with the same semantics:
--
--   1. rule: x-canary-tester == "true"  ->  model-v2
--   2. sticky: bucket = murmur3_x86_32("model-v1:" .. x-user-id, seed 0),
--      model-v1 if bucket < floor(90 * 2^32 / 100), else model-v2
--      (the README's formula: the same users land on the same versions as
--      with canary-selector)
--   3. anonymous (no user id): a random pick at 90/10
--
-- then it replaces the routing header and clears the route cache so the
-- router re-evaluates the route. Like canary-selector, it reads each header
-- once and precomputes everything it can at load time. Envoy's HTTP/1 codec
-- already strips surrounding whitespace from header values, so no trim here.
-- (It keeps no per-version counters: a typical Lua EnvoyFilter does not.)

local bit = require("bit")
local band, bor, bxor = bit.band, bit.bor, bit.bxor
local lshift, rshift, rol, tobit = bit.lshift, bit.rshift, bit.rol, bit.tobit
local byte, sub = string.byte, string.sub

local SALT = "model-v1:"
local MAX_ID = 256
-- floor(90 * 2^32 / 100): buckets below it are model-v1's slice.
local V1_BELOW = 3865470566

-- 32-bit multiply mod 2^32 with exact double arithmetic (products < 2^53).
local function mul32(a, b)
  local lo = band(a, 0xffff)
  local hi = rshift(a, 16)
  return tobit(lo * b + lshift(tobit(hi * b), 16))
end

local C1, C2 = tobit(0xcc9e2d51), tobit(0x1b873593)

local function murmur3(key)
  local h = 0
  local len = #key
  local nblocks = len - len % 4
  for i = 1, nblocks, 4 do
    local b1, b2, b3, b4 = byte(key, i, i + 3)
    local k = bor(b1, lshift(b2, 8), lshift(b3, 16), lshift(b4, 24))
    k = mul32(rol(mul32(k, C1), 15), C2)
    h = bxor(h, k)
    h = tobit(mul32(rol(h, 13), 5) + 0xe6546b64)
  end
  local rest = len - nblocks
  if rest > 0 then
    local b1, b2, b3 = byte(key, nblocks + 1, len)
    local k = b1
    if rest >= 2 then k = bor(k, lshift(b2, 8)) end
    if rest == 3 then k = bor(k, lshift(b3, 16)) end
    h = bxor(h, mul32(rol(mul32(k, C1), 15), C2))
  end
  h = bxor(h, len)
  h = mul32(bxor(h, rshift(h, 16)), tobit(0x85ebca6b))
  h = mul32(bxor(h, rshift(h, 13)), tobit(0xc2b2ae35))
  h = bxor(h, rshift(h, 16))
  -- bit ops return signed 32-bit numbers: back to [0, 2^32).
  if h < 0 then h = h + 4294967296 end
  return h
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local version
  if headers:get("x-canary-tester") == "true" then
    version = "model-v2"
  else
    local id = headers:get("x-user-id")
    if id ~= nil and id ~= "" then
      if #id > MAX_ID then id = sub(id, 1, MAX_ID) end
      version = murmur3(SALT .. id) < V1_BELOW and "model-v1" or "model-v2"
    else
      version = math.random() < 0.9 and "model-v1" or "model-v2"
    end
  end
  headers:replace("x-canary-version", version)
  request_handle:clearRouteCache()
end
