//! The Lua scripts behind every write that touches several keys: each runs atomically in Redis,
//! so the bounds and counts stay exact whichever instance writes.
//!
//! Each declares its flags (a `#!lua` first line, Redis 7): out of memory (`maxmemory`), a
//! script that frees memory or records progress (a delivery, a dead letter, a retry) runs whole
//! (`allow-oom`), and one that adds events or keys is refused before its first command. Without
//! flags Redis would refuse a script's first memory-growing command, after the ones before it
//! ran: a delivery removed without its count, and memory never given back. `u` is an event id, `e` an
//! encoded event; a stream entry of the queue carries `u` and `d` (the due time it was queued
//! for: an entry whose event has another due time is stale and skipped).

use std::sync::LazyLock;

use redis::Script;

/// The first line of a script that grows memory: refused whole while Redis is out of memory.
macro_rules! grows {
    () => {
        "#!lua\n"
    };
}

/// The first line of a script that frees memory or records progress: runs whole even while
/// Redis is out of memory (deliveries are what give memory back).
macro_rules! frees {
    () => {
        "#!lua flags=allow-oom\n"
    };
}

/// Acks and deletes queue entry `ARGV[n]` if it is not empty (an event this instance claimed).
macro_rules! ack {
    ($queue:literal, $entry:literal) => {
        concat!(
            "if ARGV[",
            $entry,
            "] ~= '' then redis.call('XACK', KEYS[",
            $queue,
            "], 'hookgate', ARGV[",
            $entry,
            "]); redis.call('XDEL', KEYS[",
            $queue,
            "], ARGV[",
            $entry,
            "]) end\n"
        )
    };
}

/// `queue_head(ordp, k, u, queue, due)`: puts event `u` on `queue` (due `due`) unless it is
/// ordered (key `k` not empty) and another event of its key is ahead of it: each ordered key
/// keeps its pending events in arrival order in the list `{ordp}{k}`, and only the first is
/// ever on the queue.
const QUEUE_HEAD: &str = r"
local function queue_head(ordp, k, u, queue, due)
  if k == '' or redis.call('RPUSH', ordp .. k, u) == 1 then
    redis.call('XADD', queue, '*', 'u', u, 'd', due)
  end
end
";

/// `release(ordp, k, u, queue)`: event `u` leaves its key's list (delivered or dead-lettered);
/// if it was the first, the next of its key goes on the queue, due now (`d` = `*`: whatever
/// its due time says, it was never queued before).
const RELEASE_ORDER: &str = r"
local function release(ordp, k, u, queue)
  if k == '' then return end
  local list = ordp .. k
  local head = redis.call('LINDEX', list, 0)
  redis.call('LREM', list, 1, u)
  if head == u then
    local nxt = redis.call('LINDEX', list, 0)
    if nxt then redis.call('XADD', queue, '*', 'u', nxt, 'd', '*') end
  end
end
";

/// A batch of appends of events going to the same destinations (lanes). KEYS: stats, routes,
/// then `ev`, `pending`, `queue` of each lane, then the batch's dedup keys. ARGV: max_events,
/// max_bytes, the number of lanes L, each lane's name, each lane's ordering-list prefix, then
/// per event: u, e, id_ms, due, the index in KEYS of its dedup key (0: none), that key's
/// expiry (Unix ms), and its ordering key in each lane ('' for none). Each event counts once
/// per lane against the bounds. Returns one answer per event: 1, or `events N` / `bytes N`
/// when the spool is full. An event's dedup key is committed with it, atomically: once the
/// event is stored, every instance answers its duplicates `duplicate`, whatever happens to
/// this one.
pub(super) static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{QUEUE_HEAD}{}",
        grows!(),
        r"
