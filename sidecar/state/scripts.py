"""The Lua scripts of the Redis store: each operation is one atomic round trip.

A counter ``K`` is two Redis keys:

- ``K``, a hash: ``used``; ``reserved``, the sum of live reservations; ``holds``, how
  many there are (when none is left ``reserved`` is reset to 0, so float drift cannot
  pile up); and ``h:<id>``, each reservation's amount.
- ``K:holds``, a sorted set scored by expiry in Redis milliseconds (``TIME``): ``h:<id>``
  until a reservation stops counting, ``s:<id>`` until a settled id may be forgotten.
  Every script first prunes what expired, so reading never counts a dead reservation.

A rate limiter ``K`` is a string: its GCRA theoretical arrival time, in the caller's
seconds (the arithmetic mirrors :func:`sidecar.state.gcra.step`).

Floats travel as strings: Lua numbers returned to Redis are truncated to integers,
and ``HINCRBYFLOAT`` already answers with a string. Lua numbers passed *to* commands
are written exactly by Redis (17 significant digits or more).
"""

import hashlib
from dataclasses import dataclass, field

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function release(main, amount)
  if redis.call('HINCRBY', main, 'holds', -1) <= 0 then
    redis.call('HDEL', main, 'holds', 'reserved')
  else
    redis.call('HINCRBYFLOAT', main, 'reserved', '-' .. amount)
  end
end

local function prune(main, exp, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  if #gone == 0 then
    return
  end
  for _, member in ipairs(gone) do
    if string.sub(member, 1, 2) == 'h:' then
      local amount = redis.call('HGET', main, member)
      if amount then
        redis.call('HDEL', main, member)
        release(main, amount)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', exp, '-inf', now)
end

local function touch(main, exp, ttl)
  redis.call('EXPIRE', main, ttl)
  redis.call('EXPIRE', exp, ttl)
end
"""

_RESERVE = """
-- KEYS: counter, holds. ARGV: amount, limit ('inf' for none), ttl_s, hold_ms, id, slack.
local main, exp = KEYS[1], KEYS[2]
local now = now_ms()
prune(main, exp, now)
local used = redis.call('HGET', main, 'used') or '0'
local reserved = redis.call('HGET', main, 'reserved') or '0'
if ARGV[2] ~= 'inf' then
  local total = tonumber(used) + tonumber(reserved) + tonumber(ARGV[1])
  if total > tonumber(ARGV[2]) + tonumber(ARGV[6]) then
    return {0, used, reserved}
  end
end
local hold = 'h:' .. ARGV[5]
redis.call('HSET', main, hold, ARGV[1])
redis.call('HINCRBY', main, 'holds', 1)
reserved = redis.call('HINCRBYFLOAT', main, 'reserved', ARGV[1])
redis.call('ZADD', exp, now + tonumber(ARGV[4]), hold)
touch(main, exp, ARGV[3])
return {1, used, reserved}
"""

_SETTLE = """
-- KEYS: counter, holds. ARGV: id, actual, ttl_s, settled_s (how long the id is kept).
-- Returns 0 if already settled.
local main, exp = KEYS[1], KEYS[2]
local now = now_ms()
prune(main, exp, now)
if redis.call('ZSCORE', exp, 's:' .. ARGV[1]) then
  return 0
end
local hold = 'h:' .. ARGV[1]
local amount = redis.call('HGET', main, hold)
if amount then
  redis.call('HDEL', main, hold)
  redis.call('ZREM', exp, hold)
  release(main, amount)
end
redis.call('HINCRBYFLOAT', main, 'used', ARGV[2])
redis.call('ZADD', exp, now + tonumber(ARGV[4]) * 1000, 's:' .. ARGV[1])
touch(main, exp, ARGV[3])
return 1
"""

_ADD = """
-- KEYS: counter, holds. ARGV: amount, ttl_s. Returns the new used amount.
local used = redis.call('HINCRBYFLOAT', KEYS[1], 'used', ARGV[1])
touch(KEYS[1], KEYS[2], ARGV[2])
return used
"""

_READ = """
-- KEYS: counter, holds. Returns {used, reserved}.
prune(KEYS[1], KEYS[2], now_ms())
local used = redis.call('HGET', KEYS[1], 'used') or '0'
local reserved = redis.call('HGET', KEYS[1], 'reserved') or '0'
return {used, reserved}
"""

_HIT = """
-- KEYS: limiter. ARGV: limit (> 0), window_s, now_s, cost, slack_s.
-- Returns {allowed, remaining, retry_after_s}.
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, cost, slack = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local interval = window / limit
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local function room(t)
  return math.max(0, math.floor((now + window - t + slack) / interval))
end
if cost > limit then
  return {0, room(tat), 'inf'}
end
local new_tat = tat + cost * interval
local allow_at = new_tat - window
if allow_at > now + slack then
  return {0, room(tat), string.format('%.17g', allow_at - now)}
end
local ttl_ms = math.max(1, math.ceil((new_tat - now) * 1000))
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', string.format('%d', ttl_ms))
return {1, room(new_tat), '0'}
"""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and the SHA-1 that ``EVALSHA`` knows it by."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


RESERVE = Script("reserve", _COMMON + _RESERVE)
SETTLE = Script("settle", _COMMON + _SETTLE)
ADD = Script("add", _COMMON + _ADD)
READ = Script("read", _COMMON + _READ)
HIT = Script("hit", _HIT)
