-- Pace each wrk connection: wait WRK_DELAY_MS milliseconds before each
-- request, so N connections send about N * 1000 / (delay + latency)
-- requests per second. Debian's wrk has no rate option (that is wrk2).
-- wrk measures latency from send to response, so the delay is not counted.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "10")

function delay()
  return delay_ms
end
