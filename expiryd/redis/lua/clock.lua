-- The Redis clock in ms, read once when the script starts.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- A number as Redis and expiryd store it: whole ms, never in exponent form.
local function ms(n) return string.format('%.0f', n) end
