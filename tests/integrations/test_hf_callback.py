"""AttributionCallback: per-example rows captured inside Trainer.train(), equal to a direct capture; resume."""
import hashlib

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from fasttda.capture.hooks import CaptureHooks  # noqa: E402
from fasttda.integrations.hf import AttributionCallback  # noqa: E402
from fasttda.store import FeatureStore  # noqa: E402

N, T, VOCAB = 6, 7, 50


class Rows(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": self.ids[i]}


def tiny_model():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def args(out, **kw):
    kw = {"save_strategy": "no", **kw}
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=N, learning_rate=1e-2, report_to=[],
                             use_cpu=True, logging_strategy="no", disable_tqdm=True, **kw)


def sha(row):
    return hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16]


def test_rows_equal_a_direct_capture_of_the_first_step(tmp_path):
    data = torch.randint(1, VOCAB, (N, T), generator=torch.Generator().manual_seed(3))
    model = tiny_model()
    reference = tiny_model()  # same init: the weights of step 0
    cb = AttributionCallback(tmp_path / "store", projection=("factored", 4, 4), fmt="fp32")
    Trainer(model=model, args=args(tmp_path / "run", max_steps=2), train_dataset=Rows(data), callbacks=[cb]).train()
    store = FeatureStore.open(tmp_path / "store")
    assert len(store) == 2 * N
    ids = store.ids(0, len(store))
    assert [i.split(":")[0] for i in ids] == ["0"] * N + ["1"] * N
    # step 0, by hand: the trainer's loss on the whole batch, one backward. The trainer divides the
    # token-loss sum by num_items_in_batch (labels counted before the causal shift: N*T), the model's
    # own mean by the shifted count N*(T-1).
    hooks = CaptureHooks(reference, projection=("factored", 4, 4))
    with hooks:
        reference.train()
        reference(input_ids=data, attention_mask=torch.ones_like(data), labels=data).loss.backward()
        want = hooks.pop_features() * (N * (T - 1)) / (N * T)
    row_of = {i.split(":")[3]: r for r, i in enumerate(ids[:N])}
    got = store.read(0, N)[[row_of[sha(d)] for d in data]]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(store.read(N, 2 * N).norm(dim=1), want.norm(dim=1))  # step 1: new weights


def test_resume_from_checkpoint_continues_the_store(tmp_path):
    data = torch.randint(1, VOCAB, (N, T), generator=torch.Generator().manual_seed(4))
    run = tmp_path / "run"
    cb = AttributionCallback(tmp_path / "store", projection=("dense", 8), fmt="fp32")
    Trainer(model=tiny_model(), args=args(run, max_steps=2, save_strategy="steps", save_steps=2),
            train_dataset=Rows(data), callbacks=[cb]).train()
    assert len(FeatureStore.open(tmp_path / "store")) == 2 * N
    cb2 = AttributionCallback(tmp_path / "store", projection=("dense", 8), fmt="fp32")
    Trainer(model=tiny_model(), args=args(run, max_steps=3), train_dataset=Rows(data),
            callbacks=[cb2]).train(resume_from_checkpoint=str(run / "checkpoint-2"))
    store = FeatureStore.open(tmp_path / "store")
    assert [int(i.split(":")[0]) for i in store.ids(0, len(store))] == [0] * N + [1] * N + [2] * N
    with pytest.raises(ValueError, match="past the checkpoint"):
        Trainer(model=tiny_model(), args=args(run, max_steps=3), train_dataset=Rows(data),
                callbacks=[AttributionCallback(tmp_path / "store", projection=("dense", 8))]
                ).train(resume_from_checkpoint=str(run / "checkpoint-2"))


class BadMask(Rows):
    def __getitem__(self, i):
        row = super().__getitem__(i)
        if i == 2:  # a value other than 0/1: refused by the writer thread, raised on the training thread
            row["attention_mask"] = row["attention_mask"].clone()
            row["attention_mask"][1] = 2
        return row


def test_an_error_in_the_writer_thread_stops_training_and_writes_nothing(tmp_path):
    data = torch.randint(1, VOCAB, (N, T), generator=torch.Generator().manual_seed(5))
    cb = AttributionCallback(tmp_path / "store", projection=("factored", 2, 2), fmt="fp32")
    with pytest.raises(ValueError, match="attention_mask of step 0 must hold only 0 and 1"):
        Trainer(model=tiny_model(), args=args(tmp_path / "run", max_steps=2), train_dataset=BadMask(data),
                callbacks=[cb]).train()
    assert len(FeatureStore.open(tmp_path / "store")) == 0
    with pytest.raises(ValueError, match="queue must be an int >= 1"):
        AttributionCallback(tmp_path / "other", queue=0)
