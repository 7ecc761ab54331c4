//! The Lua scripts the Redis backend runs: each is one atomic step on a
//! single Redis (commits, ranged reads, sequences, dead letters, takeovers,
//! replays).

/// One unit of work's commit: version checks of what it read, counter
/// additions against their floors, writes stamped with a new version, the
/// events it published, and for an event handler the acknowledgement of its
/// delivery (only while the entry is still pending with its consumer; its
/// failed-attempt record is deleted when the attempts key is not empty,
/// which a first attempt cannot have). Returns `ok`, `conflict`,
/// `duplicate` or `not-a-counter:{key}`.
///
/// Arguments are read in order by an index into `ARGV` (no helper call per
/// argument: this script runs once per unit and its Lua is a quarter of
/// what Redis spends on an order).
///
/// A document the script found live (read, or a counter added to) is in
/// its key index already, so its rewrite skips the `ZADD`: most writes are
/// read-modify-write updates, and the index add was the costliest call of
/// the script. Anything not known live (new, or a tombstone brought back)
/// is added as before.
pub(super) const COMMIT_LUA: &str = r#"
local a = ARGV
local i = 2
local live = {}
local function mark(h, k)
  local t = live[h]
  if not t then t = {}; live[h] = t end
  t[k] = true
end
local function indexed(h, k)
  local t = live[h]
  return t and t[k]
end
for _ = 1, tonumber(a[1]) do
  local cur = redis.call('HGET', a[i], a[i + 1])
  local seen = 0
  if cur then
    seen = tonumber(string.sub(cur, 1, 20))
    if string.byte(cur, 21) == 49 then mark(a[i], a[i + 1]) end
  end
  if seen ~= tonumber(a[i + 2]) then return 'conflict' end
  i = i + 3
end
local ack = nil
if a[i] == '1' then
  ack = i + 1
  local mine = redis.call('XPENDING', a[i + 1], a[i + 2], a[i + 3], a[i + 3], 1, a[i + 4])
  if #mine == 0 then return 'duplicate' end
  i = i + 7
else
  i = i + 1
end
local nadds = tonumber(a[i])
i = i + 1
local adds = {}
for n = 1, nadds do
  local cur = redis.call('HGET', a[i], a[i + 2])
  local value = 0
  if cur and string.byte(cur, 21) == 49 then
    value = tonumber(string.sub(cur, 22))
    if value == nil then return 'not-a-counter:' .. a[i + 2] end
    mark(a[i], a[i + 2])
  end
  local next = value + tonumber(a[i + 3])
  if next < tonumber(a[i + 4]) then return 'conflict' end
  adds[n] = {i, next}
  i = i + 5
end
local version_key = a[i]
local nwrites = tonumber(a[i + 1])
i = i + 2
if nwrites > 0 or nadds > 0 then
  local stamp = string.format('%020d', redis.call('INCR', version_key))
  for _, add in ipairs(adds) do
    local at = add[1]
    redis.call('HSET', a[at], a[at + 2], stamp .. '1' .. string.format('%d', add[2]))
    if not indexed(a[at], a[at + 2]) then redis.call('ZADD', a[at + 1], 0, a[at + 2]) end
  end
  for _ = 1, nwrites do
    local flag = a[i + 3]
    redis.call('HSET', a[i], a[i + 2], stamp .. flag .. a[i + 4])
    if flag == '1' then
      if not indexed(a[i], a[i + 2]) then redis.call('ZADD', a[i + 1], 0, a[i + 2]) end
    else
      redis.call('ZREM', a[i + 1], a[i + 2])
    end
    i = i + 5
  end
