-- id.lua as the per-record path (legacy.go) ran it, kept for
-- BenchmarkTimeline's baseline only. Keeps the id record of one record id
-- and kind (docs/pipelines.md, "Corrections"): where the id was counted and whether a correction
-- replaced it. The id record serialises a record and its correction when
-- they live in different localities (slots).
-- KEYS: 1 id record hash: l = locality, f = the kind:value counter field,
--       r = '1' once replaced
-- ARGV: 1 'claim' or 'replace', 2 ttl (ms),
--       claim: 3 locality, 4 counter field
-- Returns for claim: 1 if the id was replaced already, else 0;
-- for replace: {locality or false, counter field or false}.
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('CHAPPER_BADKEY key ' .. KEYS[1] .. ' is a ' .. t .. ', want a hash')
end
if ARGV[1] == 'claim' then
  redis.call('HSET', KEYS[1], 'l', ARGV[3], 'f', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return redis.call('HEXISTS', KEYS[1], 'r')
end
redis.call('HSET', KEYS[1], 'r', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'l', 'f')
