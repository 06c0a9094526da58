-- wrk script: each thread stops after the number of responses given as the script's argument,
-- so a run sends an exact number of requests (threads × the argument).
local left

function init(args)
  left = tonumber(args[1]) or 1000
end

function response()
  left = left - 1
  if left <= 0 then
    wrk.thread:stop()
  end
end
