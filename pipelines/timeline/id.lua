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
if ARGV[1] == 'claim' then
  local f, err = claimID(key, ttl, ARGV[3], ARGV[4])
  if err then
    return err
  end
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
  return badIDKey(key, t)
end
local v = redis.call('GET', key)
if not idFlag(v) then
  return notIDRecord(key, v)
end
redis.call('SET', key, '1' .. string.sub(v, 2), 'PX', ttl)
local l, f = string.match(v, '^. (%-?%d+) (.*)$')
return {l or false, f or false}
