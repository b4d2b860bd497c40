-- Materialises one record on its locality's timeline, once.
-- KEYS: 1 seen set, 2 timeline sorted set, 3 counters hash, 4 records hash
--       (all of one locality, sharing its hash tag)
-- ARGV: 1 record id, 2 score (record time, ms), 3 body (canvassv1.Record),
--       4 keep (newest N), 5 ttl (ms), 6 news channel,
--       7 TimelineEntry prefix (the body completes it), 8.. counter fields
-- Returns 1 if the record was new, 0 if it had been counted before.
--
-- Redis does not roll back a script that fails part-way, so everything that
-- could make a write fail (a key of another type, a counter that is not an
-- integer) is checked before the first write: a broken key changes nothing,
-- and once it is repaired the retried record is counted once.
local want = {'set', 'zset', 'hash', 'hash'}
for i = 1, 4 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i] then
    return redis.error_reply('CHAPPER_BADKEY key ' .. KEYS[i] .. ' is a ' .. t .. ', want a ' .. want[i])
  end
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 0
end
for i = 8, #ARGV do
  local v = redis.call('HGET', KEYS[3], ARGV[i])
  if v and not (string.match(v, '^-?%d+$') and #v < 19) then
    return redis.error_reply('CHAPPER_BADKEY counter ' .. ARGV[i] .. ' of ' .. KEYS[3] ..
      ' is not an integer below 10^18: ' .. string.format('%q', string.sub(v, 1, 40)))
  end
end
redis.call('SADD', KEYS[1], ARGV[1])
for i = 8, #ARGV do
  redis.call('HINCRBY', KEYS[3], ARGV[i], 1)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  -- The oldest by record time go, with their bodies; a late record older
  -- than everything kept is trimmed straight away but stays counted.
  local old = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
  for i = 1, #old, 500 do
    redis.call('HDEL', KEYS[4], unpack(old, i, math.min(i + 499, #old)))
  end
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ARGV[3])
return 1
