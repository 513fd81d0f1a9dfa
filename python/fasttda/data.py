"""Prompt/response data: JSONL loading, tokenization, padding into batches.

One example per line, a JSON object with a ``prompt`` and a ``response`` string and an
optional ``id`` (field names are arguments). The loss is taken on the response tokens only:
labels are ``-100`` over the prompt and the padding.

Every problem with the input is a `DataError` (a ValueError) whose message is one line
naming the file and the line number, so that the CLI can print it as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

IGNORE_INDEX = -100


class DataError(ValueError):
    """Bad input data; the message is one self-contained line."""


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    response: str


def load_jsonl(
    path: str | os.PathLike,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    id_field: str = "id",
) -> list[Example]:
    """Read ``path`` into `Example`s; a missing ``id`` becomes the row number (0-based)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    with path.open("r", encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            fields = []
            for name in (prompt_field, response_field):
                if name not in record:
                    raise DataError(f"{where}: missing field '{name}'")
                if not isinstance(record[name], str):
                    raise DataError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
                fields.append(record[name])
            if not fields[1].strip():
                raise DataError(f"{where}: field '{response_field}' is empty (the loss is taken on it)")
            raw_id = record.get(id_field, len(examples))
            if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
                raise DataError(f"{where}: field '{id_field}' must be a string or an integer")
            example_id = str(raw_id)
            if example_id in seen:
                raise DataError(f"{where}: duplicate {id_field} {example_id!r} (first on line {seen[example_id]})")
            seen[example_id] = line_no
            examples.append(Example(example_id, fields[0], fields[1]))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example | dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for ex in examples:
            record = ex if isinstance(ex, dict) else {"id": ex.id, "prompt": ex.prompt, "response": ex.response}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def data_fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the ids and texts, recorded in stores so a resume cannot mix data sets."""
    h = hashlib.sha256()
    for ex in examples:
        for text in (ex.id, ex.prompt, ex.response):
            h.update(text.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()[:16]


# -- tokenization -----------------------------------------------------------------------------
def encode_example(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)``: prompt tokens (with the tokenizer's own special
    tokens) then response tokens and EOS; labels mask the prompt. Too long a sequence
    loses the start of its prompt first, because the response is what is attributed."""
    prompt_ids = list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
    response_ids = list(tokenizer(example.response, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    truncated = False
    if len(prompt_ids) + len(response_ids) > max_length:
        truncated = True
        response_ids = response_ids[: max(1, max_length - 1)]
        keep = max_length - len(response_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return ids, labels, truncated


def encode(tokenizer, examples: Sequence[Example], max_length: int = 512) -> list[tuple[list[int], list[int]]]:
    """Tokenize ``examples``; warns once with the count of truncated ones."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    out, n_truncated = [], 0
    for ex in examples:
        ids, labels, truncated = encode_example(tokenizer, ex, max_length)
        n_truncated += truncated
        out.append((ids, labels))
    if n_truncated:
        warnings.warn(f"{n_truncated} of {len(examples)} examples were longer than max_length={max_length} "
                      "tokens; the start of their prompts was cut", stacklevel=2)
    return out


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
            start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive batches from row ``start`` on, in order (stores rely on the order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for lo in range(start, len(encoded), batch_size):
        yield collate(encoded[lo: lo + batch_size], pad_id)


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary and special tokens: two checkpoints must agree on it to be compared."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for token in sorted(vocab):
        h.update(f"{token}\x00{vocab[token]}\x01".encode("utf-8", "surrogatepass"))
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()[:16]
