-- wrk script: POSTs rotating transaction bodies and prints machine-readable
-- figures (status counts and latency percentiles in microseconds).
-- The bodies (WRK_BODIES, a Lua file written by run.py) are already in the server's own
-- protocol; WRK_PATH is where that server scores them.
local bodies = dofile(os.getenv("WRK_BODIES"))
local path = os.getenv("WRK_PATH") or "/predict"
local threads = {}
local i = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, shed, other = 0, 0, 0
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 then shed = shed + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local o, s, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); s = s + t:get("shed"); x = x + t:get("other")
  end
  io.write(string.format("RESULT ok=%d shed=%d other=%d errors=%d duration_us=%d", o, s, x,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format(" p%g=%d", p, latency:percentile(p)))
  end
  io.write("\n")
end
