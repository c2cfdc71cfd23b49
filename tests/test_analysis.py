"""Tests for rsjax.analysis and experiments/analyze.py: hand-computed oracles, both time formats,
header validation, the markdown table, the PNG and the CLI end to end."""

import datetime
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rsjax import analysis

REPO = pathlib.Path(__file__).resolve().parents[1]

# Ten rows: six correct (radii 0.812, 0.25, 0.5, 1.5, 0.1, 2.01), two abstains, and two wrong
# predictions, one of them with a large radius that must not count.
HAND_TSV = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.812\t1\t0.5
1\t7\t7\t0.25\t1\t0.25
2\t1\t1\t0.5\t1\t1.0
3\t2\t-1\t0.0\t0\t0.125
4\t4\t9\t1.2\t0\t0.5
5\t0\t0\t1.5\t1\t0.25
6\t5\t5\t0.1\t1\t0.375
7\t6\t-1\t0.0\t0\t0.5
8\t8\t8\t2.01\t1\t0.5
9\t9\t3\t0.3\t0\t1.0

"""
# By hand: acc(r) = #{correct and radius >= r} / 10.
HAND_ACC = {0.0: 0.6, 0.25: 0.5, 0.5: 0.4, 0.75: 0.3, 1.0: 0.2, 1.5: 0.2, 2.0: 0.1, 2.5: 0.0}
HAND_ACR = (0.812 + 0.25 + 0.5 + 1.5 + 0.1 + 2.01) / 10  # 0.5172

# As written by Cohen et al.'s PyTorch code: time = str(datetime.timedelta).
TORCH_TSV = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t7\t7\t0.953\t1\t0:00:15.123456
20\t2\t-1\t0.0\t0\t0:00:03
40\t1\t1\t0.25\t1\t1 day, 0:00:01.5
"""


@pytest.fixture
def hand_path(tmp_path):
    path = tmp_path / "hand.tsv"
    path.write_text(HAND_TSV)
    return path


@pytest.fixture
def torch_path(tmp_path):
    path = tmp_path / "torch.tsv"
    path.write_text(TORCH_TSV)
    return path


def test_read_hand_tsv(hand_path):
    res = analysis.read_tsv(hand_path)
    np.testing.assert_array_equal(res.idx, np.arange(10))
    np.testing.assert_array_equal(res.predict, [3, 7, 1, -1, 9, 0, 5, -1, 8, 3])
    assert res.radius.dtype == np.float64 and res.time.dtype == np.float64
    assert res.correct.dtype == bool and res.correct.sum() == 6
    assert res.radius[8] == 2.01


def test_hand_metrics(hand_path):
    res = analysis.read_tsv(hand_path)
    radii = list(HAND_ACC)
    np.testing.assert_allclose(analysis.certified_accuracy(res, radii), list(HAND_ACC.values()))
    assert analysis.average_certified_radius(res) == pytest.approx(HAND_ACR, rel=1e-12)
    summary = analysis.summarize(res, radii)
    assert summary["n"] == 10
    assert summary["certified_accuracy"] == pytest.approx(HAND_ACC)
    assert summary["acr"] == pytest.approx(0.5172)
    assert summary["abstain_rate"] == pytest.approx(0.2)
    assert summary["clean_accuracy"] == pytest.approx(0.6)
    assert summary["mean_time_s"] == pytest.approx(5.0 / 10)
    assert summary["total_time_s"] == pytest.approx(5.0)


