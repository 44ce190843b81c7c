"""TFDS builder for NDEC (Wang, Sun and Yang, AAAI 2023), the hard-negative
extension of the ISC2021/DISC21 image copy detection benchmark.

Configs:
* `synthetic` (default): a procedurally generated NDEC-like set, built in
  seconds on a CPU, deterministic for a seed (see `synthetic.py`). Other sizes
  come from `synthetic_config(...)`.

Build and read without TensorFlow:

  import tensorflow_datasets as tfds, tfds_ndec
  b = tfds.builder('ndec/synthetic', data_dir=...)
  b.download_and_prepare(file_format='array_record')
  queries = b.as_data_source(split='queries')
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil

import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as splits_lib

from tfds_ndec import folder, manual, shards, synthetic
from tfds_ndec.features import features

_DESCRIPTION = """NDEC: image copy detection with hard negatives. Queries are
edited copies of a reference, hard negatives (images that resemble a reference
but are not copies of it: reverse-direction crops, visually similar images,
another viewpoint, another time) or distractors."""


_MANUAL = """\
Download NDEC (https://github.com/WangWenhao0716/ASL, hosted on Hugging Face
and Google Drive) and the DISC21 images it builds on (Meta's DISC21 download
page, licence agreement required), and put them in the manual directory
(default <data_dir>/downloads/manual):

  <manual_dir>/
    train/ or train_0/ .. train_19/            DISC21 training images T000000.jpg..
    references/ or references_0/ .. references_19/   DISC21 references R000000.jpg..
    query_images_h5/Q00000.jpg ..              NDEC queries (query_images_h5.tar)
    negative_pair/00001/T613143.jpg + partner  NDEC training pairs
                                               (cat negative_pair.tar.* | tar -xf -)
    public_ground_truth_h5.csv                 NDEC ground truth query_id,reference_id
    dev_queries/Q00000.jpg ..                  DISC21 dev queries (ndec/disc21_dev only)
    dev_ground_truth.csv                       DISC21 dev ground truth (ndec/disc21_dev)

