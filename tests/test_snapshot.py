"""Snapshots: through frames and checkpoint files, bit for bit, and refusing bad input."""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zps.errors import ZpsError
from zps.store import (
    Snapshot,
    SnapshotError,
    Store,
    TableState,
    latest_checkpoint,
    make_optimizer,
    read_checkpoint,
    restore_store,
    snapshot_frames,
    snapshot_from_frames,
    take_snapshot,
    write_checkpoint,
)
from zps.store.checkpoint import FILE_MAGIC

EXTRA: dict[str, Any] = {"rounds": {"w": 3}, "dedup": [["client-1", "w", [4, 5]]],
                         "none": None, "f": 1.5, "b": b"\x00"}


def _grad(rng: np.random.Generator, table: Any) -> np.ndarray:
    return rng.standard_normal(table.data.shape).astype(table.data.dtype)


def _store() -> Store:
    """Tables of both dtypes, 0-d, empty and 3-d, with optimizer state that has moved."""
    store = Store()
    store.create("adam32", np.arange(6, dtype=np.float32).reshape(2, 3),
                 make_optimizer({"name": "adam", "lr": 0.01}))
    store.create("momentum64", np.linspace(-1, 1, 5),
                 make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9}))
    store.create("adam_scalar", np.array(0.5), make_optimizer({"name": "adam", "lr": 0.001}))
    store.create("plain_sgd", np.ones((2, 2, 2), np.float32),
                 make_optimizer({"name": "sgd", "lr": 0.5}))
    store.create("empty", np.zeros((0, 3), np.float32))
    store.create("odd_bits", np.array([-0.0, np.nan, np.inf, 5e-324]))
    rng = np.random.default_rng(7)
    for _ in range(3):
        for table in store:
            if table.name not in ("empty", "odd_bits"):
                store.apply(table.name, _grad(rng, table))
    store.apply("empty", np.zeros((0, 3), np.float32))
    return store


def _check_restored(original: Store, restored: Store) -> None:
    """Same seq, versions and bits now, and the same bits after one more apply each."""
    assert restored.seq == original.seq
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    for mine, theirs in zip(original, restored, strict=True):
        assert (mine.name, mine.version) == (theirs.name, theirs.version)
        assert mine.data.tobytes() == theirs.data.tobytes()
        assert theirs.data.flags.writeable and not np.shares_memory(mine.data, theirs.data)
        a = original.apply(mine.name, _grad(rng_a, mine))
        b = restored.apply(theirs.name, _grad(rng_b, theirs))
        assert (a.seq, a.version) == (b.seq, b.version)
        assert mine.data.dtype == theirs.data.dtype and mine.data.shape == theirs.data.shape
        assert mine.data.tobytes() == theirs.data.tobytes(), mine.name


def test_frames_round_trip_is_bit_identical_and_zero_copy() -> None:
    store = _store()
    snapshot = take_snapshot(store, epoch=4, extra=EXTRA)
    frames = snapshot_frames(snapshot)
    assert isinstance(frames[0], bytes)
    assert np.shares_memory(frames[1], snapshot.tables[0].data)
    assert len(frames) == 1 + sum(1 + len(t.optimizer_state) for t in snapshot.tables)
    off_the_wire = [f if isinstance(f, bytes) else f.tobytes() for f in frames]
    received = snapshot_from_frames(off_the_wire)
    assert received == snapshot
    assert (received.seq, received.epoch, received.extra) == (store.seq, 4, EXTRA)
    assert received.tables[0].optimizer == {"name": "adam", "lr": 0.01, "beta1": 0.9,
                                             "beta2": 0.999, "eps": 1e-8}
    assert received.tables[0].optimizer_steps == 3
    assert sorted(received.tables[1].optimizer_state) == ["velocity"]
    _check_restored(store, restore_store(received))


def test_checkpoint_round_trip_is_bit_identical(tmp_path: Path) -> None:
    store = _store()
    snapshot = take_snapshot(store, epoch=2, extra=EXTRA)
    path = write_checkpoint(tmp_path, snapshot)
    assert latest_checkpoint(tmp_path) == path
    loaded = read_checkpoint(path)
    assert loaded == snapshot and loaded.extra == EXTRA
    assert all(t.data.ctypes.data % 64 == 0 for t in loaded.tables)
    _check_restored(store, restore_store(loaded, log_entries=8))


def test_snapshot_is_a_private_read_only_copy() -> None:
    store = _store()
    extra: dict[str, Any] = {"rounds": {"w": [1]}}
    snapshot = take_snapshot(store, 0, extra)
    before = snapshot.tables[0].data.copy()
    store.apply("adam32", np.ones((2, 3), np.float32))
    extra["rounds"]["w"].append(2)
    assert snapshot.tables[0].data.tobytes() == before.tobytes()
    assert snapshot.extra == {"rounds": {"w": [1]}}
    with pytest.raises(ValueError):
        snapshot.tables[0].data[0, 0] = 1


