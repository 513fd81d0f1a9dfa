"""A float64 oracle of the comparison-model form, written out: one example at a time, no
padding, log-softmax by hand, plain SGD (shared by the comparison and DDA-form tests)."""
from __future__ import annotations

import copy

import torch

from fasttda.data import IGNORE_INDEX, encode


def loss64(model, tokenizer, example, max_length: int = 64):
    """One example's mean token loss, float64, written out."""
    (ids, labels), = encode(tokenizer, [example], max_length)
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    target = torch.tensor(labels[1:])
    keep = target != IGNORE_INDEX
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp[keep].gather(1, target[keep, None]).mean()


def tune64(model, tokenizer, examples, steps, lr):
    tuned = copy.deepcopy(model).double().eval()
    for _ in range(steps):
        tuned.zero_grad(set_to_none=True)
        loss = torch.stack([loss64(tuned, tokenizer, ex) for ex in examples]).mean()
        loss.backward()
        with torch.no_grad():
            for p in tuned.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    return tuned


def comparison64(model, tokenizer, train, queries, steps, lr):
    """``[N]`` float64 L(z; ground) − L(z; error), and the larger of the two losses' maxima."""
    ground = tune64(model, tokenizer, [q.reference_example() for q in queries], steps, lr)
    error = tune64(model, tokenizer, queries, steps, lr)
    with torch.no_grad():
        l_ground = torch.stack([loss64(ground, tokenizer, z) for z in train])
        l_error = torch.stack([loss64(error, tokenizer, z) for z in train])
    return l_ground - l_error, float(torch.maximum(l_ground.abs(), l_error.abs()).max())
