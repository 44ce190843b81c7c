"""FLOPs of a step counted from its jaxpr, the same on every backend.

XLA's cost analysis counts a GPU's library calls (cuDNN convolutions, cuBLAS
products) as nothing and a loop body once, so its number differs by backend.
Here the step's jaxpr (what every backend compiles) is walked: each
`conv_general_dilated` and `dot_general` counts 2 x its multiply-adds; call-like
primitives (pjit, closed_call, custom_vjp/custom_jvp, remat, shard_map) are
entered, `scan` bodies count `length` times, `while` bodies their trip count
where it can be read from the loop (else once, and the loop is reported), and
`cond` its most expensive branch. The products of a depthwise convolution
written as shifted multiply-adds (models/conv.depthwise_shifts, the CPU's)
count as its multiply-adds. Elementwise work (BatchNorm, activations,
the optimiser) is left out, as model-FLOPs utilisation conventionally does.

`analytic_forward_macs` counts the same model from its layer shapes alone,
as a check on the walk.
"""

import dataclasses
import math

import numpy as np

from asl_jax.models.conv import SHIFTS_SCOPE


@dataclasses.dataclass
class Count:
  """FLOPs found, by primitive, and the loops whose trip count was unknown."""
  conv: float = 0.0
  dot: float = 0.0
  unknown_loops: int = 0

  @property
  def total(self) -> float:
    return self.conv + self.dot

  def add(self, other: "Count", times: float = 1.0):
    self.conv += times * other.conv
    self.dot += times * other.dot
    self.unknown_loops += other.unknown_loops


def _jaxpr_of(value):
  """The open jaxpr of a param value that is one (Jaxpr or ClosedJaxpr), else None."""
  from jax.extend import core
  if isinstance(value, core.ClosedJaxpr):
    return value.jaxpr
  if isinstance(value, core.Jaxpr):
    return value
  return None


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
  """2 x output elements x kernel taps per output (kernel size / out features);
  the taps that land on the zeros of an input dilation (the input gradient of a
  strided convolution) are not multiply-adds of the model and are left out."""
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
  taps = math.prod(rhs) / rhs[out_feature_dim]
  dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2.0 * math.prod(out) * taps / dilation


def _literal_value(var):
  from jax.extend import core
  if isinstance(var, core.Literal):
    return np.asarray(var.val).item()
  return None


def _while_trips(eqn):
  """The trip count of `while i < n: ...; i = i + 1` with i's start and n
  literals (fori_loop with known bounds under a dynamic carry), else None."""
  cond = eqn.params["cond_jaxpr"].jaxpr
  body = eqn.params["body_jaxpr"].jaxpr
  nc, nb = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
  if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
    return None
  lhs, rhs = cond.eqns[0].invars
  if lhs not in cond.invars or _literal_value(rhs) is None:
    return None
  pos = cond.invars.index(lhs) - nc
  start = _literal_value(eqn.invars[nc + nb + pos])
  if start is None:
    return None
  carry_in = body.invars[nb + pos]
  out = body.outvars[pos]
  for e in body.eqns:
    if e.outvars[0] is out and e.primitive.name == "add" and carry_in in e.invars:
      other = [v for v in e.invars if v is not carry_in]
      if other and _literal_value(other[0]) == 1:
        return max(0, int(_literal_value(rhs)) - int(start))
  return None


def count_jaxpr(jaxpr) -> Count:
  """FLOPs of one run of an open or closed jaxpr (see the module docstring)."""
  jaxpr = _jaxpr_of(jaxpr) or jaxpr
  total = Count()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total.dot += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total.conv += _conv_flops(eqn)
    elif name == "mul" and SHIFTS_SCOPE in str(eqn.source_info.name_stack):
      # A depthwise convolution's tap (models/conv.depthwise_shifts): a multiply-add
      # per output element.
      total.conv += 2 * math.prod(eqn.outvars[0].aval.shape)
    elif name == "scan":
      total.add(count_jaxpr(eqn.params["jaxpr"]), eqn.params["length"])
    elif name == "while":
      trips = _while_trips(eqn)
      body = count_jaxpr(eqn.params["body_jaxpr"])
      if trips is None:
        total.unknown_loops += 1
      total.add(body, 1 if trips is None else trips)
    elif name == "cond":
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      total.add(max(branches, key=lambda c: c.total))
    elif name == "shard_map":  # The body is one device's part: times the mesh's size.
      mesh = eqn.params["mesh"]
      total.add(count_jaxpr(eqn.params["jaxpr"]), math.prod(mesh.shape.values()))
    else:  # pjit, closed_call, remat, custom_vjp/jvp calls: their one inner jaxpr.
      for value in eqn.params.values():
        inner = _jaxpr_of(value)
        if inner is not None:
          total.add(count_jaxpr(inner))
  return total


def count_fn(fn, *args) -> Count:
  """FLOPs of fn(*args) from its jaxpr; args may be arrays or ShapeDtypeStructs
  (tracing only: no compilation, no device memory)."""
  import jax
  return count_jaxpr(jax.make_jaxpr(fn)(*args))


