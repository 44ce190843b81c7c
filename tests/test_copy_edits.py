"""The copy edits: BoT's chain (pixel shuffle, perspective, underlay, ...),
their parameters, the working size, and the builder's draws kept stable."""

import numpy as np
import pytest
from PIL import Image

from asl_jax import copy_edits, input_pipeline, train
from asl_jax.errors import UserError
from tfds_ndec import synthetic
from conftest import load_config, tiny_config


def _image(seed=0, h=64, w=80):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_builders_draws_do_not_move_when_edits_are_added():
  """The synthetic queries (dataset version 1.1.0) come from these draws: an
  edit added to the module must not change which edits a seed fires for the
  builder's probabilities (only named edits take a draw)."""
  got = []
  for seed in range(3):
    e = copy_edits.copy_edit_chain(_image(), np.random.default_rng(seed), synthetic.QUERY_EDITS,
                                   min_edits=2)
    got.append((e.edits, e.image.shape))
  # As the module gave them before pixel shuffle, perspective, underlay and
  # text2 were added.
  assert got == [(["crop", "resize", "rotate", "pixelize", "paste_onto"], (128, 128, 3)),
                 (["crop", "rotate", "text", "jpeg"], (76, 72, 3)),
                 (["crop", "resize", "pixelize", "blur", "hflip"], (83, 98, 3))]


def test_array_and_pil_inputs_give_the_same_edit():
  p = {n: 0.5 for n in copy_edits.EDIT_NAMES}
  for seed in range(6):
    a = copy_edits.copy_edit_chain(_image(seed), np.random.default_rng(seed), p)
    b = copy_edits.copy_edit_chain(Image.fromarray(_image(seed)), np.random.default_rng(seed), p)
    assert isinstance(a.image, np.ndarray) and isinstance(b.image, Image.Image)
    assert a.edits == b.edits
    np.testing.assert_array_equal(a.image, np.asarray(b.image))


def test_work_size_bounds_the_working_image_and_keeps_the_draws():
  p = {"resize": 1.0, "rotate": 1.0, "pad": 1.0, "color_jitter": 1.0}
  params = {"resize": {"scale": (1.5, 1.5)}}
  big = copy_edits.copy_edit_chain(_image(), np.random.default_rng(0), p, params=params)
  small = copy_edits.copy_edit_chain(_image(), np.random.default_rng(0), p, params=params,
                                     work_size=48)
  assert min(big.image.shape[:2]) > 80  # Grown by the resize, rotation and padding.
  assert min(small.image.shape[:2]) == 48
  assert small.edits == big.edits
  # The aspect is kept (to the pixel).
  ratio = big.image.shape[1] / big.image.shape[0]
  assert abs(small.image.shape[1] - 48 * ratio) <= 1 or abs(small.image.shape[0] - 48 / ratio) <= 1


def test_shuffle_pixels_moves_the_drawn_fraction_and_keeps_the_pixels():
  image = Image.fromarray(_image(1))
  out = np.asarray(copy_edits.shuffle_pixels(image, np.random.default_rng(0), factor=(0.4, 0.4)))
  flat_in = np.asarray(image).reshape(-1, 3)
  flat_out = out.reshape(-1, 3)
  moved = (flat_in != flat_out).any(-1).mean()
  assert 0.35 < moved <= 0.42, moved
  # The same pixels, in other places.
  np.testing.assert_array_equal(np.unique(flat_in, axis=0, return_counts=True)[1],
                                np.unique(flat_out, axis=0, return_counts=True)[1])
  same = copy_edits.shuffle_pixels(image, np.random.default_rng(0), factor=(0.0, 0.0))
  np.testing.assert_array_equal(np.asarray(same), np.asarray(image))


