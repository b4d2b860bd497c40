-- Materialises one record on its locality's timeline, once, and applies the
-- correction it carries (docs/pipelines.md, "Corrections").
-- KEYS: 1 seen set, 2 timeline sorted set, 3 counters hash, 4 records hash,
--       5 replaced hash (id -> 1 for every id replaced by a correction)
--       (all of one locality, sharing its hash tag)
-- ARGV: 1 record id ('' when the call only marks ARGV[9] replaced),
--       2 score (record time, ms), 3 body (canvassv1.Record),
--       4 keep (newest N), 5 ttl (ms), 6 news channel ('' publishes nothing),
--       7 TimelineEntry prefix (the body completes it),
--       8 '1' if the record's id record says it was replaced already,
--       9 id this record replaces ('' for none),
--       10 '1' if that id was counted in this locality, 11 and 12 its
--       counter fields (kind, kind:value),
--       13 and 14 this record's counter fields (kind, kind:value)
-- Returns 1 if the record was new and counted, 0 otherwise.
--
-- Redis does not roll back a script that fails part-way, so everything that
-- could make a write fail (a key of another type, a counter that is not an
-- integer) is checked before the first write: a broken key changes nothing,
-- and once it is repaired the retried record is counted once.
local id, replaces = ARGV[1], ARGV[9]
local want = {'set', 'zset', 'hash', 'hash', 'hash'}
for i = 1, 5 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i] then
    return redis.error_reply('CHAPPER_BADKEY key ' .. KEYS[i] .. ' is a ' .. t .. ', want a ' .. want[i])
  end
end
local function check(field)
  local v = redis.call('HGET', KEYS[3], field)
  if v and not (string.match(v, '^-?%d+$') and #v < 19) then
    return redis.error_reply('CHAPPER_BADKEY counter ' .. field .. ' of ' .. KEYS[3] ..
      ' is not an integer below 10^18: ' .. string.format('%q', string.sub(v, 1, 40)))
  end
end

-- What this call will do, decided before any write.
local new, count = false, false
if id ~= '' and redis.call('SISMEMBER', KEYS[1], id) == 0 then
  new = true
  -- Counted = seen and not replaced: a correction that came first marked it.
  count = ARGV[8] ~= '1' and redis.call('HEXISTS', KEYS[5], id) == 0
end
local mark, uncount = false, false
if replaces ~= '' and replaces ~= id and redis.call('HEXISTS', KEYS[5], replaces) == 0 then
  mark = true
  uncount = ARGV[10] == '1' and redis.call('SISMEMBER', KEYS[1], replaces) == 1
end
if count then
  for _, f in ipairs({ARGV[13], ARGV[14]}) do
    local err = check(f)
    if err then return err end
  end
end
if uncount then
  for _, f in ipairs({ARGV[11], ARGV[12]}) do
    local err = check(f)
    if err then return err end
  end
end
if not (new or mark) then
  return 0
end

-- The writes.
if new then
  redis.call('SADD', KEYS[1], id)
  if not count then
    redis.call('HSET', KEYS[5], id, 1)
  end
end
if mark then
  redis.call('HSET', KEYS[5], replaces, 1)
end
if uncount then
  -- The replaced record stops counting and leaves the timeline; the
  -- counters move from its values to the correction's.
  -- A counter that drops to 0 is deleted, so that the end state does not
  -- depend on whether the replaced record came before its correction.
  for _, f in ipairs({ARGV[11], ARGV[12]}) do
    if redis.call('HINCRBY', KEYS[3], f, -1) == 0 then
      redis.call('HDEL', KEYS[3], f)
    end
  end
  redis.call('ZREM', KEYS[2], replaces)
  redis.call('HDEL', KEYS[4], replaces)
end
if count then
  redis.call('HINCRBY', KEYS[3], ARGV[13], 1)
  redis.call('HINCRBY', KEYS[3], ARGV[14], 1)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  redis.call('HSET', KEYS[4], id, ARGV[3])
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
end
for i = 1, 5 do
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
-- News once: for a counted record, and for a correction that took a
-- record off this locality's timeline (readers take a fresh snapshot).
if ARGV[6] ~= '' and (count or uncount) then
  redis.call('PUBLISH', ARGV[6], ARGV[7] .. ARGV[3])
end
if count then
  return 1
end
return 0
