-- wrk script for make bench-matomo (matomo.py): requests from people, not from one client.
-- Envoy takes a request's X-Forwarded-For as its client address, so each person is a visitor
-- of their own to the filter (its `cip`, and the lane their hits travel in) and to Matomo.
-- ACTIVE people browse at a time, each opening PAGES product pages; then the next ACTIVE come,
-- so every visit has PAGES page views, as in matomo.py's direct runs.
--
--   wrk -t1 -cCONNECTIONS ... -s visitors.lua URL -- [RATE CONNECTIONS]
--
-- With RATE, each connection pauses so that all of them together offer about RATE requests per
-- second (the response time comes on top, so a little less arrives); without it, full load.
local ACTIVE, PAGES = 100, 5
local UAS = {
  "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
}
local pause, sent = 0, 0

function init(args)
  if args[1] then
    pause = 1000 * tonumber(args[2]) / tonumber(args[1])
  end
end

function request()
  local person = ACTIVE * math.floor(sent / (ACTIVE * PAGES)) + sent % ACTIVE
  sent = sent + 1
  local ip = string.format("10.%d.%d.%d", math.floor(person / 65536) % 256,
    math.floor(person / 256) % 256, person % 256)
  return wrk.format("GET", string.format("/products/%d", math.random(1, 100)), {
    ["Host"] = "shop.example",
    ["User-Agent"] = UAS[person % #UAS + 1],
    ["Accept-Language"] = "en-US,en;q=0.9",
    ["X-Forwarded-For"] = ip,
  })
end

function delay()
  return pause
end
