#!/usr/bin/env bash
# The checks run on a lent GPU machine (see README, "Measured results").
# Expects the carried wheels installed and PYTHONPATH set (README, GPU).
set -u
export PYTHONUNBUFFERED=1 TFDS_DATA_DIR=${TFDS_DATA_DIR:-/tmp/tfds}
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi -L
echo "== 0. python -m asl_jax.benchmark: the paper recipe at 32 x 4 and 64 x 4, the SSCD family,"
echo "   RS@k at B = 4,000 in 20 chunks, each timed against PyTorch (eager, torch.compile)"
bench() { name=$1; shift; python -m asl_jax.benchmark --json "$out/bench_$name.json" "$@" 2>&1 \
  | grep -v "^W\|^I" | tee "$out/bench_$name.txt"; }
bench ndec_32x4 --config configs/asl.py:ndec --only train,embed,search --compare torch \
  --search 50000,1000000,256
bench ndec_64x4 --config configs/asl.py:ndec --config.data.ids_per_batch=64 --only train \
  --compare torch
bench ndec_e2e --config configs/asl.py:ndec --only input,e2e --fake_train 2000 \
  --input_workers 0,4,8,16
bench sscd --config configs/asl.py:ndec_sscd --only train,embed --compare torch
bench rs_ndec --config configs/recall_surrogate.py:ndec_sym_asl --only train --steps 5 --warmup 2
bench demo --config configs/asl.py --only train,embed --compare torch
echo "== 0a. where the paper recipe's step time goes (jax.profiler trace, per kernel)"
python benchmarks/profile_step.py --config configs/asl.py:ndec --num_classes 100000 --steps 3 \
  2>&1 | grep -v "^W\|^I" | tee "$out/profile_ndec.txt"
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
echo "== 1. paper recipe throughput (R50, 256px, bf16, 100k-way head, norm-ratio loss)"
python benchmarks/train_throughput.py --config configs/asl.py:ndec --batch_ids 32,64 --steps 20 \
  2>&1 | grep -v "^W\|^I" | tee "$out/throughput.txt"
echo "== 1a. what WaveBlock, ghost BN and the sharded head cost: compiled cost and time, each on"
python benchmarks/step_cost.py --config configs/asl.py:ndec --timed_steps 20 \
  2>&1 | grep -v "^W\|^I" | tee "$out/step_cost.txt"
fi
echo "== 1b. paper recipe end to end on a fake NDEC download (ndec/full, 20 steps)"
python -m tfds_ndec.fake_layout /tmp/ndec_fake --num_train 512 --num_references 200 \
  --num_queries 100 --num_copies 50 --num_pairs 32 --width 640 --height 480 --sharded >/dev/null
/usr/bin/time -v python -m asl_jax.main --config configs/asl.py:ndec --workdir /tmp/runs/ndec_fake \
  --config.train.total_steps=20 --config.train.log_every=5 --config.data.manual_dir=/tmp/ndec_fake \
  --config.data.num_workers=8 2>&1 | grep -v "^W1\|^I1" | grep -v "^\s" | tee "$out/ndec_fake_gpu.txt"
echo "== 1c. input pipeline of the paper recipe on the host's cores (256 px, 640x480 JPEGs)"
python benchmarks/input_throughput.py --config configs/asl.py:ndec --fake_train 2000 \
  --workers 0,4,8,-1 2>&1 | grep -v "^W\|^I" | tee "$out/input_throughput.txt"
echo "== 1d. the same views made offline (pregenerate, all cores), then read back"
python -m asl_jax.pregenerate --config configs/asl.py:ndec --out /tmp/asl_views \
  --config.data.manual_dir=/tmp/asl_input_bench/manual --config.data.data_dir=/tmp/asl_input_bench/data \
  --config.data.train_every=1 --shards 32 2>&1 | grep -v "^W\|^I" | tee "$out/pregenerate.txt"
python benchmarks/input_throughput.py --config configs/asl.py:ndec --fake_train 2000 \
  --workers 0,4,8,-1 --config.data.views_dir=/tmp/asl_views 2>&1 | grep -v "^W\|^I" \
  | tee "$out/input_throughput_pregenerated.txt"
echo "== 2. default demo on GPU"
/usr/bin/time -v python -m asl_jax.main --config configs/asl.py --workdir /tmp/runs/demo \
  --config.data.synthetic.num_workers=16 --config.data.num_workers=8 2>&1 \
  | grep -v "examples/s\|Shuffling\|splits/s\|^W1\|^I1" | grep -v "^\s" | tee "$out/demo_gpu.txt"
grep -h "Elapsed (wall" "$out/demo_gpu.txt" || true
cp /tmp/runs/demo/metrics.json "$out/demo_metrics.json" 2>/dev/null
echo "== 3. scaled demo: r18, 96px, 3000 steps"
/usr/bin/time -v python -m asl_jax.main --config configs/asl.py --workdir /tmp/runs/scaled \
  --config.data.synthetic.num_workers=16 --config.data.num_workers=14 \
  --config.model.variant=r18 --config.model.width=64 --config.data.image_size=96 \
  --config.model.dtype=bfloat16 --config.train.total_steps=3000 --config.train.log_every=250 \
  --config.train.checkpoint_every=1000 --config.optim.learning_rate=1e-3 2>&1 \
  | grep -v "examples/s\|Shuffling\|splits/s\|^W1\|^I1" | tee "$out/scaled_gpu.txt"
cp /tmp/runs/scaled/metrics.json "$out/scaled_metrics.json" 2>/dev/null
echo "== 4. real photos: the :photos recipe as on the CPU, then scaled up (r18, 128 px, bf16)"
# The development set lives beside the checkout, which does not travel: copy
# it into an ignored folder of the checkout first and name it in the run's
# carry (e.g. cp -r ../shared/data/photo_dev .photo_dev; echo /.photo_dev/ >>
# .git/info/exclude; carry [".whl", ".photo_dev"]).
if [ -d .photo_dev ]; then
for setting in "photos_cpu_recipe:" \
    "photos_scaled:--config.model.variant=r18 --config.model.width=64 --config.data.image_size=128 --config.eval.image_size=192 --config.model.dtype=bfloat16 --config.train.total_steps=4000 --config.train.log_every=500 --config.optim.learning_rate=1e-3"; do
  name=${setting%%:*}; args=${setting#*:}
  # shellcheck disable=SC2086
  /usr/bin/time -v python -m asl_jax.main --config configs/asl.py:photos --workdir /tmp/runs/$name \
    --config.data.manual_dir=.photo_dev --config.data.num_workers=8 --config.eval.verify.workers=16 \
    $args 2>&1 | grep -v "^W1\|^I1" | grep -v "^\s" | tee "$out/$name.txt"
  cp /tmp/runs/$name/metrics.json "$out/${name}_metrics.json" 2>/dev/null
done
else
  echo "(skipped: no .photo_dev in the checkout)"
fi
