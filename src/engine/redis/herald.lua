#!lua name=herald
-- Herald's Redis Functions. Every node loads this file at start-up (and after Redis comes back) with
-- FUNCTION LOAD REPLACE; bump VERSION with every change so `FCALL herald_version 0` tells what runs.
--
-- Keys, for a hub prefix P (default "herald") and topic T:
--   (T below is the topic as written in keys: see split_key)
--   P:{T}:log    stream: the topic's history, ids shared with every other topic of the hub
--   P:{T}:stored channel: each stored event's SSE frame, published in the same call as the XADD
--   P:{T}:live   channel for redis-cli PUBLISH of live-only messages: nodes frame whatever arrives there as
--                data only (no id, no event type), so it can neither inject fields nor move a cursor
--   P:{T}:trimmed the newest id retention removed from the log: readers after an older id missed events
--   P:{T}:idem:K the id answered for Idempotency-Key K, for the idempotency window
--   P:seq        the id clock "<ms>-<seq>" shared by all topics (standalone or Sentinel Redis only)
--   P:lost       the newest id a node had seen when it found Redis behind it (a failover or restart lost
--                writes, or a FLUSHALL): events up to it may be gone, so readers from before it get a gap
-- No other key: settings come with each node's call (ARGV), and for calls without them (redis-cli) from
-- DEFAULTS below, which each node rewrites with its own settings when it loads the library. So a function
-- only touches keys of its call's slot (as a Cluster requires), and FLUSHALL cannot lose the settings.

local VERSION = '6'
-- herald:settings (the next line is replaced by the loading node; keep its shape)
local DEFAULTS = { max_len = 1000, max_age_ms = 86400000, idem_ttl_ms = 600000, max_event_len = 64 }

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

-- The node's settings travel with its calls (ARGV 4..7); a redis-cli call uses DEFAULTS.
local function settings(args)
  local d = DEFAULTS
  return tonumber(args[4]) or d.max_len, tonumber(args[5]) or d.max_age_ms, tonumber(args[6]) or d.idem_ttl_ms,
    tonumber(args[7]) or d.max_event_len
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

-- "<ms>-<seq>" as two numbers.
local function parse_id(id)
  local m, s = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(m), tonumber(s)
end

