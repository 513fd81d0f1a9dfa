"""Prompt/response data: JSONL loading, tokenization, padding into batches.

One example per line, a JSON object with a ``prompt`` and a ``response`` string and an
optional ``id`` (field names are arguments). The loss is taken on the response tokens only:
labels are ``-100`` over the prompt and the padding. A query may also name a ``target``: a
piece of its response to attribute ("why did the model say *China* here"); its loss is
then taken only on the response tokens covering the first occurrence of that text.

A query may also carry a ``reference``: the correct output for its prompt (the response
being, say, a hallucination). A contrastive query's feature is g(response) − g(reference)
(see `fasttda.pipeline.query_features`); the reference's loss is taken on its
``reference_target`` span when the line names one (e.g. the true entity), else on the
whole reference (the response's ``target`` text need not occur in the reference, so it is
never reused there).

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
    # Text inside ``response`` whose tokens alone carry the loss (None: the whole response).
    target: str | None = None
    # The correct output for ``prompt`` (contrastive queries), and the text inside it whose
    # tokens alone carry the reference's loss (None: the whole reference).
    reference: str | None = None
    reference_target: str | None = None

    def reference_example(self) -> "Example":
        """The reference as an example of its own: same id and prompt, loss on its span."""
        if self.reference is None:
            raise DataError(f"query {self.id!r} carries no reference (needed for a contrastive query)")
        return Example(self.id, self.prompt, self.reference, self.reference_target)


def load_jsonl(
    path: str | os.PathLike,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    id_field: str = "id",
    target_field: str | None = None,
    reference_field: str | None = None,
    reference_target_field: str | None = None,
) -> list[Example]:
    """Read ``path`` into `Example`s; a missing ``id`` becomes the row number (0-based).

    With ``target_field``, a line that carries that field restricts its loss to the first
    occurrence of the field's text in its response (a line without it keeps the whole
    response); text that does not occur in the response is an error naming the line.
    With ``reference_field``, a line that carries it gets that correct output as its
    ``reference`` (and its ``reference_target_field``, which must occur in the reference).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}: line {line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                                ) from None
            if not line.strip():
                continue
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
            target = None
            if target_field is not None and target_field in record:
                target = record[target_field]
                if not isinstance(target, str) or not target.strip():
                    raise DataError(f"{where}: field '{target_field}' must be a non-empty string")
                if target not in fields[1]:
                    raise DataError(f"{where}: {target_field} {target!r} does not occur in field '{response_field}'")
            reference = _optional_text(record, reference_field, where)
            reference_target = _optional_text(record, reference_target_field, where) if reference else None
            if reference_target is not None and reference_target not in reference:
                raise DataError(f"{where}: {reference_target_field} {reference_target!r} does not occur in field "
                                f"'{reference_field}'")
            examples.append(Example(example_id, fields[0], fields[1], target, reference, reference_target))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def contrast_references(queries: Sequence[Example]) -> list[Example]:
    """The queries' references as examples; a `DataError` naming the first query without one."""
    missing = [q.id for q in queries if q.reference is None]
    if missing:
        raise DataError(f"contrastive queries need a 'reference' on every query; {len(missing)} of {len(queries)} "
                        f"have none (first: id {missing[0]!r})")
    return [q.reference_example() for q in queries]


def resolve_contrast(contrast: bool | None, queries: Sequence[Example]) -> bool:
    """``None`` (automatic): contrastive exactly when the queries carry references; then
    every query must carry one (checked here, before any work)."""
    contrast = any(q.reference is not None for q in queries) if contrast is None else bool(contrast)
    if contrast:
        contrast_references(queries)
    return contrast


def _optional_text(record: dict, name: str | None, where: str) -> str | None:
    if name is None or name not in record:
        return None
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' must be a non-empty string")
    return value


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example | dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for ex in examples:
            record = ex if isinstance(ex, dict) else {"id": ex.id, "prompt": ex.prompt, "response": ex.response}
            if isinstance(ex, Example):
                for name in ("target", "reference", "reference_target"):
                    if getattr(ex, name) is not None:
                        record[name] = getattr(ex, name)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def data_fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the ids and texts, recorded in stores so a resume cannot mix data sets."""
    h = hashlib.sha256()
    for ex in examples:
        for text in (ex.id, ex.prompt, ex.response):
            h.update(text.encode("utf-8"))
            h.update(b"\x00")
        if ex.target is not None:  # only then, so fingerprints of untargeted data do not change
            h.update(b"\x01" + ex.target.encode("utf-8") + b"\x00")
        for tag, text in ((b"\x02", ex.reference), (b"\x03", ex.reference_target)):
            if text is not None:
                h.update(tag + text.encode("utf-8") + b"\x00")
    return h.hexdigest()[:16]


# -- tokenization -----------------------------------------------------------------------------
def encode_example(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int], bool]:
    """``(input_ids, labels, truncated)``: prompt tokens (with the tokenizer's own special
    tokens) then response tokens and EOS; labels mask the prompt (and, for an example with
    a ``target``, every response token outside the target's span, EOS included). Too long a
    sequence loses the start of its prompt first, because the response is what is attributed."""
    prompt_ids = list(tokenizer(example.prompt, add_special_tokens=True)["input_ids"])
    response_ids, in_span = _response_tokens(tokenizer, example)
    if tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
        in_span.append(example.target is None)
    truncated = False
    if len(prompt_ids) + len(response_ids) > max_length:
        truncated = True
        response_ids = response_ids[: max(1, max_length - 1)]
        keep = max_length - len(response_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep:] if keep > 0 else []
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + [t if keep_t else IGNORE_INDEX
                                                 for t, keep_t in zip(response_ids, in_span)]
    if example.target is not None and all(label == IGNORE_INDEX for label in labels):
        raise DataError(f"example {example.id!r}: its target {example.target!r} lies past max_length={max_length} "
                        "tokens; raise max_length")
    return ids, labels, truncated


def _response_tokens(tokenizer, example: Example) -> tuple[list[int], list[bool]]:
    """The response's token ids and, per token, whether it carries the loss: every token,
    or with a ``target`` the tokens whose characters overlap its first occurrence."""
    if example.target is None:
        ids = list(tokenizer(example.response, add_special_tokens=False)["input_ids"])
        return ids, [True] * len(ids)
    start = example.response.find(example.target)
    if not example.target or start < 0:
        raise DataError(f"example {example.id!r}: target {example.target!r} does not occur in its response")
    end = start + len(example.target)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"a target span needs a fast tokenizer (character offsets); "
                        f"{type(tokenizer).__name__} has none")
    encoded = tokenizer(example.response, add_special_tokens=False, return_offsets_mapping=True)
    in_span = [lo < end and hi > start and hi > lo for lo, hi in encoded["offset_mapping"]]
    if not any(in_span):
        raise DataError(f"example {example.id!r}: no token of its response covers target {example.target!r}")
    return list(encoded["input_ids"]), in_span


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
