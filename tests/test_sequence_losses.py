"""The sequence models' sampled losses and SASRec's LiGR block on tiny data: negatives never
equal the target, the logQ term, gBCE's calibration, learning on the synthetic generator's
sequences (above popularity), determinism without the global RNG, and LiGR's ONNX parity."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from recsys_models import gru4rec, negative_logsumexp, sasrec, sequence_training
from recsys_models.data import FeatureData, eval_loader
from recsys_models.metrics import evaluate
from tasks import export as export_stage
from tasks import feature_store, model_store
from tasks import train as train_stage
from tasks.params import FeaturesParams, load_params
from tests.conftest import quiet_trainer, synthetic_features


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> FeatureData:
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=20)
    return synthetic_features(
        tmp_path_factory.mktemp("losses"), 300, 200, 9_000, seed=3, params=params
    )


def popularity_ndcg(data: FeatureData) -> float:
    popularity = torch.from_numpy(data.item_popularity)
    scores = evaluate(
        lambda users, history: popularity.expand(len(users), -1), eval_loader(data, "val")
    )
    return scores["ndcg@10"]


def mean_loss(module, datamodule) -> float:
    """The loss over one pass of the windows, without dropout and with fresh negatives."""
    module.model.eval()
    with torch.no_grad():
        loss = np.mean([module.loss(b).item() for b in datamodule.train_dataloader()])
    module.model.train()
    return float(loss)


@pytest.mark.parametrize("n_items", [2, 3, 5, 50])
@pytest.mark.parametrize("sampler", sequence_training.SAMPLERS)
def test_candidates_equal_to_a_target_are_never_negatives(n_items, sampler):
    generator = torch.Generator().manual_seed(n_items)
    collisions = 0
    for _ in range(200):
        targets = torch.randint(1, n_items + 1, (40,), generator=generator)
        candidates, log_expected = sequence_training.sample_candidates(
            targets, n_items, 16, sampler, generator
        )
        assert candidates.shape == (16,) and ((candidates >= 1) & (candidates <= n_items)).all()
        if sampler == "in_batch":  # only items that are some position's target
            assert torch.isin(candidates, targets).all()
        assert torch.isfinite(log_expected[candidates]).all()
        assert torch.isfinite(log_expected[targets]).all()
        valid = sequence_training.negative_mask(targets, candidates)
        same = candidates.unsqueeze(0) == targets.unsqueeze(1)
        assert not (valid & same).any() and (valid | same).all()
        collisions += int(same.sum())
    assert collisions > 0  # the draws did hit the targets, so the mask was exercised


@pytest.mark.parametrize("n_items", [2, 3, 7])
def test_one_negative_per_target_is_any_other_item_never_the_target(n_items):
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(1, n_items + 1, (20_000,), generator=generator)
    negatives = sequence_training.sample_other_items(targets, n_items, generator)
    assert (negatives != targets).all()
    assert ((negatives >= 1) & (negatives <= n_items)).all()
    for item in range(1, n_items + 1):  # uniform over the other items
        drawn = torch.bincount(negatives[targets == item], minlength=n_items + 1)[1:].float()
        others = torch.cat([drawn[: item - 1], drawn[item:]])
        assert drawn[item - 1] == 0
        assert (others / others.sum() - 1 / (n_items - 1)).abs().max() < 0.03
    with pytest.raises(ValueError, match="2 items"):
        sequence_training.sample_other_items(targets[:3].clamp(max=1), 1, generator)


def test_sampled_softmax_skips_collisions_and_applies_log_q():
    torch.manual_seed(0)
    hidden, emb = torch.randn(3, 4), torch.randn(6, 4)
    targets = torch.tensor([1, 2, 5])
    candidates = torch.tensor([2, 3, 2, 5])
    log_q = torch.log(torch.tensor([1.0, 0.5, 2.0, 0.25, 1.0, 4.0]))
    rows = (emb[targets], emb[candidates], targets, candidates)
    got = sequence_training.sampled_softmax(hidden, *rows, log_q)
    want = []
    for row, target in enumerate(targets.tolist()):
        others = [c for c in candidates.tolist() if c != target]
        logits = hidden[row] @ emb[[target, *others]].T - log_q[[target, *others]]
        want.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(got, torch.stack(want).mean())
    # a uniform draw's correction is one constant: the same loss as no correction at all
    flat = torch.full((6,), -1.7)
    torch.testing.assert_close(
        sequence_training.sampled_softmax(hidden, *rows, flat),
        sequence_training.sampled_softmax(hidden, *rows, flat * 0),
    )


def test_in_batch_log_q_is_each_items_expected_count_in_the_draw():
    targets = torch.tensor([4, 4, 4, 1])  # item 4 is three quarters of the batch
    _, log_expected = sequence_training.sample_candidates(
        targets, 10, 8, "mixed", torch.Generator().manual_seed(0)
    )
    expected = log_expected.exp()
    torch.testing.assert_close(expected[4], torch.tensor(4 / 10 + 4 * 0.75))
    torch.testing.assert_close(expected[1], torch.tensor(4 / 10 + 4 * 0.25))
    torch.testing.assert_close(expected[7], torch.tensor(4 / 10))  # never a target


def test_gbce_beta_and_loss():
    assert sequence_training.gbce_beta(256, 10_001, 0.0) == pytest.approx(1.0)
    assert sequence_training.gbce_beta(256, 10_001, 1.0) == pytest.approx(256 / 10_000)
    alpha = 256 / 10_000
    want = alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
    assert sequence_training.gbce_beta(256, 10_001, 0.75) == pytest.approx(want)
    hidden, emb = torch.randn(2, 3), torch.randn(5, 3)
    targets, candidates = torch.tensor([1, 3]), torch.tensor([3, 4])
    rows = (emb[targets], emb[candidates], targets, candidates)
    got = sequence_training.gbce(hidden, *rows, beta=0.4, offset=0.5)
    s = hidden @ emb.T + 0.5
    row0 = 0.4 * F.logsigmoid(s[0, 1]) + F.logsigmoid(-s[0, 3]) + F.logsigmoid(-s[0, 4])
    row1 = 0.4 * F.logsigmoid(s[1, 3]) + F.logsigmoid(-s[1, 4])  # 3 is row 1's own target
    torch.testing.assert_close(got, -(row0 + row1) / 3 / 2)
    # the offset starts where equal scores minimise the loss: its gradient there is zero
    beta, k = 0.3, 8
    offset = torch.tensor(sequence_training.gbce_offset(k, beta), requires_grad=True)
    flat = torch.zeros(1, 3)
    targets, candidates = torch.tensor([1]), torch.arange(2, k + 2)
    rows = (torch.zeros(1, 3), torch.zeros(k, 3), targets, candidates)
    loss = sequence_training.gbce(flat, *rows, beta, offset)
    loss.backward()
    assert abs(float(offset.grad)) < 1e-6


def test_gbce_offset_is_trained_but_never_saved_with_the_model(synth_data):
    config = sasrec.Config(hidden=16, loss="gbce")
    module, _ = sasrec.build(synth_data, config, seed=0)
    assert "offset" in dict(module.named_parameters())
    assert not any("offset" in key for key in module.model.state_dict())


def test_auto_is_the_full_softmax_on_a_small_catalogue_and_sampled_above():
    small = sasrec.Config(full_softmax_max_items=100)
    model = sasrec.SASRec(n_items=200, max_len=5, hidden=8)
    assert sequence_training.NextItemModule(model, 200, small).loss_name == "sampled"
    assert sequence_training.NextItemModule(model, 100, small).loss_name == "ce"
    assert sasrec.Config().loss == "auto"  # ML-100K's 1,682 items: the full softmax, as before
    assert sequence_training.resolve_loss("auto", 1_682, sasrec.Config().full_softmax_max_items)
    assert sequence_training.resolve_loss("gbce", 10, 100) == "gbce"


@pytest.mark.parametrize(
    "field",
    [
        {"loss": "softmax"},
        {"negative_sampler": "popular"},
        {"negatives": 0},
        {"gbce_t": 1.5},
        {"full_softmax_max_items": -1},
        {"block": "mamba"},
    ],
)
def test_configs_reject_bad_loss_fields(field):
    name = next(iter(field))
    with pytest.raises(ValueError, match=name):
        sasrec.Config(**field)
    if name != "block":
        with pytest.raises(ValueError, match=name):
            gru4rec.Config(**field)


def test_negatives_are_seeded_and_leave_the_global_rng_alone(synth_data):
    config = sasrec.Config(hidden=16, loss="sampled", negative_sampler="mixed", dropout=0.0)
    losses = []
    for _ in range(2):
        module, datamodule = sasrec.build(synth_data, config, seed=4)
        batch = next(iter(datamodule.train_dataloader()))
        state = torch.random.get_rng_state()
        losses.append([module.loss(batch).item() for _ in range(3)])
        assert torch.equal(state, torch.random.get_rng_state())
    assert losses[0] == losses[1] and len(set(losses[0])) == 3  # fresh negatives each step


LEARNERS = [
    ("sasrec", {"loss": "sampled", "negative_sampler": "uniform"}),
    ("sasrec", {"loss": "sampled", "negative_sampler": "in_batch"}),
    ("sasrec", {"loss": "sampled", "negative_sampler": "mixed"}),
    ("sasrec", {"loss": "sampled", "block": "ligr"}),
    ("sasrec", {"loss": "gbce"}),
    ("gru4rec", {"loss": "sampled"}),
    ("gru4rec", {"loss": "gbce"}),
]


@pytest.mark.parametrize(("name", "fields"), LEARNERS)
def test_each_loss_falls_and_beats_popularity(synth_data, name, fields):
    family = {"sasrec": sasrec, "gru4rec": gru4rec}[name]
    # 32 negatives of 200 items: the default 256 would exceed this catalogue
    config = dataclasses.replace(
        family.Config(), hidden=32, batch_size=64, lr=3e-3, negatives=32, **fields
    )
    module, datamodule = family.build(synth_data, config, seed=0)
    assert module.loss_name == fields["loss"]
    before = mean_loss(module, datamodule)
    L.seed_everything(0, verbose=False)
    quiet_trainer(4).fit(module, datamodule)
    # gBCE starts near its best constant score (gbce_offset): a smaller fall, all of it ranking
    assert mean_loss(module, datamodule) < 0.95 * before, "the loss did not fall"
    module.model.eval()
    ndcg = evaluate(module.model.score, eval_loader(synth_data, "val"))["ndcg@10"]
    assert ndcg > 1.5 * popularity_ndcg(synth_data)


def test_ligr_block_exports_to_onnx_with_parity(tmp_path):
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=12)
    synthetic_features(tmp_path, 120, 80, 3_000, seed=1, params=params)
    features, models = tmp_path / "features", tmp_path / "models"
    section = {"hidden": 16, "batch_size": 256, "block": "ligr", "loss": "sampled"}
    overrides = {"train.accelerator": "cpu", "train.max_epochs": 1, "train.sasrec": section}
    train_stage.train("sasrec", features, models / "sasrec", load_params(tmp_path / "x", overrides))
    manifest = export_stage.export(
        "sasrec", models, features, tmp_path / "artifacts", latency_calls=5, data_dvc=None
    )
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert parity["top10_agreement"] >= 0.999
    assert manifest["params"]["config"]["block"] == "ligr"

    data = feature_store.load_features(features)
    net = model_store.load_model(models / "sasrec", data)
    assert any("gate1" in key for key in net.state_dict())  # the LiGR layers were exported
    out = tmp_path / "artifacts" / "sasrec" / manifest["version"]
    session = ort.InferenceSession(str(out / "model.onnx"))
    rows = data.test_input[1:21].astype(np.int64)
    rows[:4, :-1] = 0  # padding but one item
    for history in (rows, rows[:, -1:], np.zeros_like(rows[:2])):
        with torch.no_grad():
            want = net.score(torch.zeros(len(history)), torch.from_numpy(history)).numpy()
        got = session.run(None, {"history": history})[0]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow  # a child process that imports torch: 15 s of CPU, ~50 s wall under load
def test_loss_benchmark_writes_both_rows(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "bench" / "bench_losses.py"), "--items", "300"]
    cmd += ["--users", "40", "--negatives", "16", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=root)
    result = json.loads((tmp_path / "losses.json").read_text())
    assert [r["loss"] for r in result["rows"]] == ["ce", "sampled"]
    assert all(r["targets"] == 40 * 17 and r["epoch_s"] > 0 for r in result["rows"])
    assert "Full softmax / sampled softmax" in (tmp_path / "losses.md").read_text()


def test_matching_pairs_are_exactly_the_candidates_equal_to_each_target():
    generator = torch.Generator().manual_seed(3)
    targets = torch.randint(1, 30, (500,), generator=generator)
    candidates = torch.cat([torch.randint(1, 60, (40,), generator=generator), targets[:24]])
    rows, columns = negative_logsumexp.matching_pairs(targets, candidates)
    same = candidates.unsqueeze(0) == targets.unsqueeze(1)
    assert len(rows) == int(same.sum()) > 0 and (rows[1:] >= rows[:-1]).all()
    assert same[rows, columns].all()


def test_negative_logsumexp_in_blocks_equals_the_whole_masked_matrix_and_its_gradient():
    # More rows than one block, so the blocks' edges and the exclusions in each are exercised.
    generator = torch.Generator().manual_seed(0)
    rows = 2 * negative_logsumexp.ROWS_PER_BLOCK + 37
    targets = torch.randint(1, 12, (rows,), generator=generator)
    candidates = torch.cat([torch.randint(1, 40, (20,), generator=generator), targets[:12]])
    excluded = negative_logsumexp.matching_pairs(targets, candidates)
    hidden = torch.randn(rows, 8, generator=generator, dtype=torch.float64)
    vectors = torch.randn(len(candidates), 8, generator=generator, dtype=torch.float64)
    shift = torch.randn(len(candidates), generator=generator, dtype=torch.float64)
    weights = torch.rand(rows, generator=generator, dtype=torch.float64)
    slow = [t.clone().requires_grad_() for t in (hidden, vectors, shift)]
    fast = [t.float().requires_grad_() for t in (hidden, vectors, shift)]
    scores = slow[0] @ slow[1].T + slow[2]
    same = candidates.unsqueeze(0) == targets.unsqueeze(1)
    want = torch.logsumexp(scores.masked_fill(same, -torch.inf), dim=1)
    got = negative_logsumexp.negative_logsumexp(*fast, excluded)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    (want * weights).sum().backward()
    (got * weights.float()).sum().backward()
    for reference, quick in zip(slow, fast, strict=True):
        torch.testing.assert_close(quick.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)


def test_a_position_without_negatives_adds_no_loss_and_no_nan():
    # Row 0's target is every candidate: nothing competes with it.
    targets, candidates = torch.tensor([5, 3]), torch.tensor([5, 5])
    hidden = torch.randn(2, 4, requires_grad=True)
    emb = torch.randn(6, 4)
    loss = sequence_training.sampled_softmax(
        hidden, emb[targets], emb[candidates], targets, candidates, torch.zeros(6)
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(hidden.grad).all()
    assert (hidden.grad[0] == 0).all()


def test_negative_logsumexp_under_bf16_autocast_takes_bf16_products_and_float32_sums():
    # bf16-mixed precision (train.precision): the products read and return bf16, as autocast's
    # matmul does; the sums and gradients stay float32, within bf16's rounding of the exact ones.
    generator = torch.Generator().manual_seed(1)
    rows = negative_logsumexp.ROWS_PER_BLOCK + 11
    targets = torch.randint(1, 30, (rows,), generator=generator)
    candidates = torch.randint(1, 30, (64,), generator=generator)
    excluded = negative_logsumexp.matching_pairs(targets, candidates)
    inputs = [
        torch.randn(rows, 16, generator=generator, requires_grad=True),
        torch.randn(len(candidates), 16, generator=generator, requires_grad=True),
        torch.randn(len(candidates), generator=generator, requires_grad=True),
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = negative_logsumexp.negative_logsumexp(*inputs, excluded)
    plain = negative_logsumexp.negative_logsumexp(*inputs, excluded)
    exact_inputs = [t.detach().double().requires_grad_() for t in inputs]
    scores = exact_inputs[0] @ exact_inputs[1].T
    same = candidates.unsqueeze(0) == targets.unsqueeze(1)
    want = torch.logsumexp((scores + exact_inputs[2]).masked_fill(same, -torch.inf), dim=1)
    # Half a bf16 step of the largest product bounds each score's rounding, and so the sum's.
    bound = scores.abs().max().item() * 2**-8
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= bound
    assert not torch.equal(got, plain)  # the products did run in bf16
    got.sum().backward()
    want.sum().backward()
    for quick, exact in zip(inputs, exact_inputs, strict=True):
        torch.testing.assert_close(quick.grad.double(), exact.grad, rtol=5e-2, atol=5e-2)
