"""SASRec on tiny data: shapes, causality, padding without NaN, training windows, learning."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch

from recsys_models import gru4rec, sasrec, sequence_training
from recsys_models.data import FeatureData, eval_loader, shuffled_batches
from recsys_models.item_attributes import attribute_ids
from recsys_models.metrics import evaluate
from tasks.params import FeaturesParams
from tests.conftest import quiet_trainer, synthetic_features

PADDED = torch.tensor(
    [
        [0, 0, 0, 0, 0, 0],  # no history at all
        [0, 0, 0, 0, 0, 7],  # length 1
        [0, 0, 3, 9, 1, 4],  # partly padded
        [5, 2, 8, 8, 11, 6],  # full
    ]
)


def tiny_model(**kwargs) -> sasrec.SASRec:
    torch.manual_seed(0)
    return sasrec.SASRec(n_items=12, max_len=6, hidden=16, heads=2, **kwargs)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> FeatureData:
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=20)
    return synthetic_features(
        tmp_path_factory.mktemp("sasrec"), 300, 200, 9_000, seed=3, params=params
    )


def test_shapes():
    model = tiny_model().eval()
    assert model(PADDED).shape == (4, 6, 16)
    assert model.score(torch.arange(4), PADDED).shape == (4, 13)


def test_later_items_never_change_earlier_positions():
    model = tiny_model().eval()
    history = PADDED[3:].clone()
    changed = history.clone()
    changed[0, 3] = 1
    before, after = model(history), model(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


@pytest.mark.parametrize("train", [False, True])
def test_padding_never_gives_nan(train):
    model = tiny_model(dropout=0.3).train(train)
    hidden = model(PADDED)
    assert torch.isfinite(hidden).all()
    assert (hidden[PADDED == 0] == 0).all()  # padded positions are exactly zero
    scores = model.score(torch.arange(4), PADDED)
    assert torch.isfinite(scores).all()
    # A real item's output depends on the real items only, not on how much padding precedes it.
    if not train:
        torch.testing.assert_close(model(PADDED[1:2, -1:])[0, -1], hidden[1, -1])


@pytest.mark.parametrize("loss", sequence_training.LOSSES)
def test_gradients_are_finite_with_padding(loss):
    module = sequence_training.NextItemModule(tiny_model(), 12, sasrec.Config(loss=loss))
    inputs = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 2, 3]])
    targets = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 3, 4]])
    module.loss(torch.stack([inputs, targets], dim=1)).backward()
    for p in module.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def window_pairs(windows: np.ndarray) -> list[tuple[int, int, int]]:
    """(input item, target item, items read up to and including the input) per counted target."""
    inputs, targets = windows[:, 0], windows[:, 1]
    rows, cols = np.nonzero(targets)
    context = np.cumsum(inputs > 0, axis=1)
    columns = (inputs[rows, cols], targets[rows, cols], context[rows, cols])
    return sorted(zip(*(c.tolist() for c in columns), strict=True))


def test_training_windows_cover_each_transition_once():
    # user 1: 3 items; user 2: 8 items; user 3: a single item (no transition)
    users = np.array([1] * 3 + [2] * 8 + [3])
    items = np.arange(1, 13)
    windows = sequence_training.training_windows(users, items, n_users=3, max_len=3)
    assert windows.shape == (4, 2, 3)
    pairs = window_pairs(windows)
    expected = [(a, a + 1) for a in range(1, 3)] + [(a, a + 1) for a in range(4, 11)]
    assert [(a, b) for a, b, _ in pairs] == expected
    # each user's most recent window is there, left-padded where the history is short
    inputs = {tuple(r) for r in windows[:, 0].tolist()}
    assert {(0, 1, 2), (8, 9, 10), (4, 5, 6)} <= inputs


@pytest.mark.parametrize("min_context", [0, 1, 2, 4])
def test_overlapping_windows_give_every_target_its_context(min_context):
    rng = np.random.default_rng(min_context)
    lengths = rng.integers(1, 30, 20)
    users = np.repeat(np.arange(1, 21), lengths)
    items = np.arange(1, len(users) + 1)  # item i is row i - 1, so its history is countable
    windows = sequence_training.training_windows(
        users, items, 20, max_len=5, min_context=min_context
    )
    pairs = window_pairs(windows)
    first_item = np.concatenate([[0], np.cumsum(lengths)])[users - 1] + 1  # per row
    assert [(a, b) for a, b, _ in pairs] == [
        (i - 1, i) for i in items.tolist() if i > first_item[i - 1]
    ]  # every transition once, with its true predecessor as the input
    for _, target, context in pairs:
        history = target - first_item[target - 1]  # items the user had before the target
        # at least min_context items of its own history, never another user's items
        assert min(history, min_context) <= context <= min(history, 5)
    with pytest.raises(ValueError, match="min_context"):
        sequence_training.training_windows(users, items, 20, max_len=5, min_context=5)


def cycles(n_users: int, n_items: int, length: int) -> FeatureData:
    """Every user walks item -> item + 1 (mod the catalogue) from a random start."""
    rng = np.random.default_rng(0)
    start = rng.integers(0, n_items, n_users)
    seq = (start[:, None] + np.arange(length)) % n_items + 1
    users = np.repeat(np.arange(1, n_users + 1), length - 2)
    zero = np.zeros((1, 8), dtype=np.int64)
    return FeatureData(
        n_users=n_users,
        n_items=n_items,
        max_seq_len=8,
        train_users=users,
        train_items=seq[:, :-2].ravel(),
        val_input=np.concatenate([zero, seq[:, -10:-2]]),
        val_target=np.concatenate([[0], seq[:, -2]]),
        test_input=np.concatenate([zero, seq[:, -9:-1]]),
        test_target=np.concatenate([[0], seq[:, -1]]),
        item_genres=np.zeros((n_items + 1, 1), dtype=np.uint8),
        item_year_bucket=np.zeros(n_items + 1, dtype=np.int64),
        item_popularity=np.bincount(seq[:, :-2].ravel(), minlength=n_items + 1).astype(np.float32),
    )


@pytest.mark.parametrize("loss", sequence_training.LOSSES)
def test_every_loss_falls(loss):
    data = cycles(n_users=64, n_items=30, length=20)
    # 4 negatives of 30 items: with 8 or more (256 is the default) the sampled BCE losses push
    # most of this toy catalogue down at every step and gBCE stalls near HR@10 0.85 in 6 epochs
    config = sasrec.Config(hidden=32, dropout=0.1, loss=loss, batch_size=32, lr=3e-3, negatives=4)
    module, datamodule = sasrec.build(data, config, seed=0)
    optimiser = module.configure_optimizers()
    torch.manual_seed(0)

    def epoch_loss() -> float:
        return float(np.mean([module.loss(b).item() for b in datamodule.train_dataloader()]))

    first = epoch_loss()
    for _ in range(6):
        for batch in datamodule.train_dataloader():
            optimiser.zero_grad()
            module.loss(batch).backward()
            optimiser.step()
    assert epoch_loss() < 0.6 * first
    module.model.eval()
    assert evaluate(module.model.score, eval_loader(data, "val"))["hr@10"] > 0.9


def test_build_is_seeded_and_rejects_an_unknown_loss(synth_data):
    a, _ = sasrec.build(synth_data, sasrec.Config(), seed=5)
    b, _ = sasrec.build(synth_data, sasrec.Config(), seed=5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="loss"):
        sasrec.build(synth_data, sasrec.Config(loss="mse"), seed=5)


def test_epochs_are_shuffled_reproducibly(synth_data):
    def two_epochs() -> list[torch.Tensor]:
        _, datamodule = sasrec.build(synth_data, sasrec.Config(batch_size=64), seed=1)
        return [next(iter(datamodule.train_dataloader())) for _ in range(2)]

    first, again = two_epochs(), two_epochs()
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_beats_popularity_on_sequential_data(synth_data):
    config = dataclasses.replace(sasrec.Config(), hidden=32, batch_size=64, lr=3e-3)
    module, datamodule = sasrec.build(synth_data, config, seed=0)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(4)
    trainer.fit(module, datamodule)
    logged = trainer.callback_metrics
    assert {"train_loss", "val_ndcg@10", "val_hr@10", "val_mrr"} <= set(logged)

    module.model.eval()
    model = evaluate(module.model.score, eval_loader(synth_data, "val"))
    popularity = torch.from_numpy(synth_data.item_popularity)
    baseline = evaluate(
        lambda users, history: popularity.expand(len(users), -1), eval_loader(synth_data, "val")
    )
    assert model["ndcg@10"] == pytest.approx(float(logged["val_ndcg@10"]), abs=1e-5)
    assert model["ndcg@10"] > 1.5 * baseline["ndcg@10"]


def test_an_epoch_gives_every_window_once_in_batches_of_similar_length(synth_data):
    # Windows of 60 items: each holds a user's whole history (about 30 items, varied).
    data = dataclasses.replace(synth_data, max_seq_len=60)
    _, datamodule = sasrec.build(data, sasrec.Config(batch_size=32), seed=1)
    windows = datamodule.windows
    batches = list(datamodule.train_dataloader())
    assert len(batches) == len(datamodule.train_dataloader())
    width = windows.shape[-1]
    # Each batch lost only columns that were padding in all its rows: put them back and every
    # window of the epoch is there exactly once.
    restored = torch.cat([torch.nn.functional.pad(b, (width - b.shape[-1], 0)) for b in batches])
    assert sorted(map(tuple, restored.flatten(1).tolist())) == sorted(
        map(tuple, windows.flatten(1).tolist())
    )
    assert all(bool((b[:, 0, 0] > 0).any()) for b in batches)  # no all-padding column is left
    lengths = (windows[:, 0] > 0).sum(1)
    shuffled = lengths[torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
    random_width = np.mean([int(b.max()) for b in shuffled.split(32)])
    assert np.mean([b.shape[-1] for b in batches]) < 0.8 * random_width


@pytest.mark.parametrize("block", sasrec.BLOCKS)
def test_trimmed_padding_changes_no_score(synth_data, block):
    """Validation orders users by history length and cuts each batch's padding: the same
    per-user metrics as full-width batches in the users' own order."""
    config = sasrec.Config(hidden=16, blocks=2, block=block)
    module, datamodule = sasrec.build(synth_data, config, seed=0)
    model = module.model.eval()
    with torch.no_grad():
        trimmed = evaluate(model.score, datamodule.val_dataloader())
        full = evaluate(model.score, eval_loader(synth_data, "val", 64))
    assert trimmed == pytest.approx(full, rel=1e-5)
    short = PADDED[1:3]
    trained = tiny_model(block=block).eval()
    torch.testing.assert_close(trained(short)[:, -4:], trained(short[:, 2:]), atol=1e-5, rtol=0)