def test_restored_store_log_starts_at_the_snapshot() -> None:
    restored = restore_store(take_snapshot(_store(), 0, {}))
    table = max(restored, key=lambda t: t.version)
    assert table.version > 0
    assert restored.table_changes(table.name, table.version) == []
    assert restored.table_changes(table.name, table.version - 1) is None  # not logged


def test_equality_compares_bits() -> None:
    def table(value: float) -> TableState:
        return TableState("w", np.array([value]), 1, None, 0, {})

    assert table(math.nan) == table(math.nan)
    assert table(0.0) != table(-0.0)


def test_non_contiguous_and_big_endian_arrays_are_sent_as_contiguous_little_endian() -> None:
    data = np.arange(12, dtype=">f8").reshape(3, 4).T
    snapshot = Snapshot(1, 0, (TableState("w", data, 0, None, 0, {}),), {})
    received = snapshot_from_frames(snapshot_frames(snapshot))
    np.testing.assert_array_equal(received.tables[0].data, data)
    assert received.tables[0].data.dtype == np.dtype("<f8")


def test_take_snapshot_refuses_what_it_cannot_encode() -> None:
    store = Store()
    store.create("ints", np.zeros(2, np.int64))
    with pytest.raises(SnapshotError, match="int64"):
        take_snapshot(store, 0, {})
    with pytest.raises(SnapshotError, match="msgpack"):
        take_snapshot(Store(), 0, {"x": object()})
    with pytest.raises(ValueError, match="epoch"):
        take_snapshot(Store(), -1, {})


# ---------------------------------------------------------------- checkpoint directory


def _small(seq: int, epoch: int = 0) -> Snapshot:
    return Snapshot(seq, epoch, (TableState("w", np.full(3, seq, np.float32), seq, None, 0,
                                            {}),), {})


def test_write_checkpoint_keeps_only_the_newest(tmp_path: Path) -> None:
    for seq in (5, 1, 30, 7):
        write_checkpoint(tmp_path, _small(seq), keep=2)
    assert [read_checkpoint(p).seq for p in sorted(tmp_path.iterdir())] == [7, 30]
    newer_epoch = write_checkpoint(tmp_path, _small(2, epoch=1), keep=2)  # after a failover
    assert latest_checkpoint(tmp_path) == newer_epoch
    assert [read_checkpoint(p).seq for p in sorted(tmp_path.iterdir())] == [30, 2]


def test_leftover_temp_file_is_ignored_then_removed(tmp_path: Path) -> None:
    previous = write_checkpoint(tmp_path, _small(3))
    whole = previous.read_bytes()
    leftover = tmp_path / ".ckpt-interrupted.tmp"  # a write that died halfway
    leftover.write_bytes(whole[: len(whole) // 2])
    assert latest_checkpoint(tmp_path) == previous
    assert read_checkpoint(previous) == _small(3)
    write_checkpoint(tmp_path, _small(4))
    assert not leftover.exists()


def test_failed_write_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    previous = write_checkpoint(tmp_path, _small(3))
    ints = Snapshot(9, 0, (TableState("w", np.zeros(2, np.int64), 0, None, 0, {}),), {})
    with pytest.raises(SnapshotError, match="float32 or float64"):
        write_checkpoint(tmp_path, ints)
    assert list(tmp_path.iterdir()) == [previous]
    assert latest_checkpoint(tmp_path) == previous


def test_latest_checkpoint_of_a_missing_or_empty_directory(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="keep"):
        write_checkpoint(tmp_path, _small(1), keep=0)


# ---------------------------------------------------------------- damaged checkpoints


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path, take_snapshot(_store(), 1, EXTRA))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.5, 0.99])
def test_truncated_checkpoint_is_refused(checkpoint: Path, fraction: float) -> None:
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(SnapshotError, match="truncated") as info:
        read_checkpoint(checkpoint)
    assert str(checkpoint) in str(info.value)


def test_one_byte_short_is_truncated(checkpoint: Path) -> None:
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1])
    with pytest.raises(SnapshotError, match="truncated"):
        read_checkpoint(checkpoint)


def test_every_flipped_bit_is_detected(checkpoint: Path) -> None:
    whole = bytearray(checkpoint.read_bytes())
    for position in range(len(whole)):
        damaged = whole.copy()
        damaged[position] ^= 1 << (position % 8)
        checkpoint.write_bytes(damaged)
        with pytest.raises(SnapshotError) as info:
            read_checkpoint(checkpoint)
        assert str(checkpoint) in str(info.value)


