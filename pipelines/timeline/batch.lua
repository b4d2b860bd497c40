-- Materialises many records in one call: each op is what record.lua did for
-- one record, in the same order, so a call has the effect of its ops run one
-- after another (docs/pipelines.md, "Timeline", "Corrections").
-- KEYS: five keys per locality of the call (seen set, timeline sorted set,
--       counters hash, records hash, replaced hash; all of one locality,
--       sharing its hash tag), and on a standalone Redis the id records of
--       the records whose ids the call claims itself.
--       On a standalone Redis, after them, the two prefix control keys
--       (active, rebuild) when ARGV[3] asks for their check.
-- ARGV: 1 ttl (ms), 2 keep (newest N), 3 the place in KEYS of the active
--       prefix key (the rebuild key follows it), 0 for no check; 4 and 5
--       what the active and rebuild keys hold if the prefixes did not
--       change since the sink read them ('=' .. value, '' if absent):
--       otherwise the call writes nothing and answers CHAPPER_STALE_PREFIXES;
--       then 15 fields per op:
--   +0 k: KEYS[k] .. KEYS[k+4] are the op's locality keys
--   +1 locality number (the id record's l)
--   +2 record id ('' when the op only marks +11 replaced here)
--   +3 score (record time, ms), +4 body (canvassv1.Record),
--   +5 news channel ('' publishes nothing), +6 TimelineEntry prefix (the
--      body completes it), +7 and +8 the record's counter fields (kind,
--      kind:value)
--   +9 idk: KEYS[idk] is the record's id record, claimed here (standalone);
--      0 when the id round claimed it already and +10 holds its answer
--   +10 '1' if the id record says the record was replaced already
--   +11 id this record replaces ('' for none), +12 '1' if that id was
--      counted in this locality, +13 its kind:value counter field
--   +14 '1' to refresh the TTLs of the locality's keys (the sink does so
--      once per TTL/100 per locality, see below)
-- Returns the number of records counted, or the first error.
--
-- Redis does not roll back a script that fails part-way. Every key an op
-- writes is proven to be of its type before the op's first write, and
-- every counter field before the op that changes it: an op that would fail
-- is skipped whole (with every later op of a broken locality), the others
-- go on, and the call returns the first such error after it set the TTLs
-- of what it wrote. A skipped record changed nothing (its id, if claimed,
-- says only where it is to count), so once the key is repaired the retried
-- batch counts it once. A key's type is proven by the reads an op makes
-- anyway (SMISMEMBER, SISMEMBER, HEXISTS, HLEN, ZCARD, HMGET answer
-- WRONGTYPE on a key of another type), and by TYPE only for a key no read
-- touched before the op's first write, so that a locality with one or two
-- records in the call costs few commands more than the records
-- themselves.
--
-- Plain ops (a new record to count, correcting nothing), the common case,
-- write together: each waits, after its reads, until the locality's next
-- op that is not plain or the end of the call, and then all waiting ops of
-- the locality are written with one HSET of their bodies (which proves
-- the records hash: if it fails, none of them wrote anything), one SADD,
-- one ZADD and at most one trim. Which ids are new is read for all of a
-- locality's ops with one SMISMEMBER. The news is sent at the end of the
-- call, in op order; Redis runs the call as one, so no reader sees the
-- difference. An op that is not plain and counts a record without marking
-- one (a correction of itself, or of a record replaced already) proves its
-- records hash by its own HSET, right after the SADD, and a failing HSET
-- is undone by an SREM, so that the op still changes nothing.
--
-- TTLs: a locality's five keys get their TTL (PEXPIRE) at the end of a
-- call that wrote there when +14 asks for it, and each key the call may
-- have created: the timeline, the records hash and the seen set when the
-- timeline was empty before a ZADD, the replaced hash and the seen set
-- when the replaced hash was written (rare: corrections), the counters
-- when a counter field was created. A key can lack its TTL only after a
-- hand deletion, until the sink's next refresh of the locality (TTL/100 at
-- most) or restart.
local ttl, keep = ARGV[1], tonumber(ARGV[2])
local check = tonumber(ARGV[3])
if check > 0 then
  local function raw(key)
    local v = redis.call('GET', key)
    if v then return '=' .. v end
    return ''
  end
  if raw(KEYS[check]) ~= ARGV[4] or raw(KEYS[check + 1]) ~= ARGV[5] then
    return redis.error_reply('CHAPPER_STALE_PREFIXES the timeline prefixes changed since the sink read them')
  end
