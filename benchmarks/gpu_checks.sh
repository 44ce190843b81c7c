#!/usr/bin/env bash
# The one prepared script of measurements on a lent GPU machine (no network;
# the wheels installed beforehand, PYTHONPATH set to the checkout). Steps run in
# order of importance, each under `timeout` and within one overall budget
# (GPU_CHECKS_BUDGET seconds, default 420, for everything before the photos
# hook), so that a cut-off run has printed the most important numbers; all
# output is teed into $OUT, and ONE summary table ends the run.
#
#   bash benchmarks/gpu_checks.sh                    # on the GPU host
#   GPU_CHECKS_SMOKE=1 bash benchmarks/gpu_checks.sh # every step at tiny sizes (CPU dry run)
set -u
export PYTHONUNBUFFERED=1 TFDS_DATA_DIR=${TFDS_DATA_DIR:-/tmp/tfds}
out=${OUT:-/tmp/out}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_checks.log") 2>&1
budget=${GPU_CHECKS_BUDGET:-420}
smoke=${GPU_CHECKS_SMOKE:-}
py=${PYTHON:-python}
start=$SECONDS
cores=$(nproc)
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"

# step NAME MAX_SECONDS CMD...: runs CMD under timeout min(MAX, what is left of
# the budget), its output filtered of absl log lines and teed into $out/NAME.txt.
# GPU_CHECKS_STEPS (default "a b c d e photos") selects steps by their letter.
steps=" ${GPU_CHECKS_STEPS:-a b c d e photos} "
step() {
  local name=$1 max=$2; shift 2
  case "$steps" in *" ${name%%_*} "*) ;; *) echo "== $name: not selected"; return;; esac
  local left=$((budget - (SECONDS - start)))
  local t=$((max < left ? max : left))
  if [ "$t" -lt 10 ]; then echo "== $name: skipped (budget spent)"; return; fi
  echo "== $name (timeout ${t}s): $*"
  local t0=$SECONDS
  timeout -k 10 "$t" "$@" 2>&1 | grep -v "^[WI][0-9]" | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

# Sizes: the real ones, or (smoke) tiny ones that run every code path on a CPU.
if [ -n "$smoke" ]; then
  tiny=(--config.model.variant=tiny --config.model.width=8 "--config.model.projector_dims=(32,64)"
        --config.model.descriptor_dim=16 --config.data.image_size=32 --config.eval.batch_size=32)
  train=("${tiny[@]}" --config.data.ids_per_batch=8 --num_classes 100 --steps 2 --warmup 1)
  wide=("${tiny[@]}" --config.data.ids_per_batch=16 --num_classes 100 --steps 2 --warmup 1)
  rs=("${tiny[@]}" --config.data.ids_per_batch=16 --config.train.num_chunks=4
      --config.loss.rs_chunk=16 --steps 2 --warmup 1)
  search=400,20000,32; files=(--embed_files_images 96 --embed_workers 0,2); fake=64; views=4
  autotune=(--torch_compile=false)  # max-autotune compiles for many minutes on a CPU.
else
  train=(--num_classes 100000 --steps 20 --warmup 3)
  wide=(--config.data.ids_per_batch=64 --num_classes 100000 --steps 20 --warmup 3)
  rs=(--steps 5 --warmup 2)
  search=50000,1000000,256; files=(--embed_files_images 16384 --embed_workers 0,"$cores")
  fake=1000; views=8
  autotune=(--torch_compile=false --torch_max_autotune)
fi
bench() { local name=$1 max=$2; shift 2
  step "$name" "$max" "$py" -m asl_jax.benchmark --json "$out/bench_$name.json" "$@"; }

# (a) The paper recipe's step at 32 x 4 against PyTorch (eager, torch.compile), FLOPs and MFU.
bench a_ndec_32x4 220 --config configs/asl.py:ndec --only train --compare torch "${train[@]}"
# (b) Exact search, 50k x 1M x 256, top-10: bf16 shortlist + float32 re-ranking vs the float32 scan.
bench b_search 70 --config configs/asl.py:ndec --only search --search "$search"
# (c) Evaluation embedding from JPEG files (640x480), in 0 and one-per-core Grain workers.
bench c_embed_files 100 --config configs/asl.py:ndec --only embed_files "${files[@]}" \
  "${tiny[@]+"${tiny[@]}"}"
