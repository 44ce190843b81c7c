"""A finished run's decision applied to anyone's candidate pairs: the gate
norms of the run's evaluation (RUN/queries.h5, RUN/references.h5), its
calibrated threshold and settings (RUN/gate.json), and the check that the
images given are the ones it evaluated (`images_record`, which the
evaluation writes into gate.json). `python -m asl_jax.gate` is its command
line.
"""

import json
import os

import numpy as np

from asl_jax import pil_image
from asl_jax.errors import UserError
from asl_jax.evaluation import decisions
from asl_jax.evaluation import io as eval_io


def read_norms(path: str) -> dict[str, float]:
  """id -> gate norm of a run's queries.h5 / references.h5; a missing file or
  one without gate norms is an error saying what writes it."""
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist: the run's evaluation writes it (with each "
                    "image's gate norm). Evaluate the run on these images first.")
  norms = eval_io.read_gate_norms(path)
  if norms is None:
    raise UserError(f"{path} holds no gate norms (gate_norms); it was not written by an "
                    "asl_jax evaluation.")
  return norms


def image_loader(where):
  """(id -> uint8 RGB image, the ids it has) for a folder of images, or for
  a split of a prepared dataset given as (builder, split)."""
  from PIL import Image
  if isinstance(where, tuple):
    from asl_jax import data
    builder, split = where
    src = data.source(builder, split)
    index = {data.text(src[i]["id"]): i for i in range(len(src))}

    def load_record(image_id: str) -> np.ndarray:
      record = src[index[image_id]]  # Read once.
      return data.decode_image(record["image"], record)
    return load_record, index
  from asl_jax.evaluation.io import image_files
  files = image_files(where)

  def load(image_id: str) -> np.ndarray:
    try:
      with Image.open(files[image_id]) as im:
        return np.asarray(pil_image.to_rgb(im))
    except (OSError, ValueError, SyntaxError) as e:
      raise UserError(f"{files[image_id]} could not be read as an image ({e}); replace the "
                      "file or leave its pairs out of the predictions.") from None
  return load, files


def image_signature(image) -> list[int]:
  """A 12 x 12 grey thumbnail: the same image re-encoded or resized keeps it,
  another image does not."""
  from PIL import Image
  im = Image.fromarray(np.asarray(image, np.uint8)).convert("L").resize((12, 12), Image.BOX)
  return np.asarray(im).ravel().tolist()


