-- wrk script: POST distinct JSON bodies, one per line of a file, round-robin from a per-thread offset.
-- usage: wrk -t1 -c32 -d10s -s benchmarks/lua/post.lua http://127.0.0.1:8000/generate -- bodies.jsonl
-- env BENCH_AUTH, when set, is sent as the Authorization header (TorchServe's inference token).
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (microseconds).

local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if #bodies == 0 then
    error("no bodies in " .. args[1])
  end
  index = (id * 7919) % #bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local auth = os.getenv("BENCH_AUTH")
  if auth and #auth > 0 then
    wrk.headers["Authorization"] = auth
  end
end

function request()
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean
  ))
end