# (d) Training fed by pre-generated views, against the in-memory rate.
data=/tmp/asl_bench_data
step d_prepare 120 "$py" -m asl_jax.benchmark --config configs/asl.py:ndec --only input \
  --fake_train "$fake" --fake_root "$data" --input_workers "$cores" --input_batches 2 "${train[@]}"
step d_pregenerate 120 "$py" -m asl_jax.pregenerate --config configs/asl.py:ndec \
  --out /tmp/asl_views_$views --views "$views" --config.data.manual_dir="$data/manual" \
  --config.data.data_dir="$data/data" --config.data.train_every=1 \
  "${tiny[@]+"${tiny[@]}"}"
bench d_e2e_views 200 --config configs/asl.py:ndec --only train,e2e --fake_train "$fake" \
  --fake_root "$data" --config.data.views_dir=/tmp/asl_views_$views "${train[@]}"
# (e) The rest: 64 x 4, RS@k's two-pass step (model vs executed FLOPs), torch max-autotune.
bench e_ndec_64x4 200 --config configs/asl.py:ndec --only train "${wide[@]}"
bench e_rs_two_pass 200 --config configs/recall_surrogate.py:ndec_sym_asl --only train "${rs[@]}"
bench e_max_autotune 300 --config configs/asl.py:ndec --only train --compare torch \
  "${autotune[@]}" "${train[@]}"
echo "== budgeted steps took $((SECONDS - start)) s"

# == photos: SSCD's ResNet-50 (sscd.onnx) on a real-photo ICD set in the DISC21 layout, side by
# side with the CPU recipe's student: evaluated as imported, then ASL fine-tuning (the gate's own
# trunk, its last blocks trained, as configs/asl.py:sscd_photos; and the whole model at two
# learning rates). The set and the file are given as PHOTOS_DIR and SSCD_ONNX (absent:
# skipped); each run has its own timeout.
photos=${PHOTOS_DIR:-}; sscd=${SSCD_ONNX:-}
if [[ "$steps" != *" photos "* ]]; then
  echo "== photos: not selected"
elif [ -n "$photos" ] && [ -d "$photos" ] && [ -f "$sscd" ]; then
  pbudget=${GPU_CHECKS_PHOTOS_BUDGET:-240}; pstart=$SECONDS
  prun() { local name=$1 max=$2; shift 2
    local left=$((pbudget - (SECONDS - pstart)))
    local t=$((max < left ? max : left))
    if [ "$t" -lt 20 ]; then echo "== $name: skipped (photo budget spent)"; return; fi
    echo "== $name (timeout ${t}s)"
    local t0=$SECONDS
    timeout -k 10 "$t" "$py" -m asl_jax.main --config configs/asl.py:sscd_photos \
      --workdir "/tmp/runs/$name" --config.data.manual_dir="$photos" \
      --config.data.name=folder/photo_set --config.model.variant=r50 \
      --config.model.init_from="$sscd" --config.data.num_workers=8 \
      --config.eval.verify.workers="$cores" "$@" 2>&1 | grep -v "^[WI][0-9]" \
      | grep -v "^\s" | tail -n 40 | tee "$out/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
    cp "/tmp/runs/$name/metrics.json" "$out/${name}_metrics.json" 2>/dev/null
  }
  prun p1_sscd_r50_as_imported 80 --config.train.total_steps=0
  prun p2_sscd_r50_gate_trunk 80 --config.train.total_steps=300
  # The whole model with InfoNCE (τ 0.05), a linear gate head on its pooled feature at 1e-3,
  # everything else at 1e-5 / 1e-4: does fine-tuning keep or improve the descriptor?
  prun p3_sscd_r50_all_lr1e-5 80 --config.train.total_steps=300 --config.optim.trainable= \
    --config.model.gate_feature=gate_head --config.loss.info_nce=1.0 \
    --config.loss.temperature=0.05 --config.optim.lr_mults="(('model/gate_fc',1.0),('model/',0.01))"
  prun p4_sscd_r50_all_lr1e-4 80 --config.train.total_steps=300 --config.optim.trainable= \
    --config.model.gate_feature=gate_head --config.loss.info_nce=1.0 \
    --config.loss.temperature=0.05 --config.optim.lr_mults="(('model/gate_fc',1.0),('model/',0.1))"
  "$py" benchmarks/photo_summary.py "$out" 2>&1 | tee "$out/photo_summary.txt"
else
  echo "== photos: skipped (set PHOTOS_DIR to a DISC21-layout photo set and SSCD_ONNX to sscd.onnx)"
fi

"$py" benchmarks/gpu_summary.py "$out" | tee "$out/summary.txt"
