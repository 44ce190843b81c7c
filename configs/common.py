"""What both recipe files (configs/asl.py, configs/recall_surrogate.py) build
on: the demo's config, section by section, and the two recipes they share, the
paper's on NDEC and the demo's on a folder of photos.

A recipe file is loaded by path (`--config configs/asl.py`); it imports this
module as `configs.common`, which resolves because `configs` is a package
installed with asl_jax (pyproject.toml) and, from the repository root, is
the `configs/` folder beside the command.
"""

import dataclasses

import ml_collections

from asl_jax import verification


def demo() -> ml_collections.ConfigDict:
  """The embedded demo's config (configs/asl.py without a variant): every field
  any recipe sets, at the demo's values."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data()
  c.model = model()
  c.loss = loss()
  c.optim = optim()
  c.train = train()
  c.eval = evaluation()
  return c


def data() -> ml_collections.ConfigDict:
  """config.data: the demo's dataset, batch, views and input pipeline."""
  d = ml_collections.ConfigDict()
  d.name = "ndec/synthetic"       # TFDS dataset: ndec/synthetic | ndec/full[_512].
  d.data_dir = ""                 # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
  d.synthetic = s = ml_collections.ConfigDict()  # Sizes of ndec/synthetic.
  s.seed = 0                      # Generator seed (same seed, same images).
  s.image_size = 128              # Side of train/reference images.
  s.num_train = 2000              # Training source images T000000...
  s.num_train_negative_pairs = 400  # Hard-negative training pairs.
  s.num_references = 1000         # References R000000...
  s.num_copy_queries = 300        # Queries that are edited copies.
  s.num_hard_negative_queries = 300  # Queries that resemble but do not copy.
  s.num_distractor_queries = 200  # Queries unrelated to any reference.
  s.num_workers = 0               # Build processes; 0 = one per core.
  d.manual_dir = ""               # Real data download; '' -> <data_dir>/downloads/manual.
  d.prepare_workers = 0           # Processes preparing real data; 0 = one per core.
  d.skip_bad_images = False       # Skip unreadable source images (listed in metadata).
  d.train_every = 1               # Train on every n-th training image (10 in BoT/D²LV).
  d.ids_per_batch = 32            # N identities per batch (global).
  d.views_per_id = 4              # K views per identity (view 0 = original).
  d.pair_ids_per_batch = 8        # Of the N, identities from NDEC pairs (even).
  d.image_size = 48               # Model input side (48 keeps the demo <10 min on 2 cores).
  d.crop_area = (0.2, 1.0)        # Crop area range of views 1..K-1.
  d.source_crop_area = (1.0, 1.0)  # Area range of a random crop that stands for the source
                                  # (view 0) at each visit; (1, 1): the whole image.
  d.train_edits = ml_collections.ConfigDict({  # Probability of each edit.
      "resize": 0.5, "rotate": 0.15, "pixelize": 0.1, "pad": 0.2,
      "color_jitter": 0.4, "grayscale": 0.15, "blur": 0.25, "hflip": 0.3,
      "text": 0.25, "sticker": 0.25, "paste_onto": 0.15, "jpeg": 0.4})
  d.edit_params = ml_collections.ConfigDict()  # Edit -> its parameters (copy_edits.py).
  d.edit_information = ml_collections.ConfigDict()  # Edit -> factor in (0, 1] it multiplies
                                  # a view's information amount by (default: only the crop
                                  # counts, its area fraction); see asl.py, _SSCD_EDIT_INFORMATION.
  d.views_dir = ""                # Views made by `python -m asl_jax.pregenerate` ("": online).
  d.paste_backgrounds = "train"   # paste_onto backgrounds: train (other images) | synthetic.
  d.num_threads = 2               # Grain reader threads.
  d.num_workers = 0               # Grain worker processes: 0 = none (threads), -1 = 1 per core.

  return d


