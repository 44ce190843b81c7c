"""Pretrained initialisation: a random torchvision-format ResNet built with
torch is saved as .pth and as .safetensors, loaded into the Flax model, and
the two forward passes (trunk + GeM) agree to 1e-4 in float32."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (a test dependency, CPU build) is "
                            "not installed: pip install -e '.[test]'")
from torch import nn  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from asl_jax.errors import UserError  # noqa: E402
from asl_jax.benchmark import torch_model  # noqa: E402
from asl_jax.models import pretrained, resnet  # noqa: E402


# ------------------------------------ torchvision's ResNet, same tensor names --
# The blocks are asl_jax.benchmark.torch_model's (the benchmark's PyTorch model).
BasicBlock, Bottleneck = torch_model.Basic, torch_model.Bottleneck


class TorchResNet(nn.Module):
  def __init__(self, block, layers, last_stride=1, width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(layers):
      blocks = []
      for j in range(n):
        stride = (1, 2, 2, last_stride)[i] if j == 0 else 1
        blocks.append(block(cin, width * 2 ** i, stride))
        cin = width * 2 ** i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, 1000)

  def forward(self, x):  # Trunk + GeM(p=3), as CopyDetector's `pooled`.
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)


def random_torch_resnet(block, layers, last_stride, width):
  torch.manual_seed(0)
  net = TorchResNet(block, layers, last_stride, width)
  with torch.no_grad():  # Non-trivial BN statistics and affine parameters.
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return net.eval()


def flax_model(variant, last_stride, width):
  return resnet.CopyDetector(variant=variant, width=width, last_stride=last_stride,
                             projector_dims=(32, 64), descriptor_dim=16)


@pytest.mark.parametrize("variant, block, layers, last_stride, fmt", [
    ("r18", BasicBlock, (2, 2, 2, 2), 1, "pth"),
    ("r50", Bottleneck, (3, 4, 6, 3), 1, "pth"),
    ("r50", Bottleneck, (3, 4, 6, 3), 2, "safetensors"),
])
def test_flax_forward_matches_torch(tmp_path, variant, block, layers, last_stride, fmt):
  width = 16 if variant == "r50" else 32
  net = random_torch_resnet(block, layers, last_stride, width)
  path = str(tmp_path / f"resnet.{fmt}")
  if fmt == "pth":
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
  else:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
  model = flax_model(variant, last_stride, width)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(images))
  params, stats, report = pretrained.load_into(
      variables["params"], variables["batch_stats"], pretrained.read_state_dict(path))
  assert len(report.loaded) == sum(1 for k in net.state_dict()
                                   if not k.startswith("fc") and "num_batches" not in k)
  assert {"fc.weight", "fc.bias"} <= set(report.ignored)
  assert not report.missing and not report.mismatched and not report.unused
  assert {p[0] for p in report.new} == {"gem", "proj_fc1", "proj_bn1", "proj_fc2",
                                        "proj_bn2", "desc_bn1", "desc_fc", "desc_bn2"}
  ours = model.apply({"params": params, "batch_stats": stats}, jnp.asarray(images))["pooled"]
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape == (2, width * 8 * block.expansion)
  rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
  assert rel < 1e-4, rel


def test_wrong_variant_is_an_error_unless_allowed(tmp_path):
  net = random_torch_resnet(BasicBlock, (2, 2, 2, 2), 1, 16)
  path = str(tmp_path / "r18.pth")
  torch.save(net.state_dict(), path)
  model = flax_model("r50", 1, 16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  state_dict = pretrained.read_state_dict(path)
  with pytest.raises(UserError, match=r"missing from the file.*mismatched shapes.*"
                     r"model.init_strict=False"):
    pretrained.load_into(variables["params"], variables["batch_stats"], state_dict)
  _, _, report = pretrained.load_into(variables["params"], variables["batch_stats"],
                                      state_dict, strict=False)
  assert report.loaded and report.missing and report.mismatched


def test_checkpoint_with_code_is_refused(tmp_path):
  path = str(tmp_path / "evil.pth")
  torch.save({"conv1.weight": torch.zeros(1), "extra": np.random.default_rng()}, path)
  with pytest.raises(UserError, match="only tensors"):
    pretrained.read_state_dict(path)
  with pytest.raises(UserError, match="no such file"):
    pretrained.read_state_dict(str(tmp_path / "missing.pth"))
  (tmp_path / "notes.txt").write_text("not weights")
  with pytest.raises(UserError, match=r"not a PyTorch zip checkpoint.*takes an \.onnx file"):
    pretrained.read_state_dict(str(tmp_path / "notes.txt"))


def test_sscd_torchvision_layout_fills_trunk_and_head(tmp_path):
  """SSCD's torchvision layout (sscd/models/model.py, TV_RESNET50): the
  model's `backbone` is a torchvision ResNet-50 whose `fc` is the projection
  to the descriptor, GeM p = 3 in place of its avgpool, L2 after it."""
  width, dims = 16, 32
  net = random_torch_resnet(Bottleneck, (3, 4, 6, 3), 2, width)
  net.fc = nn.Linear(width * 8 * 4, dims)
  path = str(tmp_path / "sscd_disc_mixup.torchvision.pt")
  torch.save({"backbone." + k: v for k, v in net.state_dict().items()}, path)
  model = resnet.CopyDetector(variant="r50", width=width, last_stride=2, head="sscd",
                              descriptor_dim=dims, gate_feature="descriptor")
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(images))
  params, stats, report = pretrained.load_into(
      variables["params"], variables["batch_stats"], pretrained.read_state_dict(path))
  assert {"fc.weight", "fc.bias"} <= set(report.loaded)
  assert report.new == [("gem", "p")] and not report.unused and not report.missing
  aux = model.apply({"params": params, "batch_stats": stats}, jnp.asarray(images))
  with torch.no_grad():
    theirs = net.fc(net(torch.from_numpy(images.transpose(0, 3, 1, 2)))).numpy()
  ours = np.asarray(aux["descriptor"])
  assert ours.shape == theirs.shape == (2, dims)
  np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())
  np.testing.assert_array_equal(aux["gate_feature"], aux["descriptor"])
  # The BoT head has no such layer: the projection is then ignored as `fc`.
  bot = flax_model("r50", 2, width)
  v = bot.init(jax.random.key(1), jnp.asarray(images))
  _, _, report = pretrained.load_into(v["params"], v["batch_stats"],
                                      pretrained.read_state_dict(path))
  assert {"fc.weight", "fc.bias"} <= set(report.ignored)


def test_gate_trunk_starts_as_the_files_trunk_and_only_the_gate_trains_it(tmp_path):
  """model.gate_feature=gate_trunk: the gate's own trunk is seeded from the
  same file as the descriptor's, and the gate's gradient reaches that copy
  only (the descriptor's trunk and head get none of it)."""
  from asl_jax import train_state
  from conftest import load_config
  width, dims = 16, 32
  net = random_torch_resnet(Bottleneck, (3, 4, 6, 3), 2, width)
  net.fc = nn.Linear(width * 8 * 4, dims)
  path = str(tmp_path / "sscd_disc_mixup.torchvision.pt")
  torch.save({"backbone." + k: v for k, v in net.state_dict().items()}, path)
  config = load_config("sscd_photos")
  config.model.update(variant="r50", width=width, last_stride=2, descriptor_dim=dims,
                      gate_feature="gate_trunk", gate_head_dims=(8,), init_from=path)
  model = resnet.build(config.model)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  variables = model.init(jax.random.key(1), images)
  params, stats, report = train_state._read_init(config, jax.device_get(variables["params"]),
                                                 jax.device_get(variables["batch_stats"]))
  prefix = resnet.GATE_TRUNK_PREFIX
  gate_trunk = sorted(k for k in params if k.startswith(prefix))
  assert "gate_trunk_layer4_2" in gate_trunk and "gate_trunk_gem" in gate_trunk
  for key in gate_trunk:
    for a, b in zip(jax.tree.leaves(params[key]), jax.tree.leaves(params[key[len(prefix):]]),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  for key in [k for k in stats if k.startswith(prefix)]:
    for a, b in zip(jax.tree.leaves(stats[key]), jax.tree.leaves(stats[key[len(prefix):]]),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  assert {p[0] for p in report.new} == {"gem", "gate_fc1"}
  assert {p[0] for p in report.seeded} == set(gate_trunk)
  assert "copied from the trunk's" in report.summary()
  v = {"params": params, "batch_stats": stats}
  aux = model.apply(v, images)
  fc = params["gate_fc1"]
  np.testing.assert_allclose(aux["gate_feature"], aux["pooled"] @ fc["kernel"] + fc["bias"],
                             rtol=1e-4, atol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(jnp.square(model.apply(
      {"params": p, "batch_stats": stats}, images)["gate_feature"])))(params)
  size = lambda tree: sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(tree))
  assert all(size(g) == 0 for k, g in grads.items() if not k.startswith("gate_"))
  assert size(grads["gate_trunk_layer4_2"]) > 0 and size(grads["gate_trunk_conv1"]) > 0
