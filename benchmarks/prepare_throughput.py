"""Preparation throughput of ndec/full on a generated fake download.

Writes (once, then reuses) a fake manual directory of photo-like 640x480 JPEGs
in the sharded DISC21 layout, then prepares ndec/full from it with
`python -m tfds_ndec.prepare` in fresh processes: original bytes and
re-encoded at 512 px, with 1 process and with one per core. Prints images/s,
images/s per process, the peak resident memory of the parent and of the
largest worker, and the prepared size.

  python benchmarks/prepare_throughput.py --root /tmp/ndec_bench --num_train 16000
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

from tfds_ndec import fake_layout


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def run_prepare(manual_dir, data_dir, workers, max_side):
  shutil.rmtree(data_dir, ignore_errors=True)
  cmd = [sys.executable, "-m", "tfds_ndec.prepare", "full", "--manual_dir", manual_dir,
         "--data_dir", data_dir, "--workers", str(workers), "--max_side", str(max_side)]
  t0 = time.time()
  r = subprocess.run(cmd, capture_output=True, text=True)
  seconds = time.time() - t0
  if r.returncode:
    raise SystemExit(r.stdout + r.stderr)
  line = [x for x in r.stdout.splitlines() if x.startswith("Prepared")][-1]
  examples = int(re.search(r"\((\d+) examples", line).group(1))
  parent = float(re.search(r"peak RSS (\d+) MB", line).group(1))
  worker = float(re.search(r"largest worker (\d+) MB", line).group(1))
  return examples, seconds, worker, parent, du(data_dir)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--root", default="/tmp/ndec_prepare_bench")
  p.add_argument("--num_train", type=int, default=16000)
  p.add_argument("--num_references", type=int, default=3000)
  p.add_argument("--num_queries", type=int, default=1000)
  p.add_argument("--num_pairs", type=int, default=500)
  p.add_argument("--workers", type=int, default=os.cpu_count())
  args = p.parse_args()
  manual_dir = os.path.join(args.root, "manual")
  layout = fake_layout.FakeLayout(
      num_train=args.num_train, num_references=args.num_references,
      num_queries=args.num_queries, num_copies=args.num_queries // 2, num_pairs=args.num_pairs,
      num_dev_queries=10, num_dev_copies=5, width=640, height=480, sharded=True,
      num_shard_folders=20)
  t0 = time.time()
  if fake_layout.write_once(manual_dir, layout, workers=args.workers):
    print(f"wrote the fake download in {time.time() - t0:.0f} s")
  images = (args.num_train + args.num_references + args.num_queries + 2 * args.num_pairs)
  size = du(manual_dir)
  print(f"fake download: {images} images of 640x480, {size / 1e9:.2f} GB "
        f"({size / images / 1e3:.0f} kB per image), {os.cpu_count()} cores")
  print(f"{'mode':>14s} {'procs':>5s} {'images/s':>9s} {'per proc':>9s} {'parent MB':>9s} "
        f"{'worker MB':>9s} {'all MB':>7s} {'output GB':>9s}")
  for max_side in (0, 512):
    for workers in sorted({1, args.workers}):
      data_dir = os.path.join(args.root, "data")
      n, seconds, worker_mb, parent_mb, out = run_prepare(manual_dir, data_dir, workers,
                                                          max_side)
      mode = "original" if not max_side else f"max side {max_side}"
      rate = (n + args.num_pairs) / seconds  # Pairs hold two images each.
      print(f"{mode:>14s} {workers:>5d} {rate:>9.0f} {rate / workers:>9.0f} {parent_mb:>9.0f} "
            f"{worker_mb:>9.0f} {parent_mb + (workers > 1) * workers * worker_mb:>7.0f} "
            f"{out / 1e9:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
