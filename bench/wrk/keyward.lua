-- wrk script for keyward's load tests.
--
-- Env:
--   WRK_KEYS_FILE   callers, one per line: "SECRET [KEY_ID [ACCOUNT_ID]]" (seed-keys writes
--                   all three; a bare secret per line still works). Requests cycle through
--                   them. Without it, WRK_KEY is the only caller.
--   WRK_SCENARIO    list | validate | get | create | mix. Each names its own paths, so the
--                   URL's path is ignored:
--                     list      GET  /v1/api-keys
--                     validate  POST /v1/api-keys/validate
--                     get       GET  /v1/api-keys/{KEY_ID}, the caller's own key (needs KEY_ID)
--                     create    POST /v1/api-keys with WRK_BODY
--                     mix       per 20 requests: 14 validate, 3 list, 2 get, 1 create
--                               (70 / 15 / 10 / 5 %), always in the same interleaved order
--                               so that every run, bare or keyward, sends the same sequence
--   WRK_CREATE_KEYS_FILE  callers for the creates of create and mix (default WRK_KEYS_FILE):
--                   other accounts than the listed ones keep those at a fixed key count,
--                   so their list body stays the bytes the bare server answers.
--   WRK_BODY        the create body (default a small named key with scope read).
--   Without WRK_SCENARIO: WRK_METHOD (GET/POST, default GET) and WRK_BODY (optional) to the
--   URL's path, for a quick run against any one route.
--
-- Every request is built once in init(), so request() costs the same for the bare server
-- and for keyward and takes as little as possible of the shared CPUs.
--
-- done() prints one machine-readable line: rps, latency percentiles (ms) and errors.
-- wrk counts a status >= 400 in errors.status, so create's 201 counts as success; keyward
-- answers these routes with 2xx or 4xx/5xx only, so non2xx is every non-2xx answer.

local scenario = os.getenv("WRK_SCENARIO")
if scenario == "" then scenario = nil end
local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body == "" then body = nil end
local create_body = body or '{"name":"bench","scopes":["read"],"metadata":{"env":"bench"}}'

local MIX = {
  "validate", "validate", "list", "validate", "validate", "get", "validate", "validate",
  "validate", "list", "validate", "create", "validate", "validate", "get", "validate",
  "list", "validate", "validate", "validate",
}

local order        -- the kinds of request, in sending order
local requests = {} -- kind -> request strings, one per caller
local position = {} -- kind -> index of the last caller used
local sent = 0

-- Runs in the main state, once per thread, before that thread's init().
local threads = 0
function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

local function callers_from(file)
  local callers = {}
  if file and file ~= "" then
    for line in io.lines(file) do
      local secret, key_id = line:match("^(%S+)%s*(%S*)")
      if secret then callers[#callers + 1] = { secret = secret, key_id = key_id } end
    end
  end
  return callers
end

local function build(callers, verb, path, with_body)
  local built = {}
  for i, c in ipairs(callers) do
    local headers = { ["x-api-key"] = c.secret }
    if with_body then headers["content-type"] = "application/json" end
    local p = path
    if type(path) == "function" then p = path(c) end
    built[i] = wrk.format(verb, p, headers, with_body)
  end
  return built
end

function init(args)
  local callers = callers_from(os.getenv("WRK_KEYS_FILE"))
  if #callers == 0 then callers[1] = { secret = os.getenv("WRK_KEY") or "", key_id = "" } end
  local creators = callers_from(os.getenv("WRK_CREATE_KEYS_FILE"))
  if #creators == 0 then creators = callers end

  if scenario == nil then
    order = { "custom" }
    requests.custom = build(callers, method, nil, body)
  else
    if scenario == "mix" then order = MIX else order = { scenario } end
    local needed = {}
    for _, kind in ipairs(order) do needed[kind] = true end
    for kind in pairs(needed) do
      if kind == "list" then
        requests.list = build(callers, "GET", "/v1/api-keys")
      elseif kind == "validate" then
        requests.validate = build(callers, "POST", "/v1/api-keys/validate")
      elseif kind == "get" then
        requests.get = build(callers, "GET", function(c)
          if c.key_id == "" then error("WRK_SCENARIO=get needs a KEY_ID on every line of WRK_KEYS_FILE") end
          return "/v1/api-keys/" .. c.key_id
        end)
      elseif kind == "create" then
        requests.create = build(creators, "POST", "/v1/api-keys", create_body)
      else
        error("unknown WRK_SCENARIO " .. kind .. " (list, validate, get, create or mix)")
      end
    end
  end

  -- Threads start far apart in the caller lists (golden-ratio offsets), so they don't
  -- send the same caller at the same moment.
  local spread = ((thread_index or 0) * 0.6180339887) % 1
  for kind, list in pairs(requests) do position[kind] = math.floor(#list * spread) end
end

function request()
  sent = sent % #order + 1
  local kind = order[sent]
  local list = requests[kind]
  local i = position[kind] % #list + 1
  position[kind] = i
  return list[i]
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.requests, errors, summary.errors.status))
end
