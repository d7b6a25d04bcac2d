-- wrk script for the smartgate benchmark; configured through the environment:
--   BENCH_REQUESTS  file of request lines "PATH<TAB>AUTH" (AUTH: pool | fixed | none | bad); PATH may
--                   hold {n}, replaced by a per-thread counter (distinct ids: a cold look-up cache)
--   BENCH_TOKEN     the fixed token;  BENCH_TOKENS  file of tokens, one per line (AUTH pool)
--   BENCH_THREADS  wrk's -t (to spread the threads over the token pool)
--   BENCH_TOKEN_OFFSET  where in the pool to start (so a later run does not resend earlier tokens)
-- done() prints one JSON line with the exact percentiles (microseconds) and the status counts.

local function read_lines(path)
  local lines = {}
  if path == nil or path == "" then return lines end
  for line in io.lines(path) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  return lines
end

local requests_path = os.getenv("BENCH_REQUESTS")
local fixed_token = os.getenv("BENCH_TOKEN") or ""
local tokens_path = os.getenv("BENCH_TOKENS")

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  threads[#threads + 1] = thread
end

local plan = {}
local tokens = {}
local token_index = 0
local counter = 0

function init(args)
  for _, line in ipairs(read_lines(requests_path)) do
    local path, auth = line:match("^([^\t]+)\t(%a+)$")
    plan[#plan + 1] = {path = path, auth = auth}
  end
  tokens = read_lines(tokens_path)
  -- threads start at different places in the pool, so no token is sent twice while it lasts
  local index = thread_index or 0
  local total = tonumber(os.getenv("BENCH_THREADS") or "1")
  if #tokens > 0 then token_index = math.floor(#tokens * index / total) end
  counter = index * 100000000
  token_index = (token_index + tonumber(os.getenv("BENCH_TOKEN_OFFSET") or "0")) % math.max(#tokens, 1)
end

function request()
  counter = counter + 1
  local step = plan[(counter % #plan) + 1]
  local path = step.path:gsub("{n}", tostring(counter))
  local headers = {}
  if step.auth == "fixed" then
    headers["Authorization"] = "Bearer " .. fixed_token
  elseif step.auth == "pool" then
    token_index = (token_index % #tokens) + 1
    headers["Authorization"] = "Bearer " .. tokens[token_index]
  elseif step.auth == "bad" then
    headers["Authorization"] = "Bearer not-a-token"
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d, ' ..
    '"non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
