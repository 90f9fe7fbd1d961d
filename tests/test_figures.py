"""Figures a paper could print (affectverse/evaluation/report.py): metric axes, κ, n, chance, intervals, one y-scale, titles,
legends outside the data, PNG at 200 dpi plus PDF, an imagination plot that shows step-to-step differences."""

import pytest

pytest.importorskip("matplotlib")

from affectverse.evaluation import report  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves (still inspectable after report._save closes it)."""
    kept, original = [], report._save

    def keep(fig, path):
        kept.append(fig)
        return original(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return kept


def _result(bench, modality, kappa, score, task="emotion", ci=None):
    entry = {"benchmark": bench, "task": task, "modality": modality, "keep_ratio": kappa, "n": 24,
             "setting": {"avt": "A+V+T", "vt": "V+T", "at": "A+T"}[modality],
             "ablation": {"avt": "Full", "vt": "No Audio", "at": "No Video"}[modality],
             "main_score": None, "closed_set_score": score, "label_set": ["happy", "sad", "angry", "neutral"],
             "closed_set_metric": "weighted F1 over the label set"}
    if ci:
        entry["closed_set_score_ci"] = ci
    return entry


def _inside(inner, outer):
    return inner.x0 >= outer.x0 and inner.x1 <= outer.x1 and inner.y0 >= outer.y0 and inner.y1 <= outer.y1


def test_robustness_figure_is_printable(tmp_path, figures):
    results = [_result(b, m, k, s, ci=(s - 5, s + 4)) for b, base in (("meld", 40.0), ("manifest", 70.0))
               for m in ("avt", "vt") for k, s in ((1.0, base), (0.5, base - 10))]
    png = report.plot_robustness(results, tmp_path / "robustness.png", names={"manifest": "generated clips"})
    assert png.is_file() and png.with_suffix(".pdf").is_file()
    from PIL import Image

    with Image.open(png) as image:
        assert round(image.info["dpi"][0]) == 200
    fig = figures[-1]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
    assert [ax.get_title() for ax in axes] == ["MELD", "generated clips"]  # the benchmark's name, not "manifest"
    assert all(ax.get_ylabel() == "weighted F1 %" and "κ" in ax.get_xlabel() for ax in axes)
    assert len({ax.get_ylim() for ax in axes}) == 1  # one y-scale across the panels
    low, high = axes[0].get_ylim()
    assert low <= 25.0 <= high and low <= 25.0 and high >= 74.0  # chance, every interval end inside
    assert any(list(line.get_ydata()) == [25.0, 25.0] for line in axes[0].lines)  # the chance line
    assert any(child.__class__.__name__ == "LineCollection" for child in axes[0].get_children())  # error bars
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("n=24" in t for t in labels) and any(t.startswith("chance (25%)") for t in labels)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # report._save closed it: draw it again off-screen
    assert not any(legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)) for ax in axes)


def test_imagination_figure_shows_step_to_step_differences(tmp_path, figures):
    result = {"keep_ratio": 0.7, "n_clips": 8, "cosine_per_step": [0.9233, 0.9243, 0.9241],
              "cosine_ci": [[0.921, 0.925], [0.922, 0.926], [0.922, 0.926]],
              "mse_per_step": [0.10, 0.11, 0.12], "mse_ci": [[0.09, 0.11], [0.10, 0.12], [0.11, 0.13]]}
    report.plot_imagination(result, tmp_path / "imagination.png")
    assert (tmp_path / "imagination.pdf").is_file()
    fig = figures[-1]
    cos_ax, mse_ax = fig.axes
    low, high = cos_ax.get_ylim()
    assert high - low < 0.02  # zoomed: the 0.001 differences are visible, not three equal bars on 0-1
    assert low < 0.921 and high > 0.926
    assert not cos_ax.patches  # a dot plot, not bars
    assert {t.get_text() for t in cos_ax.texts} == {"0.9233", "0.9243", "0.9241"}
    title = fig._suptitle.get_text()
    assert "MSE" in mse_ax.get_ylabel() and "κ = 0.7" in title and "n = 8" in title


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    import numpy as np

    rng = np.random.default_rng(0)
    small, large = rng.random(20), rng.random(2000)
    lo_s, hi_s = report.bootstrap_interval(lambda i: float(small[i].mean()), len(small))
    lo_l, hi_l = report.bootstrap_interval(lambda i: float(large[i].mean()), len(large))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert report.bootstrap_interval(lambda i: 0.0, 0) is None


def test_report_names_a_manifest_by_its_folder_and_tabulates_imagination():
    assert report.manifest_title("/data/temporal_clips/manifest.csv") == "temporal_clips (manifest)"
    assert report.manifest_title("runs/meld_subset.jsonl") == "meld_subset (manifest)"
    table = report.imagination_table({"keep_ratio": 0.7, "n_clips": 8, "cosine_per_step": [0.9233, 0.9243],
                                      "cosine_ci": [[0.921, 0.925], [0.922, 0.926]], "mse_per_step": [0.1, 0.11],
                                      "mse_ci": [[0.09, 0.11], [0.1, 0.12]]})
    assert "| step 2 | 0.9243 [0.9220, 0.9260] | 0.1100 [0.1000, 0.1200] |" in table
    assert "κ = 0.7 on 8 held-out clips" in table


def test_percent_axes_span_at_least_ten_points():
    """Before: a panel whose scores were all 0 spanned 0-0.001 %, so noise read as a trend."""
    assert report._limits([0.0, 0.0], floor=0.0, ceil=100.0, min_span=10.0) == (0.0, 10.0)
    assert report._limits([99.0, 100.0], floor=0.0, ceil=100.0, min_span=10.0) == (90.0, 100.0)
    lo, hi = report._limits([0.90, 0.92])  # the imagination figure stays zoomed
    assert hi - lo < 0.1
