"""zps.torch: the distributed optimizer, broadcasts and remote embeddings, on real
sockets (in-process servers) and real processes (``zps-worker`` running torch jobs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import zps  # noqa: E402
import zps.torch as zt  # noqa: E402
from zps.cli.cluster import LocalCluster  # noqa: E402

from .conftest import ROOT  # noqa: E402
from .torch_jobs import STEPS, batches, local_optimizer, small_model  # noqa: E402

F = torch.nn.functional


def single_process(server_optimizer: bool, start: dict[str, Any],
                   lr: float = 0.1) -> dict[str, torch.Tensor]:
    """What the two-worker job must match: one process, whole batches, from ``start``."""
    model = small_model()
    model.load_state_dict({n: torch.tensor(v) for n, v in start.items()})
    if server_optimizer:
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    else:
        opt = local_optimizer(model, lr)
    xs, ys = batches()
    for step in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(xs[step]), ys[step]).backward()
        opt.step()
    return dict(model.named_parameters())


def run_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: str, workers: int,
                server_args: list[str], worker_args: list[str] | None = None,
                servers: int = 1, standbys: bool = False,
                during: Callable[[LocalCluster], None] | None = None) -> list[dict[str, Any]]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(servers, ["--workers", str(workers), *server_args])
        if standbys:
            cluster.start_standbys(["--workers", str(workers), *server_args])
        for index in range(workers):
            cluster.start_worker(["--job", f"tests.torch_jobs:{job}", "--num-workers",
                                  str(workers), "--worker-index", str(index), "--quiet",
                                  "--metrics-out", str(tmp_path / f"w{index}.json"),
                                  *(worker_args or [])])
        if during is not None:
            during(cluster)
        codes = cluster.wait_workers(timeout=240)
    results = []
    for index, code in enumerate(codes):
        path = tmp_path / f"w{index}.json"
        results.append(json.loads(path.read_text()) if code == 0 else {"code": code})
    return results


@pytest.mark.parametrize("server_optimizer", [False, True], ids=["sgd-deltas", "server-adam"])
def test_two_workers_on_half_batches_match_one_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_optimizer: bool) -> None:
    args = ["--lr", "0.1"] + (["--server-optimizer", "adam:0.01"] if server_optimizer else [])
    results = run_workers(tmp_path, monkeypatch, "halves", 2, ["--mode", "sync"], args)
    expected = single_process(server_optimizer, results[0]["start"])
    for result in results:
        assert result["start"] == results[0]["start"]  # broadcast: the same start
        assert result["steps"] == STEPS
        for name, value in result["params"].items():
            np.testing.assert_allclose(np.array(value, np.float32),
                                       expected[name].detach().numpy(), atol=1e-5)


def test_async_with_a_straggler_and_two_servers_finishes(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = run_workers(tmp_path, monkeypatch, "long_run", 3, ["--mode", "ssp:2"],
                          ["--epochs", "30", "--slow", "0.02"], servers=2)
    assert [r["steps"] for r in results] == [30, 30, 30]


FAST_BEATS = ["--heartbeat-interval", "0.2"]  # a dead worker is noticed in a second


def rounds_applied(address: str) -> int:
    with zps.Client([address], role="observer", heartbeat_interval=0) as probe:
        tables = probe.stats()[0]["tables"]
        return max((t["rounds"] for t in tables), default=0)


def test_a_sigkilled_worker_does_not_stop_the_others(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZPS_TEST_SUICIDE", "1")  # worker 0 kills itself halfway
    results = run_workers(tmp_path, monkeypatch, "long_run", 3,
                          ["--mode", "sync", *FAST_BEATS, "--liveness", "5"],
                          ["--epochs", "40", *FAST_BEATS])
    assert results[0] == {"code": -9}
    assert [r["steps"] for r in results[1:]] == [40, 40]


def test_quorum_rounds_with_a_straggler_finish(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    results = run_workers(tmp_path, monkeypatch, "long_run", 3,
                          ["--mode", "sync", "--quorum", "2"],
                          ["--epochs", "30", "--slow", "0.05"])
    assert [r["steps"] for r in results] == [30, 30, 30]


@pytest.mark.timeout(300)
def test_training_goes_on_when_the_primary_dies_during_backward(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def kill_primary(cluster: LocalCluster) -> None:
        from .conftest import wait_for

        wait_for(lambda: rounds_applied(cluster.addresses[0]) >= 40, timeout=120,
                 what="40 rounds on the primary")
        cluster.kill_server(0)  # workers are in backward or waiting on a round: both kill it

    results = run_workers(tmp_path, monkeypatch, "long_run", 2, ["--mode", "sync"],
                          ["--epochs", "150"], standbys=True, during=kill_primary)
    assert [r["steps"] for r in results] == [150, 150]
    assert "promoted" in (tmp_path / "standby0.log").read_text()


@pytest.mark.timeout(400)
def test_the_mnist_example_on_four_workers_reaches_its_single_process_accuracy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zps.jobs.runner import JobContext
    from zps.jobs.torch_digits import single_process

    torch.set_num_threads(1)  # (idle torch threads spin, starving the workers)
    alone = single_process(JobContext(epochs=14, batch_size=16, lr=1.0, progress=False))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "sync", "--workers", "4"])
        for index in range(4):  # the job's defaults: 14 epochs, batches of 16, Adadelta
            cluster.start_worker(["--job", "torch-digits", "--num-workers", "4",
                                  "--worker-index", str(index), "--quiet",
                                  "--metrics-out", str(tmp_path / f"w{index}.json")])
        assert cluster.wait_workers(timeout=300) == [0, 0, 0, 0]
    accuracies = {json.loads((tmp_path / f"w{i}.json").read_text())["test_accuracy"]
                  for i in range(4)}
    assert len(accuracies) == 1  # sync: every worker holds the same model
    assert accuracies.pop() >= alone["test_accuracy"] - 0.015 >= 0.95


# ---------------------------------------------------------------- in one process


@pytest.fixture
def ps(start_server: Any) -> Any:
    server = start_server(mode="async")
    with zps.Client([server.address]) as client:
        yield client


def plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def test_one_worker_in_sync_mode_is_plain_training(start_server: Any) -> None:
    server = start_server(mode="sync", workers=1)
    model, reference = small_model(), small_model()
    xs, ys = batches(steps=5)
    with zps.Client([server.address]) as ps:
        opt = zt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), ps,
                                      named_parameters=model.named_parameters())
        ref_opt = torch.optim.Adam(reference.parameters(), lr=0.01)
        assert isinstance(opt, torch.optim.Adam) and isinstance(opt, zt.DistributedOptimizer)
        for step in range(5):
            plain_step(model, opt, xs[step], ys[step])
            plain_step(reference, ref_opt, xs[step], ys[step])
        pulled = ps.pull()
        for name, param in model.named_parameters():
            np.testing.assert_allclose(param.detach().numpy(),
                                       dict(reference.named_parameters())[name].detach(),
                                       atol=1e-6)
            np.testing.assert_array_equal(pulled[name], param.detach().numpy())


def test_without_overlap_and_with_accumulation_the_result_is_the_same(ps: Any) -> None:
    xs, ys = batches(steps=4)
    finals = []
    for overlap, prefix in ((True, "a."), (False, "b.")):
        model = small_model()
        opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), ps,
                                      named_parameters=model.named_parameters(),
                                      overlap=overlap, backward_passes_per_step=2,
                                      prefix=prefix)
        for step in range(0, 4, 2):
            opt.zero_grad()
            for k in (step, step + 1):  # two backward passes, one step
                F.cross_entropy(model(xs[k]), ys[k]).backward()
            opt.step()
        finals.append([p.detach().clone() for p in model.parameters()])
    reference = small_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(0, 4, 2):
        ref_opt.zero_grad()
        for k in (step, step + 1):
            F.cross_entropy(reference(xs[k]), ys[k]).backward()
        ref_opt.step()
    for a, b, r in zip(*finals, reference.parameters(), strict=True):
        torch.testing.assert_close(a, r.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(b, r.detach(), atol=1e-6, rtol=0)


def test_a_third_backward_pass_before_step_is_refused(ps: Any) -> None:
    model = small_model()
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), ps,
                                  named_parameters=model.named_parameters())
    x, y = batches(steps=1)
    F.cross_entropy(model(x[0]), y[0]).backward()
    with pytest.raises(zps.ConfigError, match="computed again after it was complete"):
        F.cross_entropy(model(x[0]), y[0]).backward()
    opt.step()  # what was sent is still received


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_keep_float32_masters(ps: Any, dtype: torch.dtype) -> None:
    model = small_model().to(dtype)
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), ps,
                                  named_parameters=model.named_parameters(),
                                  server_optimizer="sgd:0.001", prefix=str(dtype))
    x, y = batches(steps=3)
    for step in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x[step].to(dtype)), y[step]).backward()
        opt.step()
    tables = {t["name"]: t for t in ps.tables()}
    for name, param in model.named_parameters():
        assert param.dtype == dtype
        master = ps.pull([f"{dtype}{name}"])[f"{dtype}{name}"]
        assert tables[f"{dtype}{name}"]["dtype"] == "float32"
        np.testing.assert_array_equal(param.detach().float().numpy(),
                                      torch.from_numpy(master).to(dtype).float().numpy())


def test_broadcasts_make_every_worker_start_alike(start_server: Any) -> None:
    server = start_server(mode="async")
    outcome: dict[int, Any] = {}
    first_done = threading.Event()

    def worker(index: int) -> None:
        torch.manual_seed(index)  # (threads share torch's generator: seeded in turn)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1 + index, momentum=0.9)
        if index == 0:  # only the first has momentum state
            plain_step(model, opt, torch.randn(8, 4), torch.randint(0, 4, (8,)))
        else:
            first_done.wait(30)
        with zps.Client([server.address]) as ps:
            zt.broadcast_parameters(ps, model)
            zt.broadcast_optimizer_state(ps, opt)
            if index == 0:
                first_done.set()
        outcome[index] = (model.state_dict(), opt.state_dict())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    (model_a, opt_a), (model_b, opt_b) = outcome[0], outcome[1]
    for key in model_a:
        torch.testing.assert_close(model_a[key], model_b[key], atol=0, rtol=0)
    assert model_b["1.num_batches_tracked"].dtype == torch.int64
    assert opt_b["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert set(opt_b["state"]) == set(opt_a["state"]) == {0, 1, 2, 3}
    for key, state in opt_a["state"].items():
        torch.testing.assert_close(state["momentum_buffer"],
                                   opt_b["state"][key]["momentum_buffer"])


def test_lr_schedulers_and_state_dicts_work_on_the_wrapped_optimizer(ps: Any) -> None:
    model = small_model()
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
                                  ps, named_parameters=model.named_parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batches(steps=2)
    plain_step(model, opt, x[0], y[0])
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    saved = opt.state_dict()
    opt.load_state_dict(saved)
    plain_step(model, opt, x[1], y[1])  # still sends and receives after a reload
    np.testing.assert_array_equal(ps.pull(["0.weight"])["0.weight"],
                                  model[0].weight.detach().numpy())


def test_mistakes_get_one_sentence(ps: Any) -> None:
    model = small_model()
    params = list(model.parameters())
    with pytest.raises(zps.ConfigError, match="does not name"):
        zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), ps,
                                named_parameters=list(model.named_parameters())[:2])
    with pytest.raises(zps.ConfigError, match="twice"):
        zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), ps,
                                named_parameters=[("w", p) for p in params])
    with pytest.raises(zps.ConfigError, match=r"zps\.Client"):
        zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), object())
    with pytest.raises(zps.ConfigError, match="LBFGS"):
        zt.DistributedOptimizer(torch.optim.LBFGS(params), ps)
    with pytest.raises(zps.ConfigError, match="server_optimizer"):
        zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), ps, server_optimizer="adam")
    old = zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), ps,
                                  named_parameters=model.named_parameters())
    opt = zt.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), ps,
                                  named_parameters=model.named_parameters())
    with pytest.raises(zps.ConfigError, match="replaced by a newer one"):
        old.step()  # the newest wrapper of the parameters took them over
    with pytest.raises(zps.ConfigError, match="once"):
        zt.DistributedOptimizer(opt, ps)
    model[0].weight.data = torch.zeros(32, 8)  # the model changed after wrapping
    with pytest.raises(zps.ConfigError, match=r"changed after wrapping: '0.weight'"):
        opt.step()
    model[0].weight.data = torch.zeros(16, 8)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(zps.ConfigError, match="changed after it was wrapped"):
        opt.step()


# ---------------------------------------------------------------- embeddings


def test_embedding_reads_rows_and_pushes_merged_gradients(ps: Any) -> None:
    emb = zt.Embedding(ps, "user", 4, optimizer="sgd:0.5", init="normal:0.1")
    ids = torch.tensor([[3, -7, 3], [2**62, 3, -7]])
    before = ps.pull_rows("user", np.array([3, -7, 2**62]))
    out = emb(ids)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out[0, 0].detach().numpy(), before[0])
    target = torch.randn(2, 3, 4)
    ((out - target) ** 2).sum().backward()
    emb.synchronize()
    # d/dr sum((r - t)^2) = 2 (r - t), summed over each id's occurrences
    grad = (2 * (out.detach() - target)).numpy()
    expected = {3: grad[0, 0] + grad[0, 2] + grad[1, 1], -7: grad[0, 1] + grad[1, 2],
                2**62: grad[1, 0]}
    after = ps.pull_rows("user", np.array(list(expected)))
    for row, (key, g) in enumerate(expected.items()):
        np.testing.assert_allclose(after[row], before[[3, -7, 2**62].index(key)] - 0.5 * g,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_matches_torch(ps: Any, mode: str) -> None:
    bag = zt.EmbeddingBag(ps, f"item-{mode}", 3, mode=mode, init="uniform:1")
    flat = torch.tensor([5, 9, 5, 11, 9, 100])
    offsets = torch.tensor([0, 2, 3])
    weights = torch.rand(6) if mode == "sum" else None
    rows = torch.from_numpy(ps.pull_rows(f"item-{mode}", np.arange(101)))
    reference = torch.nn.EmbeddingBag.from_pretrained(rows, freeze=False, mode=mode)
    torch.testing.assert_close(bag(flat, offsets, weights),
                               reference(flat, offsets, per_sample_weights=weights))
    fixed = torch.tensor([[1, 2], [2, 2]])
    torch.testing.assert_close(bag(fixed), reference(fixed))


def test_prefetch_and_eval(ps: Any) -> None:
    emb = zt.Embedding(ps, "feat", 2, optimizer="adagrad:0.1", init="zeros")
    batches_ = [torch.tensor([1, 2, 3]), torch.tensor([3, 4]), torch.tensor([4, 5])]
    for step, ids in enumerate(batches_):
        if step + 1 < len(batches_):
            emb.prefetch(batches_[step + 1])  # pulled with this step's push
        out = emb(ids)
        (out.sum() * 1.0).backward()
    emb.synchronize()
    trained = ps.pull_rows("feat", np.arange(1, 6))
    assert (trained < 0).all()  # every row moved against its gradient
    np.testing.assert_allclose(emb(torch.tensor([4])).detach().numpy(), trained[3:4])
    emb.eval()
    emb.prefetch(torch.tensor([1000, 1001]))
    with torch.no_grad():
        assert (emb(torch.tensor([1000, 1001])) == 0).all()
    feat = next(t for t in ps.tables() if t["name"] == "feat")
    assert feat["rows"] == 5  # evaluation never creates rows
    with pytest.raises(zps.ConfigError, match="integers"):
        emb(torch.tensor([1.5]))


# ---------------------------------------------------------------- review regressions


def test_buckets_go_out_in_the_same_order_when_some_parameters_get_no_gradient(
        start_server: Any) -> None:
    """Regression: sent as they became ready, two workers' buckets queued behind rounds
    the other one had not sent (more than max_inflight buckets): both timed out."""
    server = start_server(mode="sync", workers=2)
    errors: list[BaseException] = []

    def worker(index: int, model: torch.nn.Module) -> None:
        try:
            with zps.Client([server.address], timeout=5, retries=0, max_inflight=4) as ps:
                opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                              ps, named_parameters=model.named_parameters(),
                                              bucket_bytes=1)
                for _ in range(3):
                    opt.zero_grad()
                    used = model[: 20 if index else 40]  # worker 1 leaves half unused
                    used(torch.ones(2, 4)).sum().backward()
                    opt.step()
        except BaseException as exc:
            errors.append(exc)

    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(40))))
    threads = [threading.Thread(target=worker, args=(i, m)) for i, m in enumerate(models)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_step_hooks_schedulers_made_before_wrapping_and_rewrapping(ps: Any) -> None:
    model = small_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=1, gamma=0.5)  # before
    opt = zt.DistributedOptimizer(inner, ps, named_parameters=model.named_parameters(),
                                  bucket_bytes=64)  # several buckets
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    x, y = batches(steps=2)
    for step in range(2):
        plain_step(model, opt, x[step], y[step])
        scheduler.step()
    assert calls == ["pre", "post"] * 2  # once a step, not once a bucket
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    np.testing.assert_array_equal(ps.pull(["2.bias"])["2.bias"],
                                  model[2].bias.detach().numpy())  # the steps went out
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(zps.ConfigError, match="wrap the optimizer again"):
        opt.step()
    again = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), ps,
                                    named_parameters=model.named_parameters())
    plain_step(model, again, x[0], y[0])  # wrapping again works


def test_a_parameter_given_new_storage_stays_in_step_with_the_servers(ps: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(16, 2))
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), ps,
                                  named_parameters=model.named_parameters(), prefix="cl.")
    model.to(memory_format=torch.channels_last)  # the conv weight: no longer contiguous
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(2, 3, 4, 4).to(memory_format=torch.channels_last)).sum().backward()
        opt.step()
    for name, param in model.named_parameters():
        np.testing.assert_allclose(ps.pull([f"cl.{name}"])[f"cl.{name}"],
                                   param.detach().numpy(), atol=1e-7)


def test_servers_with_a_default_optimizer_get_gradients(start_server: Any) -> None:
    server = start_server(mode="sync", workers=1, optimizer={"name": "sgd", "lr": 0.5})
    with zps.Client([server.address]) as ps:
        weight = torch.nn.Parameter(torch.ones(3))
        opt = zt.DistributedOptimizer(torch.optim.SGD([weight], lr=1.0), ps,
                                      named_parameters=[("w", weight)])
        opt.zero_grad()
        weight.sum().backward()  # gradient 1
        opt.step()
        torch.testing.assert_close(weight.detach(), torch.full((3,), 0.5))  # the server's lr


def test_broadcasts_keep_models_apart_and_adopt_state_in_the_parameters_dtype(
        ps: Any) -> None:
    models = {p: small_model() for p in ("a.", "b.")}
    opts = {p: zt.DistributedOptimizer(torch.optim.Adam(m.parameters(), lr=lr), ps,
                                       named_parameters=m.named_parameters(), prefix=p)
            for (p, m), lr in zip(models.items(), (0.1, 0.001), strict=True)}
    x, y = batches(steps=1)
    for prefix in models:
        plain_step(models[prefix], opts[prefix], x[0], y[0])
        zt.broadcast_optimizer_state(ps, opts[prefix])
        zt.broadcast_parameters(ps, models[prefix].state_dict())  # aliases: the same tables
    assert opts["b."].param_groups[0]["lr"] == pytest.approx(0.001)  # not a.'s
    assert not any(t["name"] in ("0.weight", "a.0.weight.0") for t in ps.tables())
    half = small_model().half()  # a worker without state adopts another's, as float16
    adopter = zt.DistributedOptimizer(torch.optim.Adam(half.parameters(), lr=0.1), ps,
                                      named_parameters=half.named_parameters(), prefix="a.")
    zt.broadcast_optimizer_state(ps, adopter)
    state = adopter.state[half[0].weight]
    assert state["exp_avg"].dtype == torch.float16 and state["step"].dtype == torch.float32
    plain_step(half, adopter, x[0].half(), y[0])  # and it trains on


def test_an_embedding_used_twice_in_a_step_pushes_one_merged_update(ps: Any) -> None:
    emb = zt.Embedding(ps, "twice", 1, optimizer="adagrad:1.0", init="zeros")
    ids = torch.tensor([5])
    (emb(ids).sum() + emb(ids).sum()).backward()  # grad 2 in all, one adagrad step
    emb.synchronize()
    np.testing.assert_allclose(ps.pull_rows("twice", [5]), [[-1.0]], atol=1e-6)
    loss = emb(torch.tensor([6])).sum()
    loss.backward(retain_graph=True)
    loss.backward()  # two passes of gradient 1: two steps, not 1 then 2
    emb.synchronize()
    expected = -1.0 - 1.0 / np.sqrt(2.0)  # adagrad: 1/sqrt(1), then 1/sqrt(1 + 1)
    np.testing.assert_allclose(ps.pull_rows("twice", [6]), [[expected]], atol=1e-6)
    bag = zt.EmbeddingBag(ps, "bag-mean", 2, mode="mean")
    with pytest.raises(zps.ConfigError, match="mode='sum'"):
        bag(torch.tensor([[1, 2]]), per_sample_weights=torch.ones(1, 2))