local function is_newer(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

-- Raises the id clock to `floor`, the newest id a node has seen, when Redis is behind it (a failover or a
-- restart lost writes, or a FLUSHALL): new ids then stay above every id handed out, and P:lost records
-- that events up to `floor` may be gone. Returns true when it raised the clock.
local function raise_clock(prefix, floor, max_age_ms)
  if floor == nil or floor == '' or parse_id(floor) == nil or floor == '0-0' then
    return false
  end
  local last = redis.call('GET', prefix .. ':seq')
  if last and not is_newer(floor, last) then
    return false
  end
  redis.call('SET', prefix .. ':seq', floor)
  local lost = redis.call('GET', prefix .. ':lost')
  if not lost or is_newer(floor, lost) then
    if max_age_ms > 0 then
      -- Once retention has passed, every event before it would be gone anyway: no need to warn then.
      redis.call('SET', prefix .. ':lost', floor, 'PX', max_age_ms + 60000)
    else
      redis.call('SET', prefix .. ':lost', floor)
    end
  end
  return true
end

-- Entries kept past max_len before a trim: trimming then runs once per this many publishes.
local TRIM_SLACK = 100

-- Trims the log exactly (XADD's "MAXLEN ~" would not say which ids it removed; XINFO's
-- max-deleted-entry-id only follows XDEL) and records the newest id removed in P:{T}:trimmed.
local function trim(key, max_len, max_age_ms, now)
  local log = key .. ':log'
  local gone = nil
  local len = redis.call('XLEN', log)
  if len > max_len + TRIM_SLACK then
    local over = redis.call('XRANGE', log, '-', '+', 'COUNT', len - max_len)
    gone = over[#over][1]
  end
  if max_age_ms > 0 then
    local cutoff = string.format('%.0f-0', now - max_age_ms)
    -- The oldest entry first (cheap); only when it is too old, the newest one that is (a slower seek).
    local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
    if #oldest > 0 and is_newer(cutoff, oldest[1][1]) then
      local old = redis.call('XREVRANGE', log, '(' .. cutoff, '-', 'COUNT', 1)
      if #old > 0 and (gone == nil or is_newer(old[1][1], gone)) then
        gone = old[1][1]
      end
    end
  end
  if gone then
    local m, s = parse_id(gone)
    -- MINID removes every entry below it: everything up to and including `gone`.
    redis.call('XTRIM', log, 'MINID', string.format('%.0f-%.0f', m, s + 1))
    redis.call('SET', key .. ':trimmed', gone)
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- FCALL herald_publish 1 P:{T} <data> [<event> [<idempotency-key>]]  →  the event id
-- (nodes add their max_len, max_age_ms, idem_ttl_ms and max_event_len after the idempotency key, then
-- the newest id they have seen, as a floor for the clock)
local function publish(keys, args)
  local key = keys[1]
  local prefix = split_key(key)
  local data = args[1]
  if data == nil then
    error('herald: usage: FCALL herald_publish 1 <prefix>:{<topic>} <data> [<event> [<idempotency-key>]]')
  end
  local event = args[2] or ''
  local max_len, max_age_ms, idem_ttl_ms, max_event_len = settings(args)
  if event ~= '' then
    local chars = plain_chars(event)
    if chars == nil then
      error('herald: the event name must be UTF-8 without control characters (CR, LF, NUL, C1...)')
    end
    if chars > max_event_len then
      error('herald: the event name is ' .. chars .. ' characters long; at most ' .. max_event_len .. ' are allowed')
    end
    if string.sub(event, 1, 7) == 'herald.' then
      error('herald: event names starting with "herald." are reserved')
    end
  end

  local idem = args[3] or ''
  local idem_key = key .. ':idem:' .. idem
  if idem ~= '' then
    local seen = redis.call('GET', idem_key)
    if seen then
      return seen
    end
  end

  raise_clock(prefix, args[8], max_age_ms)
  local now = now_ms()
  local ms, seq = 0, 0
  local last = redis.call('GET', prefix .. ':seq')
  if last then
    ms, seq = parse_id(last)
  end
  if now > ms then
    ms, seq = now, 0
  else
    seq = seq + 1
  end
  local id = string.format('%.0f-%.0f', ms, seq)
  redis.call('SET', prefix .. ':seq', id)

  local log = key .. ':log'
  if event == '' then
    redis.call('XADD', log, id, 'd', data)
  else
    redis.call('XADD', log, id, 'd', data, 'e', event)
  end
  trim(key, max_len, max_age_ms, now)
  if idem ~= '' then
    redis.call('SET', idem_key, id, 'PX', idem_ttl_ms)
  end
  if max_age_ms > 0 then
    -- A topic nobody publishes to any more leaves no keys behind: by then all its events have expired.
    -- (herald_history still announces the gap to a reader resuming from before that.)
    local ttl = max_age_ms + 60000
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', key .. ':trimmed', ttl)
  end
  redis.call('PUBLISH', key .. ':stored', encode(id, event, data))
  return id
end

-- FCALL_RO herald_history 1 P:{T} <after-id> <count> [<max-bytes> [<max-age-ms>]]
--   → { newest trimmed id or '', first-id or '', more ('1' or ''), id1, data1, event1, ... }
-- Past the first event, a page stops before its data and event names exceed max-bytes; `more` says
-- that events may follow the last one returned.
local HISTORY_BATCH = 64

local function history(keys, args)
  local prefix = split_key(keys[1])
  local log = keys[1] .. ':log'
  local out = { redis.call('GET', keys[1] .. ':trimmed') or '', '', '' }
  local lost = redis.call('GET', prefix .. ':lost')
  if lost and parse_id(args[1]) ~= nil and is_newer(lost, args[1]) and (out[1] == '' or is_newer(lost, out[1])) then
    out[1] = lost
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

-- FCALL herald_floor 0 <prefix> <floor> <max_len> <max_age_ms> <idem_ttl_ms> <max_event_len>
--   → { the clock after raising it to floor (or ''), P:lost (or '') }
-- Nodes call it when their pub/sub link (re)connects and on every ping: it shares each node's newest id
-- with the others.
local function floor(_, args)
  local prefix = args[1]
  local max_age_ms = tonumber(args[4]) or DEFAULTS.max_age_ms
  raise_clock(prefix, args[2], max_age_ms)
  return { redis.call('GET', prefix .. ':seq') or '', redis.call('GET', prefix .. ':lost') or '' }
end

redis.register_function('herald_publish', publish)
redis.register_function('herald_floor', floor)
redis.register_function{ function_name = 'herald_history', callback = history, flags = { 'no-writes' } }
redis.register_function{ function_name = 'herald_version', callback = function() return VERSION end, flags = { 'no-writes' } }