def model() -> ml_collections.ConfigDict:
  """config.model: the demo's tiny ResNet and its heads."""
  m = ml_collections.ConfigDict()
  m.variant = "tiny"              # tiny | r18 | r34 | r50 | r101 | r152 | mnv4s (MobileNetV4
                                  # Conv-S, the SSCD student's trunk; width/last_stride unused).
  m.width = 16                    # Channels of the first stage.
  m.last_stride = 1               # layer4 stride (1 in BoT/D²LV).
  m.projector_dims = (512, 1024)  # Projector hidden and output (gate) dims.
  m.descriptor_dim = 128          # Retrieval descriptor dimension.
  m.head = "bot"                  # bot: projector + descriptor head (BoT/D²LV) | sscd: one
                                  # Dense from GeM to the descriptor (SSCD; the ONNX imports).
  m.gate_feature = "pooled"       # Norm read by loss and gate: pooled (GeM output) |
                                  # projector (bot head) | descriptor (before L2; with sscd:
                                  # the 512-d embedding SSCD L2-normalises) | gate_head (a
                                  # separate MLP on the pooled feature behind a stop-gradient:
                                  # only the norm-ratio loss trains it).
  m.gate_head_dims = (256, 64)    # gate_head: hidden and output widths.
  m.dtype = "float32"             # Compute dtype (bfloat16 on accelerators).
  m.bn_groups = 1                 # Ghost BatchNorm groups per batch (4 = BoT's 4 GPUs).
  m.wave_block = False            # WaveBlock band augmentation after layer2/3 (BoT).
  m.wave_chunk = 32               # Samples sharing one WaveBlock band.
  m.shard_classifier = False      # Split the classifier's classes over the devices.
  m.small_conv = "auto"           # 3x3 convs with <= 4x4 outputs: xla | im2col | auto (CPU).
  m.conv_grad = "auto"            # Convolution gradients: xla | canonical | auto (CPU).
  m.depthwise = "auto"            # mnv4s depthwise convs: xla | shifts (multiply-adds) | auto
                                  # (shifts on the CPU, where XLA's are slow; same values).
  m.init_from = ""                # Initial weights: torchvision .pth/.pt or timm .safetensors
                                  # (trunk; SSCD's torchvision file also its head), an ONNX copy
                                  # detector (sscd.onnx: r50, last_stride 2, head sscd;
                                  # sscd_distilled.onnx: mnv4s, head sscd; BN folded: needs
                                  # train.batch_norm=frozen), or another run's workdir or
                                  # checkpoint directory (read only).
  m.init_strict = True            # A missing/mismatched/unused tensor is an error.

  return m


def loss() -> ml_collections.ConfigDict:
  """config.loss: the demo's InfoNCE + ASL norm ratio; every other term off."""
  l = ml_collections.ConfigDict()  # Weights; 0 switches a term off.
  l.info_nce = 1.0                # SSCD-style InfoNCE over views.
  l.temperature = 0.1             # InfoNCE temperature.
  l.koleo = 0.0                   # KoLeo spreading term.
  l.triplet = 0.0                 # Soft batch-hard triplet.
  l.triplet_feature = "pooled"    # pooled (BoT) | descriptor | projected.
  l.classification = 0.0          # Per-identity label-smoothed CE.
  l.label_smoothing = 0.1
  l.cosine_scale = 0.0            # >0: cosine classifier with this scale.
  l.norm_ratio = 10.0             # ASL norm-ratio loss weight (λ).
  l.norm_ratio_pairing = "all"    # all pairs (lower variance) | random (official draw).
  l.rs_at_k = 0.0                 # Recall@k surrogate (configs/recall_surrogate.py).
  l.rs_design = "symmetric"       # symmetric (every view a query) | asymmetric (view 0 the
                                  # reference, the other views queries against references).
  l.rs_k = (1, 2, 4, 8, 16)       # The k set K (each k at most the database per query).
  l.rs_tau1 = 1.0                 # Temperature of the rank (tau1).
  l.rs_tau2 = 0.01                # Temperature of the similarity differences (tau2).
  l.rs_query_in_rank = True       # Count the query in its own rank (the official code).
  l.rs_chunk = 0                  # Queries per step of the loss (0: all at once).
  l.rs_distractor_ids = 0         # Identities per batch that are database items only.
  l.simix = False                 # SiMix virtual samples (same-image pairs).

  return l


