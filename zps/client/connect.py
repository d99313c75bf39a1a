"""Connecting (sans-IO): say hello to every server and find each shard's primary.

A shard with a standby is asked on both of its servers; the one that says it is primary
with the newest epoch wins (after a takeover the old primary may be back as the new
standby). A shard is decided once both answered, or a primary answered and ``SETTLE``
seconds passed without the other; all must be decided within ``connect_timeout``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from zps.client.calls import unreachable_message
from zps.endpoints import public_endpoint
from zps.errors import ConfigError, ServerUnreachable, remote_error
from zps.protocol import Op, Reply, Request, encode_request

if TYPE_CHECKING:
    from zps.client.calls import Call
    from zps.client.engine import Engine

log = logging.getLogger("zps.client")

SETTLE = 0.2  # seconds to wait for a shard's other server once one said it is primary


class Connecting:
    """The hellos of ``engine.connect`` and what they answered."""

    def __init__(self, engine: Engine, call: Call, deadline: float) -> None:
        self.engine = engine
        self.call = call
        self.deadline = deadline
        self.asked: dict[int, tuple[int, int]] = {}  # request id -> (shard, slot)
        self._answers: dict[int, dict[int, dict[str, Any]]] = {}
        self._first_primary: dict[int, float] = {}
        self._decided: set[int] = set()
        self._groups: dict[tuple[int, int], list[str]] = {}  # (shard, slot) -> its group
        self._heard: dict[int, float] = {}  # shard -> when its first answer came
        self._held: Exception | None = None  # a layout conflict, until groups are known

    def next_deadline(self) -> float:
        settles = [t + SETTLE for s, t in self._first_primary.items() if s not in self._decided]
        if self._groups or self._held:
            settles += [t + SETTLE for t in self._heard.values()]
        return min([self.deadline, *settles])

    def answer(self, rid: int, reply: Reply, now: float) -> None:
        shard, slot = self.asked.pop(rid)
        engine = self.engine
        if reply.error is None and reply.info.get("regroup"):  # a --procs group: see below
            if engine.groups:  # placed over the groups already, and still not right
                self._fail(ConfigError(f"{engine.endpoints[2 * shard + slot]} is one of a "
                                       "group of servers not listed whole; give the first "
                                       "address of each group, in the same order everywhere"))
                return
            self._groups[(shard, slot)] = [str(a) for a in reply.info.get("group", [])]
            self._heard.setdefault(shard, now)
            self._regroup_when_due(now)
            return
        if reply.error is not None:
            error = remote_error(reply.error[0], f"hello failed: {reply.error[1]}",
                                 engine.endpoints[2 * shard + slot])
            if reply.error[0] == "conflict" and not engine.groups:
                # Maybe only because another server is a --procs group not yet placed
                # over (this layout is about to change): decided once all have answered.
                self._held = self._held or error
                self._heard.setdefault(shard, now)
                self._regroup_when_due(now)
                return
            self._fail(error)
            return
        self._answers.setdefault(shard, {})[slot] = reply.info
        if _primary(reply.info) or not engine.has_standby(shard):
            self._first_primary.setdefault(shard, now)
        self._heard.setdefault(shard, now)
        self._decide(shard, now)
        self._finish_if_done(now)
        self._regroup_when_due(now)

    def _regroup_when_due(self, now: float) -> None:
        """Some servers are --procs groups: ``Regroup`` once every shard's first server
        answered, and its standby too or ``SETTLE`` passed (a standby down does not keep
        the client from connecting: the group's other processes then have none)."""
        if not (self._groups or self._held) or self.call.done:
            return
        engine = self.engine
        waiting = {shard for shard, _ in self.asked.values()}
        for shard in range(len(engine.servers)):
            if shard in waiting and (shard not in self._heard
                                     or now < self._heard[shard] + SETTLE):
                return
        if not self._groups:
            assert self._held is not None
            self._fail(self._held)  # no group: the conflict is real
            return
        try:
            found = regrouped(engine.servers, engine.standbys, self._groups)
        except ConfigError as exc:
            self._fail(exc)
            return
        self._fail(Regroup(*found))

    def expire(self, now: float) -> None:
        self._regroup_when_due(now)
        for shard in range(len(self.engine.servers)):
            self._decide(shard, now)
        if self._finish_if_done(now) or now < self.deadline:
            return
        undecided = set(range(len(self.engine.servers))) - self._decided
        shard = min(undecided - set(self._heard) or undecided)  # (a group's answer: heard)
        answers = self._answers.get(shard, {})
        address = self.engine.endpoints[2 * shard]
        if answers:
            roles = ", ".join(f"{self.engine.endpoints[2 * shard + s]} is a "
                              f"{i.get('role')}" for s, i in answers.items())
            message = (f"no primary answered for the shard of {address} within "
                       f"{self.engine.config.connect_timeout:g} s ({roles}); start its primary "
                       "or wait for the standby to take over")
        else:
                message = unreachable_message(address, Op.HELLO, 1,
                                          self.engine.config.connect_timeout)
        self._fail(ServerUnreachable(message))

    def _decide(self, shard: int, now: float) -> None:
        if shard in self._decided:
            return
        engine = self.engine
        answers = self._answers.get(shard, {})
        # A shard without a standby takes its one server's answer (a standby's too: its
        # requests then say it is not the primary).
        primaries = [(_epoch(info), slot) for slot, info in answers.items()
                     if _primary(info) or not engine.has_standby(shard)]
        if not primaries:
            return
        slots = 2 if engine.has_standby(shard) else 1
        if len(answers) < slots and now < self._first_primary[shard] + SETTLE:
            return
        epoch, slot = max(primaries)
        if slot == 1:
            log.warning("server %s is not the primary of its shard; using %s (epoch %d)",
                        engine.endpoints[2 * shard], engine.endpoints[2 * shard + 1], epoch)
        engine.active[shard] = slot
        engine.adopt_hello(shard, answers[slot])
        self._decided.add(shard)

    def _finish_if_done(self, now: float) -> bool:
        if len(self._decided) < len(self.engine.servers) or self._groups:
            return False
        self.engine.connected(now)
        self.engine.finish_call(self.call)
        return True

    def _fail(self, error: Exception) -> None:
        self.engine.connecting_failed()
        self.engine.finish_call(self.call, error)


class Regroup(Exception):
    """Some servers run as groups (``zps-server --procs N``): connect again to these."""

    def __init__(self, servers: list[str], standbys: list[str],
                 groups: dict[str, list[str]]) -> None:
        super().__init__(f"servers run as groups: {servers}")
        self.servers, self.standbys, self.groups = servers, standbys, groups


def regroup_engine(engine: Engine, regroup: Regroup) -> Engine:
    """A new engine for the same client over the groups' every process."""
    from zps.client.engine import Engine

    wide = Engine(regroup.servers, engine.config, standbys=tuple(regroup.standbys),
                  client_id=engine.client_id)
    wide.groups = regroup.groups
    return wide


def regrouped(servers: list[str], standbys: list[str],
              found: dict[tuple[int, int], list[str]],
              ) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The server and standby lists with each group in place of the address given for it
    (in the group's order, wildcard hosts as the address given), and each member's group.
    ``ConfigError`` if a standby group's size differs from its primary group's."""
    wide: list[str] = []
    standby_wide: list[str] = []
    groups: dict[str, list[str]] = {}
    for shard, address in enumerate(servers):
        standby = standbys[shard]
        if address in wide or (standby and (standby in wide or standby in standby_wide)):
            continue  # listed as a member of a group placed already
        group = [public_endpoint(a, address) for a in found.get((shard, 0), [address])]
        others = [public_endpoint(a, standby) for a in found[(shard, 1)]] \
            if standby and (shard, 1) in found else [standby] + [""] * (len(group) - 1)
        if (shard, 0) not in found and len(others) > 1:
            # The primary group is down and its standby group took over: its processes
            # 1.. serve their shards now, with no standby behind them.
            group, others = [address, *others[1:]], [others[0]] + [""] * (len(others) - 1)
        elif standby and (shard, 1) not in found and len(group) > 1:
            log.warning("the standby %s did not answer in time: the other processes of "
                        "the group of %s have no standby for this client", standby, address)
        if len(others) != len(group):
            raise ConfigError(f"the standby {standby} is a group of {len(others)} processes "
                              f"and its primary {address} of {len(group)}: start both with "
                              "the same --procs")
        for members in (group, others):
            if len(members) > 1:
                groups.update({member: members for member in members if member})
        wide += group
        standby_wide += others
    return wide, standby_wide, groups


def _primary(info: dict[str, Any]) -> bool:
    return info.get("role", "primary") == "primary"


def _epoch(info: dict[str, Any]) -> int:
    epoch = info.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def hello_frames(engine: Engine, shard: int, rid: int, slot: int | None = None) -> list[Any]:
    """A hello to ``shard``: the role, the layout, and the rank held or wanted."""
    config = engine.config
    options: dict[str, Any] = {"role": config.role,
                               "layout": [len(engine.servers), config.chunk_bytes, shard]}
    endpoint = 2 * shard + (engine.active[shard] if slot is None else slot)
    group = engine.groups.get(engine.endpoints[endpoint])
    if group is not None:
        options["group"] = len(group)  # this client places over the whole group
    if config.role == "worker" and config.rank is not None:
        options["rank"] = config.rank
    elif config.role == "worker" and engine.rank is not None:
        options["rank_hint"] = engine.rank  # assigned before: kept across failovers if free
    return encode_request(Request(Op.HELLO, engine.client_id, rid, options=options))
