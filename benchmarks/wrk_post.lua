-- POST bodies for wrk, then one JSON line of results for load.py to read.
--
-- BENCH_BODY      file holding the request body
-- BENCH_LINES     "1": the file holds one body per line; requests cycle through them
-- BENCH_TYPE      Content-Type of the bodies
-- BENCH_HEADERS   extra headers, one "Name: value" per line (an API key, for example)

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

local requests = {}
local next_index = 1

function init(args)
  local headers = { ["Content-Type"] = os.getenv("BENCH_TYPE") or "application/json" }
  for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  local data = read_file(os.getenv("BENCH_BODY"))
  local bodies = {}
  if os.getenv("BENCH_LINES") == "1" then
    for line in data:gmatch("[^\n]+") do bodies[#bodies + 1] = line end
  else
    bodies[1] = data
  end
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", nil, headers, body)
  end
  -- Threads start at different rows so they do not send the same sequence.
  next_index = (tonumber(offset) or 0) % #requests + 1
end

local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function request()
  local chosen = requests[next_index]
  next_index = next_index % #requests + 1
  return chosen
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
