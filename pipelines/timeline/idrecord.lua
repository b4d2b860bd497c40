-- The id record, shared by batch.lua and id.lua (the sink puts this in
-- front of each). An id record is a string: '0 <locality> <kind:value
-- field>', or '1 ...' (or just '1', the locality unknown) once a
-- correction replaced the id. Hashes (l, f, r = '1') written by older
-- sinks are read and kept as such until they expire.

local function badIDKey(key, t)
  return redis.error_reply('CHAPPER_BADKEY key ' .. key .. ' is a ' .. t .. ', want a string (or a hash)')
end

local function notIDRecord(key, v)
  return redis.error_reply('CHAPPER_BADKEY key ' .. key .. ' is a string that is not an id record: ' ..
    string.format('%q', string.sub(v, 1, 40)))
end

-- idFlag returns '1' if id record value v says replaced, '0' if not, or
-- nil if v is not an id record.
local function idFlag(v)
  local f = string.sub(v, 1, 1)
  if (f == '0' or f == '1') and (#v == 1 or string.sub(v, 2, 2) == ' ') then
    return f
  end
  return nil
end

-- claimID keeps the id record at key (TTL ttl ms) of a record counted in
-- locality loc under counter field field, and returns '1' if a correction
-- replaced the record already, '0' if not, or nil and an error. A new id,
-- the common case, costs one command: SET NX GET writes only a key that
-- did not exist and answers WRONGTYPE on one of another type, so nothing
-- is written to a key that is not an id record.
local function claimID(key, ttl, loc, field)
  local v = loc .. ' ' .. field
  local r = redis.pcall('SET', key, '0 ' .. v, 'NX', 'PX', ttl, 'GET')
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then
      return nil, r
    end
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'hash' then
      return nil, badIDKey(key, t)
    end
    redis.call('HSET', key, 'l', loc, 'f', field)
    redis.call('PEXPIRE', key, ttl)
    return tostring(redis.call('HEXISTS', key, 'r'))
  end
  if not r then
    return '0'
  end
  -- the id was claimed or replaced before: keep the mark, refresh the rest
  local flag = idFlag(r)
  if not flag then
    return nil, notIDRecord(key, r)
  end
  redis.call('SET', key, flag .. ' ' .. v, 'PX', ttl)
  return flag
end

