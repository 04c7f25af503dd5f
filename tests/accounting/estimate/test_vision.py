import pytest

from proxy.accounting.estimate.vision import figure_tiles, tiles_for_size, vision_rule


@pytest.mark.parametrize(
    ("size", "tiles"),
    [
        ((512, 512), 4),  # scaled up to a 768 short side too
        ((1024, 1024), 4),  # OpenAI's worked example: 768 x 768, 4 tiles
        ((2048, 4096), 6),  # 1024 x 2048 -> 768 x 1536: 2 x 3
        ((640, 480), 4),  # matplotlib's default figure: 1024 x 768
        ((1000, 600), 6),  # figsize (10, 6): 1280 x 768
        ((100, 100), 4),
        ((0, 100), 0),
    ],
)
def test_tiles_follow_the_published_scaling(size, tiles):
    assert tiles_for_size(*size) == tiles


def test_gpt_4o_mini_counts_images_at_about_33_times_the_tokens():
    assert vision_rule("gpt-4o") == (85, 170)
    assert vision_rule("gpt-4o-2024-08-06") == (85, 170)
    assert vision_rule("gpt-4o-mini") == (2833, 5667)
    assert vision_rule("my-gpt-4o-mini-deployment") == (2833, 5667)
    assert vision_rule(None) == (85, 170)


@pytest.mark.parametrize(
    ("code", "tiles"),
    [
        ("plt.figure(figsize=(10, 6))\nplt.plot(x)", 6),
        ("fig, ax = plt.subplots(figsize = [8,6])", 4),
        ("plt.figure(figsize=(10, 6), dpi=200)", 6),  # 2000 x 1200 -> 1280 x 768
        ("plt.figure(figsize=(4, 2), dpi=50)", 6),  # 200 x 100 -> 1536 x 768
        ("plt.plot(x)", None),
        ("figsize=(1e999, 2)", None),
    ],
)
def test_a_figure_whose_code_gives_its_size(code, tiles):
    assert figure_tiles(code) == tiles