def test_curve_matches_naive_loop():
    """The searchsorted curve against a deliberately naive loop, ties on grid points included."""
    rng = np.random.default_rng(0)
    n = 200
    radius = np.round(rng.uniform(0, 2, n), 2)
    predict = rng.integers(-1, 3, n)
    label = rng.integers(0, 3, n)
    correct = predict == label
    res = analysis.CertResults(np.arange(n), label, predict, radius, correct, np.zeros(n))
    grid = np.linspace(0, 2.2, 221)  # hits the rounded radii exactly
    naive = [sum(c and r >= g for c, r in zip(correct, radius, strict=True)) / n for g in grid]
    np.testing.assert_allclose(analysis.certified_accuracy_curve(res, grid), naive)
    curve = analysis.certified_accuracy_curve(res, grid)
    assert np.all(np.diff(curve) <= 0)
    assert analysis.certified_accuracy_curve(res, 0.5).shape == ()


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0.0123", 0.0123),
        ("12", 12.0),
        ("0:00:15.123456", 15.123456),
        ("0:00:03", 3.0),
        ("1 day, 0:00:01.5", 86401.5),
        ("3 days, 12:34:56.000001", 3 * 86400 + 12 * 3600 + 34 * 60 + 56.000001),
        ("27:00:00", 97200.0),
    ],
)
def test_parse_time(text, seconds):
    assert analysis.parse_time(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "td",
    [
        datetime.timedelta(seconds=15, microseconds=123456),
        datetime.timedelta(seconds=3),
        datetime.timedelta(days=1, seconds=1, microseconds=500000),
        datetime.timedelta(days=2, hours=23, minutes=59, seconds=59, microseconds=1),
        datetime.timedelta(0),
    ],
)
def test_parse_time_inverts_str_timedelta(td):
    assert analysis.parse_time(str(td)) == pytest.approx(td.total_seconds(), abs=1e-9)


@pytest.mark.parametrize("text", ["", "abc", "1:2", "0:61:00", "-1.0", "nan", "-1 day, 23:59:59"])
def test_parse_time_rejects(text):
    with pytest.raises(ValueError, match="invalid time"):
        analysis.parse_time(text)


def test_read_torch_tsv(torch_path):
    res = analysis.read_tsv(torch_path)
    np.testing.assert_allclose(res.time, [15.123456, 3.0, 86401.5])
    np.testing.assert_array_equal(res.idx, [0, 20, 40])
    np.testing.assert_allclose(
        analysis.certified_accuracy(res, [0, 0.25, 0.5, 1.0]), [2 / 3, 2 / 3, 1 / 3, 0]
    )
    assert analysis.average_certified_radius(res) == pytest.approx((0.953 + 0.25) / 3)


def test_bad_header_names_column_and_file(tmp_path):
    path = tmp_path / "bad_header.tsv"
    path.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0.1\n")
    with pytest.raises(ValueError) as err:
        analysis.read_tsv(path)
    assert "radius" in str(err.value) and str(path) in str(err.value)


def test_space_separated_header_is_rejected(tmp_path):
    path = tmp_path / "spaces.tsv"
    path.write_text("idx label predict radius correct time\n0 1 1 0.5 1 0.1\n")
    with pytest.raises(ValueError, match="missing column"):
        analysis.read_tsv(path)


def test_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad_row.tsv"
    path.write_text(HAND_TSV.replace("5\t0\t0\t1.5\t1\t0.25", "5\t0\t0\tone\t1\t0.25"))
    with pytest.raises(ValueError, match=r"bad_row\.tsv:7: column radius"):
        analysis.read_tsv(path)
    path.write_text(HAND_TSV.replace("5\t0\t0\t1.5\t1\t0.25", "5\t0\t0\t1.5\t1"))
    with pytest.raises(ValueError, match=r"bad_row\.tsv:7: expected 6"):
        analysis.read_tsv(path)


def test_column_order_crlf_and_inconsistent_correct(tmp_path):
    path = tmp_path / "reordered.tsv"
    path.write_text(
        "label\tidx\tradius\tpredict\ttime\tcorrect\textra\r\n3\t0\t0.5\t3\t1.0\t1\tx\r\n\r\n"
    )
    res = analysis.read_tsv(path)
    assert (res.idx[0], res.label[0], res.radius[0], bool(res.correct[0])) == (0, 3, 0.5, True)
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t4\t0.5\t1\t1.0\n")
    with pytest.warns(UserWarning, match="correct != "):
        analysis.read_tsv(path)