def optim() -> ml_collections.ConfigDict:
  """config.optim: AdamW, warmup and cosine decay."""
  o = ml_collections.ConfigDict()
  o.learning_rate = 2e-3          # Peak learning rate.
  o.warmup_steps = 30
  o.warmup_init_factor = 0.01     # Warmup starts at this fraction of the peak.
  o.end_factor = 0.01             # Cosine decay ends at this fraction.
  o.schedule = "cosine"           # After warmup: cosine | steps (x decay at milestones).
  o.milestones = ()               # steps: fractions of total_steps where the rate drops.
  o.decay = 0.3                   # steps: the factor at each milestone.
  o.weight_decay = 1e-4           # AdamW decay (0 = plain Adam).
  o.b1 = 0.9
  o.b2 = 0.999
  o.grad_clip_norm = 0.0          # 0 = no clipping.
  o.trainable = ""                # Regex over parameter paths (model/gate_fc1/kernel, ...):
                                  # only matching ones train; '' = all.
  o.lr_mults = ()                 # ((regex, factor), ...): the learning rate of the parameters
                                  # whose path matches (first match) times factor, e.g.
                                  # (("model/(conv_stem|blocks|layer)", 0.01),): a slow trunk.
  return o


def train() -> ml_collections.ConfigDict:
  """config.train: the demo's steps, logging and checkpoints."""
  t = ml_collections.ConfigDict()
  t.total_steps = 1100            # 0: evaluate model.init_from as it is (no training).
  t.log_every = 25
  t.checkpoint_every = 250
  t.keep_checkpoints = 3
  t.num_chunks = 1                # >1: two-pass step (gradient caching) in this many chunks.
  t.batch_norm = "batch"          # batch statistics (of each chunk) | frozen (running ones).

  return t


def evaluation() -> ml_collections.ConfigDict:
  """config.eval: search, decision, calibration, verification and score normalisation."""
  e = ml_collections.ConfigDict()
  e.data_name = ""                # Queries/references from another dataset ('' = data.name),
                                  # e.g. ndec/disc21_dev after training on ndec/full.
  e.k = 10                        # Nearest references per query.
  e.image_size = 80               # Side the images are embedded at (0 = data.image_size);
                                  # larger than the 48 px training crops, as FixRes.
  e.resize = "square"             # square: image_size x image_size | short_side: the short
                                  # side image_size, aspect kept, the long side rounded to a
                                  # multiple of 32 (SSCD's evaluation: short side 288).
  e.batch_size = 256
  e.num_workers = -1              # Grain processes decoding the images: -1 = one per core on an
                                  # accelerator host, none on a CPU-only one; 0 = threads here.
  e.flip_average = False          # Descriptor = mean of the image's and its mirror's.
  e.gate_flip_average = False     # Gate norm = geometric mean of the image's and its mirror's.
  e.gate_sizes = ()               # Square sides: gate norm = geometric mean of the image's gate
                                  # norms resized to each from its original; () = image_size.
  e.soft_gate_temperature = 0.1   # Soft gate (an extension): score x sigmoid(log ratio / T).
  e.decision = "verify_else_norm"  # Pairs kept (asl_jax/evaluation/decisions.py): norm (the
                                  # paper's gate) | calibrated_norm | verify | verify_else_norm |
                                  # verify_else_calibrated | none. Extensions but norm.
  e.rescore = 1.0                 # Extension: + this to the score of verified copies.
  e.calibration = cal = ml_collections.ConfigDict()  # The calibrated gate's threshold:
  cal.num_images = 256            # training images (with one edited crop each); 0 = off;
  cal.max_copy_drop = 0.05        # the share of their copy pairs it may drop.
  e.verify = verify()               # Pairwise verification (verification.py).
  e.score_norm = sn = ml_collections.ConfigDict()  # Against the training set.
  sn.method = "sscd"              # none | sscd (β·mean s_n..s_n_end) | isc (factor·s_n).
  sn.n = 1                        # First background neighbour used (1-based).
  sn.n_end = 3                    # Last one (sscd).
  sn.factor = 1.0                 # β (sscd) or factor (isc, 2.0 there).
  return e


