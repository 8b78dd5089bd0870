-- wrk script: POSTs a real user-field body, as Bitrix24 encodes it, with a fresh field id on
-- every request so that duplicate suppression does not swallow the load.
-- The body comes from the BODY_FILE environment variable (made by `b24-host send --print`).
-- CLOSE=1 adds `Connection: close`: a new connection per request.

local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
local body = f:read("*a"):gsub("%s+$", "")
f:close()
local before, after = body:match("^(.-data%%5BFIELDS%%5D%%5BID%%5D=)%d+(.*)$")
assert(before, "the body has no data[FIELDS][ID]")
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
if os.getenv("CLOSE") == "1" then
  headers["Connection"] = "close"
end

prefix = 0
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("prefix", threads)
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, headers, before .. (prefix * 100000000 + counter) .. after)
end
