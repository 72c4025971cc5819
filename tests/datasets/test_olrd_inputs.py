"""Listing, sample keys and shard assignment (pure functions), incl. Places365 layouts and fsspec."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser.datasets.inputs import (
    list_inputs,
    list_sources,
    make_items,
    num_shards,
    sample_key,
    shard_of,
)
from magiceraser.imageio import encode_image


def test_sample_keys_have_no_dots_and_are_deterministic_and_distinct():
    paths = ["train/airfield/00000001.jpg", "a/b.c.jpg", "a/b_c.jpg", "a b/c.JPG", "/a/airfield/00000001.jpg"]
    keys = [sample_key(p) for p in paths]
    assert all("." not in k and "/" not in k and " " not in k for k in keys)
    assert keys == [sample_key(p) for p in paths]
    assert len(set(keys[:4])) == 4  # "a/b.c" and "a/b_c" fold to the same text, the hash keeps them apart
    assert keys[4] == sample_key("a/airfield/00000001.jpg")  # a leading slash is not part of the identity
    assert keys[0].startswith("train_airfield_00000001_")


@pytest.mark.parametrize("n_inputs,per_shard", [(1, 1), (10, 3), (12, 4), (1000, 7)])
def test_shard_assignment_covers_every_input_once(n_inputs, per_shard):
    items = make_items([(f"/x/{i}.jpg", f"{i}.jpg") for i in range(n_inputs)], per_shard)
    assert [it.index for it in items] == list(range(n_inputs))
    assert num_shards(n_inputs, per_shard) == max(it.shard for it in items) + 1
    for s in range(num_shards(n_inputs, per_shard)):
        members = [it.index for it in items if it.shard == s]
        assert members == list(range(s * per_shard, min((s + 1) * per_shard, n_inputs)))
    assert all(it.shard == shard_of(it.index, per_shard) for it in items)
    # A prefix of the listing gets the same assignment: shards are a pure function of positions.
    assert make_items([(it.source, it.rel) for it in items[:5]], per_shard) == items[:5]


def _img(path, size=(70, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(np.zeros((*size, 3), np.uint8), "jpg"))


def test_places365_directory_layout(tmp_path):
    root = tmp_path / "places365_standard"
    for split in ("train", "val"):
        for cat in ("airfield", "beach"):
            for i in range(2):
                _img(root / split / cat / f"{i:08d}.jpg")
    (root / "train.txt").write_text("not an image\n")
    items = list_inputs(str(root), samples_per_shard=3)
    rels = [it.rel for it in items]
    assert rels == sorted(rels) and len(rels) == 8
    assert rels[0] == "train/airfield/00000000.jpg"
    assert [it.shard for it in items] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert len(list_inputs(str(root), 3, limit=5)) == 5


def test_places365_list_file_with_input_root(tmp_path):
    data = tmp_path / "data_256"
    _img(data / "a" / "airfield" / "00000001.jpg")
    _img(data / "b" / "beach" / "00000002.jpg")
    lst = tmp_path / "places365_train_standard.txt"
    lst.write_text("/a/airfield/00000001.jpg 0\n/b/beach/00000002.jpg 48\n\n# a comment\n")
    items = list_inputs(str(lst), samples_per_shard=10, input_root=str(data))
    assert [it.source for it in items] == [str(data / "a/airfield/00000001.jpg"), str(data / "b/beach/00000002.jpg")]
    assert all(__import__("os").path.exists(it.source) for it in items)  # labels dropped, paths resolve
    assert items[0].key == sample_key("a/airfield/00000001.jpg")  # keys of Places365 lists are unchanged


def test_list_file_names_one_image_once_whatever_the_spelling(tmp_path):
    """``./x.png`` and ``../dir/x.png`` are one image: one key, and a list repeating it is refused by line."""
    data = tmp_path / "dir"
    _img(data / "x.png")
    _img(data / "sub" / "y.png")
    lst = data / "list.txt"
    lst.write_text("./x.png\nsub/./../sub/y.png 3\n")
    items = list_inputs(str(lst), 10)
    assert [(it.source, it.rel) for it in items] == [(str(data / "x.png"), "x.png"), (str(data / "sub/y.png"), "sub/y.png")]
    assert items[0].key == sample_key("x.png")
    lst.write_text("./x.png\n../dir/x.png\nsub/y.png 1\nx.png 0\n")
    with pytest.raises(ValueError, match=r"names 2 image\(s\) more than once.*line 2 repeats line 1 \(x\.png\); "
                                         r"line 4 repeats line 1 \(x\.png\); remove the repeated lines"):
        list_inputs(str(lst), 10)


def test_list_file_paths_with_spaces_are_kept_whole(tmp_path):
    """Only a trailing integer is a label: ``a b/c d.jpg 17`` names ``a b/c d.jpg`` (was cut at the first blank)."""
    _img(tmp_path / "a b" / "c d.jpg")
    _img(tmp_path / "my photo 2.jpg")
    _img(tmp_path / "12")  # a bare name that is all digits is a path, not a label
    lst = tmp_path / "list.txt"
    lst.write_text("a b/c d.jpg 17\r\n  my photo 2.jpg  \n12\n")
    items = list_inputs(str(lst), 10)
    assert [it.rel for it in items] == ["a b/c d.jpg", "my photo 2.jpg", "12"]
    assert all(__import__("os").path.exists(it.source) for it in items)


def test_list_file_relative_to_its_folder_and_fsspec_memory(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("x/1.jpg", "x/2.png", "x/notes.md"):
        with fs.open(f"/bucket/{name}", "wb") as fh:
            fh.write(encode_image(np.zeros((70, 70, 3), np.uint8), "png"))
    sources = list_sources("memory://bucket")
    assert [s for s, _ in sources] == ["memory:///bucket/x/1.jpg", "memory:///bucket/x/2.png"]
    from magiceraser.datasets.stages import initial_rows, read_images

    rows = initial_rows(make_items(sources, 4))
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = read_images(batch, min_side=32)
    assert list(out["reason"]) == ["", ""] and list(out["height"]) == [70, 70]


def test_missing_input_fails_with_a_clear_message(tmp_path):
    from magiceraser.datasets.inputs import InputError

    with pytest.raises(InputError, match="input=.* does not exist"):
        list_inputs(str(tmp_path / "nope"), 10)
    (tmp_path / "img.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a list file"):
        list_inputs(str(tmp_path / "img.jpg"), 10)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(InputError, match="not a UTF-8 text list file"):
        list_inputs(str(tmp_path / "binary.txt"), 10)


def _tricky_entries() -> list[str]:
    import itertools

    comps = ["a", "b c", ".", "..", "", ".h", "h.", "...", "x.jpg", "..a"]
    entries = set()
    for k in range(1, 4):
        for combo in itertools.product(comps, repeat=k):
            e = "/".join(combo)
            entries |= {e, "/" + e, "./" + e, e + "/", "//" + e}
    return sorted(e for e in entries if e)


@pytest.mark.parametrize("base", ["/data/lists", "/", "//a", ".", "..", "../x", "rel/dir", "/a b/c", "bucket",
                                  "a/..", "a//b", "/a/./b", "x/", ""])
def test_the_listing_fast_path_equals_normpath_and_relpath(base, tmp_path, monkeypatch):
    """entry_normaliser skips relpath (most of listing a million lines) where the result is known;
    path and rel must equal normalise_entry's (posixpath.normpath + relpath) for every spelling,
    or keys and shards of existing outputs would change. Relative bases depend on the cwd: two."""
    from magiceraser.datasets.inputs import entry_normaliser, normalise_entry

    def outcome(f, *args):
        try:
            return f(*args)
        except ValueError as exc:  # relpath's, for an empty base
            return str(exc)

    for cwd in (tmp_path, "/"):
        monkeypatch.chdir(cwd)
        fast = entry_normaliser(base)
        for entry in _tricky_entries():
            assert outcome(fast, entry) == outcome(normalise_entry, base, entry), (base, entry)


def test_list_lines_split_as_the_label_rule_says():
    """parse_list_line's rsplit shortcut gives the path the _LABELLED rule gives, blanks and digits of any script."""
    import random

    from magiceraser.datasets.inputs import _LABELLED, parse_list_line

    def rule(line: str) -> str | None:
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        m = _LABELLED.fullmatch(line)
        return m.group("path") if m else line

    rng = random.Random(0)
    alphabet = ["a", " ", "\t", "1", "-", "+", "#", ".", "/", "\u00a0", "\u0663", "\u00b2", "\x0b", "\x1c", "\n", "x.jpg"]
    lines = ["/a/airfield/00000001.jpg 0", "a b/c d.jpg 17", "my photo 2.jpg", "12", "x.jpg -3", "x.jpg +3", "x.jpg 1 2",
             "x.jpg \u0663", "x.jpg \u00b2", "a\nb 1"]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(20000)]
    for line in lines:
        assert parse_list_line(line) == rule(line), repr(line)