end
local nevents = tonumber(a[i])
i = i + 1
for _ = 1, nevents do
  local fields = {'topic', a[i + 1], 'key', a[i + 2], 'payload', a[i + 3], 'source', a[i + 4]}
  if a[i + 5] ~= '' then
    fields[#fields + 1] = 'request_id'
    fields[#fields + 1] = a[i + 5]
  end
  if a[i + 6] ~= '' then
    fields[#fields + 1] = 'traceparent'
    fields[#fields + 1] = a[i + 6]
  end
  redis.call('XADD', a[i], '*', unpack(fields))
  i = i + 7
end
if ack then
  redis.call('XACK', a[ack], a[ack + 1], a[ack + 2])
  if a[ack + 4] ~= '' then redis.call('HDEL', a[ack + 4], a[ack + 5]) end
end
return 'ok'
"#;

/// A ranged read in one snapshot: live keys after ARGV[3] from the key index
/// (a sorted set, lexicographic), their documents, capped by count and bytes.
/// Returns `{more, {key, raw, key, raw, ...}}`.
pub(super) const RANGE_LUA: &str = r#"
local z, h, after, n, maxbytes = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local lo = '-'
if after ~= '' then lo = '(' .. after end
local keys = redis.call('ZRANGEBYLEX', z, lo, '+', 'LIMIT', 0, n + 1)
local out = {}
local bytes = 0
local more = 0
for idx, k in ipairs(keys) do
  if idx > n then more = 1; break end
  local raw = redis.call('HGET', h, k)
  if raw then
    -- the value alone: minus the 20-digit version and the live flag
    bytes = bytes + #raw - 21
    if #out > 0 and bytes > maxbytes then more = 1; break end
    out[#out + 1] = k
    out[#out + 1] = raw
  end
end
return {more, out}
"#;

/// Raise a sequence to at least ARGV[3] (ids as decimal strings compared
/// by width then digits, so values beyond 2^53 stay exact).
pub(super) const ADVANCE_SEQUENCE_LUA: &str = r#"
local cur = redis.call('HGET', ARGV[1], ARGV[2]) or '0'
local v = ARGV[3]
if #v > #cur or (#v == #cur and v > cur) then redis.call('HSET', ARGV[1], ARGV[2], v) end
return 1
"#;

/// Move a delivery to the dead letters and acknowledge it, atomically, if
/// it is still pending with this consumer (ARGV[4]).
pub(super) const DEAD_LETTER_LUA: &str = r#"
local stream, group, entry, consumer, attempts_key, delivery, dead = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) == 0 then return 0 end
local fields = {'subscriber', group, 'event_id', ARGV[8], 'topic', ARGV[9], 'key', ARGV[10],
  'payload', ARGV[11], 'source', ARGV[12], 'attempts', ARGV[13], 'error', ARGV[14], 'dead_ms', ARGV[15]}
if ARGV[16] ~= '' then
  fields[#fields + 1] = 'request_id'
  fields[#fields + 1] = ARGV[16]
end
if ARGV[17] ~= '' then
  fields[#fields + 1] = 'traceparent'
  fields[#fields + 1] = ARGV[17]
end
redis.call('XADD', dead, '*', unpack(fields))
redis.call('XACK', stream, group, entry)
redis.call('HDEL', attempts_key, delivery)
return 1
"#;

/// Take over every entry a dead consumer (ARGV[3], heartbeat key ARGV[5]
/// absent) holds on one stream, for consumer ARGV[4]; once it holds nothing,
/// remove it from the group. Atomic: the heartbeat is checked and the
/// entries are chosen by their owner in the same step, so a live consumer's
/// entry (one another host already took over included) is never taken.
/// Returns `{removed, {entry, ...}}` (entries as `XCLAIM` returns them;
/// ones trimmed meanwhile are dropped from the pending list, not returned).
pub(super) const CLAIM_DEAD_LUA: &str = r#"
local stream, group, dead, me, alive, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', alive) == 1 then return {0, {}} end
local pending = redis.call('XPENDING', stream, group, '-', '+', count, dead)
local claimed = {}
if #pending > 0 then
  local ids = {}
  for j, p in ipairs(pending) do ids[j] = p[1] end
  for _, e in ipairs(redis.call('XCLAIM', stream, group, me, 0, unpack(ids))) do
    if type(e) == 'table' then claimed[#claimed + 1] = e end
  end
end
local removed = 0
if #pending < count then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, dead)
  removed = 1
end
return {removed, claimed}
"#;

/// Put a dead letter on its subscriber's replay stream and remove it.
pub(super) const REPLAY_LUA: &str = r#"
local dead, id, prefix = ARGV[1], ARGV[2], ARGV[3]
local found = redis.call('XRANGE', dead, id, id)
if #found == 0 then return 0 end
local fields = found[1][2]
local f = {}
for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
local fields = {'topic', f['topic'], 'key', f['key'], 'payload', f['payload'], 'source', f['source'], 'event_id', f['event_id']}
for _, name in ipairs({'request_id', 'traceparent'}) do
  if f[name] then
    fields[#fields + 1] = name
    fields[#fields + 1] = f[name]
  end
end
redis.call('XADD', prefix .. ':replay:' .. f['subscriber'], '*', unpack(fields))
redis.call('XDEL', dead, id)
return 1
"#;
