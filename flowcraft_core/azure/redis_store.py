"""Coordination in Redis: Flowcraft's store contract plus idempotent join gates and terminal tracking.

Flowcraft's adapter counted fan-in arrivals with a bare INCR, so a predecessor's job delivered twice
counted twice and released the join early. Here each gate is a hash of arrived predecessors (a member
counts once however often it arrives) and its decision is taken and stored by one Lua script, so it is
atomic across workers and replayable after a crash.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from redis.asyncio import Redis

from ..protocols import GateDecision
from .retry import RetryPolicy, retry_transient

# KEYS: gate hash, decision key, run key set. ARGV: member, done (0/1), expected, strategy, ttl, call token.
# The decision is stored with the token of the call that took it ("fire|<token>"): when that call's
# reply is lost and it is retried, the retry is told "first" again and still enqueues the join, while
# any other arrival (a duplicate delivery) is not.
_ARRIVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local ttl = tonumber(ARGV[5])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[3], KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[3], ttl)
local decided = redis.call('GET', KEYS[2])
if decided then
  local d, by = string.match(decided, '^(%a+)|(.*)$')
  if d == nil then return {decided, 0} end
  if by == ARGV[6] then return {d, 1} end
  return {d, 0}
end
local vals = redis.call('HVALS', KEYS[1])
local anydone = false
for _, v in ipairs(vals) do if v == '1' then anydone = true end end
local expected = tonumber(ARGV[3])
local decision = 'wait'
if ARGV[4] == 'any' then
  if anydone then decision = 'fire' elseif #vals >= expected then decision = 'skip' end
elseif #vals >= expected then
  if anydone then decision = 'fire' else decision = 'skip' end
end
if decision == 'wait' then return {'wait', 0} end
redis.call('SET', KEYS[2], decision .. '|' .. ARGV[6], 'EX', ttl)
return {decision, 1}
"""