def test_tricky_list_lines_keep_their_keys(tmp_path):
    """A list mixing ./, .., blanks, absolute and dot-led paths lists (source, rel, key) as normpath + relpath say."""
    import hashlib
    import posixpath

    from magiceraser.datasets.inputs import listing_fingerprint

    data = tmp_path / "d"
    data.mkdir()
    lines = {  # line -> the path it names
        "/c/cat1/00000001.jpg 1": "/c/cat1/00000001.jpg", "./x.png": "./x.png", "sub/./../sub/y.png 3": "sub/./../sub/y.png",
        "a b/c d.jpg 17": "a b/c d.jpg", "  my photo 2.jpg  ": "my photo 2.jpg", "../outside/z.jpg 4": "../outside/z.jpg",
        "/abs/with space/q.jpg": "/abs/with space/q.jpg", "d//e.jpg": "d//e.jpg", "f/g/ 5": "f/g/", ".hidden/h.jpg": ".hidden/h.jpg",
        "i/..j.jpg": "i/..j.jpg", "k/l/../../m.jpg -2": "k/l/../../m.jpg", "\u00e9t\u00e9/\u6771.jpg 3": "\u00e9t\u00e9/\u6771.jpg",
        "../../../../q.jpg": "../../../../q.jpg",
    }
    (data / "list.txt").write_text("\n".join(lines) + "\n")
    items = list_inputs(str(data / "list.txt"), 4)
    base = str(data)
    expected = []
    for entry in lines.values():
        path = posixpath.normpath(f"{base}/{entry.lstrip('/')}")
        expected.append((path, posixpath.relpath(path, base)))
    assert [(it.source, it.rel) for it in items] == expected
    assert [it.key for it in items] == [sample_key(rel) for _, rel in expected]
    assert [it.shard for it in items] == [i // 4 for i in range(len(lines))]
    assert items[5].rel == "../outside/z.jpg" and items[2].rel == "sub/y.png" and items[0].rel == "c/cat1/00000001.jpg"
    assert listing_fingerprint(items) == hashlib.sha256(b"".join(it.key.encode() + b"\n" for it in items)).hexdigest()


def test_listing_fingerprint_is_one_sha256_over_the_keys_across_chunks():
    """The fingerprint hashes keys in chunks now: the digest must stay sha256(key\\n for every key), past a chunk."""
    import hashlib

    items = make_items([(f"/x/{i}.jpg", f"{i}.jpg") for i in range(70_000)], 100)
    from magiceraser.datasets.inputs import listing_fingerprint

    expected = hashlib.sha256()
    for it in items:
        expected.update(it.key.encode() + b"\n")
    assert listing_fingerprint(items) == expected.hexdigest()
    assert listing_fingerprint([]) == hashlib.sha256().hexdigest()
