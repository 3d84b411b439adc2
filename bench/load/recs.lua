-- wrk script: GET /v1/users/{id}/recommendations?k=K for user ids drawn uniformly at random.
--
-- Usage:
--   wrk -t T -c C -d D --timeout 5s -s bench/load/recs.lua http://127.0.0.1:PORT -- IDS_FILE KEY [K]
--
-- IDS_FILE holds one raw user id per line; KEY is sent as "Authorization: Bearer KEY".
-- done() prints one line "WRKJSON {...}" with requests, duration, req/s, latency p50/p95/p99/
-- max in milliseconds, wrk's socket errors, and the count of responses that were not 2xx
-- (wrk itself only counts statuses > 399), so that run_load.py can parse it.

local threads = {}
local counter = 0

-- setup() and done() run in the main Lua state; init/request/response in each thread's own.
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local requests = {}
local n_requests = 0
non2xx = 0
statuses = {}

function init(args)
  local path, key, k = args[1], args[2], args[3] or "10"
  if path == nil or key == nil then
    error("recs.lua needs: -- IDS_FILE KEY [K]")
  end
  local headers = { ["Authorization"] = "Bearer " .. key }
  for line in io.lines(path) do
    if #line > 0 then
      n_requests = n_requests + 1
      requests[n_requests] = wrk.format("GET", "/v1/users/" .. urlencode(line) .. "/recommendations?k=" .. k, headers)
    end
  end
  if n_requests == 0 then
    error("no user ids in " .. path)
  end
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

function request()
  return requests[math.random(n_requests)]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local s = tostring(status)
    statuses[s] = (statuses[s] or 0) + 1
  end
end

local function ms(us)
  return string.format("%.3f", us / 1000.0)
end

function done(summary, latency, reqs)
  local non2xx_total = 0
  local by_status = {}
  for _, t in ipairs(threads) do
    non2xx_total = non2xx_total + (t:get("non2xx") or 0)
    local st = t:get("statuses") or {}
    for s, n in pairs(st) do by_status[s] = (by_status[s] or 0) + n end
  end
  local parts = {}
  for s, n in pairs(by_status) do table.insert(parts, string.format('"%s":%d', s, n)) end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.6f,"rps":%.3f,"bytes":%d,' ..
    '"latency_ms":{"min":%s,"mean":%s,"stdev":%s,"p50":%s,"p90":%s,"p95":%s,"p99":%s,"p999":%s,"max":%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status_gt_399":%d,"non2xx":%d},' ..
    '"non2xx_by_status":{%s},"threads":%d}\n',
    summary.requests, seconds, summary.requests / seconds, summary.bytes,
    ms(latency.min), ms(latency.mean), ms(latency.stdev), ms(latency:percentile(50)), ms(latency:percentile(90)),
    ms(latency:percentile(95)), ms(latency:percentile(99)), ms(latency:percentile(99.9)), ms(latency.max),
    e.connect, e.read, e.write, e.timeout, e.status, non2xx_total, table.concat(parts, ","), #threads))
end
