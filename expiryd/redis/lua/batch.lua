-- Many members in one command: `args` holds `step` arguments per member, sent 1,000
-- members at a time (Lua's unpack has a limit). One command per chunk, none per member.
local function call_many(command, key, args, step)
  local size = 1000 * (step or 1)
  for i = 1, #args, size do
    redis.call(command, key, unpack(args, i, math.min(i + size - 1, #args)))
  end
end

-- HMGET of any number of fields; absent ones come back false.
local function hmget_many(key, fields)
  local found = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for _, v in ipairs(part) do table.insert(found, v) end
  end
  return found
end