def images_record(dataset: str, splits: dict, sample: int = 8) -> dict:
  """What gate.json records of the images a run evaluated: per split (name ->
  (ids, id -> image)), the count, a SHA-1 of the sorted ids and the
  signatures of `sample` images spread over them."""
  import hashlib
  out = {"dataset": dataset}
  for split, (ids, load) in splits.items():
    ordered = sorted(ids)
    picks = ordered[::max(1, len(ordered) // sample)][:sample]
    out[split] = {"count": len(ordered),
                  "ids_sha1": hashlib.sha1("\n".join(ordered).encode()).hexdigest(),
                  "signatures": {i: image_signature(load(i)) for i in picks}}
  return out


def check_images(record: dict | None, split: str, load, available, where: str, log=print):
  """Refuses images that are not those the run evaluated under the same ids
  (their gate norms would be another image's)."""
  if not record or split not in record:
    log(f"warning: the run's gate.json records no {split} images (a run from before it "
        "did); cannot check that these are the images it evaluated.")
    return
  sigs = {i: s for i, s in record[split]["signatures"].items() if i in available}
  differ = [i for i, s in sigs.items()
            if np.abs(np.subtract(image_signature(load(i)), s)).mean() > 12]
  if differ:
    raise UserError(f"The {split} in {where} are not the images the run evaluated under the "
                    f"same ids ({len(differ)} of {len(sigs)} checked differ, e.g. "
                    f"{', '.join(differ[:3])}; the run evaluated {record.get('dataset')}): "
                    "its gate norms belong to other images. Evaluate the run on this set "
                    "first (--config.eval.data_name), or use --decision verify.")


def apply(predictions, workdir: str, queries, references,
          decision: str | None = None, rescore: float | None = None,
          workers: int = 0, log=print) -> dict:
  """Applies a run's decision to (query ids, reference ids, scores); returns
  the kept pairs, their scores and what was done. queries, references:
  folders of images, or (prepared builder, split)."""
  q_ids, r_ids, scores = predictions
  gate_path = os.path.join(workdir, "gate.json")
  if not os.path.exists(gate_path):
    raise UserError(f"{gate_path} does not exist: --workdir must be an asl_jax run whose "
                    "evaluation has finished (it writes gate.json).")
  with open(gate_path) as f:
    run = json.load(f)
  decision, weight = decision_and_weight(run, decision, rescore, gate_path, log)
  calibration = run.get("calibration") or {}
  if "calibrated" in decision and "threshold" not in calibration:
    raise UserError(f"--decision {decision} needs the run's calibrated threshold, but "
                    f"{gate_path} records no calibration (the run had "
                    "eval.calibration.num_images=0). Use --decision norm (the paper's gate) "
                    "or verify_else_norm, or evaluate the run with a calibration.")
  n = len(q_ids)
  paper = calibrated = np.ones(n, bool)
  if decision in ("norm", "calibrated_norm", "verify_else_norm", "verify_else_calibrated"):
    qn = read_norms(os.path.join(workdir, "queries.h5"))
    rn = read_norms(os.path.join(workdir, "references.h5"))
    missing = sorted({q for q in q_ids if q not in qn}) + sorted(
        {r for r in r_ids if r not in rn})
    if missing:
      raise UserError(
          f"{len(missing)} ids of the predictions have no gate norm in {workdir}'s "
          f"queries.h5/references.h5 (e.g. {', '.join(missing[:5])}): the run was "
          "evaluated on other images. Evaluate it on this set first "
          "(--config.eval.data_name), or use --decision verify, which needs no norms.")
    for split, where in (("queries", queries), ("references", references)):
      if where is None:  # Norms alone (a library caller without the images): nothing to compare.
        continue
      load, available = image_loader(where)
      check_images(run.get("images"), split, load, available,
                   where if isinstance(where, str) else where[0].info.full_name, log)
    # float32, as the run's evaluation compared them (the files hold float32).
    q_norm = np.array([qn[q] for q in q_ids], np.float32)
    r_norm = np.array([rn[r] for r in r_ids], np.float32)
    paper = decisions.norm_keep(q_norm, r_norm)
    calibrated = decisions.norm_keep(q_norm, r_norm, calibration.get("threshold", 1.0))
  verdicts = None
  if decision.startswith("verify") or weight:
    cfg = decisions.verify_config(run.get("verify", {}))
    load_q, qfiles = image_loader(queries)
    load_r, rfiles = image_loader(references)
    missing = sorted({q for q in q_ids if q not in qfiles}) + sorted(
        {r for r in r_ids if r not in rfiles})
    if missing:
      where = (f"{queries} or {references}" if isinstance(queries, str)
               else f"{queries[0].info.full_name}'s queries or references")
      raise UserError(f"{len(missing)} ids of the predictions have no image in {where} "
                      f"(e.g. {', '.join(missing[:5])}).")
    uq = sorted(set(q_ids))
    ur = sorted(set(r_ids))
    qi = {q: i for i, q in enumerate(uq)}
    ri = {r: i for i, r in enumerate(ur)}
    verdicts, timing = decisions.verify_candidates(
        [qi[q] for q in q_ids], [ri[r] for r in r_ids], lambda i: load_q(uq[i]),
        lambda i: load_r(ur[i]), cfg, workers, log)
  keep = decisions.combine(decision, paper, calibrated,
                           verdicts if verdicts is not None else [])
  out_scores = np.asarray(scores, np.float32)
  if weight and verdicts is not None:
    out_scores = decisions.rescored(out_scores, verdicts, weight)
  idx = np.flatnonzero(keep)
  return {"query_ids": [q_ids[i] for i in idx], "reference_ids": [r_ids[i] for i in idx],
          "scores": out_scores[idx], "decision": decision, "rescore": weight,
          "kept": int(len(idx)), "dropped": int(n - len(idx)),
          "verification": timing if verdicts is not None else None}


def decision_and_weight(run: dict, decision, rescore, gate_path: str, log):
  """The decision and the rescoring weight, each said where it comes from. An
  explicit --decision that verifies nothing (norm, calibrated_norm, none)
  means that decision alone: the run's rescoring is not carried over."""
  if decision is None:
    decision = run.get("decision")
    if decision is None:
      raise UserError(f"{gate_path} records no decision; give --decision.")
    source = f"the run's ({gate_path})"
  else:
    source = "--decision"
  decisions.check_decision(decision)
  if rescore is not None:
    weight, wsource = float(rescore), "--rescore"
  elif source == "--decision" and not decision.startswith("verify"):
    weight, wsource = 0.0, f"none with --decision {decision} (--rescore W to add it)"
  else:
    weight = float(run.get("rescore") or 0.0)
    wsource = f"the run's ({gate_path}; --rescore 0 to leave scores as they are)"
  log(f"decision: {decision}, from {source}; rescoring of verified copies: +{weight:g}, "
      f"from {wsource}")
  return decision, weight
