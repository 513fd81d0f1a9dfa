"""fasttda.data: JSONL loading (one-line errors with line numbers) and response-only labels."""
from __future__ import annotations

import json

import pytest

from fasttda.data import IGNORE_INDEX, DataError, Example, collate, encode, load_jsonl
from tiny_models import WORDS


def write(tmp_path, lines, name="d.jsonl", bom=False):
    path = tmp_path / name
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def test_load_with_defaults_overrides_and_bom(tmp_path):
    path = write(tmp_path, [{"prompt": "a b", "response": "c"}, "", {"id": 7, "prompt": "d", "response": "e f"}], bom=True)
    assert load_jsonl(path) == [Example("0", "a b", "c"), Example("7", "d", "e f")]
    renamed = write(tmp_path, [{"q": "x", "a": "y", "key": "k1"}], name="r.jsonl")
    assert load_jsonl(renamed, prompt_field="q", response_field="a", id_field="key") == [Example("k1", "x", "y")]


@pytest.mark.parametrize("lines, match", [
    ([{"prompt": "a", "response": "b"}, {"prompt": "a"}], r"line 2: missing field 'response'"),
    ([{"response": "b"}], r"line 1: missing field 'prompt'"),
    ([{"prompt": "a", "response": 3}], r"line 1: field 'response' must be a string"),
    ([{"prompt": "a", "response": "  "}], r"line 1: field 'response' is empty"),
    ([{"prompt": "a", "response": "b"}, "[1, 2]"], r"line 2: expected a JSON object"),
    ([{"prompt": "a", "response": "b"}, "", "{oops"], r"line 3: not valid JSON"),
    ([{"id": "x", "prompt": "a", "response": "b"}, {"id": "x", "prompt": "c", "response": "d"}],
     r"line 2: duplicate id 'x' \(first on line 1\)"),
    ([{"id": [1], "prompt": "a", "response": "b"}], r"line 1: field 'id' must be a string or an integer"),
    (["", "  "], r"no examples"),
])
def test_bad_lines_name_the_line(tmp_path, lines, match):
    with pytest.raises(DataError, match=match) as info:
        load_jsonl(write(tmp_path, lines))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_jsonl(tmp_path / "absent.jsonl")


@pytest.fixture(scope="module")
def tokenizer():
    from fasttda.demo.model import build_tokenizer

    return build_tokenizer([" ".join(WORDS) + " ."])


def test_labels_cover_the_response_and_eos_only(tokenizer):
    (ids, labels), = encode(tokenizer, [Example("0", "alpha beta gamma", "delta epsilon")], 32)
    n_prompt = 3
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == n_prompt + 3
    batch = collate([(ids, labels), (ids[:2], [IGNORE_INDEX, IGNORE_INDEX])], tokenizer.pad_token_id)
    assert batch["attention_mask"].sum(1).tolist() == [len(ids), 2]
    assert (batch["labels"][1] == IGNORE_INDEX).all()


def test_truncation_cuts_the_prompt_start_and_warns(tokenizer):
    long_prompt = " ".join(WORDS)
    with pytest.warns(UserWarning, match="1 of 1 examples were longer than max_length=8"):
        (ids, labels), = encode(tokenizer, [Example("0", long_prompt, "pi rho")], 8)
    assert len(ids) == 8
    assert labels[-3:] == ids[-3:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[:5]) == WORDS[-5:]


# -- target spans: the loss on one piece of the response ------------------------------------------
@pytest.mark.parametrize("response, target, span_words", [
    ("delta epsilon zeta", "epsilon", ["epsilon"]),
    ("delta epsilon zeta eta", "epsilon zeta", ["epsilon", "zeta"]),
    ("theta iota theta kappa", "theta", ["theta"]),  # the first occurrence only
    ("lambda mu", "lamb", ["lambda"]),  # a partial word takes the token that covers it
])
def test_target_span_labels_only_its_tokens(tokenizer, response, target, span_words):
    (ids, labels), = encode(tokenizer, [Example("0", "alpha beta", response, target)], 32)
    (full_ids, full_labels), = encode(tokenizer, [Example("0", "alpha beta", response)], 32)
    assert ids == full_ids  # the span changes the labels, never the tokens
    words = response.split()
    first = words.index(span_words[0])
    expected = [IGNORE_INDEX] * len(ids)
    for j in range(first, first + len(span_words)):
        expected[2 + j] = ids[2 + j]
    assert labels == expected  # the prompt, the other response words and EOS are all masked
    assert tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX]) == span_words


def test_target_missing_from_the_response_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"example 'q7': target 'omega' does not occur in its response"):
        encode(tokenizer, [Example("q7", "alpha", "beta gamma", "omega")], 32)


def test_target_cut_off_by_max_length_is_an_error(tokenizer):
    with pytest.raises(DataError, match="lies past max_length=4"):
        encode(tokenizer, [Example("q", "alpha", "beta gamma delta epsilon zeta", "zeta")], 4)


def test_load_target_field(tmp_path):
    path = write(tmp_path, [{"prompt": "a", "response": "b China c", "target": "China"},
                            {"prompt": "d", "response": "e f"}])
    assert load_jsonl(path, target_field="target") == [Example("0", "a", "b China c", "China"), Example("1", "d", "e f")]
    assert load_jsonl(path) == [Example("0", "a", "b China c"), Example("1", "d", "e f")]  # off unless asked
    renamed = write(tmp_path, [{"prompt": "a", "response": "b Wales", "entity": "Wales"}], name="r.jsonl")
    assert load_jsonl(renamed, target_field="entity")[0].target == "Wales"


@pytest.mark.parametrize("lines, match", [
    ([{"prompt": "a", "response": "b c"}, {"prompt": "a", "response": "b c", "target": "China"}],
     r"line 2: target 'China' does not occur in field 'response'"),
    ([{"prompt": "a", "response": "b", "target": 3}], r"line 1: field 'target' must be a non-empty string"),
    ([{"prompt": "a", "response": "b", "target": ""}], r"line 1: field 'target' must be a non-empty string"),
])
def test_bad_target_names_the_line(tmp_path, lines, match):
    with pytest.raises(DataError, match=match) as info:
        load_jsonl(write(tmp_path, lines), target_field="target")
    assert "\n" not in str(info.value)