local n = tonumber(redis.call('HGET', KEYS[1], 'events') or '0')
local b = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local max_n, max_b, lanes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first = 4 + 2 * lanes
local per = 6 + lanes
local out, added, added_b = {}, 0, 0
for i = first, #ARGV, per do
  local u, e = ARGV[i], ARGV[i + 1]
  if n + added + lanes > max_n then
    out[#out + 1] = 'events ' .. (n + added)
  elseif b + added_b + #e * lanes > max_b then
    out[#out + 1] = 'bytes ' .. (b + added_b)
  else
    if redis.call('HSETNX', KEYS[3], u, e) == 1 then
      for j = 1, lanes do
        local ev, pending, queue = KEYS[3 * j], KEYS[3 * j + 1], KEYS[3 * j + 2]
        if j > 1 then redis.call('HSET', ev, u, e) end
        redis.call('ZADD', pending, ARGV[i + 2], u)
        queue_head(ARGV[3 + lanes + j], ARGV[i + 5 + j], u, queue, ARGV[i + 3])
      end
      added, added_b = added + lanes, added_b + #e * lanes
      local k = tonumber(ARGV[i + 4])
      if k > 0 then redis.call('SET', KEYS[k], 'c', 'PXAT', ARGV[i + 5]) end
    end
    out[#out + 1] = 1
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'events', added)
  redis.call('HINCRBY', KEYS[1], 'bytes', added_b)
  for j = 1, lanes do redis.call('SADD', KEYS[2], ARGV[3 + j]) end
end
return out
"
    ))
});

/// An event every destination filtered out: history at once, in its route's first lane.
/// KEYS: routes, hist, hix, the dedup key (or none). ARGV: the lane, u, e, its state, the
/// retention's cutoff (Unix ms), the dedup key's expiry. Returns 1.
pub(super) static APPEND_FILTERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        grows!(),
        r"
local id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[5], '*', 'u', ARGV[2], 'e', ARGV[3], 'a', ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[2] .. '|' .. id)
redis.call('SADD', KEYS[1], ARGV[1])
if KEYS[4] then redis.call('SET', KEYS[4], 'c', 'PXAT', ARGV[6]) end
return 1
"
    ))
});

/// `trim_oldest(hist, hix, n)`: drops the `n` oldest entries of a route's history stream and
/// their index members; returns how many went. (Used when Redis is short of memory: the history
/// yields, oldest first.)
const TRIM_OLDEST: &str = r"
local function trim_oldest(hist, hix, n)
  if n <= 0 then return 0 end
  local old = redis.call('XRANGE', hist, '-', '+', 'COUNT', n)
  for _, entry in ipairs(old) do
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 'u' then redis.call('ZREM', hix, f[j + 1] .. '|' .. entry[1]) end
    end
    redis.call('XDEL', hist, entry[1])
  end
  return #old
end
";

/// A batch of deliveries of one lane. KEYS: stats, ev, pending, queue, retry, hist, hix. ARGV:
/// keep (1: into the history; 0: Redis is short of memory, the history yields), the retention's
/// cutoff (Unix ms) and its first id, the lane's ordering-list prefix, then four per event: u,
/// its stream entry ('' if this instance did not claim it), its state as delivered, and its
/// ordering key ('' for none: the next of its key goes on the queue). A delivered event's record moves
/// from the hash to the route's history stream (`u`, `e` the record, `a` the state), indexed
/// by `u|entry` in `hix`; both are trimmed to the retention here. Returns how many of the events
/// were pending.
pub(super) static DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{TRIM_OLDEST}{RELEASE_ORDER}{}",
        frees!(),
        r"