def test_an_epochs_objective_does_not_depend_on_how_windows_are_batched(synth_data):
    """Every target weighs the same whether its batch holds short or long windows: the epoch's
    summed loss over length-grouped, trimmed batches equals that of random full-width ones."""
    data = dataclasses.replace(synth_data, max_seq_len=60)
    module, datamodule = sasrec.build(data, sasrec.Config(hidden=16, loss="ce"), seed=0)
    module.eval()  # no dropout: the same function of the windows either way
    with torch.no_grad():
        module.model.item_emb.weight.mul_(8)  # losses far apart from target to target
    random_batches = shuffled_batches(datamodule.windows, 128, torch.Generator().manual_seed(0))
    with torch.no_grad():
        grouped = sum(module.loss(b) for b in datamodule.train_dataloader())
        plain = sum(module.loss(b) for b in random_batches)
    assert float(grouped) == pytest.approx(float(plain), rel=1e-4)


def test_attribute_ids_list_each_items_genres_and_year_left_aligned():
    genres = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.uint8)
    year = np.array([3, 2, 0, 1])
    ids = attribute_ids(genres, year)
    # Row 0 is padding whatever it holds; genre g -> id g + 1; year bucket b > 0 -> id 3 + b.
    assert ids.tolist() == [[0, 0, 0], [2, 3, 5], [0, 0, 0], [1, 4, 0]]
    assert attribute_ids(genres, np.zeros(4, dtype=np.int64)).shape == (4, 2)
    assert attribute_ids(np.zeros((4, 3)), np.zeros(4, dtype=np.int64)) is None


