"""The two key rules of ``magiceraser.keys``, pinned to the exact strings existing outputs hold:
a changed sample key breaks the resume of OLRD jobs, a changed file-name key the evaluation cache."""

from __future__ import annotations

import pytest

from magiceraser.keys import file_name_key, sample_key


@pytest.mark.parametrize("rel,key", [
    ("train/airfield/00000001.jpg", "train_airfield_00000001_502127b5"),
    ("/a/b c/d..e.png", "a_b_c_d_e_4789b76c"),
    ("café/ü.jpg", "caf_85fa848a"),
    ("x", "x_11f6ad8e"),
    ("..", "image_9d891e73"),
    ("a\\b\\c.JPG", "a_b_c_f3704935"),
    ("dir.v2/file", "dir_v2_file_4e41df69"),
    ("a" * 120 + ".png", "a" * 96 + "_90f89a93"),
    ("__a__b__", "a__b_d261c0b4"),
])
def test_sample_keys_are_unchanged(rel, key):
    assert sample_key(rel) == key


@pytest.mark.parametrize("text,key", [
    ("train/airfield/00000001.jpg", "train_airfield_00000001_jpg"),
    ("/a/b c/d..e.png", "a_b_c_d__e_png"),
    ("café/ü.jpg", "café_ü_jpg"),
    ("i. Baseline + OLRD", "i__Baseline___OLRD"),
    ("SD 1.5", "SD_1_5"),
    ("vendor_testing_1/set/x1", "vendor_testing_1_set_x1"),
    ("olrd-000000.tar", "olrd-000000_tar"),
    ("", "item"),
    ("___", "item"),
])
def test_file_name_keys_are_unchanged(text, key):
    assert file_name_key(text) == key


def test_the_data_engine_and_the_evaluation_use_these_rules():
    from magiceraser.datasets import inputs
    from magiceraser.evaluation import config
    from magiceraser.evaluation.pairs import realhm

    assert inputs.sample_key is sample_key
    assert config.file_name_key is file_name_key and realhm.file_name_key is file_name_key