local keep, cutoff, cut_u, ordp = ARGV[1] == '1', ARGV[2], ARGV[3], ARGV[4]
local removed, bytes, acks = 0, 0, {}
for i = 5, #ARGV, 4 do
  local u = ARGV[i]
  if ARGV[i + 1] ~= '' then acks[#acks + 1] = ARGV[i + 1] end
  local e = redis.call('HGET', KEYS[2], u)
  if e then
    redis.call('HDEL', KEYS[2], u)
    redis.call('ZREM', KEYS[3], u)
    redis.call('ZREM', KEYS[5], u)
    release(ordp, ARGV[i + 3], u, KEYS[4])
    removed, bytes = removed + 1, bytes + #e
    if keep then
      local id = redis.call('XADD', KEYS[6], 'MINID', '~', cutoff, '*', 'u', u, 'e', e, 'a', ARGV[i + 2])
      redis.call('ZADD', KEYS[7], 0, u .. '|' .. id)
    end
  end
end
if keep then
  redis.call('ZREMRANGEBYLEX', KEYS[7], '-', '(' .. cut_u)
else
  trim_oldest(KEYS[6], KEYS[7], removed * 2 + 16)
end
if #acks > 0 then
  redis.call('XACK', KEYS[4], 'hookgate', unpack(acks))
  redis.call('XDEL', KEYS[4], unpack(acks))
end
if removed > 0 then
  redis.call('HINCRBY', KEYS[1], 'events', -removed)
  redis.call('HINCRBY', KEYS[1], 'bytes', -bytes)
end
return removed
"
    ))
});

/// A route's history past the retention, and (when Redis is short of memory) its oldest
/// entries. KEYS: hist, hix. ARGV: the cutoff (Unix ms), its first id, how many of the oldest to
/// drop besides. Returns how many of the oldest were dropped.
pub(super) static TRIM_HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{TRIM_OLDEST}{}",
        frees!(),
        r"
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[2])
return trim_oldest(KEYS[1], KEYS[2], tonumber(ARGV[3]))
"
    ))
});

/// A delivered event pending again (a replay). KEYS: stats, ev, pending, queue, hist, hix.
/// ARGV: u, its history member (`u|entry`), the replayed event, id_ms, due, the lane's
/// ordering-list prefix and its ordering key ('' for none). Returns 1 if it was in the history
/// and not pending (0: replayed meanwhile, or trimmed).
pub(super) static REPLAY_DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{QUEUE_HEAD}{}",
        grows!(),
        r"
if not redis.call('ZSCORE', KEYS[6], ARGV[2]) then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[6], ARGV[2])
redis.call('XDEL', KEYS[5], string.sub(ARGV[2], #ARGV[1] + 2))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
queue_head(ARGV[6], ARGV[7], ARGV[1], KEYS[4], ARGV[5])
redis.call('HINCRBY', KEYS[1], 'events', 1)
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[3])
return 1
"
    ))
});

/// KEYS: stats, ev, queue, retry. ARGV: u, e, due, entry. Returns 1 if the event was pending.
pub(super) static RESCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        ack!("3", "4"),
        r"
local old = redis.call('HSTRLEN', KEYS[2], ARGV[1])
if old == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[2] - old)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"
    ))
});

/// KEYS: stats, ev, pending, queue, retry, dead, deadix. ARGV: u, e, entry, the lane's
/// ordering-list prefix, the event's ordering key ('' for none: the next of its key goes on
/// the queue). Returns 1 if the event was pending.
pub(super) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}{RELEASE_ORDER}{}",
        frees!(),
        ack!("4", "3"),
        r"
local old = redis.call('HSTRLEN', KEYS[2], ARGV[1])
if old == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
release(ARGV[4], ARGV[5], ARGV[1], KEYS[4])
local id = redis.call('XADD', KEYS[6], '*', 'u', ARGV[1], 'e', ARGV[2])
redis.call('ZADD', KEYS[7], 0, ARGV[1] .. ':' .. id)
redis.call('HINCRBY', KEYS[1], 'dead', 1)
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[2] - old)
return 1
"
    ))
});