ndec/full needs train, references, query_images_h5, negative_pair and the NDEC
ground truth; ndec/disc21_dev needs references, dev_queries and
dev_ground_truth.csv. Shard folders may be nested or flat, images .jpg, .jpeg
or .png; the CSVs may have a header, a UTF-8 BOM and CRLF line ends; an empty
reference_id marks a query that is not a copy. Mirror names are accepted too
(training/, val_ref/, val_query/, images/{train,references,queries}/,
list_files/dev_ground_truth.csv, val_groundtruth_matches.csv).
"""


@dataclasses.dataclass(eq=False)
class NdecConfig(tfds.core.BuilderConfig):
  """source: synthetic | full | disc21_dev | folder. Synthetic sizes apply to
  the synthetic source; max_side/jpeg_quality to the real ones (0: store the
  original bytes); folder_name names a set in the DISC21 layout (folder.py)."""
  source: str = "synthetic"
  folder_name: str = ""
  seed: int = 0
  image_size: int = 128
  num_train: int = 2000
  num_train_negative_pairs: int = 400
  num_references: int = 1000
  num_copy_queries: int = 300
  num_hard_negative_queries: int = 300
  num_distractor_queries: int = 200
  max_side: int = 0
  jpeg_quality: int = 90

  def sizes(self) -> synthetic.Sizes:
    fields = {f.name for f in dataclasses.fields(synthetic.Sizes)}
    return synthetic.Sizes(**{k: getattr(self, k) for k in fields})

  def identity(self) -> tuple:
    """What the prepared data depends on (everything but name/description)."""
    if self.source == "synthetic":
      return ("synthetic", self.sizes())
    return (self.source, self.folder_name, self.max_side,
            self.jpeg_quality if self.max_side else None)


_DEFAULT_SYNTHETIC = NdecConfig(
    name="synthetic", description="Procedurally generated NDEC-like set.")
_REAL = [
    NdecConfig(name="full", source="full",
               description="NDEC as released: DISC21 training images, NDEC "
               "hard-negative pairs, DISC21 references, NDEC queries."),
    NdecConfig(name="full_512", source="full", max_side=512,
               description="ndec/full with images larger than 512 px "
               "re-encoded (JPEG quality 90) to cut the prepared size."),
    NdecConfig(name="disc21_dev", source="disc21_dev",
               description="DISC21 dev queries Q00000-Q49999 against the "
               "DISC21 references."),
    NdecConfig(name="disc21_dev_512", source="disc21_dev", max_side=512,
               description="ndec/disc21_dev, images re-encoded at 512 px."),
]


def synthetic_config(**sizes) -> NdecConfig:
  """A synthetic config with other sizes, named by a hash of them so that
  differently sized sets never share a directory."""
  config = dataclasses.replace(_DEFAULT_SYNTHETIC, **sizes)
  if config.sizes() == _DEFAULT_SYNTHETIC.sizes():
    return _DEFAULT_SYNTHETIC  # TFDS wants the registered object itself.
  digest = hashlib.sha1(repr(config.sizes()).encode()).hexdigest()[:8]
  return dataclasses.replace(config, name=f"synthetic_{digest}",
                             description=f"Synthetic NDEC-like set {sizes}.")


def real_config(source: str = "full", max_side: int = 0,
                jpeg_quality: int = 90) -> NdecConfig:
  """`full` or `disc21_dev`, optionally re-encoded at `max_side`; a
  registered config when one matches, else one named after its settings."""
  if source not in ("full", "disc21_dev"):
    raise ValueError(f"source must be 'full' or 'disc21_dev', not {source!r}.")
  config = NdecConfig(name=source, source=source, max_side=max_side,
                      jpeg_quality=jpeg_quality)
  for registered in _REAL:
    if registered.identity() == config.identity():
      return registered
  return dataclasses.replace(
      config, name=f"{source}_{max_side}_q{jpeg_quality}",
      description=f"ndec/{source}, images re-encoded at {max_side} px, "
      f"JPEG quality {jpeg_quality}.")


def folder_config(name: str, max_side: int = 0, jpeg_quality: int = 90) -> NdecConfig:
  """A copy-detection set in the DISC21 layout (folder.py), prepared as
  `ndec/folder_<name>` (`ndec/folder_<name>_<max side>_q<quality>` when
  re-encoded)."""
  name = folder.set_name("", name)
  suffix = f"_{max_side}_q{jpeg_quality}" if max_side else ""
  return NdecConfig(name=f"folder_{name}{suffix}", source="folder", folder_name=name,
                    max_side=max_side, jpeg_quality=jpeg_quality,
                    description=f"The copy-detection set {name!r} (DISC21 layout).")


def check_folder_origin(builder, manual_dir: str):
  """A prepared folder set must come from `manual_dir` as that folder is now:
  refuses to reuse a name already prepared from another folder (the two would
  be confused), or from this folder before its images or CSVs changed (the
  old copy would be used without a word). The folder is scanned again for
  that (file names and sizes, the CSVs' bytes; no image is read)."""
  meta = builder.info.metadata or {}
  origin = meta.get("folder")
  again = (f"Give this set another name (config.data.name=folder/<name>, or --name of "
           f"`python -m tfds_ndec.prepare folder`), or delete {builder.data_dir} to prepare "
           "it again.")
  if origin and manual_dir and os.path.abspath(os.path.expanduser(manual_dir)) != origin:
    raise manual.NdecInputError(
        f"{builder.info.full_name} in {builder.data_dir} was prepared from {origin}, not "
        f"from {os.path.abspath(manual_dir)}. " + again)
  stored = meta.get("files_sha1")
  if not (origin and stored and os.path.isdir(origin)):
    return  # Prepared before the digest was kept, or the folder has gone: use the copy.
  try:
    _, now = folder.scan(origin, log=lambda *_: None)
  except manual.NdecInputError as e:
    raise manual.NdecInputError(
        f"{origin}, which {builder.info.full_name} was prepared from, has changed and is no "
        f"longer a valid set: {e}") from None
  if now["files_sha1"] != stored:
    raise manual.NdecInputError(
        f"{origin} has changed since {builder.info.full_name} was prepared from it into "
        f"{builder.data_dir}: images were added, removed, renamed or changed in size, or "
        "its ground truth or queries.csv was edited. The prepared copy would be used as it "
        "was. " + again)


class Builder(tfds.core.ShardBasedBuilder):
  """DatasetBuilder for NDEC."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Synthetic config.",
      "1.1.0": "Real data (full, disc21_dev and their _512 variants); "
               "shard-based preparation, parallel and resumable.",
  }
  BUILDER_CONFIGS = [_DEFAULT_SYNTHETIC, *_REAL]
  DEFAULT_CONFIG_NAME = "synthetic"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def __init__(self, *, num_workers: int = 1, skip_bad_images: bool = False,
               max_shard_examples: int = 0, config=None, **kwargs):
    """num_workers: processes writing shards (0 = one per core). More than
    one uses spawned processes, which re-import the main module: call it from
    a module run with `python -m` or a script guarded by
    `if __name__ == "__main__":`, as Python's multiprocessing requires.

    skip_bad_images: leave out source images that cannot be decoded (listed
    in `info.metadata['skipped_images']`) instead of stopping at the first.

    max_shard_examples: images per shard of real data (0: up to 4,096 and
    256 MiB of source files). Smaller shards spread better over many workers.
    """
    if isinstance(config, NdecConfig):
      # An equal copy of a registered config (e.g. after unpickling in a
      # Grain worker) must be the registered object itself for TFDS.
      registered = {c.name: c for c in self.BUILDER_CONFIGS}.get(config.name)
      if registered is not None and registered.identity() == config.identity():
        config = registered
    kwargs["file_format"] = _file_format(kwargs.get("file_format"))
    super().__init__(config=config, **kwargs)
    self.num_workers = num_workers
    self.skip_bad_images = skip_bad_images
    self.max_shard_examples = max_shard_examples

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=features(),
        homepage="https://github.com/WangWenhao0716/ASL",
        disable_shuffling=True,  # Keep id order; Grain shuffles for training.
        metadata=tfds.core.MetadataDict(),
    )

  # ----------------------------------------------------------- planning --
  def _work_dir(self, dl_manager) -> str:
    path = os.path.join(os.fspath(dl_manager.download_dir), "ndec_prepare",
                        f"{self.builder_config.name}-{self.version}")
    os.makedirs(path, exist_ok=True)
    return path

  def _shard_iterators_per_split(self, dl_manager):
    config = self.builder_config
    if config.source == "synthetic":
      sizes = config.sizes()
      sizes.check()
      return {split: shards.plan_synthetic(split, sizes, getattr(sizes, attr))
              for split, (_, attr) in synthetic.EXAMPLE_FNS.items()}
    manual_dir = self._manual_dir(dl_manager)
    if config.source == "folder":
      items, self._folder_meta = folder.scan(manual_dir)
    else:
      items = _real_items(manual_dir, config.source)
      self._folder_meta = {"negative_pairs": "train_negative_pairs" in items}
    encoding = manual.Encoding(config.max_side, config.jpeg_quality)
    return {split: [shards.RealShard(manual_dir, split, group, encoding,
                                     self.skip_bad_images)
                    for group in shards.plan_real(split_items, _source_bytes,
                                                      max_examples=self.max_shard_examples)]
            for split, split_items in items.items()}

  def _manual_dir(self, dl_manager) -> str:
    path = getattr(dl_manager, "_manual_dir", None)
    if path is None:
      raise manual.ManualDirError(
          "No manual directory: pass DownloadConfig(manual_dir=...) to "
          f"download_and_prepare.\n{_MANUAL}")
    manual.check_manual_dir(os.fspath(path), _MANUAL)
    return os.fspath(path)

  # ------------------------------------------------------------ writing --
  def _download_and_prepare(self, dl_manager, download_config=None):
    download_config = download_config or tfds.download.DownloadConfig()
    plan = self._shard_iterators_per_split(dl_manager)
    work = self._work_dir(dl_manager)
    if download_config.beam_runner or download_config.beam_options:
      plan = {split: [dataclasses.replace(
          s, report_path=os.path.join(work, s.fingerprint() + ".report.json"))
                      for s in gens] for split, gens in plan.items()}
      self._shard_iterators_per_split = lambda _: plan
      super()._download_and_prepare(dl_manager, download_config)
      reports = {split: [_read_json(s.report_path) for s in gens]
                 for split, gens in plan.items()}
    else:
      reports = self._write_locally(plan, work)
    self._record_skipped(reports)
    self.info.metadata.update(getattr(self, "_folder_meta", {}))
    shutil.rmtree(work, ignore_errors=True)

  def _write_locally(self, plan, work) -> dict:
    fmt = self.info.file_format
    ext = fmt.file_suffix if hasattr(fmt, "file_suffix") else fmt.value
    tasks = {split: [shards.Task(s, os.path.join(work, f"{s.fingerprint()}.{ext}"), fmt)
                     for s in gens] for split, gens in plan.items()}
    flat = [t for ts in tasks.values() for t in ts]
    print(f"Preparing {self.info.full_name}: {len(flat)} shards, "
          f"{max(1, self.num_workers or os.cpu_count())} processes", flush=True)
    flat_reports = iter(shards.run_tasks(flat, self.num_workers))
    split_infos, reports = [], {}
    for split, split_tasks in tasks.items():
      template = self._get_filename_template(split_name=split)
      reports[split] = [next(flat_reports) for _ in split_tasks]
      for i, task in enumerate(split_tasks):
        shards.place(task.path, os.fspath(template.sharded_filepath(
            shard_index=i, num_shards=len(split_tasks))))
      split_infos.append(splits_lib.SplitInfo(
          name=split, shard_lengths=[r["num_examples"] for r in reports[split]],
          num_bytes=sum(r["num_bytes"] for r in reports[split]),
          filename_template=template))
    self.info.set_splits(splits_lib.SplitDict(split_infos))
    return reports

  def _record_skipped(self, reports: dict):
    skipped = {split: [f for r in rs for f in r["skipped"]]
               for split, rs in reports.items()}
    skipped = {k: v for k, v in skipped.items() if v}
    count = sum(map(len, skipped.values()))
    self.info.metadata["skipped_images"] = skipped
    self.info.metadata["num_skipped_images"] = count
    self.info.metadata["skip_bad_images"] = self.skip_bad_images
    if count:
      print(f"Skipped {count} unreadable images (skip_bad_images=True); they "
            f"are listed in {self.info.full_name}'s metadata.json "
            "('skipped_images').", flush=True)


def _file_format(requested):
  """array_record unless asked otherwise, or when TensorFlow (which TFDS needs
  to write tfrecord) is missing; asking for tfrecord without it is an error
  here rather than after hours of reading images."""
  has_tf = importlib.util.find_spec("tensorflow") is not None
  if requested is None:
    return "tfrecord" if has_tf else "array_record"
  if str(getattr(requested, "value", requested)) == "tfrecord" and not has_tf:
    raise manual.NdecInputError(
        "file_format='tfrecord' needs TensorFlow, which is not installed. "
        "Install it (pip install tensorflow-cpu) to prepare for tfds.load / "
        "tf.data, or prepare with file_format='array_record' and read with "
        "as_data_source (Grain/JAX).")
  return requested


def _source_bytes(item) -> int:
  if isinstance(item, manual.Pair):
    return item.first.size + item.second.size
  if isinstance(item, tuple):  # (SourceImage, GroundTruthRow) of a query.
    return item[0].size
  return item.size


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _real_items(manual_dir: str, source: str) -> dict[str, list]:
  """The checked content plan of a real config: split -> items, in id order.
  Every missing part and every ground-truth problem is found here, before
  anything is written."""
  if source == "full":
    parts = {"train": manual.TRAIN, "references": manual.REFERENCES,
             "queries": manual.NDEC_QUERIES}
    gt_names, pairs = manual.NDEC_GROUND_TRUTH, True
  else:
    parts = {"references": manual.REFERENCES, "queries": manual.DEV_QUERIES}
    gt_names, pairs = manual.DEV_GROUND_TRUTH, False
  # The hard-negative pairs are optional: without negative_pair/ the dataset
  # has no train_negative_pairs split, and training with pairs says so.
  missing = manual.missing_paths(manual_dir, list(parts.values()), gt_names)
  if missing:
    raise manual.ManualDirError(
        f"The manual directory {manual_dir} lacks parts that ndec/{source} "
        "needs (looked for):\n  " + "\n  ".join(missing) + f"\n\n{_MANUAL}")
  found = {split: manual.scan_part(manual_dir, part) for split, part in parts.items()}
  for split, images in found.items():
    if not images:
      raise manual.ManualDirError(
          f"No {parts[split].what} under "
          f"{', '.join(manual.part_dirs(manual_dir, parts[split]))}.\n{_MANUAL}")
  gt_path = manual.find_first(manual_dir, gt_names)
  rows = manual.read_ground_truth(gt_path)
  manual.check_ground_truth(gt_path, rows, found["queries"], found["references"],
                            manual.part_dirs(manual_dir, parts["queries"]))
  rows = sorted(rows, key=lambda r: r.query_id)
  items = {split: list(images.values()) for split, images in found.items()}
  items["queries"] = [(found["queries"][r.query_id], r) for r in rows]
  if pairs and os.path.isdir(os.path.join(manual_dir, manual.PAIRS_DIR)):
    items = {"train": items["train"],
             "train_negative_pairs": manual.scan_pairs(manual_dir),
             "references": items["references"], "queries": items["queries"]}
  return items
