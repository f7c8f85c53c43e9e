-- wrk script for scripts/bench: POSTs the reference sender's payload with a distinct
-- generation_id per request; with BENCH_DUP=0.3, 30% of requests repeat an earlier one of the
-- same thread (as a sender's retry would). Prints one JSON line of results when done.

local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  dup = tonumber(os.getenv("BENCH_DUP") or "0") or 0
  run = tonumber(os.getenv("BENCH_RUN") or "0") or 0
  math.randomseed(tid * 7919 + run)
end

function request()
  counter = counter + 1
  local n = counter
  if dup > 0 and counter > 1 and math.random() < dup then
    n = math.random(1, counter - 1)
  end
  local id = string.format("%08x-%04x-4000-8000-%012x", run % 0x100000000, tid, n)
  local body = '{"generation_id":"' .. id .. '","status":"completed","video_url":"https://cdn.example.com/videos/'
    .. id .. '.mp4","model":"kling-o3-video-10s-pro","message":null}'
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