def test_flipped_byte_in_the_data_is_a_checksum_mismatch(checkpoint: Path) -> None:
    whole = bytearray(checkpoint.read_bytes())
    whole[-100] ^= 0xFF
    checkpoint.write_bytes(whole)
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        read_checkpoint(checkpoint)


def test_wrong_magic_and_missing_file_are_refused(checkpoint: Path) -> None:
    checkpoint.write_bytes(b"PK\x03\x04" + checkpoint.read_bytes()[4:])
    with pytest.raises(SnapshotError, match="bad magic"):
        read_checkpoint(checkpoint)
    with pytest.raises(SnapshotError, match="cannot read"):
        read_checkpoint(checkpoint.with_name("missing.zps"))


def _sealed(header: bytes, body: bytes = b"") -> bytes:
    """A checkpoint file around ``header`` with a correct checksum."""
    content = FILE_MAGIC + len(header).to_bytes(8, "little") + header + body
    return content + hashlib.blake2b(content, digest_size=32).digest()


def test_bad_header_with_good_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-00000000-0000000000000001.zps"
    path.write_bytes(_sealed(msgpack.packb({"magic": "zps-snapshot", "format": 99})))
    with pytest.raises(SnapshotError, match="format version 99"):
        read_checkpoint(path)


# ---------------------------------------------------------------- garbage frames


def _header(frames: list[Any]) -> dict[str, Any]:
    header: dict[str, Any] = msgpack.unpackb(frames[0], strict_map_key=False)
    return header


def _refused(frames: list[Any], match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        snapshot_from_frames(frames)


def test_specific_frame_problems_are_named() -> None:
    frames: list[Any] = snapshot_frames(take_snapshot(_store(), 0, {}))
    _refused([], "empty")
    _refused(frames[:-1], "announces")
    _refused([*frames[:-1], b"\0" * (frames[-1].nbytes + 8)], "bytes but its header says")
    _refused([*frames[:1], np.zeros((4, 4))[:, :2], *frames[2:]], "contiguous")
    for path, value, match in [
        (("format",), 1, "format version 1"),
        (("magic",), "other", "magic"),
        (("seq",), -1, "seq"),
        (("tables", 0, "data", 0), "int64", "dtype"),
        (("tables", 0, "data", 1), [3, 3], "bytes"),
        (("tables", 0, "optimizer"), {"name": "rmsprop"}, "optimizer"),
        (("tables", 1, "name"), "adam32", "twice"),
        (("tables", 0, "state", 0, 2), [6], "shaped like"),
    ]:
        header = _header(frames)
        target: Any = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        _refused([msgpack.packb(header), *frames[1:]], match)


_leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=8) | st.binary(max_size=8))
_values = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested header a value could be replaced."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else []
    for key, child in items:
        found += _paths(child, (*prefix, key))
    return found


_VALID_FRAMES: list[Any] = snapshot_frames(take_snapshot(_store(), 3, EXTRA))


@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_raise_only_snapshot_errors(frames: list[bytes]) -> None:
    with pytest.raises(SnapshotError):
        snapshot_from_frames(frames)


@given(st.data())
def test_mutated_headers_raise_only_snapshot_errors(data: st.DataObject) -> None:
    header = _header(_VALID_FRAMES)
    path = data.draw(st.sampled_from(_paths(header)))
    target: Any = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(_values)
    frames = [msgpack.packb(header), *_VALID_FRAMES[1:]]
    extra = data.draw(st.lists(st.binary(max_size=16), max_size=2))
    with contextlib.suppress(SnapshotError):  # a mutation may leave a valid header
        snapshot_from_frames(frames + extra)


@given(st.binary(max_size=256), st.booleans())
def test_garbage_files_raise_only_snapshot_errors(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes, sealed: bool
) -> None:
    path = tmp_path_factory.getbasetemp() / "garbage.zps"
    path.write_bytes(_sealed(garbage) if sealed else FILE_MAGIC + garbage)
    with pytest.raises(SnapshotError) as info:
        read_checkpoint(path)
    assert isinstance(info.value, ZpsError) and str(path) in str(info.value)


# ---------------------------------------------------------------- arbitrary arrays


_arrays = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                     max_side=4),
                             elements=st.floats(width=32 if dtype is np.float32 else 64)))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_arrays, max_size=4), st.integers(0, 2**63 - 1), st.integers(0, 2**31))
def test_arbitrary_arrays_round_trip(
    tmp_path: Path, arrays: list[np.ndarray], seq: int, epoch: int
) -> None:
    tables = tuple(TableState(f"t{i}", a, i, None, 0, {}) for i, a in enumerate(arrays))
    snapshot = Snapshot(seq, epoch, tables, {"n": len(arrays)})
    assert snapshot_from_frames(snapshot_frames(snapshot)) == snapshot
    assert read_checkpoint(write_checkpoint(tmp_path, snapshot, keep=1)) == snapshot
