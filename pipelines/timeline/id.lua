-- Keeps the id record of one record id and kind (docs/pipelines.md,
-- "Corrections"): where the id was counted and whether a correction
-- replaced it. The id record serialises a record and its correction when
-- they live in different localities (slots).
-- KEYS: 1 id record: a string '0 <locality> <kind:value counter field>',
--       '1 ...' once replaced, or just '1' when replaced before it was
--       claimed; a hash (l = locality, f = field, r = '1' once replaced)
--       if an older sink wrote it, kept as such until it expires
-- ARGV: 1 'claim' or 'replace', 2 ttl (ms),
--       claim: 3 locality, 4 counter field
-- Returns for claim: 1 if the id was replaced already, else 0;
-- for replace: {locality or false, counter field or false}.
--
-- Nothing is written to a key that is not an id record: a claim's SET NX
-- GET writes only a key that did not exist and answers WRONGTYPE on one
-- of another type, so a new id costs one command (the path every record
-- takes on Redis Cluster); a replace checks the TYPE.
local key, ttl = KEYS[1], ARGV[2]
local function badKey(t)
  return redis.error_reply('CHAPPER_BADKEY key ' .. key .. ' is a ' .. t .. ', want a string (or a hash)')
end
local function notRecord(v)
  return redis.error_reply('CHAPPER_BADKEY key ' .. key .. ' is a string that is not an id record: ' ..
    string.format('%q', string.sub(v, 1, 40)))
end
-- flag returns '1' if id record value v says replaced, '0' if not, or nil
-- if v is not an id record.
local function flag(v)
  local f = string.sub(v, 1, 1)
  if (f == '0' or f == '1') and (#v == 1 or string.sub(v, 2, 2) == ' ') then
    return f
  end
  return nil
end

if ARGV[1] == 'claim' then
  local v = ARGV[3] .. ' ' .. ARGV[4]
  local r = redis.pcall('SET', key, '0 ' .. v, 'NX', 'PX', ttl, 'GET')
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then
      return r
    end
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'hash' then
      return badKey(t)
    end
    redis.call('HSET', key, 'l', ARGV[3], 'f', ARGV[4])
    redis.call('PEXPIRE', key, ttl)
    return redis.call('HEXISTS', key, 'r')
  end
  if not r then
    return 0
  end
  -- claimed or replaced before: keep the mark, refresh the rest
  local f = flag(r)
  if not f then
    return notRecord(r)
  end
  redis.call('SET', key, f .. ' ' .. v, 'PX', ttl)
  return tonumber(f)
end

local t = redis.call('TYPE', key)['ok']
if t == 'hash' then
  redis.call('HSET', key, 'r', '1')
  redis.call('PEXPIRE', key, ttl)
  return redis.call('HMGET', key, 'l', 'f')
end
if t == 'none' then
  redis.call('SET', key, '1', 'PX', ttl)
  return {false, false}
end
if t ~= 'string' then
  return badKey(t)
end
local v = redis.call('GET', key)
if not flag(v) then
  return notRecord(v)
end
redis.call('SET', key, '1' .. string.sub(v, 2), 'PX', ttl)
local l, f = string.match(v, '^. (%-?%d+) (.*)$')
return {l or false, f or false}
