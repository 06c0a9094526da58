-- wrk script for the paced runs: each connection waits 1 ms between requests, so `-c 1` offers
-- at most ~1000 req/s and `-c 4` at most ~4000 req/s whatever the proxy does (a rate limit, not
-- a saturation test). wrk measures latency from the write of a request, so the pause is not
-- counted.
function delay()
  return 1
end