# ----------------------------------------------------- from layer shapes --
def analytic_forward_macs(model_cfg, image_size: int, num_classes: int = 0) -> dict:
  """Multiply-adds of one image's forward pass through `models/resnet.CopyDetector`
  (and the classifier when num_classes > 0), from the layer shapes:
  {"trunk", "head", "classifier", "total", "first_conv"}."""
  from asl_jax.models import resnet
  kind, stages, stem = resnet.VARIANTS[model_cfg.variant]
  w = model_cfg.width
  side = -(-image_size // 2)  # The stem's stride-2 convolution.
  k = 7 if stem == "imagenet" else 3
  first = side * side * k * k * 3 * w
  trunk = first
  if stem == "imagenet":
    side = -(-side // 2)  # The max pool.
  cin = w
  for i, n in enumerate(stages):
    planes = w * 2 ** i
    for j in range(n):
      stride = (1, 2, 2, model_cfg.last_stride)[i] if j == 0 else 1
      out = -(-side // stride)
      if kind == "basic":
        cout = planes
        trunk += out * out * (9 * cin * planes + 9 * planes * planes)
      else:
        cout = planes * 4
        trunk += side * side * cin * planes + out * out * (9 * planes * planes
                                                            + planes * cout)
      if stride != 1 or cin != cout:
        trunk += out * out * cin * cout
      cin, side = cout, out
  h, o = model_cfg.projector_dims
  head = cin * h + h * o + o * model_cfg.descriptor_dim
  classifier = o * num_classes
  return {"trunk": trunk, "head": head, "classifier": classifier,
          "total": trunk + head + classifier, "first_conv": first}


def analytic_train_flops_per_image(model_cfg, image_size: int, num_classes: int = 0) -> float:
  """FLOPs of one image's forward and backward pass: 2 per multiply-add, the
  backward twice the forward (input and weight gradients), less the input
  gradient of the first convolution, which nothing needs."""
  m = analytic_forward_macs(model_cfg, image_size, num_classes)
  return 2.0 * (3 * m["total"] - m["first_conv"])


# ------------------------------------------------------------ train steps --
def abstract_step(config, num_classes: int, mesh=None):
  """(update, state, batch, rng) of the config's jitted update with the state
  and batch as ShapeDtypeStructs: traced, never initialised or compiled."""
  import jax
  import jax.numpy as jnp
  from asl_jax import sharding, train, train_state
  mesh = mesh or sharding.make_mesh()
  model, classifier = train.build_modules(config, num_classes)
  tx, schedule = train.make_optimizer(config.optim, 1000)
  state = jax.eval_shape(lambda r: train.init_state(model, classifier, tx, config, r, mesh),
                         jax.random.key(0))
  shapes = train_state.state_shardings(state, mesh, classifier)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       state, shapes)
  update = train.make_update_fn(model, classifier, tx, schedule, config, mesh, state)
  ids, k, size = config.data.ids_per_batch, config.data.views_per_id, config.data.image_size
  batch = {"views": jax.ShapeDtypeStruct((ids, k, size, size, 3), jnp.uint8),
           "information_amount": jax.ShapeDtypeStruct((ids, k), jnp.float32),
           "label": jax.ShapeDtypeStruct((ids,), jnp.int32)}
  return update, state, batch, jax.random.key(1)


def train_step_flops(config, num_classes: int, device_count: int = 1) -> dict:
  """Per device and step: `executed` (this step as it runs, the two-pass
  recompute included), `model` (the one-pass update of the same batch: each
  image's forward and backward once, what MFU uses), and loops whose trip
  count was unknown."""
  one_pass = config.copy_and_resolve_references()
  one_pass.train.num_chunks = 1
  executed = count_fn(*abstract_step(config, num_classes))
  model = (executed if config.train.num_chunks == 1
           else count_fn(*abstract_step(one_pass, num_classes)))
  return {"model": model.total / device_count, "executed": executed.total / device_count,
          "unknown_loops": executed.unknown_loops}


def step_report(config, num_classes: int, update, state, batch, rng, compiled=None) -> dict:
  """The FLOP fields of a train row, per device and step: model (MFU's),
  executed (with the two-pass recompute), and XLA's cost analysis of the
  compiled program as a cross-check (it misses library calls on GPUs)."""
  import jax
  devices = jax.device_count()
  executed = count_fn(update, state, batch, rng)
  if config.train.num_chunks > 1:
    one_pass = config.copy_and_resolve_references()
    one_pass.train.num_chunks = 1
    model = count_fn(*abstract_step(one_pass, num_classes))
  else:
    model = executed
  xla = float("nan")
  if compiled is not None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla = float((cost or {}).get("flops", float("nan")))
  images = config.data.ids_per_batch * config.data.views_per_id
  return {"model_flops_per_step_per_device": model.total / devices,
          "executed_flops_per_step_per_device": executed.total / devices,
          "model_flops_per_image": model.total / images,
          "xla_cost_analysis_flops_per_step_per_device": xla,
          "flops_loops_with_unknown_trip_count": executed.unknown_loops,
          "flops_method": "jaxpr: 2 x multiply-adds of convolutions and matrix products, "
                          "loop bodies times their trip counts; XLA's count beside it"}


# Dense peak TFLOP/s per chip, (bf16, fp32), from the vendors' data sheets (no
# sparsity; fp32 without TF32). A name matches jax's device_kind as a whole
# word ("L4" is not "L40S"); the longest matching name wins.
PEAK_TFLOPS = {
    "H200": (989.4, 66.9), "H100": (989.4, 66.9), "A100": (312.0, 19.5),
    "L40S": (362.1, 91.6), "L4": (121.0, 30.3), "V100": (125.0, 15.7),
    "TPU v6": (918.0, None), "TPU v5p": (459.0, None), "TPU v5 lite": (197.0, None),
    "TPU v5e": (197.0, None), "TPU v4": (275.0, None),
}


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0):
  """Peak dense TFLOP/s of one device for the compute dtype, or None."""
  import re
  if override:
    return override
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if re.search(rf"(?<![a-z0-9]){re.escape(name.lower())}(?![a-z0-9])", device_kind.lower()):
      bf16, fp32 = PEAK_TFLOPS[name]
      return bf16 if dtype in ("bfloat16", "float16") else fp32
  return None
