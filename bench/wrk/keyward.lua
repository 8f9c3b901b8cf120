-- wrk script for keyward's load tests.
-- Env: WRK_METHOD (GET/POST, default GET), WRK_BODY (request body, optional),
--      WRK_KEYS_FILE (one API key per line; requests cycle through them) or WRK_KEY.
-- done() prints one machine-readable line: rps, latency percentiles (ms) and errors.

local keys = {}
local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body == "" then body = nil end
local keys_file = os.getenv("WRK_KEYS_FILE")
local counter = 0

function init(args)
  if keys_file then
    for line in io.lines(keys_file) do
      if #line > 0 then keys[#keys + 1] = line end
    end
  end
  if #keys == 0 then keys[1] = os.getenv("WRK_KEY") or "" end
  -- Each thread starts at a different key.
  counter = math.random(#keys)
end

function request()
  counter = counter % #keys + 1
  local headers = { ["x-api-key"] = keys[counter] }
  if body then headers["content-type"] = "application/json" end
  return wrk.format(method, nil, headers, body)
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