def test_perspective_keeps_the_canvas_and_moves_the_corners():
  image = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
  flat = copy_edits.perspective(image, np.random.default_rng(0), sigma=(0.0, 0.0))
  np.testing.assert_array_equal(np.asarray(flat), np.asarray(image))
  warped = np.asarray(copy_edits.perspective(image, np.random.default_rng(0), sigma=(40, 40)))
  assert warped.shape == (64, 64, 3)
  black = (warped == 0).all(-1).mean()
  assert 0.02 < black < 0.9, black  # Uncovered corners, black; most still the image.
  assert (warped == 200).all(-1).mean() > 0.1


def test_underlay_pastes_a_small_other_image_in_the_top_left_quarter_region():
  image = Image.fromarray(np.full((100, 120, 3), 255, np.uint8))
  asked = []

  def other(rng, min_size):
    asked.append(min_size)
    return np.full((40, 80, 3), 7, np.uint8)

  for seed in range(5):
    out = np.asarray(copy_edits.underlay(image, other, np.random.default_rng(seed),
                                         scale=(0.1, 0.1), position=(0.0, 0.5)))
    ys, xs = np.nonzero((out == 7).all(-1))
    assert ys.max() - ys.min() + 1 == 10 and xs.max() - xs.min() + 1 == 20  # Aspect kept.
    assert ys.min() <= 50 and xs.min() <= 60
    assert (out == 255).all(-1).mean() > 0.95
  assert asked == [10] * 5  # Asked for no more than it pastes.


def test_rotate_can_cut_to_the_largest_rectangle_inside_as_augly_does():
  assert copy_edits.inscribed_box(4, 3, 0) == pytest.approx((4, 3))
  assert copy_edits.inscribed_box(4, 3, 90) == pytest.approx((3, 4))
  assert copy_edits.inscribed_box(1, 1, 45) == pytest.approx((0.5 ** 0.5, 0.5 ** 0.5))
  w, h = copy_edits.inscribed_box(200, 100, 10)  # Its corners lie on the rotated sides.
  a = np.deg2rad(10)
  assert w * np.cos(a) + h * np.sin(a) == pytest.approx(200)
  assert w * np.sin(a) + h * np.cos(a) == pytest.approx(100)
  image = Image.fromarray(np.full((100, 200, 3), (10, 200, 30), np.uint8))
  for seed in range(4):
    out = np.asarray(copy_edits.rotate(image, np.random.default_rng(seed), max_degrees=30,
                                       quarter_turns=0.0, crop_inside=1.0)).astype(int)
    assert 0.3 * 200 * 100 < out.shape[0] * out.shape[1] < 200 * 100
    assert (np.abs(out - (10, 200, 30)).max(-1) <= 2).mean() > 0.99  # No filled corners.
    filled = np.asarray(copy_edits.rotate(image, np.random.default_rng(seed), max_degrees=30,
                                          quarter_turns=0.0)).astype(int)
    assert (np.abs(filled - (10, 200, 30)).max(-1) > 2).mean() > 0.01  # Filled corners.


def test_meme_puts_a_caption_band_above_the_untouched_image():
  image = Image.fromarray(_image(4, 100, 120))
  for seed in range(4):
    out = np.asarray(copy_edits.meme(image, np.random.default_rng(seed), band=(0.2, 0.3)))
    band = out.shape[0] - 100
    assert out.shape[1] == 120 and 20 <= band <= 30
    np.testing.assert_array_equal(out[band:], np.asarray(image))
    # A light band with dark letters in it.
    assert np.median(out[:band]) >= 200 and (out[:band].max(-1) < 60).mean() > 0.02


def test_screenshot_shows_the_whole_image_inside_a_larger_page():
  image = Image.fromarray(np.full((60, 80, 3), (1, 2, 3), np.uint8))
  kinds = set()
  for seed in range(8):
    out = np.asarray(copy_edits.screenshot(image, np.random.default_rng(seed), scale=(0.4, 0.6)))
    h, w = out.shape[:2]
    kinds.add("phone" if h > w else "web")
    ys, xs = np.nonzero((out == (1, 2, 3)).all(-1))
    ih, iw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert len(ys) == ih * iw and abs(iw / ih - 80 / 60) < 0.05  # One whole image, aspect kept.
    assert ys.min() > 0 and iw / w <= (0.95 if h > w else 0.61)  # Below the bar, a part.
    assert len(ys) < 0.6 * h * w
  assert kinds == {"phone", "web"}