def with_attributes(data: FeatureData, encoder: str):
    """(model file, Config, untrained model in eval mode) of a sequence encoder with item
    attributes."""
    module_file = sasrec if encoder == "sasrec" else gru4rec
    config = module_file.Config(hidden=16, item_features=True)
    return module_file, config, module_file.restore(data, config).eval()


@pytest.mark.parametrize("encoder", ["sasrec", "gru4rec"])
def test_item_attributes_join_the_id_vector_on_input_and_output(synth_data, encoder):
    module_file, _, model = with_attributes(synth_data, encoder)
    table = model.item_embeddings()
    assert table.shape == (synth_data.n_items + 1, 16)
    assert torch.equal(table[0], torch.zeros(16))  # padding stays exactly zero
    items = torch.tensor([[0, 3, 5]])
    torch.testing.assert_close(model.item_embeddings(items)[0], table[items[0]])
    # Two items with the same attributes differ only by their ids' vectors.
    with torch.no_grad():
        model.item_emb.weight.zero_()
    same = (synth_data.item_genres[1:] == synth_data.item_genres[1]).all(axis=1)
    same &= synth_data.item_year_bucket[1:] == synth_data.item_year_bucket[1]
    twins = np.flatnonzero(same) + 1
    assert len(twins) >= 2 and torch.equal(
        model.item_embeddings()[twins[0]], model.item_embeddings()[twins[1]]
    )
    # The scores read the same table.
    history = torch.as_tensor(synth_data.test_input[1:3], dtype=torch.long)
    want = model(history)[:, -1] @ model.item_embeddings().T
    torch.testing.assert_close(model.score(torch.arange(2), history), want)
    without = module_file.restore(synth_data, module_file.Config(hidden=16, item_features=False))
    assert without.item_attributes is None and "item_attributes.ids" in model.state_dict()


@pytest.mark.parametrize("encoder", ["sasrec", "gru4rec"])
def test_the_item_table_is_kept_only_while_the_weights_cannot_change(synth_data, encoder):
    # Built once per evaluation (recsys_models/item_table.py); training mode, a loaded state
    # dict and a move each drop it, so scores always read the current weights.
    module_file, config, model = with_attributes(synth_data, encoder)
    table = model.item_table()
    assert model.item_table() is table
    other = module_file.restore(synth_data, config)
    with torch.no_grad():
        other.item_emb.weight.add_(1.0)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(model.item_table(), other.item_embeddings())
    for change in (lambda m: m.train().eval(), lambda m: m.double().float()):
        table = model.item_table()
        with torch.no_grad():
            model.item_emb.weight.add_(1.0)
        change(model)
        torch.testing.assert_close(model.item_table(), model.item_embeddings())
    assert not model.train().item_table().equal(table)  # training mode: never the cache