def test_empty_results_raise(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    res = analysis.read_tsv(path)
    assert len(res.idx) == 0
    with pytest.raises(ValueError, match="no examples"):
        analysis.summarize(res)


def test_markdown_table(hand_path, torch_path):
    runs = {"hand": analysis.read_tsv(hand_path), "torch": analysis.read_tsv(torch_path)}
    table = analysis.markdown_table(runs, [0, 0.25, 0.5, 1.0])
    assert table == (
        "| run | r=0 | r=0.25 | r=0.5 | r=1 | ACR | n |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| hand | 0.600 | 0.500 | 0.400 | 0.200 | 0.517 | 10 |\n"
        "| torch | 0.667 | 0.667 | 0.333 | 0.000 | 0.401 | 3 |\n"
    )


def test_import_does_not_import_matplotlib():
    """Neither module imports matplotlib until a figure is drawn (rsjax.plots)."""
    code = (
        "import sys, rsjax.analysis, rsjax.plots; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=REPO)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return env


def test_cli_end_to_end(hand_path, torch_path, tmp_path):
    md, png, js = tmp_path / "out.md", tmp_path / "out.png", tmp_path / "out.json"
    cmd = [sys.executable, "experiments/analyze.py", str(hand_path), str(torch_path)]
    cmd += ["--labels", "a", "b", "--radii", "0", "0.5", "1.0"]
    cmd += ["--markdown", str(md), "--plot", str(png), "--json", str(js)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == md.read_text()
    assert "| a | 0.600 | 0.400 | 0.200 | 0.517 | 10 |" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = json.loads(js.read_text())
    assert set(summary) == {"a", "b"}
    assert summary["a"]["certified_accuracy"] == {"0.0": 0.6, "0.5": 0.4, "1.0": 0.2}
    assert summary["a"]["acr"] == pytest.approx(HAND_ACR)
    assert summary["b"]["mean_time_s"] == pytest.approx((15.123456 + 3 + 86401.5) / 3)
    assert summary["b"]["path"] == str(torch_path)


def test_cli_rejects_label_count(hand_path):
    cmd = [sys.executable, "experiments/analyze.py", str(hand_path), "--labels", "a", "b"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "labels" in proc.stderr


def test_affine_margin_is_the_distance_to_the_nearest_boundary():
    # A 3-class affine classifier on R^5: moving from x towards the nearest boundary, the class holds
    # to 0.999 of the margin and has changed at 1.001 of it.
    rng = np.random.default_rng(0)
    A, c = rng.normal(size=(3, 5)), rng.normal(size=3)
    x = rng.normal(size=(6, 5))
    pred, margin = analysis.affine_margins(x @ A.T + c, A)
    np.testing.assert_array_equal(pred, (x @ A.T + c).argmax(1))
    for i in range(len(x)):
        z = A @ x[i] + c
        others = [j for j in range(3) if j != pred[i]]
        dists = [(z[pred[i]] - z[j]) / np.linalg.norm(A[pred[i]] - A[j]) for j in others]
        j = others[int(np.argmin(dists))]
        direction = (A[j] - A[pred[i]]) / np.linalg.norm(A[j] - A[pred[i]])
        np.testing.assert_allclose(margin[i], min(dists), rtol=1e-12)
        assert (A @ (x[i] + 0.999 * margin[i] * direction) + c).argmax() == pred[i]
        assert (A @ (x[i] + 1.001 * margin[i] * direction) + c).argmax() != pred[i]


def test_compare_to_margins_counts_radii_beyond_the_margin():
    pred = np.array([0, 1, 2, 0])
    margin = np.array([0.5, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 1, 0])  # the linear classifier is wrong on image 2
    results = analysis.CertResults(
        idx=np.array([0, 1, 2, 3]),
        label=labels,
        predict=np.array([0, 1, 1, -1]),
        radius=np.array([0.7, 0.1, 0.6, 0.0]),
        correct=np.array([True, True, True, False]),
        time=np.zeros(4),
    )
    s = analysis.compare_to_margins(pred, margin, labels, results)
    assert s["linear_accuracy"] == 0.75 and s["certified_accuracy"] == 0.75
    np.testing.assert_allclose(s["linear_mean_margin"], (0.5 + 0.2 + 0.4) / 4)
    np.testing.assert_allclose(s["acr"], (0.7 + 0.1 + 0.6) / 4)
    assert s["both_correct"] == 2 and s["beyond_margin"] == 0.5
    np.testing.assert_allclose([s["median_margin_both"], s["median_radius_both"]], [0.35, 0.4])


def test_sequential_columns_and_comparison(tmp_path):
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    fixed = tmp_path / "fixed.tsv"
    fixed.write_text(f"{head}\n0\t1\t1\t0.5\t1\t1.0\n1\t2\t2\t0.3\t1\t1.0\n2\t0\t-1\t0\t0\t1.0\n")
    seq = tmp_path / "seq.tsv"
    seq.write_text(
        f"{head}\tnum_samples\n0\t1\t1\t0.49\t1\t0.1\t1300\n1\t2\t2\t0.3\t1\t0.2\t900\n"
        "2\t0\t-1\t0\t0\t0.1\t300\n"
    )
    a, b = analysis.read_tsv(fixed), analysis.read_tsv(seq)
    assert a.num_samples is None and list(b.num_samples) == [1300, 900, 300]
    summary = analysis.summarize(b, (0.0, 0.5))
    assert summary["mean_samples"] == pytest.approx(2500 / 3) and summary["median_samples"] == 900
    assert "mean_samples" not in analysis.summarize(a, (0.0,))
    cmp = analysis.compare_sequential(a, b, (0.0, 0.25, 0.5), fixed_samples=100_100)
    assert cmp["certified_accuracy"]["fixed"][0.5] == pytest.approx(1 / 3)
    assert cmp["certified_accuracy"]["sequential"][0.5] == 0.0
    assert cmp["worst_gap"] == pytest.approx(-1 / 3)
    assert cmp["sample_ratio"] == pytest.approx(100_100 / (2500 / 3))
    assert cmp["time_ratio"] == pytest.approx(3.0 / 0.4)
    with pytest.raises(ValueError, match="no num_samples column"):
        analysis.compare_sequential(a, a)
    with pytest.raises(ValueError, match="same indices"):
        analysis.compare_sequential(a, b._replace(idx=b.idx[::-1]))


def test_seeds_cli_groups_runs_over_seeds(tmp_path):
    """Two seeds of one run: seed 1 is seed 0 with image 1's prediction made wrong, so acc(0) is
    0.6 and 0.5 (mean 0.55, half range 0.05) and the ACR drops by 0.025 (radius 0.25 / 10)."""
    worse = HAND_TSV.replace("1\t7\t7\t0.25\t1\t0.25", "1\t7\t2\t0.25\t0\t0.25")
    for seed, text in (("seed0", HAND_TSV), ("seed1", worse)):
        folder = tmp_path / seed / "gaussian" / "certify"
        folder.mkdir(parents=True)
        (folder / "cohen.tsv").write_text(text)
    md, js = tmp_path / "seeds.md", tmp_path / "seeds.json"
    cmd = [sys.executable, "experiments/analyze.py", "--seeds", str(tmp_path), "--radii", "0", "1"]
    cmd += ["--markdown", str(md), "--json", str(js)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    acr = (HAND_ACR + HAND_ACR - 0.025) / 2
    row = f"| gaussian/cohen | 0.550 ± 0.050 | 0.200 ± 0.000 | {acr:.3f} ± 0.013 | 2 | 10 |"
    assert row in md.read_text()
    summary = json.loads(js.read_text())["gaussian/cohen"]
    assert summary["seed1"]["certified_accuracy"]["0.0"] == 0.5
    ragged = tmp_path / "seed1" / "gaussian" / "certify" / "cohen.tsv"
    ragged.write_text("\n".join(worse.splitlines()[:-3]) + "\n")
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "different numbers of rows" in proc.stderr


def test_paired_difference_by_hand(hand_path):
    """The hand run against itself with image 1 made wrong (its 0.25 lost) and image 6's radius
    raised from 0.1 to 0.4, rows shuffled: d = (+0.25 on image 1, -0.3 on image 6, 0 elsewhere)."""
    a = analysis.read_tsv(hand_path)
    b = a._replace(
        predict=np.where(a.idx == 1, 2, a.predict),
        correct=np.where(a.idx == 1, False, a.correct),
        radius=np.where(a.idx == 6, 0.4, a.radius),
    )
    b = analysis.CertResults(*(np.asarray(col)[::-1] for col in b[:6]))  # order must not matter
    p = analysis.paired_difference(a, b, (0.0, 0.25, 0.4))
    d = np.zeros(10)
    d[1], d[6] = 0.25, -0.3
    assert p.n == 10 and p.larger == 1 and p.smaller == 1
    assert p.acr == pytest.approx(d.mean())
    assert p.acr == pytest.approx(-0.005)
    assert p.acr == pytest.approx(
        analysis.average_certified_radius(a) - analysis.average_certified_radius(b)
    )
    assert p.acr_se == pytest.approx(np.std(d, ddof=1) / np.sqrt(10))
    # acc_a - acc_b: image 1 counts for a up to 0.25; image 6 counts for b at r = 0.25 and 0.4.
    assert p.certified_accuracy == pytest.approx({0.0: 0.1, 0.25: 0.0, 0.4: -0.1})
    same = analysis.paired_difference(a, a)
    assert same.acr == 0.0 and same.acr_se == 0.0 and same.larger == same.smaller == 0


def test_paired_difference_refuses_unmatched_rows(hand_path):
    a = analysis.read_tsv(hand_path)
    shifted = a._replace(idx=a.idx + 1)
    with pytest.raises(ValueError, match="1 idx only in a .first \\[0\\]., 1 only in b"):
        analysis.paired_difference(a, shifted)
    repeated = a._replace(idx=np.where(a.idx == 9, 8, a.idx))
    with pytest.raises(ValueError, match="run b lists an idx more than once"):
        analysis.paired_difference(a, repeated)


def test_paired_cli_in_both_modes(hand_path, tmp_path):
    """--paired on labelled files and, with --seeds, per seed; an unknown label is an error."""
    worse = HAND_TSV.replace("1\t7\t7\t0.25\t1\t0.25", "1\t7\t2\t0.25\t0\t0.25")
    worse_path = tmp_path / "worse.tsv"
    worse_path.write_text(worse)
    cmd = [sys.executable, "experiments/analyze.py", str(hand_path), str(worse_path)]
    cmd += ["--labels", "a", "b", "--radii", "0", "--paired", "a", "b"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| a - b | +0.100 | +0.025 | 0.025 | 1 / 0 | 10 |" in proc.stdout
    bad = subprocess.run(
        cmd[:-2] + ["a", "c"], cwd=REPO, env=_env(), capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0 and "no run labelled 'c'" in bad.stderr
    for seed in ("seed0", "seed1"):
        for name, text in (("adre", HAND_TSV), ("gaussian", worse)):
            folder = tmp_path / "runs" / seed / name / "certify"
            folder.mkdir(parents=True)
            (folder / "cohen.tsv").write_text(text)
    cmd = [sys.executable, "experiments/analyze.py", "--seeds", str(tmp_path / "runs")]
    cmd += ["--radii", "0", "--paired", "adre/cohen", "gaussian/cohen"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for seed in ("seed0", "seed1"):
        assert f"| adre/cohen - gaussian/cohen ({seed}) | +0.100 | +0.025 |" in proc.stdout


def test_doubled_rows_are_refused(tmp_path):
    """Two writers on one output (before rsjax.locks) doubled every row; analysis must not count
    20 images as 40."""
    rows = HAND_TSV.strip().split("\n")
    path = tmp_path / "doubled.tsv"
    path.write_text("\n".join(rows + rows[1:]) + "\n")
    with pytest.raises(ValueError, match=r"doubled\.tsv: idx 0 appears more than once \(row 11\)"):
        analysis.read_tsv(path)
