"""Examples of the `ndec/synthetic` config: an NDEC-like copy-detection set.

Every example is a pure function of (seed, split, index), so the set is
deterministic for a seed and can be generated in parallel worker processes.

Roles, as in DISC21 + NDEC (Wang, Sun and Yang, AAAI 2023):
* `train`: source images `T000000`... (no copies of references);
* `train_negative_pairs`: pairs of images that look alike but are not copies,
  one pair per NDEC hard-negative kind in turn;
* `references`: `R000000`...; the first ones (in a shuffled id order) are the
  sources of copies and of hard negatives, the rest are distractor references;
* `queries`: `Q00000`..., edited copies (with their reference and edits),
  hard negatives (with the reference they resemble and their kind) and plain
  distractors (new scenes), in a shuffled order.
"""

import dataclasses

import numpy as np

from asl_jax import copy_edits
from tfds_ndec import scenes
from tfds_ndec.features import complete, encode_jpeg

HARD_NEGATIVE_KINDS = ("reverse_crop", "similar", "viewpoint", "time")
# Split codes mixed into the seed, one stream of randomness per split.
_TRAIN, _PAIRS, _REFS, _QUERIES, _ROLES, _BACKGROUND = range(6)

# DISC21-like query edits: each with its probability (copy_edits.EDIT_NAMES).
QUERY_EDITS = {
    "crop": 0.7, "resize": 0.5, "rotate": 0.15, "pixelize": 0.1, "pad": 0.2,
    "color_jitter": 0.4, "grayscale": 0.15, "blur": 0.25, "hflip": 0.3,
    "text": 0.25, "sticker": 0.25, "paste_onto": 0.15, "jpeg": 0.4,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How many examples of each kind; see `SyntheticConfig`."""
  seed: int
  image_size: int
  num_train: int
  num_train_negative_pairs: int
  num_references: int
  num_copy_queries: int
  num_hard_negative_queries: int
  num_distractor_queries: int

  @property
  def num_queries(self) -> int:
    return (self.num_copy_queries + self.num_hard_negative_queries
            + self.num_distractor_queries)

  def check(self):
    need = self.num_copy_queries + self.num_hard_negative_queries
    if need > self.num_references:
      raise ValueError(
          f"ndec/synthetic needs at least one reference per copy or hard-"
          f"negative query: {need} such queries but num_references="
          f"{self.num_references}. Raise num_references or lower the query "
          "counts.")


def _rng(sizes: Sizes, split: int, index: int) -> np.random.Generator:
  return np.random.default_rng([sizes.seed, split, index])


def _size(sizes: Sizes) -> tuple[int, int]:
  return (sizes.image_size, sizes.image_size)


# ------------------------------------------------------------------- roles --
def query_roles(sizes: Sizes) -> list[tuple[str, str, int]]:
  """(kind, hard-negative kind, reference index or -1) for each query id."""
  n_c, n_h = sizes.num_copy_queries, sizes.num_hard_negative_queries
  roles = [("copy", "", i) for i in range(n_c)]
  roles += [("hard_negative", HARD_NEGATIVE_KINDS[i % 4], n_c + i)
            for i in range(n_h)]
  roles += [("distractor", "", -1)] * sizes.num_distractor_queries
  order = np.random.default_rng([sizes.seed, _ROLES, 0]).permutation(len(roles))
  return [roles[i] for i in order]


def reference_permutation(sizes: Sizes) -> np.ndarray:
  """Maps a reference role index to its position in the id order."""
  return np.random.default_rng([sizes.seed, _ROLES, 1]).permutation(
      sizes.num_references)


def reference_role(sizes: Sizes, role_index: int) -> str:
  """The hard-negative kind whose reference this is, 'copy' or 'distractor'."""
  n_c, n_h = sizes.num_copy_queries, sizes.num_hard_negative_queries
  if role_index < n_c:
    return "copy"
  if role_index < n_c + n_h:
    return HARD_NEGATIVE_KINDS[(role_index - n_c) % 4]
  return "distractor"


def _reference(sizes: Sizes, role_index: int):
  """(scene, viewport, image) of the reference with this role index."""
  rng = _rng(sizes, _REFS, role_index)
  scene = scenes.sample_scene(rng)
  viewport = scenes.FULL
  if reference_role(sizes, role_index) == "reverse_crop":
    # The reference is a crop of a larger scene; its query will be the whole.
    viewport = scenes.sub_viewport(rng)
  return scene, viewport, scenes.render(scene, viewport, _size(sizes))


def _background(sizes: Sizes, rng: np.random.Generator) -> np.ndarray:
  """An unrelated image to paste copies onto (a fresh scene)."""
  sub = np.random.default_rng([sizes.seed, _BACKGROUND, int(rng.integers(2**31))])
  return scenes.render(scenes.sample_scene(sub), scenes.FULL, _size(sizes))


def hard_negative(scene, viewport, kind: str, rng: np.random.Generator,
                  size: tuple[int, int]) -> np.ndarray:
  """An image that resembles `render(scene, viewport)` but is no copy of it."""
  if kind == "reverse_crop":
    return scenes.render(scene, scenes.FULL, size)
  if kind == "similar":
    return scenes.render(scenes.redraw_details(scene, rng), viewport, size)
  if kind == "viewpoint":
    return scenes.render(scene, scenes.shifted_viewport(rng), size)
  if kind == "time":
    return scenes.render(scenes.change_time(scene, rng), viewport, size)
  raise ValueError(f"Unknown hard-negative kind {kind!r}; "
                   f"expected one of {HARD_NEGATIVE_KINDS}.")


# ---------------------------------------------------------------- examples --
def train_example(sizes: Sizes, index: int) -> tuple[str, dict]:
  key = f"T{index:06d}"
  image = scenes.render(scenes.sample_scene(_rng(sizes, _TRAIN, index)),
                        scenes.FULL, _size(sizes))
  return key, {"id": key, "image": encode_jpeg(image), "filename": key + ".jpg"}


def pair_example(sizes: Sizes, index: int) -> tuple[str, dict]:
  rng = _rng(sizes, _PAIRS, index)
  kind = HARD_NEGATIVE_KINDS[index % 4]
  scene = scenes.sample_scene(rng)
  viewport = scenes.sub_viewport(rng) if kind == "reverse_crop" else scenes.FULL
  a = scenes.render(scene, viewport, _size(sizes))
  b = hard_negative(scene, viewport, kind, rng, _size(sizes))
  key = f"P{index:05d}"
  return key, {"pair_id": key, "id": key + "_a", "image": encode_jpeg(a),
               "filename": f"{key}/{key}_a.jpg", "hard_negative_kind": kind,
               "partner": {"id": key + "_b", "image": encode_jpeg(b),
                           "filename": f"{key}/{key}_b.jpg"}}


def reference_example(sizes: Sizes, position: int) -> tuple[str, dict]:
  """The reference at id position `position`."""
  role_index = int(np.argsort(reference_permutation(sizes))[position])
  _, _, image = _reference(sizes, role_index)
  key = f"R{position:06d}"
  return key, {"id": key, "image": encode_jpeg(image), "filename": key + ".jpg"}


def query_example(sizes: Sizes, index: int) -> tuple[str, dict]:
  kind, hn_kind, role_index = query_roles(sizes)[index]
  rng = _rng(sizes, _QUERIES, index)
  ref_id, resembles, edits, info = "", "", [], 1.0
  if role_index >= 0:
    ref_pos = int(reference_permutation(sizes)[role_index])
    scene, viewport, ref_image = _reference(sizes, role_index)
  if kind == "copy":
    edited = copy_edits.copy_edit_chain(
        ref_image, rng, QUERY_EDITS,
        background_fn=lambda r, min_size: _background(sizes, r), min_edits=2)
    image, edits, info = edited.image, edited.edits, edited.information_amount
    ref_id = f"R{ref_pos:06d}"
  elif kind == "hard_negative":
    image = hard_negative(scene, viewport, hn_kind, rng, _size(sizes))
    resembles = f"R{ref_pos:06d}"
  else:
    image = scenes.render(scenes.sample_scene(rng), scenes.FULL, _size(sizes))
  key = f"Q{index:05d}"
  return key, {
      "id": key, "image": encode_jpeg(image), "filename": key + ".jpg",
      "reference_id": ref_id, "kind": kind, "hard_negative_kind": hn_kind,
      "resembles_id": resembles, "edits": edits,
      "information_amount": np.float32(info)}


EXAMPLE_FNS = {
    "train": (train_example, "num_train"),
    "train_negative_pairs": (pair_example, "num_train_negative_pairs"),
    "references": (reference_example, "num_references"),
    "queries": (query_example, "num_queries"),
}


def make_example(args):
  """Pool entry point: (split, sizes, index) -> (key, complete example)."""
  split, sizes, index = args
  key, example = EXAMPLE_FNS[split][0](sizes, index)
  return key, complete(example)


def ground_truth_rows(sizes: Sizes) -> list[tuple[str, str]]:
  """The ISC ground truth: (query id, reference id or '') for every query,
  computed from the roles without rendering any image."""
  perm = reference_permutation(sizes)
  return [(f"Q{i:05d}", f"R{perm[r]:06d}" if kind == "copy" else "")
          for i, (kind, _, r) in enumerate(query_roles(sizes))]
