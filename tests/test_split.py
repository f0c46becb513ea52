"""Train/test split by image (paper 4.1.1): deterministic, disjoint, 100 + 100 per language."""

import hashlib

import pyarrow as pa
import pytest

from mella.schema import to_table
from mella.split import N_TEST, held_out_images, split_by_image


def _rows(source: str, lang: str, n: int, start: int = 0, dup_every: int = 0) -> pa.Table:
    rows = []
    for i in range(start, start + n):
        k = i - (i % dup_every) if dup_every else i  # every dup_every rows share one image
        rows.append(
            {
                "id": f"{source}-{lang}-{i}",
                "lang": lang,
                "sha256": hashlib.sha256(str(k).encode()).hexdigest(),
                "alt_text": f"alt {i}",
                "text": f"text {i}",
            }
        )
    return to_table(rows)


def test_holds_out_100_images_per_source_and_language():
    know = pa.concat_tables([_rows("k", "hu", 1000), _rows("k", "cs", 700)])
    ling = _rows("l", "hu", 800, start=5000)
    s = split_by_image({"d_know": know, "d_ling": ling}, "hu")
    assert s["d_know"].test.num_rows == N_TEST == s["d_ling"].test.num_rows == 100
    assert s["d_know"].train.num_rows == 900 and s["d_ling"].train.num_rows == 700
    assert set(s["d_know"].train["lang"].to_pylist()) == {"hu"}  # other languages ignored


def test_split_is_by_image_and_disjoint():
    know = _rows("k", "hu", 1000, dup_every=4)  # 250 images, 4 rows each
    ling = _rows("l", "hu", 600)  # shares images 0..599 with D_know's hash space
    s = split_by_image({"d_know": know, "d_ling": ling}, "hu")
    test_imgs = set(s["d_know"].test["sha256"].to_pylist()) | set(s["d_ling"].test["sha256"].to_pylist())
    train_imgs = set(s["d_know"].train["sha256"].to_pylist()) | set(s["d_ling"].train["sha256"].to_pylist())
    assert not test_imgs & train_imgs
    assert len(set(s["d_know"].test["sha256"].to_pylist())) == 50  # capped at 20 % of 250 images
    assert s["d_know"].test.num_rows == 200  # all rows of each held-out image


def test_deterministic_and_order_independent():
    know = _rows("k", "hu", 900)
    a = held_out_images(know, "hu")
    b = held_out_images(know.take(list(reversed(range(know.num_rows)))), "hu")
    assert a == b and len(a) == 100
    grown = pa.concat_tables([know, _rows("k", "hu", 50, start=10_000)])
    # growing the corpus can only bring NEW images into the test set: no image an earlier run trained on
    # becomes a test image (so older adapters are not evaluated on their training data)
    assert len(held_out_images(grown, "hu") - a - set(_rows("k", "hu", 50, start=10_000)["sha256"].to_pylist())) == 0


def test_small_corpus_keeps_training_data():
    s = split_by_image({"d_know": _rows("k", "hu", 22), "d_ling": None}, "hu")
    assert s["d_know"].test.num_rows == 4 and s["d_know"].train.num_rows == 18
    assert "d_ling" not in s


def test_bad_input_is_rejected():
    t = to_table([{"id": "1", "lang": "hu", "sha256": None}])
    with pytest.raises(ValueError, match="lack sha256"):
        split_by_image({"d_know": t}, "hu")
    with pytest.raises(ValueError, match="unknown source"):
        split_by_image({"d_other": t}, "hu")
