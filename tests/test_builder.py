"""The `ndec` builder builds a tiny synthetic set without TensorFlow."""

import collections
import sys

import numpy as np
import tensorflow_datasets as tfds

import tfds_ndec
from asl_jax import data
from tfds_ndec import synthetic
from conftest import TINY_SIZES


def test_no_tensorflow_needed(tiny_builder):
  assert "tensorflow" not in sys.modules


def test_counts_and_fields(tiny_builder):
  s = TINY_SIZES
  splits = {k: v.num_examples for k, v in tiny_builder.info.splits.items()}
  n_q = s["num_copy_queries"] + s["num_hard_negative_queries"] + s["num_distractor_queries"]
  assert splits == {"train": s["num_train"], "references": s["num_references"],
                    "train_negative_pairs": s["num_train_negative_pairs"], "queries": n_q}
  train = tiny_builder.as_data_source(split="train")
  assert [data.text(train[i]["id"]) for i in range(3)] == ["T000000", "T000001", "T000002"]
  assert train[0]["image"].shape == (48, 48, 3) and train[0]["image"].dtype == np.uint8
  refs = tiny_builder.as_data_source(split="references")
  assert data.text(refs[39]["id"]) == "R000039"


def test_query_kinds(tiny_builder):
  meta = data.query_metadata(tiny_builder)
  kinds = collections.Counter(m["kind"] for m in meta.values())
  assert kinds == {"copy": 12, "hard_negative": 12, "distractor": 6}
  hn = collections.Counter(m["hard_negative_kind"] for m in meta.values()
                           if m["kind"] == "hard_negative")
  assert hn == {k: 3 for k in synthetic.HARD_NEGATIVE_KINDS}
  ref_ids = {f"R{i:06d}" for i in range(TINY_SIZES["num_references"])}
  for _q, m in meta.items():
    if m["kind"] == "copy":
      assert m["reference_id"] in ref_ids and len(m["edits"]) >= 2
      assert set(m["edits"]) <= set(synthetic.copy_edits.EDIT_NAMES)
      assert m["resembles_id"] == ""
    elif m["kind"] == "hard_negative":
      assert m["reference_id"] == "" and m["resembles_id"] in ref_ids
    else:
      assert m["reference_id"] == m["resembles_id"] == ""
  # Each reference is the source of at most one copy or hard negative.
  used = [m["reference_id"] or m["resembles_id"] for m in meta.values()]
  used = [u for u in used if u]
  assert len(used) == len(set(used)) == 24


def test_ground_truth_matches_roles(tiny_builder, tmp_path):
  rows = [(q, m["reference_id"]) for q, m in data.query_metadata(tiny_builder).items()]
  sizes = tfds_ndec.synthetic_config(
      **{k: v for k, v in TINY_SIZES.items() if k != "num_workers"}).sizes()
  assert rows == synthetic.ground_truth_rows(sizes)
  from asl_jax.evaluation import io
  path = tmp_path / "gt.csv"
  io.write_ground_truth(str(path), rows)
  lines = path.read_text().splitlines()
  assert lines[0] == "query_id,reference_id" and len(lines) == 31
  assert sum(line.endswith(",") for line in lines) == 18  # Non-copies.


def test_pairs_split(tiny_builder):
  pairs = tiny_builder.as_data_source(split="train_negative_pairs")
  ex = pairs[1]
  assert data.text(ex["pair_id"]) == "P00001"
  assert data.text(ex["partner"]["id"]) == "P00001_b"
  assert ex["partner"]["image"].shape == (48, 48, 3)
  kinds = [data.text(pairs[i]["hard_negative_kind"]) for i in range(4)]
  assert kinds == list(synthetic.HARD_NEGATIVE_KINDS)
  # A pair's two images differ (no pair is a copy of itself).
  assert np.abs(ex["image"].astype(int) - ex["partner"]["image"]).mean() > 2


def test_deterministic_for_a_seed():
  sizes = tfds_ndec.synthetic_config(**{k: v for k, v in TINY_SIZES.items()
                                        if k != "num_workers"}).sizes()
  a = synthetic.make_example(("queries", sizes, 3))
  b = synthetic.make_example(("queries", sizes, 3))
  assert a[1]["image"] == b[1]["image"] and a[1]["edits"] == b[1]["edits"]
  other = synthetic.Sizes(**{**sizes.__dict__, "seed": 1})
  assert synthetic.make_example(("queries", other, 3))[1]["image"] != a[1]["image"]


def test_reverse_crop_reference_is_inside_query_scene(tiny_builder):
  """A reverse-direction hard negative shows the whole scene; its reference
  is a crop of that scene (so the query holds more content)."""
  meta = data.query_metadata(tiny_builder)
  sizes = tfds_ndec.synthetic_config(**{k: v for k, v in TINY_SIZES.items()
                                        if k != "num_workers"}).sizes()
  q = next(q for q, m in meta.items() if m["hard_negative_kind"] == "reverse_crop")
  roles = synthetic.query_roles(sizes)
  role_index = roles[int(q[1:])][2]
  scene, viewport, ref_image = synthetic._reference(sizes, role_index)
  assert viewport != synthetic.scenes.FULL
  assert viewport[2] * viewport[3] < 0.65   # The reference covers < 65% of it.


def test_synthetic_config_names_by_sizes():
  assert tfds_ndec.synthetic_config().name == "synthetic"
  a = tfds_ndec.synthetic_config(num_train=10)
  b = tfds_ndec.synthetic_config(num_train=11)
  assert a.name.startswith("synthetic_") and a.name != b.name


def test_registered_with_tfds(tiny_builder):
  assert "ndec" in tfds.list_builders(with_community_datasets=False)
  builder = tfds.builder("ndec/synthetic", data_dir="/nonexistent")
  assert isinstance(builder, tfds_ndec.Builder)
  assert builder.builder_config.num_train == 2000


def test_sources_pickle_for_grain_workers(tiny_builder, data_dir):
  """Grain's worker processes unpickle the data source (and its builder)."""
  import pickle
  for config in (tfds_ndec.synthetic_config(), tfds_ndec.synthetic_config(num_train=5)):
    b = tfds_ndec.Builder(config=config, data_dir=data_dir)
    clone = pickle.loads(pickle.dumps(b))
    assert clone.builder_config.name == config.name
  src = data.source(tiny_builder, "train")
  clone = pickle.loads(pickle.dumps(src))
  assert len(clone) == len(src) and clone[3]["id"] == src[3]["id"]
