"""The builder's own test (TFDS convention), without TensorFlow: builds a
small ndec/synthetic set into a temporary directory and reads it back."""

import os

import numpy as np
import tensorflow_datasets as tfds

import tfds_ndec


def test_build_and_read_back(tmp_path):
  config = tfds_ndec.synthetic_config(
      num_train=6, num_train_negative_pairs=4, num_references=8, num_copy_queries=2,
      num_hard_negative_queries=4, num_distractor_queries=2, image_size=32)
  builder = tfds_ndec.Builder(config=config, data_dir=str(tmp_path),
                              file_format="array_record", num_workers=1)
  builder.download_and_prepare()
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {"train": 6, "train_negative_pairs": 4, "references": 8, "queries": 8}
  reloaded = tfds.builder_from_directory(builder.data_dir)
  queries = reloaded.as_data_source(split="queries")
  kinds = sorted(queries[i]["kind"] for i in range(8))
  assert kinds == [b"copy"] * 2 + [b"distractor"] * 2 + [b"hard_negative"] * 4
  image = reloaded.as_data_source(split="references")[0]["image"]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8


DUMMY_DATA = os.path.join(os.path.dirname(__file__), "dummy_data")


def test_real_configs_from_dummy_data(tmp_path):
  """`full` and `disc21_dev` prepare from dummy_data/ (sharded folders, CRLF
  and BOM ground truths) with the counts and ids of the fake download."""
  config = tfds.download.DownloadConfig(manual_dir=DUMMY_DATA)
  full = tfds.builder("ndec/full", data_dir=str(tmp_path), file_format="array_record")
  full.download_and_prepare(download_config=config)
  counts = {k: v.num_examples for k, v in full.info.splits.items()}
  assert counts == {"train": 5, "train_negative_pairs": 2, "references": 6, "queries": 4}
  queries = full.as_data_source(split="queries")
  assert [queries[i]["id"] for i in range(4)] == [b"Q00000", b"Q00001", b"Q00002", b"Q00003"]
  assert [queries[i]["kind"] for i in range(4)] == [b"copy"] * 2 + [b"negative"] * 2
  dev = tfds.builder("ndec/disc21_dev", data_dir=str(tmp_path), file_format="array_record")
  dev.download_and_prepare(download_config=config)
  assert {k: v.num_examples for k, v in dev.info.splits.items()} == {
      "references": 6, "queries": 3}
