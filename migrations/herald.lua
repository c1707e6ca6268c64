#!lua name=herald
-- Herald's Redis Functions. Every node loads this file at start-up (and after Redis comes back) with
-- FUNCTION LOAD REPLACE; bump VERSION with every change so `FCALL herald_version 0` tells what runs.
--
-- Keys and channels, for a hub prefix P (default "herald") and topic T (as written in names: see split_key):
--   P:{T}         stream: the topic's history, and its id clock (the stream's last-generated-id: ids are
--                 per topic and only go up) and the newest id that may be gone (its max-deleted-entry-id:
--                 trimmed by retention, or lost by a failover or restart). One key per topic, so a Cluster
--                 moves a topic whole and its MOVED/ASK rules keep every call on the node holding it.
--   P:{T}:idem:K  the id answered for Idempotency-Key K, for the idempotency window
--   P:{T}:ids     hash: Mercure update id → its event id, for the updates the stream still holds (entries
--                 trimmed from the stream are removed from it, and it expires with the stream)
--   P:topics      sorted set, not on a Cluster: each topic (as written in names) scored by the time of its
--                 latest publish, for the replay of streams that select topics by pattern; pruned of
--                 topics older than max_age_ms whenever a stream is trimmed
--   P:{T}:stored  channel: each stored event's SSE frame, published in the same call as the XADD
--   P:{T}:live    channel for redis-cli (S)PUBLISH of live-only messages: nodes frame whatever arrives there
--                 as data only (no id, no event type), so it can neither inject fields nor move a cursor
-- Channels are sharded (SPUBLISH) on a Cluster, so a publish reaches only the shard holding the topic.
-- Releases before VERSION 7 kept the log in P:{T}:log, the trim marker in P:{T}:trimmed and one clock for
-- all topics in P:seq (with its loss marker P:lost): herald_upgrade moves a topic's old keys to P:{T},
-- once, when a node starts on a Redis whose P:layout (written by the node) is not yet 7
-- (migrations/README.md); no other function looks for them.
-- No other key: settings come with each node's call (ARGV), and for calls without them (redis-cli) from
-- DEFAULTS below, which each node rewrites with its own settings when it loads the library. So a function
-- only touches keys of its call's slot (as a Cluster requires), and FLUSHALL cannot lose the settings.

local VERSION = '10'
-- herald:settings (the next line is replaced by the loading node; keep its shape)
local DEFAULTS = { max_len = 1000, max_age_ms = 86400000, idem_ttl_ms = 600000, max_event_len = 64, max_data_bytes = 65536, sharded = false }

-- KEYS[1] is "P:{E}", E the topic with "%", "{" and "}" written %25, %7B and %7D (any other UTF-8 kept,
-- control characters refused): returns P and E, or raises an error a redis-cli user can act on.
local plain_chars
local function split_key(key)
  local prefix, topic = string.match(key, '^([^{}]+):{([^{}]+)}$')
  local ok = prefix ~= nil and plain_chars(topic) ~= nil
  if ok then
    -- One topic, one key: "%" only starts the three escapes, so "%41" can't name the topic "A" too.
    for code in string.gmatch(topic, '%%(..)') do
      if code ~= '25' and code ~= '7B' and code ~= '7D' then
        ok = false
      end
    end
    if string.sub(topic, -1) == '%' or string.sub(topic, -2, -2) == '%' then
      ok = false
    end
  end
  if not ok then
    error('herald: the key must be "<prefix>:{<topic>}", the topic UTF-8 without control characters and with'
      .. ' %, { and } written %25, %7B and %7D (got ' .. key .. ')')
  end
  return prefix, topic
end

