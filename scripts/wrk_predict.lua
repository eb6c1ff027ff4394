-- wrk script for scripts/bench.py: POST one body file, count 200s, 503s and other statuses and X-Batch-Size,
-- print JSON at the end. It never waits: a 503's Retry-After is ignored, as by a client that retries at once.
-- wrk -t2 -c128 -d15s --latency -s scripts/wrk_predict.lua http://127.0.0.1:8000/predict -- body.json
-- With `lines T` after the file: one body per line, sent in turn; of T threads, thread i sends lines i, i+T, ...
-- so no body is sent twice before the list runs out (scripts/cache_bench.py).

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local text = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   prepared, next_prepared = {}, 0
   if args[2] == "lines" then
      local line_index, thread_count = 0, tonumber(args[3])
      for line in text:gmatch("[^\n]+") do
         if line_index % thread_count == thread_index then table.insert(prepared, wrk.format(nil, nil, nil, line)) end
         line_index = line_index + 1
      end
   else
      table.insert(prepared, wrk.format(nil, nil, nil, text))
   end
   ok, refused, failed, batch_sum, batch_count = 0, 0, 0, 0, 0
end

function request()
   next_prepared = next_prepared % #prepared + 1
   return prepared[next_prepared]
end

function response(status, headers, body)
   if status == 200 then ok = ok + 1 elseif status == 503 then refused = refused + 1 else failed = failed + 1 end
   local size = headers["X-Batch-Size"] or headers["x-batch-size"]
   if size then
      batch_sum = batch_sum + tonumber(size)
      batch_count = batch_count + 1
   end
end

function done(summary, latency, requests)
   local totals = {ok = 0, refused = 0, failed = 0, batch_sum = 0, batch_count = 0}
   for _, thread in ipairs(threads) do
      for key, _ in pairs(totals) do totals[key] = totals[key] + thread:get(key) end
   end
   local errors = summary.errors
   io.write(string.format(
      '{"ok": %d, "refused": %d, "failed": %d, "socket_errors": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
      '"batch_sum": %d, "batch_count": %d}\n',
      totals.ok, totals.refused, totals.failed, errors.connect + errors.read + errors.write + errors.timeout,
      summary.duration, latency:percentile(50), latency:percentile(99), totals.batch_sum, totals.batch_count))
end