def test_edit_parameters_change_the_edit():
  image = Image.fromarray(_image(2))
  rng = lambda: np.random.default_rng(3)  # noqa: E731
  grown = copy_edits.rotate(image, rng(), max_degrees=30, quarter_turns=0.0)
  kept = copy_edits.rotate(image, rng(), max_degrees=30, quarter_turns=0.0, expand=False)
  assert grown.size != image.size and kept.size == image.size
  e = copy_edits.copy_edit_chain(image, rng(), {"pad": 1.0}, params={"pad": {"max_fraction": 0.0}})
  assert e.image.size == image.size  # No border at all.
  e = copy_edits.copy_edit_chain(image, rng(), {"crop": 1.0},
                                 params={"crop": {"area": (0.25, 0.25)}})
  assert e.information_amount == pytest.approx(0.25, abs=0.02)
  both = copy_edits.copy_edit_chain(image, rng(), {"text": 1.0, "text2": 1.0})
  assert both.edits == ["text", "text2"]


def test_bad_edits_and_parameters_are_named():
  with pytest.raises(ValueError, match=r"Unknown copy edit \['blurr'\].*blur"):
    copy_edits.check_edits({"blurr": 0.5})
  with pytest.raises(ValueError, match="'pad' is 1.5; give one in \\[0, 1\\]"):
    copy_edits.check_edits({"pad": 1.5})
  with pytest.raises(ValueError, match=r"'pad' has no parameter \['fraction'\].*max_fraction"):
    copy_edits.check_edits({"pad": 0.5}, {"pad": {"fraction": 0.1}})
  assert copy_edits.edit_parameters("underlay") == ("scale", "position")


def test_bad_train_edits_are_a_user_error_before_any_data(tmp_path):
  c = tiny_config(str(tmp_path / "never_built"))
  c.data.train_edits.crop = 0.5
  with pytest.raises(UserError, match="data.crop_area instead"):
    train.train(c, str(tmp_path / "run"))
  del c.data.train_edits["crop"]
  c.data.edit_params = {"blur": {"radius": 2.0}}
  with pytest.raises(UserError, match=r"data.edit_params: Copy edit 'blur' has no parameter"):
    train.train(c, str(tmp_path / "run"))
  assert not (tmp_path / "never_built").exists()


def test_the_paper_recipe_uses_bots_chain():
  c = load_config("ndec")
  e, p = c.data.train_edits, c.data.edit_params
  assert {k: e[k] for k in ("shuffle_pixels", "perspective", "underlay", "color_jitter",
                            "blur", "hflip", "text", "text2", "paste_onto")} == {
      "shuffle_pixels": 0.3, "perspective": 0.3, "underlay": 0.3, "color_jitter": 0.8,
      "blur": 1.0, "hflip": 0.5, "text": 0.3, "text2": 0.3, "paste_onto": 0.2}
  assert "jpeg" not in e and "resize" not in e
  assert tuple(p.color_jitter.strength) == (0.5, 0.5, 0.3, 0.2)
  copy_edits.check_edits(e, p)
  # Its views, at a small size, from the spec the pipeline builds.
  c.data.image_size = 40
  spec = input_pipeline.view_spec(c.data)
  views, amounts = input_pipeline.make_views(_image(4, 90, 120), np.random.default_rng(0), spec)
  assert views.shape == (4, 40, 40, 3) and views.dtype == np.uint8
  assert amounts[0] == 1.0 and np.all((amounts[1:] > 0.18) & (amounts[1:] <= 1.0))
