-- Keeps the id record of one record id and kind (docs/pipelines.md,
-- "Corrections"): where the id was counted and whether a correction
-- replaced it. The id record serialises a record and its correction when
-- they live in different localities (slots).
-- KEYS: 1 id record hash: l = locality, f = the kind:value counter field,
--       r = '1' once replaced
-- ARGV: 1 'claim' or 'replace', 2 ttl (ms),
--       claim: 3 locality, 4 counter field
-- Returns for claim: 1 if the id was replaced already, else 0;
-- for replace: {locality or false, counter field or false}.
--
-- Nothing is written to a key of another type: a claim's HSET fails on one
-- before it changes anything (one command fewer than TYPE first, on the
-- path every record takes on Redis Cluster); a replace checks the TYPE.
local function badKey()
  local t = redis.call('TYPE', KEYS[1])['ok']
  return redis.error_reply('CHAPPER_BADKEY key ' .. KEYS[1] .. ' is a ' .. t .. ', want a hash')
end
if ARGV[1] == 'claim' then
  local r = redis.pcall('HSET', KEYS[1], 'l', ARGV[3], 'f', ARGV[4])
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) == 'WRONGTYPE' then
      return badKey()
    end
    return r
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('HEXISTS', KEYS[1], 'r')
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'hash' then
  return badKey()
end
redis.call('HSET', KEYS[1], 'r', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'l', 'f')