-- Frames like Herald's Rust encoder: data split on CRLF, CR or LF, one "data: " line each.
local function encode(id, event, data)
  local out = { 'id: ', id, '\n' }
  if event ~= '' then
    out[#out + 1] = 'event: ' .. event .. '\n'
  end
  local pos = 1
  while true do
    local at = string.find(data, '[\r\n]', pos)
    if not at then
      out[#out + 1] = 'data: ' .. string.sub(data, pos) .. '\n'
      break
    end
    out[#out + 1] = 'data: ' .. string.sub(data, pos, at - 1) .. '\n'
    if string.sub(data, at, at + 1) == '\r\n' then
      pos = at + 2
    else
      pos = at + 1
    end
  end
  out[#out + 1] = '\n'
  return table.concat(out)
end

-- An integer argument at least `min` (at most 2^53, where Lua's numbers stay exact), or `default` when
-- absent or empty; anything else raises an error naming the argument.
local function int_arg(arg, name, min, default)
  if arg == nil or arg == '' then
    return default
  end
  local n = string.match(arg, '^%d+$') and tonumber(arg)
  if not n or n < min or n > 9007199254740992 then
    error('herald: ' .. name .. ' must be a whole number from ' .. min .. ' up (got ' .. arg .. ')')
  end
  return n
end

-- The node's settings travel with its calls (ARGV 4..7); a redis-cli call uses DEFAULTS.
local function settings(args)
  local d = DEFAULTS
  return int_arg(args[4], 'max_len (ARGV 4)', 1, d.max_len), int_arg(args[5], 'max_age_ms (ARGV 5)', 0, d.max_age_ms),
    int_arg(args[6], 'idem_ttl_ms (ARGV 6)', 1, d.idem_ttl_ms), int_arg(args[7], 'max_event_len (ARGV 7)', 1, d.max_event_len)
end

-- Refuses a call whose number of keys is none of the counts given.
local function key_count(keys, usage, ...)
  for _, want in ipairs({ ... }) do
    if #keys == want then
      return
    end
  end
  error('herald: usage: ' .. usage)
end

-- The characters in s if it is valid UTF-8 without control characters (C0, DEL, C1), else nil: the rule
-- Herald's HTTP API applies to event names (EventName::parse).
function plain_chars(s)
  local n, i, len = 0, 1, #s
  while i <= len do
    local b = string.byte(s, i)
    local extra
    if b < 32 or b == 127 then
      return nil
    elseif b < 128 then
      extra = 0
    elseif b >= 194 and b <= 223 then
      extra = 1
      if b == 194 and (string.byte(s, i + 1) or 0) < 160 then
        return nil -- U+0080..U+009F, the C1 controls (or a truncated sequence)
      end
    elseif b >= 224 and b <= 239 then
      extra = 2
    elseif b >= 240 and b <= 244 then
      extra = 3
    else
      return nil
    end
    for k = 1, extra do
      local c = string.byte(s, i + k)
      if c == nil or c < 128 or c > 191 then
        return nil
      end
    end
    n = n + 1
    i = i + extra + 1
  end
  return n
end

-- "<ms>-<seq>" as two numbers (nil for anything else).
local function parse_id(id)
  if id == nil then
    return nil
  end
  local m, s = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(m), tonumber(s)
end

local function is_newer(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

-- An id argument, or nil when absent, empty, malformed or 0-0.
local function id_arg(arg)
  if arg == nil or arg == '' or arg == '0-0' or parse_id(arg) == nil then
    return nil
  end
  return arg
end

-- How far ahead of Redis's clock a floor may lie: ids are made from Redis's TIME, so one further ahead
-- was not handed out by any node (a forged or mistyped id would otherwise block the topic's clock).
local MAX_AHEAD_MS = 3600000

-- A floor id argument (as id_arg), refused when it lies more than MAX_AHEAD_MS past `now` or past 2^53.
local function floor_arg(arg, name, now)
  local id = id_arg(arg)
  if id then
    local m, seq = parse_id(id)
    if m > now + MAX_AHEAD_MS or seq > 9007199254740992 then
      error('herald: ' .. name .. ' ' .. id .. ' lies more than an hour past Redis\'s clock (' .. now
        .. ' ms); no node handed out such an id')
    end
  end
  return id
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The stream's last-generated-id and max-deleted-entry-id ('0-0' each when the stream does not exist).
local function clock(key)
  if redis.call('EXISTS', key) == 0 then
    return '0-0', '0-0'
  end
  local info = redis.call('XINFO', 'STREAM', key)
  local last, gone = '0-0', '0-0'
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then
      gone = info[i + 1]
    end
  end
  return last, gone
end

-- The newest id handed out on the topic: its newest entry, read cheaply; the stream's clock only when
-- it holds no entry (all trimmed).
local function newest(key)
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #top > 0 then
    return top[1][1]
  end
  return (clock(key))
end

-- Records that events up to `id` may be gone (retention trimmed them, or Redis lost them): readers
-- resuming from an older id are sent a gap. The stream must exist; its clock is kept.
local function mark_gone(key, id)
  local last, gone = clock(key)
  if is_newer(id, gone) then
    if is_newer(id, last) then
      last = id
    end
    redis.call('XSETID', key, last, 'MAXDELETEDID', id)
  end
end

-- FCALL herald_upgrade 1 P:{T}  →  '1' if the topic's release-6 keys were moved, else ''
-- Releases before VERSION 7 kept a topic's log in P:{T}:log, its trim marker in P:{T}:trimmed and the
-- loss marker of their one clock in P:lost: the log moves to P:{T}, and the newer marker becomes its
-- max-deleted-entry-id, so a reader resuming from before it is sent herald.gap. Only standalone and
-- Sentinel Redis can hold such keys (P:lost is outside the topic's slot). Run once per topic by the
-- one-time migration (migrations/README.md, "6 → 7"); a topic already moved is left as it is.
local function upgrade(keys)
  key_count(keys, 'FCALL herald_upgrade 1 <prefix>:{<topic>}', 1)
  local key = keys[1]
  local prefix = split_key(key)
  local old = key .. ':log'
  if redis.call('EXISTS', key) == 1 or redis.call('EXISTS', old) == 0 then
    return ''
  end
  redis.call('RENAME', old, key)
  for _, marker in ipairs({ redis.call('GET', key .. ':trimmed'), redis.call('GET', prefix .. ':lost') }) do
    if marker and parse_id(marker) ~= nil then
      mark_gone(key, marker)
    end
  end
  redis.call('DEL', key .. ':trimmed')
  return '1'
end

-- Entries kept past max_len before a trim: trimming then runs once per this many publishes.
local TRIM_SLACK = 100

-- Removes from the topic's Mercure id hash the ids of its entries up to and including `gone` (each
-- Mercure entry names its update id in field 'i'), so the hash holds what the stream holds.
local function forget_ids(key, gone)
  local ids_key = key .. ':ids'
  if redis.call('EXISTS', ids_key) == 0 then
    return
  end
  local dropped = {}
  for _, entry in ipairs(redis.call('XRANGE', key, '-', gone)) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'i' then
        dropped[#dropped + 1] = fields[i + 1]
      end
    end
    if #dropped >= 1000 then
      redis.call('HDEL', ids_key, unpack(dropped))
      dropped = {}
    end
  end
  if #dropped > 0 then
    redis.call('HDEL', ids_key, unpack(dropped))
  end
end

-- Drops from P:topics the topics whose latest publish is older than the retention (their streams are
-- gone or going), and lets it expire with them.
local function prune_topics(prefix, now, max_age_ms)
  if DEFAULTS.sharded or max_age_ms <= 0 then
    return
  end
  local topics = prefix .. ':topics'
  redis.call('ZREMRANGEBYSCORE', topics, '-inf', '(' .. string.format('%.0f', now - max_age_ms - 60000))
  redis.call('PEXPIRE', topics, max_age_ms + 60000)
end

-- Trims the log exactly (XADD's "MAXLEN ~" would not say which ids it removed) and records the newest id
-- removed as the stream's max-deleted-entry-id.
local function trim(key, max_len, max_age_ms, now)
  local gone = nil
  local len = redis.call('XLEN', key)
  if len > max_len + TRIM_SLACK then
    local over = redis.call('XRANGE', key, '-', '+', 'COUNT', len - max_len)
    gone = over[#over][1]
  end
  if max_age_ms > 0 then
    local cutoff = string.format('%.0f-0', now - max_age_ms)
    -- The oldest entry first (cheap); only when it is too old, the newest one that is (a slower seek).
    local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
    if #oldest > 0 and is_newer(cutoff, oldest[1][1]) then
      local old = redis.call('XREVRANGE', key, '(' .. cutoff, '-', 'COUNT', 1)
      if #old > 0 and (gone == nil or is_newer(old[1][1], gone)) then
        gone = old[1][1]
      end
    end
  end
  if gone then
    local m, s = parse_id(gone)
    forget_ids(key, gone)
    prune_topics(split_key(key), now, max_age_ms)
    -- MINID removes every entry below it: everything up to and including `gone`.
    redis.call('XTRIM', key, 'MINID', string.format('%.0f-%.0f', m, s + 1))
    mark_gone(key, gone)
  end
end

local function announce(key, frame)
  if DEFAULTS.sharded then
    redis.call('SPUBLISH', key .. ':stored', frame)
  else
    redis.call('PUBLISH', key .. ':stored', frame)
  end
end

-- FCALL herald_publish 1 P:{T} <data> [<event> [<idempotency-key>]]  →  the event id
-- Nodes add, after the idempotency key: their max_len, max_age_ms, idem_ttl_ms and max_event_len; the
-- topic's newest id they have seen (if Redis is behind it, writes were lost: the clock is raised above it
-- and the loss recorded); an id the clock must pass without a loss being recorded (the old shared clock);
-- '1' to be answered { id, '1' if a loss was found else '' }; the data limit; and, for a Mercure update
-- (event herald.mercure, no idempotency key), its id: a repeat of the id answers the first event id and
-- stores nothing, and P:{T}:ids maps it to the event id while the stream holds it. A node also passes
-- P:{T}:idem:K (or, with a Mercure id, P:{T}:ids) as a second key, so a Cluster moving the topic holds
-- the call until both keys are on one node.
-- A Mercure update is stored with this event name: its data's first line holds its own fields (id,
-- topics, private, type, retry), at most MERCURE_FIELDS_MAX bytes beyond the data limit (src/event.rs).
local MERCURE_EVENT = 'herald.mercure'
local MERCURE_FIELDS_MAX = 8192

local PUBLISH_USAGE = 'FCALL herald_publish 1 <prefix>:{<topic>} <data> [<event> [<idempotency-key>]]'

local function publish(keys, args)
  key_count(keys, PUBLISH_USAGE, 1, 2)
  local key = keys[1]
  local prefix, written = split_key(key)
  local data = args[1]
  if data == nil then
    error('herald: usage: ' .. PUBLISH_USAGE)
  end
  local event = args[2] or ''
  local max_len, max_age_ms, idem_ttl_ms, max_event_len = settings(args)
  -- ARGV 11 (after the node's floor, minimum and answer flag): the publish body limit, as over HTTP.
  local max_data = int_arg(args[11], 'max_data_bytes (ARGV 11)', 1, DEFAULTS.max_data_bytes)
  if event == MERCURE_EVENT then
    max_data = max_data + MERCURE_FIELDS_MAX
  end
  if #data > max_data then
    error('herald: the data is ' .. #data .. ' bytes; at most ' .. max_data .. ' are allowed (limits.max_body_bytes)')
  end
  local answer_lost = args[10] == '1'
  if event ~= '' then
    local chars = plain_chars(event)
    if chars == nil then
      error('herald: the event name must be UTF-8 without control characters (CR, LF, NUL, C1...)')
    end
    if chars > max_event_len then
      error('herald: the event name is ' .. chars .. ' characters long; at most ' .. max_event_len .. ' are allowed')
    end
    if string.sub(event, 1, 7) == 'herald.' and event ~= MERCURE_EVENT then
      error('herald: event names starting with "herald." are reserved')
    end
  end

  -- Everything is read before anything is written: a Cluster moving the topic can refuse a read, and the
  -- call must then have changed nothing (the node retries it).
  local idem = args[3] or ''
  local idem_key = key .. ':idem:' .. idem
  -- ARGV 12: a Mercure update's id (its idempotency, and what a resume looks up), instead of a key.
  local mid = args[12] or ''
  local ids_key = key .. ':ids'
  if mid ~= '' and (event ~= MERCURE_EVENT or idem ~= '') then
    error('herald: a Mercure update id (ARGV 12) goes with the event herald.mercure and no idempotency key')
  end
  for _, given in ipairs({ idem, mid }) do
    if given ~= '' and (#given > 128 or not string.match(given, '^[!-~]+$')) then
      error('herald: the idempotency key must be 1 to 128 visible ASCII characters (a UUID is a good choice)')
    end
  end
  -- A second key may only be this topic's key for this call's id (a Cluster routes by it).
  local second = (mid ~= '' and ids_key) or (idem ~= '' and idem_key) or nil
  if keys[2] ~= nil and keys[2] ~= second then
    error('herald: the second key must be ' .. (second or 'absent') .. ' (the idempotency key of this topic), got ' .. keys[2])
  end
  local seen = nil
  if idem ~= '' then
    seen = redis.call('GET', idem_key)
  elseif mid ~= '' then
    seen = redis.call('HGET', ids_key, mid)
  end
  if seen then
    if answer_lost then
      return { seen, '' }
    end
    return seen
  end
  local now = now_ms()
  local floor, minimum = floor_arg(args[8], 'the floor (ARGV 8)', now), floor_arg(args[9], 'the minimum (ARGV 9)', now)
  local lost = false
  local at = '*'
  if floor or minimum then
    local top = newest(key)
    local need = top
    if floor and is_newer(floor, top) then
      lost = true
      need = floor
    end
    if minimum and is_newer(minimum, need) then
      need = minimum
    end
    local m, s = parse_id(need)
    if need ~= top and now <= m then
      -- The clock is behind an id already handed out: the next id goes just above it.
      at = string.format('%.0f-%.0f', m, s + 1)
    end
  end

  local id
  if event == '' then
    id = redis.call('XADD', key, at, 'd', data)
  elseif mid == '' then
    id = redis.call('XADD', key, at, 'd', data, 'e', event)
  else
    id = redis.call('XADD', key, at, 'd', data, 'e', event, 'i', mid)
  end
  if lost then
    mark_gone(key, floor)
  end
  trim(key, max_len, max_age_ms, now)
  if idem ~= '' then
    redis.call('SET', idem_key, id, 'PX', idem_ttl_ms)
  elseif mid ~= '' then
    redis.call('HSET', ids_key, mid, id)
  end
  if max_age_ms > 0 then
    -- A topic nobody publishes to any more leaves no keys behind: by then all its events have expired.
    -- (herald_history still announces the gap to a reader resuming from before that.)
    redis.call('PEXPIRE', key, max_age_ms + 60000)
    if mid ~= '' then
      redis.call('PEXPIRE', ids_key, max_age_ms + 60000)
    end
  end
  if not DEFAULTS.sharded then
    -- Where pattern streams find the topics to replay (a Cluster has one slot per topic and no key all
    -- topics could share; it refuses pattern streams).
    redis.call('ZADD', prefix .. ':topics', now, written)
    -- Pruned with every trim, and besides on about one publish in 256 (a quiet hub trims rarely).
    if now % 256 == 0 then
      prune_topics(prefix, now, max_age_ms)
    end
  end
  announce(key, encode(id, event, data))
  if answer_lost then
    return { id, lost and '1' or '' }
  end
  return id
end

-- FCALL_RO herald_history 1 P:{T} <after-id> <count> [<max-bytes> [<max-age-ms>]]
--   → { newest id that may be gone or '', first-id or '', more ('1' or ''), id1, data1, event1, ... }
-- Past the first event, a page stops before its data and event names exceed max-bytes; `more` says
-- that events may follow the last one returned.
local HISTORY_BATCH = 64

local function history(keys, args)
  key_count(keys, 'FCALL_RO herald_history 1 <prefix>:{<topic>} <after-id> <count> [<max-bytes>]', 1)
  split_key(keys[1])
  if parse_id(args[1]) == nil then
    error('herald: the after-id (ARGV 1) must be an id <ms>-<seq>, 0-0 for the start (got ' .. tostring(args[1]) .. ')')
  end
  int_arg(args[2], 'the count (ARGV 2)', 0, nil)
  if args[3] ~= nil and not string.match(args[3], '^%d+$') then
    error('herald: max-bytes (ARGV 3) must be a whole number (got ' .. args[3] .. ')')
  end
  int_arg(args[4], 'max-age-ms (ARGV 4)', 0, nil)
  local log = keys[1]
  local out = { '', '', '' }
  local gone = nil
  local _, deleted = clock(log)
  if deleted ~= '0-0' and (gone == nil or is_newer(deleted, gone)) then
    gone = deleted
  end
  if gone and parse_id(args[1]) ~= nil and is_newer(gone, args[1]) then
    out[1] = gone
  end
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  if #first > 0 then
    out[2] = first[1][1]
  end
  if #first == 0 and out[1] == '' and args[1] ~= '0-0' then
    -- No log and no marker: if the topic's keys expired, events after an id older than retention are
    -- gone; say so rather than answer an empty history as if nothing had been missed.
    local max_age_ms = tonumber(args[4]) or DEFAULTS.max_age_ms
    local after_ms = parse_id(args[1])
    local cutoff = now_ms() - max_age_ms
    if max_age_ms > 0 and after_ms ~= nil and after_ms < cutoff then
      out[1] = string.format('%.0f-0', cutoff)
    end
  end
  local count = tonumber(args[2]) or 0
  local max_bytes = tonumber(args[3]) or math.huge
  local after, taken, bytes = args[1], 0, 0
  while taken < count do
    -- Read in small batches, so a page of large events is not all loaded to return a few.
    local want = math.min(count - taken, HISTORY_BATCH)
    local entries = redis.call('XRANGE', log, '(' .. after, '+', 'COUNT', want)
    for _, entry in ipairs(entries) do
      local data, event = '', ''
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then
          data = fields[i + 1]
        elseif fields[i] == 'e' then
          event = fields[i + 1]
        end
      end
      if taken > 0 and bytes + #data + #event > max_bytes then
        out[3] = '1'
        return out
      end
      out[#out + 1] = entry[1]
      out[#out + 1] = data
      out[#out + 1] = event
      taken = taken + 1
      bytes = bytes + #data + #event
      after = entry[1]
    end
    if #entries < want then
      return out
    end
  end
  out[3] = '1'
  return out
end

-- FCALL herald_floor 1 P:{T} <floor>  →  { the topic's newest id (or '0-0'), '1' if it found a loss }
-- A node calls it for each topic it receives when its pub/sub link (re)connects, with the newest id of
-- the topic it has seen: if Redis is behind it (a failover or restart lost writes, or a FLUSHALL), the
-- clock is raised above it and the loss recorded, so new ids stay above every id handed out.
local function floor(keys, args)
  key_count(keys, 'FCALL herald_floor 1 <prefix>:{<topic>} <floor>', 1)
  local key = keys[1]
  split_key(key)
  local wanted = floor_arg(args[1], 'the floor (ARGV 1)', now_ms())
  local top = newest(key)
  if wanted and is_newer(wanted, top) then
    if redis.call('EXISTS', key) == 0 then
      -- The stream is gone: a placeholder entry carries the clock, removed at once (XDEL records it as
      -- gone too).
      redis.call('XADD', key, wanted, 'd', '')
      redis.call('XDEL', key, wanted)
    else
      redis.call('XSETID', key, wanted)
    end
    mark_gone(key, wanted)
    local max_age_ms = DEFAULTS.max_age_ms
    if max_age_ms > 0 then
      redis.call('PEXPIRE', key, max_age_ms + 60000)
    end
    return { wanted, '1' }
  end
  return { top, '' }
end

-- FCALL_RO herald_last 1 P:{T}  →  the topic's newest id, or '0-0'
local function last(keys, args)
  key_count(keys, 'FCALL_RO herald_last 1 <prefix>:{<topic>}', 1)
  split_key(keys[1])
  return newest(keys[1])
end

redis.register_function('herald_publish', publish)
redis.register_function('herald_floor', floor)
redis.register_function('herald_upgrade', upgrade)
redis.register_function{ function_name = 'herald_history', callback = history, flags = { 'no-writes' } }
redis.register_function{ function_name = 'herald_last', callback = last, flags = { 'no-writes' } }
redis.register_function{ function_name = 'herald_version', callback = function() return VERSION end, flags = { 'no-writes' } }
