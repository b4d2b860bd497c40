-- Reads one page of one locality's timeline, its bodies and its counters.
-- KEYS: 1 timeline sorted set, 2 records hash, 3 counters hash (all of one
--       locality, sharing its hash tag)
-- ARGV: 1 limit (entries wanted),
--       2 cursor id ("" for the first page), 3 cursor score (ms)
-- Returns {more, {id, score, id, score, ...}, {body, ...}, {field, value, ...}}
-- newest first; more is 1 when entries older than the last one exist.
local limit = tonumber(ARGV[1])
local page
if ARGV[2] == '' then
  page = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
else
  -- Continue strictly below (score, id) in the set's own order (score, then
  -- id bytes), whatever was added above it since. If the cursor's member was
  -- trimmed, so was everything below it that shares its score.
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[2])
  if rank then
    page = redis.call('ZREVRANGE', KEYS[1], rank + 1, rank + limit + 1, 'WITHSCORES')
  else
    page = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[3], '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  end
end
local more = 0
if #page > 2 * limit then
  more = 1
  page[2 * limit + 2] = nil
  page[2 * limit + 1] = nil
end
local bodies = {}
if #page > 0 then
  local ids = {}
  for i = 1, #page, 2 do
    ids[#ids + 1] = page[i]
  end
  bodies = redis.call('HMGET', KEYS[2], unpack(ids))
end
return {more, page, bodies, redis.call('HGETALL', KEYS[3])}