def verify() -> ml_collections.ConfigDict:
  """config.eval.verify: `verification.VerifyConfig`'s fields and defaults (defined
  there once, with what each means) and the threads that run it."""
  v = ml_collections.ConfigDict(dataclasses.asdict(verification.VerifyConfig()))
  v.workers = 0                   # Threads (0: one per core).
  return v


def paper_recipe(c, asl: bool):
  """BoT-style ResNet-50 + ASL on NDEC (method.md §3): 32 ids x 4 views of
  256^2, projector 2048->4096->8192, Adam 3.5e-4, 10 CE + 1 soft triplet."""
  c.data.name = "ndec/full"
  c.data.train_every = 10         # 100,000 identities of DISC21's 1M, as BoT/D²LV.
  c.data.image_size = 256
  c.data.pair_ids_per_batch = 0
  # BoT's isc_100k_256 chain (method.md §3.3). Not in it: resize (aspect),
  # jpeg. Our readings: rotation fills with a random colour (torchvision:
  # black); "image overlay ... resize by U[1, 2.5]" is the view shrunk to
  # 1/2.5..1 of the other image (paste_onto scale); position U[0, 0.5] is
  # kept for the underlay, the overlays go anywhere inside the image.
  c.data.train_edits = ml_collections.ConfigDict({
      "rotate": 0.3, "pixelize": 0.3, "shuffle_pixels": 0.3, "perspective": 0.3, "pad": 0.3,
      "underlay": 0.3, "color_jitter": 0.8, "blur": 1.0, "grayscale": 0.3, "hflip": 0.5,
      "sticker": 0.3, "text": 0.3, "text2": 0.3, "paste_onto": 0.2})
  overlay = {"size": (0.0, 1.0), "opacity": (0.0, 1.0)}
  c.data.edit_params = ml_collections.ConfigDict({
      "rotate": {"max_degrees": 50.0, "quarter_turns": 0.0, "expand": False},
      "pixelize": {"ratio": (0.1, 1.0)}, "shuffle_pixels": {"factor": (0.0, 0.4)},
      "perspective": {"sigma": (0.0, 50.0)}, "pad": {"max_fraction": 0.1},
      "underlay": {"scale": (0.04, 0.1), "position": (0.0, 0.5)},
      "color_jitter": {"strength": (0.5, 0.5, 0.3, 0.2)}, "blur": {"sigma": (0.1, 2.0)},
      "sticker": dict(overlay), "text": dict(overlay), "text2": dict(overlay),
      "paste_onto": {"scale": (0.4, 1.0)}})
  # The edit chain is Python/PIL: threads share a core (the GIL), processes
  # scale (docs/performance.md: "The input pipeline feeding that recipe"). Two reader
  # threads in each worker.
  c.data.update(num_workers=-1, num_threads=2)
  c.model.update(variant="r50", width=64, projector_dims=(4096, 8192),
                 descriptor_dim=256, dtype="bfloat16", gate_feature="projector",
                 wave_block=True, bn_groups=4, shard_classifier=True)
  c.loss.update(info_nce=0.0, triplet=1.0, classification=10.0,
                norm_ratio=1.0 if asl else 0.0, norm_ratio_pairing="random")
  c.optim.update(learning_rate=3.5e-4, weight_decay=0.0, warmup_steps=40_000)
  c.train.update(total_steps=200_000, log_every=100, checkpoint_every=2000)
  c.eval.update(batch_size=512, image_size=0, decision="norm", rescore=0.0)  # The paper's.
  c.eval.score_norm.method = "none"  # The NDEC protocol (method.md §5); sscd to compare.



def photos_recipe(c):
  """The demo on a folder of real photos (data.manual_dir, required; a set in
  the DISC21 layout with a train/ pool): for a pool of ~120 photos, 900 steps
  keep training and evaluation (with verification) within 10 CPU minutes;
  such a background set is too small for score normalisation to help; the
  descriptor averages the image and its mirror; verified copies are rescored
  (docs/results.md, "ASL on real photographs")."""
  c.data.update(name="folder/photos", manual_dir="", pair_ids_per_batch=0)
  c.required_fields = ("data.manual_dir",)
  c.train.total_steps = 900
  c.eval.score_norm.method = "none"
  c.eval.flip_average = True      # +0.036 μAP without the gate (README).