# KEYS: terminal set, run key set. ARGV: member, expected, ttl.
_TERMINAL = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) and 1 or 0
"""


# KEYS: claim key, gate hash. ARGV: token, ttl. Takes the claim (SET NX), or confirms this token already
# holds it (a redelivered message, or a retry whose reply was lost), and returns the gate's arrivals so the
# join can check that every predecessor that released it is visible in its snapshot of the run.
_CLAIM = """
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2]))
local held = 0
if ok then held = 1 elseif redis.call('GET', KEYS[1]) == ARGV[1] then held = 1 end
return {held, redis.call('HGETALL', KEYS[2])}
"""


class CommandCounter:
    """Counts Redis round trips; benchmarks and budget tests read it."""

    def __init__(self) -> None:
        self.count = 0


class RedisCoordinationStore:
    """CoordinationStore on Redis (works with redis:// and rediss://, as Azure Cache for Redis needs).

    Every method but ``increment`` is idempotent and retries connection errors and timeouts (retry.py);
    a bare INCR is not, so it is never retried.
    """

    retry_policy: RetryPolicy | None = None

    def __init__(self, redis_client: Redis, *, prefix: str = "flowcraft",
                 counter: CommandCounter | None = None) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.counter = counter or CommandCounter()
        self._arrive = redis_client.register_script(_ARRIVE)
        self._terminal = redis_client.register_script(_TERMINAL)
        self._claim = redis_client.register_script(_CLAIM)

    def _run_keys(self, run_id: str) -> str:
        # The hash tag keeps a run's keys in one slot, so the scripts also work on a Redis cluster.
        return f"{self.prefix}:{{{run_id}}}:keys"

    def _key(self, run_id: str, *parts: str) -> str:
        return ":".join([f"{self.prefix}:{{{run_id}}}", *parts])

    async def increment(self, key: str, ttl_seconds: int) -> int:
        """INCR with expiry."""
        self.counter.count += 1
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, ttl_seconds)
        value, _ = await pipe.execute()
        return int(value)

    @retry_transient("redis.set_if_not_exist")
    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: int) -> bool:
        """SET NX EX: a lock."""
        self.counter.count += 1
        return bool(await self.redis.set(key, value, nx=True, ex=ttl_seconds))

    @retry_transient("redis.extend_ttl")
    async def extend_ttl(self, key: str, ttl_seconds: int) -> bool:
        """EXPIRE; False when the key is gone."""
        self.counter.count += 1
        return bool(await self.redis.expire(key, ttl_seconds))

    @retry_transient("redis.delete")
    async def delete(self, key: str) -> None:
        """DEL."""
        self.counter.count += 1
        await self.redis.delete(key)

    @retry_transient("redis.get")
    async def get(self, key: str) -> str | None:
        """GET."""
        self.counter.count += 1
        value = await self.redis.get(key)
        return None if value is None else str(value)

    async def arrive(self, gate: str, member: str, *, done: bool, expected: int, strategy: str,
                     ttl_seconds: int) -> tuple[GateDecision, bool]:
        """Record an arrival at a join gate and return its decision (see CoordinationStore.arrive)."""
        run_id, _, rest = gate.partition("|")
        keys = [self._key(run_id, "gate", rest), self._key(run_id, "decision", rest), self._run_keys(run_id)]
        # One token per call, shared by its retries (see _ARRIVE).
        args: list[Any] = [member, "1" if done else "0", expected, strategy, ttl_seconds, uuid.uuid4().hex]
        decision, first = await self._arrive_call(keys, args)
        return cast(GateDecision, str(decision)), bool(int(first))

    @retry_transient("redis.arrive")
    async def _arrive_call(self, keys: list[str], args: list[Any]) -> list[Any]:
        self.counter.count += 1
        return cast(list[Any], await self._arrive(keys=keys, args=args))

    @retry_transient("redis.claim")
    async def claim(self, run_id: str, name: str, token: str, ttl_seconds: int, *,
                    gate: str) -> tuple[bool, dict[str, bool]]:
        """Claim the execution of a join (see CoordinationStore.claim)."""
        self.counter.count += 1
        _, _, rest = gate.partition("|")
        keys = [self._key(run_id, "claim", name), self._key(run_id, "gate", rest)]
        held, flat = cast(list[Any], await self._claim(keys=keys, args=[token, ttl_seconds]))
        pairs = [str(x) for x in flat]
        return bool(int(held)), {pairs[i]: pairs[i + 1] == "1" for i in range(0, len(pairs), 2)}

    @retry_transient("redis.resolve_terminal")
    async def resolve_terminal(self, run_id: str, member: str, expected: int, ttl_seconds: int) -> bool:
        """Add a terminal node to the run's ended set; True once all expected have ended."""
        self.counter.count += 1
        keys = [self._key(run_id, "terminals"), self._run_keys(run_id)]
        return bool(int(await self._terminal(keys=keys, args=[member, expected, ttl_seconds])))

    @retry_transient("redis.forget_run")
    async def forget_run(self, run_id: str) -> None:
        """Delete every key the run created (gates, decisions, terminal set)."""
        self.counter.count += 1
        index = self._run_keys(run_id)
        members = await cast(Any, self.redis.smembers(index))
        if members:
            await self.redis.delete(*members, index)
        else:
            await self.redis.delete(index)

    @retry_transient("redis.purge_run")
    async def purge_run(self, run_id: str) -> int:
        """Delete every key of the run: those its key set lists, and the rest under its hash tag (join claims).

        SCAN walks the keyspace, so this is for purging one run on request; every key also has a TTL.
        """
        self.counter.count += 1
        index = self._run_keys(run_id)
        keys = {str(k) for k in await cast(Any, self.redis.smembers(index))}
        # Run ids never hold glob characters (validate_run_id), so the pattern matches this run only.
        keys.update([str(k) async for k in self.redis.scan_iter(match=f"{self.prefix}:{{{run_id}}}:*", count=1000)])
        keys.add(index)
        return int(await self.redis.delete(*keys))