/// `dead_entry(index, u)`: the index member and stream entry of dead letter `u` (nil if none).
/// `dead_size(stream, id)`: the size of the `e` field of entry `id` (0 if none).
const DEAD_SIZE: &str = r"
local function dead_entry(index, u)
  local m = redis.call('ZRANGEBYLEX', index, '[' .. u .. ':', '(' .. u .. ';', 'LIMIT', 0, 1)
  if #m == 0 then return nil end
  return m[1], string.sub(m[1], #u + 2)
end
local function dead_size(key, id)
  local r = redis.call('XRANGE', key, id, id)
  if #r == 0 then return 0 end
  local f = r[1][2]
  for i = 1, #f, 2 do if f[i] == 'e' then return #f[i + 1] end end
  return 0
end
";

/// KEYS: stats, ev, pending, queue, dead, deadix. ARGV: u, e (the replayed event), id_ms, due,
/// the lane's ordering-list prefix, its ordering key ('' for none). Returns 1 if it was a dead
/// letter.
pub(super) static REVIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{DEAD_SIZE}{QUEUE_HEAD}{}",
        grows!(),
        r"
local member, id = dead_entry(KEYS[6], ARGV[1])
if not member then return 0 end
local old = dead_size(KEYS[5], id)
redis.call('XDEL', KEYS[5], id)
redis.call('ZREM', KEYS[6], member)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
queue_head(ARGV[5], ARGV[6], ARGV[1], KEYS[4], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'dead', -1)
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[2] - old)
return 1
"
    ))
});

/// KEYS: stats, dead, deadix. ARGV: u. Returns 1 if it was a dead letter.
pub(super) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{DEAD_SIZE}{}",
        frees!(),
        r"
local member, id = dead_entry(KEYS[3], ARGV[1])
if not member then return 0 end
local old = dead_size(KEYS[2], id)
redis.call('XDEL', KEYS[2], id)
redis.call('ZREM', KEYS[3], member)
redis.call('HINCRBY', KEYS[1], 'dead', -1)
redis.call('HINCRBY', KEYS[1], 'events', -1)
redis.call('HINCRBY', KEYS[1], 'bytes', -old)
return 1
"
    ))
});

/// KEYS: retry, queue. ARGV: now, limit. Queues up to `limit` retries due by `now`; returns how
/// many.
pub(super) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  redis.call('XADD', KEYS[2], '*', 'u', due[i], 'd', due[i + 1])
  redis.call('ZREM', KEYS[1], due[i])
end
return #due / 2
"
    ))
});

/// A destination's pace, shared by every instance. KEYS: the lane's pace key. ARGV: the time
/// between two slots (µs). Reserves the next slot (the later of the last one reserved plus the
/// interval, and now, by Redis's clock) and returns how long until it (µs): slots are taken in
/// turn, none saved up while idle.
pub(super) static PACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local nxt = slot + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return slot - now
"
    ))
});

/// A batch of reservations. KEYS: the dedup keys. ARGV: this instance's marker, the in-flight
/// TTL (ms). Returns per key 0 (reserved), 1 (committed: duplicate) or 2 (in flight).
pub(super) static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        grows!(),
        r"
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 0
  elseif redis.call('GET', KEYS[i]) == 'c' then
    out[i] = 1
  else
    out[i] = 2
  end
end
return out
"
    ))
});

/// KEYS: the dedup key. ARGV: this instance's marker. Deletes the key if it is still this
/// instance's reservation (never a committed key, never another instance's).
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"
    ))
});

/// KEYS: a route's queue. ARGV: this instance's consumer, then the stream entries it holds.
/// Renews (`XCLAIM ... JUSTID`, idle time back to 0) each entry still pending with this
/// consumer; returns those another instance has taken over meanwhile (never taken back).
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
local lost = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'hookgate', ARGV[i], ARGV[i], 1, ARGV[1])
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], 'hookgate', ARGV[1], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"
    ))
});

/// KEYS: a route's queue. ARGV: a consumer. Removes it from the group only if it holds nothing
/// (checked in the same step: a consumer's pending entries are never discarded). Returns 1 if
/// removed.
pub(super) static REMOVE_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
if #redis.call('XPENDING', KEYS[1], 'hookgate', '-', '+', 1, ARGV[1]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'hookgate', ARGV[1])
return 1
"
    ))
});

/// KEYS: a lease. ARGV: the owner, the lease's time (ms). Takes the lease if nobody holds it,
/// renews it if `owner` does; returns 1 if `owner` holds it now.
pub(super) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        frees!(),
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"
    ))
});
