-- Pace each wrk connection: before each request it waits a random time,
-- exponentially distributed with mean WRK_DELAY_MS milliseconds, so the
-- connections together send a Poisson-like stream of about
-- N * 1000 / (mean delay + latency) requests per second. A fixed delay would
-- make every connection fire in the same millisecond and measure the queue
-- of that burst. Debian's wrk has no rate option (that is wrk2); wrk counts
-- latency from each request's send, so the delay is not included.
local mean_ms = tonumber(os.getenv("WRK_DELAY_MS") or "10")

function init(args)
  math.randomseed(os.time())
end

function delay()
  -- wrk truncates the delay to whole milliseconds; +0.5 rounds instead.
  return math.floor(-math.log(1 - math.random()) * mean_ms + 0.5)
end