end
local want = {'set', 'zset', 'hash', 'hash', 'hash'}
-- per locality (by k): the first error found (broken), the keys proven to
-- be of their type (proven[k][i] for KEYS[k + i]), keys written, counter
-- fields found to be integers with their values then (base; big for one
-- too large for exact arithmetic in Lua), the timeline's size once read,
-- the counter changes, applied once per locality at the end, the replaced
-- ids if the replaced hash was empty at the start (rpAll), and whether the
-- keys' TTLs are to be set (refresh, fresh)
local broken, proven, touched, good, card, delta = {}, {}, {}, {}, {}, {}
local base, big, rpAll, refresh, fresh = {}, {}, {}, {}, {}
-- per locality: the ids of its ops (idsOf), the ids in its seen set as
-- one SMISMEMBER read them, with those this call added (seenIn), and the
-- plain ops whose writes wait for flush (pending); the news of the call,
-- sent at its end in op order (news: channel, message; false once
-- cancelled)
local idsOf, seenIn, pending, news = {}, {}, {}, {}
local first, counted = nil, 0
for o = 6, #ARGV, 15 do
  local id = ARGV[o + 2]
  if id ~= '' then
    local k = tonumber(ARGV[o])
    local ids = idsOf[k]
    if not ids then
      ids = {}
      idsOf[k] = ids
    end
    ids[#ids + 1] = id
  end
end

-- badKey is the error of KEYS[k + i] holding another type; it stops every
-- later op of locality k.
local function badKey(k, i)
  local key = KEYS[k + i]
  local t = redis.call('TYPE', key)['ok']
  local err = redis.error_reply('CHAPPER_BADKEY key ' .. key .. ' is a ' .. t .. ', want a ' .. want[i + 1])
  broken[k] = err
  return err
end

-- read runs a command that reads or, for SADD, writes KEYS[k + i] alone,
-- answering its reply, or the broken-key error if the key holds another
-- type (Redis refuses such a command before it changes anything).
local function read(k, i, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) == 'WRONGTYPE' then
      return nil, badKey(k, i)
    end
    return nil, r
  end
  proven[k][i] = true
  return r
end

-- ready proves, with TYPE, the type of every key of locality k but the
-- seen set that no read proved yet, before the first write of an op
-- there that is not plain (see apply). The seen set needs no TYPE: an op
-- writes it only with SADD, its first write, which fails whole on a key
-- of another type.
local function ready(k)
  local p = proven[k]
  if p.all then return nil end
  for i = 1, 4 do
    if not p[i] then
      local t = redis.call('TYPE', KEYS[k + i])['ok']
      if t ~= 'none' and t ~= want[i + 1] then
        return badKey(k, i)
      end
      p[i] = true
    end
  end
  p.all = true
  return nil
end

-- replaced answers whether locality k's replaced hash holds id. Most
-- localities have none: one HLEN per call answers for all their ops.
local function replaced(k, id)
  local all = rpAll[k]
  if all == nil then
    local n, err = read(k, 4, 'HLEN', KEYS[k + 4])
    if err then return nil, err end
    all = false
    if n == 0 then all = {} end
    rpAll[k] = all
  end
  if all then return all[id] == true end
  local r, err = read(k, 4, 'HEXISTS', KEYS[k + 4], id)
  if err then return nil, err end
  return r == 1
end

-- created notes that KEYS[k + i] (all five keys of locality k for i =
-- nil) may have been created by this call, so that it gets its TTL.
local function created(k, i)
  if fresh[k] == true then return end
  if i == nil then
    fresh[k] = true
    return
  end
  if not fresh[k] then fresh[k] = {} end
  fresh[k][i] = true
end

-- markReplaced writes id into locality k's replaced hash, which may create
-- the hash.
local function markReplaced(k, id)
  redis.call('HSET', KEYS[k + 4], id, 1)
  if rpAll[k] then rpAll[k][id] = true end
  -- and the seen set, when the op's id is not counted and the timeline
  -- not read
  created(k, 4)
  created(k, 0)
end

-- badCounters checks the counter fields a and b of locality k (counters
-- hash ct) once per call and keeps their values: our own changes keep them
-- integers.
local function badCounters(k, ct, a, b)
  local g = good[k]
  if not g then
    g = {}
    good[k], base[k], big[k] = g, {}, {}
  end
  local need = {}
  if not g[a] then need[#need + 1] = a end
  if b ~= a and not g[b] then need[#need + 1] = b end
  if #need == 0 then return nil end
  local vs, err = read(k, 2, 'HMGET', ct, unpack(need))
  if err then return err end
  for i, field in ipairs(need) do
    local v = vs[i]
    if v and not (string.match(v, '^-?%d+$') and #v < 19) then
      return redis.error_reply('CHAPPER_BADKEY counter ' .. field .. ' of ' .. ct ..
        ' is not an integer below 10^18: ' .. string.format('%q', string.sub(v, 1, 40)))
    end
  end
  for i, field in ipairs(need) do
    g[field] = true
    local v = vs[i]
    if v and #v > 15 then
      -- beyond the integers a Lua number holds exactly: HINCRBY it
      big[k][field] = true
    elseif v then
      base[k][field] = tonumber(v)
    end
  end
  return nil
end

local function add(k, field, n)
  local d = delta[k]
  if not d then
    d = {}
    delta[k] = d
  end
  d[field] = (d[field] or 0) + n
end

-- claim keeps the id record of a record (idrecord.lua's claimID).
local function claim(key, loc, field)
  return claimID(key, ttl, loc, field)
end

-- isNew answers whether id is new to locality k's seen set. The first
-- op of k there reads, with one SMISMEMBER, which of the ids of k's ops
-- the set holds (proving its type); the ops then note what they add.
local function isNew(k, id)
  local s = seenIn[k]
  if not s then
    local ids = idsOf[k]
    local r, err = read(k, 0, 'SMISMEMBER', KEYS[k], unpack(ids))
    if err then return nil, err end
    s = {}
    for i, v in ipairs(r) do
      if v == 1 then s[ids[i]] = true end
    end
    seenIn[k] = s
  end
  return not s[id]
end

-- publish queues op o's news (its TimelineEntry) on its channel, sent at
-- the end of the call in op order; it returns the news' place, for flush
-- to cancel, or nil if the op publishes nothing.
local function publish(o)
  local channel = ARGV[o + 5]
  if channel == '' then return nil end
  news[#news + 1] = {channel, ARGV[o + 6] .. ARGV[o + 4]}
  return #news
end

-- addToTimeline adds records (score, id, ...) of locality k, whose
-- bodies are in its records hash, to its timeline, and trims it to the
-- newest keep by record time. The timeline keeps the same records whether
-- they are added one by one, each followed by a trim, or all at once and
-- trimmed once.
local function addToTimeline(k, ...)
  local tl, rec = KEYS[k + 1], KEYS[k + 3]
  if card[k] == 0 then
    -- the timeline and the records hash are created here, and the seen
    -- set if the locality is new (the counters are noted when a field
    -- is new, the replaced hash when it is written)
    created(k, 0)
    created(k, 1)
    created(k, 3)
  end
  local n = card[k] + redis.call('ZADD', tl, ...)
  if n > keep then
    -- The oldest by record time go, with their bodies; a late record
    -- older than everything kept is trimmed straight away but stays
    -- counted.
    local old = redis.call('ZPOPMIN', tl, n - keep)
    for i = 1, #old, 1000 do
      local gone = {}
      for j = i, math.min(i + 999, #old), 2 do gone[#gone + 1] = old[j] end
      redis.call('HDEL', rec, unpack(gone))
    end
    n = keep
  end
  card[k] = n
end

-- writeBodies stores bodies (id, body, ...) in locality k's records hash;
-- as its first write there it proves the hash's type, and on a key of
-- another type it writes nothing and answers the broken-key error.
local function writeBodies(k, ...)
  local r = redis.pcall('HSET', KEYS[k + 3], ...)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) == 'WRONGTYPE' then
      return badKey(k, 3)
    end
    return r
  end
  proven[k][3] = true
  return nil
end

-- flush writes the pending plain ops of locality k, all new records to
-- count: one HSET of their bodies (its first write, proving the records
-- hash: if it fails nothing was written and the ops are skipped whole),
-- one SADD, one ZADD and at most one trim for all of them.
local function flush(k)
  local p = pending[k]
  if not p then return nil end
  pending[k] = nil
  local seen = KEYS[k]
  local bodies, ids, scored = {}, {}, {}
  for i, o in ipairs(p) do
    local id = ARGV[o.at + 2]
    bodies[2 * i - 1], bodies[2 * i] = id, ARGV[o.at + 4]
    ids[i] = id
    scored[2 * i - 1], scored[2 * i] = ARGV[o.at + 3], id
  end
  local err = writeBodies(k, unpack(bodies))
  if err then
    for _, o in ipairs(p) do
      seenIn[k][ARGV[o.at + 2]] = nil
      if o.news then news[o.news] = false end
    end
    return err
  end
  touched[k] = true
  redis.call('SADD', seen, unpack(ids))
  addToTimeline(k, unpack(scored))
  for _, o in ipairs(p) do
    add(k, ARGV[o.at + 7], 1)
    add(k, ARGV[o.at + 8], 1)
  end
  counted = counted + #p
  return nil
end

-- apply is record.lua for one op. Its reads come first and prove the
-- types of the keys they touch; SADD, the op's first write, says whether
-- the id is new.
local function apply(o)
  local k = tonumber(ARGV[o])
  if broken[k] then return broken[k] end
  if not proven[k] then proven[k] = {} end
  if ARGV[o + 14] == '1' then refresh[k] = true end
  local seen, tl, ct, rec = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local id, kind, detail, replaces = ARGV[o + 2], ARGV[o + 7], ARGV[o + 8], ARGV[o + 11]
  local wasReplaced = ARGV[o + 10]
  local idk = tonumber(ARGV[o + 9])
  local err

  if idk > 0 then
    -- A record skipped later still leaves its id record as the retry
    -- will find it.
    wasReplaced, err = claim(KEYS[idk], ARGV[o + 1], detail)
    if err then return err end
  end

  -- What this op may do, decided before any write to the locality.
  -- Counted = new to the seen set and not replaced. A correction marks
  -- what it replaces in the id record before the record is claimed or,
  -- once the record counted, takes it off here (where its id is seen), so
  -- for an id new to the seen set the id record's answer is the whole
  -- answer and the replaced hash need not be read.
  local mayCount = id ~= '' and wasReplaced ~= '1'
  -- A plain op (a record to count, correcting nothing) waits in pending
  -- for its locality's flush; any other op reads and writes what the ops
  -- before it wrote, so they are flushed first.
  local plain = mayCount and replaces == ''
  if not plain then
    err = flush(k)
    if err then return err end
  end
  local mark, uncount = false, false
  if replaces ~= '' and replaces ~= id then
    local r
    r, err = replaced(k, replaces)
    if err then return err end
    mark = not r
    if mark and ARGV[o + 12] == '1' then
      r, err = read(k, 0, 'SISMEMBER', seen, replaces)
      if err then return err end
      uncount = r == 1
    end
  end
  if mayCount then
    err = badCounters(k, ct, kind, detail)
    if err then return err end
    if not card[k] then
      card[k], err = read(k, 1, 'ZCARD', tl)
      if err then return err end
    end
  end
  if uncount then
    err = badCounters(k, ct, kind, ARGV[o + 13])
    if err then return err end
  end
  if plain then
    -- its writes (the seen set, the records hash, the timeline, the
    -- counters) wait for flush; the seen set, the timeline and the
    -- counters are proven by the reads above, the records hash by
    -- flush's HSET
    local new
    new, err = isNew(k, id)
    if err then return err end
    if not new then return nil end
    seenIn[k][id] = true
    local p = pending[k]
    if not p then
      p = {}
      pending[k] = p
    end
    p[#p + 1] = {at = o, news = publish(o)}
    return nil
  end
  if id == '' and not mark then
    return nil
  end
  -- Any other op proves its keys' types before its first write (the
  -- seen set's is its SADD), except one that counts a record and marks
  -- nothing (its correction is of itself or of a record replaced
  -- already): its records hash is proven by its HSET, undone if it
  -- fails.
  if not (mayCount and not mark) then
    err = ready(k)
    if err then return err end
  end

  local new, count = false, false
  if id ~= '' then
    local r
    r, err = read(k, 0, 'SADD', seen, id)
    if err then return err end
    new = r == 1
    if seenIn[k] then seenIn[k][id] = true end
    count = new and mayCount
  end
  if not (new or mark) then
    return nil
  end

  touched[k] = true
  if new then
    if not count then
      markReplaced(k, id)
    end
  end
  if mark then
    markReplaced(k, replaces)
  end
  if uncount then
    -- The replaced record stops counting and leaves the timeline; a counter
    -- that drops to 0 is deleted (at the end, see below), so that the end
    -- state does not depend on whether the replaced record came before its
    -- correction.
    add(k, kind, -1)
    add(k, ARGV[o + 13], -1)
    local gone = redis.call('ZREM', tl, replaces)
    if card[k] then card[k] = card[k] - gone end
    redis.call('HDEL', rec, replaces)
  end
  if count then
    -- the records hash's first write here proves its type (an op that
    -- counts and marks nothing, see above)
    err = writeBodies(k, id, ARGV[o + 4])
    if err then
      -- the SADD above was this op's only write
      redis.call('SREM', seen, id)
      if seenIn[k] then seenIn[k][id] = nil end
      return err
    end
    add(k, kind, 1)
    add(k, detail, 1)
    addToTimeline(k, ARGV[o + 3], id)
    counted = counted + 1
  end
  -- News once: for a counted record, and for a correction that took a
  -- record off this locality's timeline (readers take a fresh snapshot).
  if count or uncount then
    publish(o)
  end
  return nil
end

for o = 6, #ARGV, 15 do
  local err = apply(o)
  if err and not first then
    first = err
  end
end
-- the plain ops still pending, by locality in key order
local ks = {}
for k in pairs(pending) do ks[#ks + 1] = k end
table.sort(ks)
for _, k in ipairs(ks) do
  local err = flush(k)
  if err and not first then
    first = err
  end
end
-- The counters, one HSET (and one HDEL) per locality from the values read
-- before: a field that ends at 0 is deleted, as when each record changed
-- it in turn with HINCRBY.
for k, d in pairs(delta) do
  local ct, set, del = KEYS[k + 2], {}, {}
  for field, n in pairs(d) do
    if n ~= 0 then
      local v
      if big[k][field] then
        v = redis.call('HINCRBY', ct, field, n)
      else
        local b = base[k][field]
        if not b then
          -- a new field, perhaps a new hash
          created(k, 2)
        end
        v = (b or 0) + n
        if v ~= 0 then
          set[#set + 1] = field
          set[#set + 1] = string.format('%d', v)
        end
      end
      if v == 0 then
        del[#del + 1] = field
      end
    end
  end
  if #set > 0 then
    redis.call('HSET', ct, unpack(set))
  end
  if #del > 0 then
    redis.call('HDEL', ct, unpack(del))
  end
end
for k in pairs(touched) do
  local f = fresh[k]
  for i = 0, 4 do
    if refresh[k] or f == true or (f and f[i]) then
      redis.call('PEXPIRE', KEYS[k + i], ttl)
    end
  end
end
for _, n in ipairs(news) do
  if n then
    redis.call('PUBLISH', n[1], n[2])
  end
end
if first then
  return first
end
return counted
