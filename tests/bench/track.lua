-- Lua peer for the benchmark: one Matomo tracking call per request, made in the response
-- path with Envoy's httpCall (asynchronous: the response is not held). The request's method,
-- authority, path and user agent are kept in dynamic metadata on the way in.
local function enc(s)
  return (string.gsub(s or "", "[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

function envoy_on_request(request_handle)
  local h = request_handle:headers()
  local m = request_handle:streamInfo():dynamicMetadata()
  m:set("bench", "method", h:get(":method") or "")
  m:set("bench", "authority", h:get(":authority") or "")
  m:set("bench", "path", h:get(":path") or "")
  m:set("bench", "ua", h:get("user-agent") or "")
  m:set("bench", "lang", h:get("accept-language") or "")
end

function envoy_on_response(response_handle)
  local r = response_handle:streamInfo():dynamicMetadata():get("bench") or {}
  local cvar = '{"1":["http_status_code","' .. (response_handle:headers():get(":status") or "")
    .. '"],"2":["http_method","' .. (r.method or "") .. '"]}'
  local query = "/matomo.php?idsite=1&rec=1&apiv=1&url=" .. enc("http://" .. (r.authority or "") .. (r.path or ""))
    .. "&action_name=" .. enc(r.path) .. "&ua=" .. enc(r.ua) .. "&lang=" .. enc(r.lang)
    .. "&cvar=" .. enc(cvar)
  response_handle:httpCall("matomo",
    {[":method"] = "GET", [":path"] = query, [":authority"] = "matomo"},
    "", 5000, true)
end
