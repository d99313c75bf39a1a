"""``DistributedOptimizer``: the user's own torch optimizer, its steps going through zps.

Wrapping (as Horovod does) keeps the user's loop as it was: ``zero_grad``, ``backward``,
``step``. Every parameter is a dense table named after it. Communication starts from a
hook on each parameter as soon as its gradient is complete during ``backward()``; the
parameters are grouped in buckets (``bucket_bytes``) sent as one ``push_pull`` each, and
``step()`` waits only for what is still in flight. After ``step()`` the parameters hold the
servers' values.

Two ways to use the servers:

* deltas (default): the user's optimizer steps locally, and the change ``new - old`` is
  pushed. Any per-parameter optimizer works in every consistency mode; with plain SGD
  (momentum included) in sync mode this is exactly synchronous data-parallel SGD.
  With overlap on, the local step of a bucket runs inside backward, once its gradients
  are in.
* ``server_optimizer="adam:1e-3"`` (or ``sgd:LR[:MOMENTUM]``): gradients are pushed and
  the servers run the optimizer (the user's optimizer only supplies the parameters).

float32 and float64 CPU parameters travel without copies (pushes from their memory,
pulls straight into it); float16, bfloat16 and device tensors are staged through a float32
copy on the host, and the servers keep float32 master values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from zps.client import Client
from zps.errors import ConfigError, RemoteError
from zps.torch.slots import Bucket, Slot, make_buckets, make_slots, server_optimizer_spec
from zps.torch.tensors import copy_into, numpy_view, shares_memory, staged_copy

BUCKET_BYTES = 4 << 20  # bytes of parameters sent as one push_pull
OWNER = "_zps_optimizer"  # attribute of a wrapped parameter: its optimizer (weak)
LIVE: weakref.WeakSet[DistributedOptimizer] = weakref.WeakSet()  # (broadcast looks here)


_CLASSES: dict[type, type] = {}


def _wrapped_class(cls: type) -> type:
    """``DistributedSGD`` for ``SGD``...: a subclass of both the user's optimizer class
    and ``DistributedOptimizer``, so isinstance checks and LR schedulers keep working."""
    wrapped = _CLASSES.get(cls)
    if wrapped is None:
        wrapped = _CLASSES[cls] = type(f"Distributed{cls.__name__}",
                                       (DistributedOptimizer, cls), {})
    return wrapped


class DistributedOptimizer(torch.optim.Optimizer):
    """Wrap ``optimizer`` so that its steps go through the zps servers of ``ps``.

    ::

        opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), ps,
                                      named_parameters=model.named_parameters())

    Arguments:
      ``ps``: a connected ``zps.Client``. ``named_parameters``: the model's
      ``named_parameters()``; each parameter becomes a table named ``prefix + name``
      (default names ``param.G.I`` by position in the optimizer's groups).
      ``server_optimizer``: push gradients and let the servers step (``"adam:1e-3"``,
      ``"sgd:0.1:0.9"`` or a spec map) instead of pushing the local optimizer's deltas.
      ``backward_passes_per_step``: backward passes accumulated locally per step.
      ``bucket_bytes``: parameters sent as one push_pull. ``overlap``: start sending from
      backward hooks (False: everything is sent from ``step()``, e.g. to clip gradients
      between backward and step). ``codec``: how these parameters' pushes travel (with
      error feedback; default the client's). ``weight``: this worker's weight (its batch
      size) for the ``weighted`` aggregation; may be changed before any step.

    Wrapping creates the tables (the first worker's values win) and loads their values
    into the parameters, so every worker starts from the same point. Raises
    ``ConfigError`` with a sentence saying what is wrong (a parameter that
    ``named_parameters`` does not name, a name given twice, a parameter wrapped twice).
    ``step()`` raises what the client raises (``ServerUnreachable`` after its retries...);
    it raises ``ConfigError`` if the model changed after wrapping.
    """

    def __new__(cls, optimizer: torch.optim.Optimizer | None = None, *args: Any,
                **kwargs: Any) -> DistributedOptimizer:
        if cls is not DistributedOptimizer:  # (copy and pickle make the class itself)
            return super().__new__(cls)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("DistributedOptimizer wraps a torch.optim optimizer, e.g. "
                              "DistributedOptimizer(torch.optim.SGD(model.parameters(), "
                              f"lr=0.1), ps); got {type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise ConfigError("this optimizer is a DistributedOptimizer already; wrap the "
                              "plain torch optimizer once")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ConfigError("LBFGS couples all parameters in one step and cannot be "
                              "split across workers; use another optimizer")
        return super().__new__(_wrapped_class(type(optimizer)))  # type: ignore[no-any-return]

    def __init__(self, optimizer: torch.optim.Optimizer, ps: Client,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None, *,
                 server_optimizer: str | Mapping[str, Any] | None = None,
                 backward_passes_per_step: int = 1, bucket_bytes: int = BUCKET_BYTES,
                 overlap: bool = True, codec: str | None = None,
                 pull_codec: str | None = None, weight: float | None = None,
                 prefix: str = "") -> None:
        # Share the user's optimizer's state, groups, defaults and hooks (not copies); not
        # an LR scheduler's wrapper of the old object's step, which would bypass this one.
        self.__dict__.update({k: v for k, v in optimizer.__dict__.items() if k != "step"})
        self._patch_step_function()  # torch's step hooks run once, around step()
        self._user_step = _unhooked(type(optimizer).step)
        self._unwrapped = weakref.ref(optimizer)  # (what an LR scheduler may be watching)
        self._retired = False
        if not isinstance(ps, Client):
            raise ConfigError("zps.torch needs a connected zps.Client (the blocking one), "
                              f"e.g. zps.Client(['tcp://127.0.0.1:5570']); got "
                              f"{type(ps).__name__}")
        if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
            raise ConfigError("backward_passes_per_step must be an integer >= 1, got "
                              f"{backward_passes_per_step!r}")
        if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ConfigError(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        if pull_codec is not None and pull_codec != ps.config.pull_codec:
            raise ConfigError("pull_codec is the client's setting: create the client with "
                              f"zps.Client(servers, pull_codec={pull_codec!r})")
        self._ps = ps
        self._spec = server_optimizer_spec(server_optimizer)
        # Servers started with --optimizer give it to tables created without one: then
        # pushes are gradients whatever was asked here.
        self._server_steps = self._spec is not None or bool(ps.server_info.get("optimizer"))
        self._prefix = prefix
        self._passes = backward_passes_per_step
        self._overlap = overlap
        self.weight = weight
        self._slots = make_slots(self.param_groups, named_parameters, prefix)
        self._by_param = {id(s.param): s for s in self._slots}
        self._buckets = make_buckets(self._slots, bucket_bytes)
        if codec is not None:
            ps.set_codec([s.table for s in self._slots], codec)
        self._create_tables()
        self._next = 0  # buckets go out in this order on every worker (sync rounds)
        hook = _weak_hook(weakref.ref(self))  # (a hook must not keep the optimizer alive)
        self._hooks = [s.param.register_post_accumulate_grad_hook(hook)
                       for s in self._slots] if overlap else []
        for slot in self._slots:
            previous = getattr(slot.param, OWNER, lambda: None)()
            if isinstance(previous, DistributedOptimizer) and previous is not self:
                previous.retire()  # the newest wrapper of a parameter takes it over
            setattr(slot.param, OWNER, weakref.ref(self))
        LIVE.add(self)

    # ------------------------------------------------------------ setting up

    def _create_tables(self) -> None:
        """Create the tables (first init wins) and start from the values they hold."""
        try:
            values = self._ps.init({s.table: s.master for s in self._slots},
                                   optimizer=self._spec)
        except RemoteError as exc:
            if exc.code != "conflict":
                raise
            raise ConfigError(
                f"{exc}. The tables exist with other settings: wrap the optimizer the same "
                "way on every worker, and before broadcast_parameters when it has a "
                "server_optimizer") from None
        for slot in self._slots:
            np.copyto(slot.master, values[slot.table])
            if not slot.direct:
                copy_into(slot.param, slot.master)

    # ------------------------------------------------------------ the loop

    @property
    def tables(self) -> dict[str, str]:
        """The table of each parameter, by parameter name."""
        return {s.name: s.table for s in self._slots}

    def table_of(self, param: torch.Tensor) -> tuple[str, dict[str, Any] | None] | None:
        """The table holding ``param`` and its server optimizer (None if not wrapped)."""
        slot = self._by_param.get(id(param))
        return (slot.table, self._spec) if slot is not None else None

    def table_of_alias(self, tensor: torch.Tensor) -> tuple[str, dict[str, Any] | None] | None:
        """As ``table_of``, for a tensor sharing a parameter's memory (``state_dict()``)."""
        for slot in self._slots:
            param = slot.param
            if tensor.device == param.device and tensor.shape == param.shape \
                    and tensor.dtype == param.dtype and tensor.data_ptr() == param.data_ptr():
                return slot.table, self._spec
        return None

    def _on_grad(self, param: torch.Tensor) -> None:
        """A parameter's gradient is complete: once every parameter of a bucket has had
        ``backward_passes_per_step`` passes, send it (buckets in their order: every
        worker sends the same sequence, so no round waits behind another's queue)."""
        slot = self._by_param.get(id(param))
        if slot is None or self._retired:
            return
        bucket = self._buckets[slot.bucket]
        if bucket.handle is not None or slot.passes >= self._passes:
            raise ConfigError(
                f"the gradient of {slot.name!r} was computed again after it was complete; "
                f"call step() after every {self._passes} backward pass(es) (set "
                "backward_passes_per_step to accumulate more; with activation "
                "checkpointing of shared weights use use_reentrant=False)")
        slot.passes += 1
        if slot.passes == self._passes:
            bucket.ready += 1
            while self._next < len(self._buckets) and (
                    self._buckets[self._next].ready == len(self._buckets[self._next].slots)):
                self._launch(self._buckets[self._next])
                self._next += 1
        self._ps.progress()  # replies that came in, requests that may go now

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Send what backward has not sent yet, wait for every reply, and leave the
        servers' values in the parameters. Returns ``closure()``'s loss if given."""
        if self._retired:
            raise ConfigError("this DistributedOptimizer was replaced by a newer one wrapping "
                              "the same parameters; step the new one")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            self._check_model()
            waiting = [b for b in self._buckets if b.handle is None]
            if waiting and not self._server_steps:
                self._local_step([s for b in waiting for s in b.slots])
            for bucket in waiting:
                self._send(bucket)
            self._wait()
            unwrapped = self._unwrapped()
            if unwrapped is not None:
                unwrapped._opt_called = True  # type: ignore[attr-defined]  # its scheduler
        finally:
            for bucket in self._buckets:
                bucket.ready, bucket.handle = 0, None
            for slot in self._slots:
                slot.passes = 0
            self._next = 0
        return loss

    def retire(self) -> None:
        """Stop using the parameters (a newer wrapper took them over)."""
        self.remove_hooks()
        self._retired = True
        LIVE.discard(self)

    def _launch(self, bucket: Bucket) -> None:
        for slot in bucket.slots:
            self._refresh(slot)
        if not self._server_steps:
            self._local_step(bucket.slots)
        self._send(bucket)

    def _local_step(self, slots: list[Slot]) -> None:
        """The user's optimizer steps ``slots``' parameters only; their deltas are left in
        each slot's scratch buffer."""
        for slot in slots:
            if slot.scratch is None:
                slot.scratch = np.empty_like(slot.master)
            if slot.direct:
                np.copyto(slot.scratch, slot.master)
            else:
                slot.scratch[...] = staged_copy(slot.param)
        wanted = {id(s.param) for s in slots}
        groups = self.param_groups
        saved = [group["params"] for group in groups]
        try:
            if len(wanted) < len(self._slots):
                for group in groups:
                    group["params"] = [p for p in group["params"] if id(p) in wanted]
            self._user_step(self)  # (without torch's step hooks: those run around step())
        finally:
            for group, params in zip(groups, saved, strict=True):
                group["params"] = params
        for slot in slots:
            assert slot.scratch is not None
            new = slot.master if slot.direct else staged_copy(slot.param)
            np.subtract(new, slot.scratch, out=slot.scratch)

    def _send(self, bucket: Bucket) -> None:
        payload = {s.table: self._payload(s) for s in bucket.slots}
        bucket.handle = self._ps.push_pull(payload, weight=self.weight, wait=False,
                                           out={s.table: s.master for s in bucket.slots})

    def _payload(self, slot: Slot) -> np.ndarray:
        if not self._server_steps:
            assert slot.scratch is not None
            return slot.scratch
        grad = slot.param.grad
        if grad is not None and grad.is_sparse:
            raise ConfigError(f"{slot.name!r} has a sparse gradient; use zps.torch.Embedding "
                              "for sparse rows")
        if grad is not None and slot.direct and shares_memory(grad):
            return numpy_view(grad)  # sent from where it is
        if slot.scratch is None:
            slot.scratch = np.empty_like(slot.master)
        if grad is None:
            slot.scratch.fill(0)  # unused in this pass: it still counts in the round
        else:
            slot.scratch[...] = staged_copy(grad)
        return slot.scratch

    def _wait(self) -> None:
        """Wait for every bucket (all of them, even after a failure), then raise the
        first error; copy pulled values into staged parameters."""
        error: BaseException | None = None
        for bucket in self._buckets:
            if bucket.handle is None:
                continue
            try:
                bucket.handle.wait()
            except Exception as exc:  # re-raised below, after the rest
                error = error or exc
        if error is not None:
            raise error
        for slot in self._slots:
            if not slot.direct:
                copy_into(slot.param, slot.master)

    def _check_model(self) -> None:
        """``ConfigError`` if the parameters changed since wrapping; re-view a parameter
        whose storage was replaced in place (``param.data = ...`` of the same shape)."""
        optimized = [p for group in self.param_groups for p in group["params"]
                     if p.requires_grad]
        if len(optimized) != len(self._slots) or any(id(p) not in self._by_param
                                                     for p in optimized):
            raise ConfigError("the optimizer's parameters changed after it was wrapped "
                              "(add_param_group, or a new model); wrap the optimizer again "
                              "after changing the model")
        for slot in self._slots:
            param = slot.param
            if param.shape != slot.shape or param.dtype != slot.dtype \
                    or param.device != slot.device:
                raise ConfigError(
                    f"the model changed after wrapping: {slot.name!r} is now {param.dtype}"
                    f"{list(param.shape)} on {param.device}, it was {slot.dtype}"
                    f"{list(slot.shape)} on {slot.device}; wrap the optimizer after "
                    "changing the model")
            self._refresh(slot)

    def _refresh(self, slot: Slot) -> None:
        """Follow a parameter whose storage was replaced (``param.data = ...``,
        ``channels_last``): a new view, or the staged path if it no longer can be one."""
        param = slot.param
        if not slot.direct or param.data_ptr() == slot.master.ctypes.data:
            return
        if shares_memory(param):
            slot.master = numpy_view(param)
        else:
            slot.master, slot.direct = staged_copy(param), False

    def remove_hooks(self) -> None:
        """Stop sending from backward (``step()`` then sends everything)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def _unhooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """An optimizer class's step without the wrapper torch adds to run step hooks."""
    return getattr(step, "__wrapped__", step) if getattr(step, "hooked", False) else step


def _weak_hook(owner: weakref.ref[DistributedOptimizer]) -> Callable[[torch.Tensor], None]:
    def hook(param: torch.Tensor) -> None:
        optimizer = owner()
        if optimizer is not None:
            optimizer._on_grad(param)
    return hook
