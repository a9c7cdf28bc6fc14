"""tools/convergence_study.py: jsonl parsing, commands, resume, table and plot from given records; one tiny run."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgb

STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "convergence_study.py")
study = importlib.util.module_from_spec(importlib.util.spec_from_file_location("convergence_study", STUDY))
study.__spec__.loader.exec_module(study)


def _write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def _run(evals):
    """A run record as collect_runs makes it, from (step, AP, AP50) triples."""
    return {"eval": [{"step": s, "AP": a, "AP50": b} for s, a, b in evals], "train": [], "wall_s": 1.0}


def test_read_jsonl_sorts_keeps_last_per_step_and_skips_a_cut_line(tmp_path):
    path = str(tmp_path / "eval_metrics.jsonl")
    _write_lines(path, ['{"step": 20, "AP": 0.2}', '{"step": 10, "AP": 0.1}', '{"step": 20, "AP": 0.25}',
                        '{"step": 30, "AP": 0.'])
    assert study.read_jsonl(path) == [{"step": 10, "AP": 0.1}, {"step": 20, "AP": 0.25}]
    assert study.read_jsonl(str(tmp_path / "missing.jsonl")) == []


def test_run_command_orders_keys_so_the_variant_wins_and_rejects_bad_input():
    cmd = study.run_command("configs/demo.py", "fcos_nms", 3, 300, 60, "W/fcos_nms/seed3",
                            ["num_eval_images=100", "test.nms=False"])
    assert cmd[1].endswith("train.py") and cmd[2:6] == ["--config", "configs/demo.py", "--workdir", "W/fcos_nms/seed3"]
    flags = cmd[6:]
    assert flags[:5] == ["--config.schedule.num_steps=300", "--config.schedule.decay_steps=(240,280)",
                         "--config.eval_every_steps=60", "--config.checkpoint_every_steps=60", "--config.seed=3"]
    # the user's test.nms=False comes before the variant's test.nms=True: the last flag wins in ml_collections
    assert flags.index("--config.test.nms=False") < flags.index("--config.test.nms=True")
    assert "--config.model.o2o=none" in flags and "--config.num_eval_images=100" in flags
    with pytest.raises(ValueError, match="key=value"):
        study.run_command("c.py", "poto", 0, 10, 5, "W", ["num_eval_images"])
    with pytest.raises(ValueError, match="Unknown variant"):
        study.run_command("c.py", "detr", 0, 10, 5, "W")


def test_variants_differ_only_in_branches_and_test_decoding():
    keys = {v: dict(k.split("=", 1) for k in overrides) for v, (_, overrides) in study.VARIANTS.items()}
    assert keys["date_fcos"] == {"model.o2o": "point", "model.o2m": "fcos", "test.nms": "False"}
    assert keys["date_retina"]["model.o2m"] == "retina" and keys["poto"]["model.o2m"] == "none"
    assert keys["fcos_nms"]["model.o2o"] == "none" and keys["fcos_nms"]["test.nms"] == "True"


def test_run_finished_needs_the_final_eval_and_the_same_command(tmp_path):
    run_dir = str(tmp_path / "poto" / "seed0")
    cmd = study.run_command("c.py", "poto", 0, 20, 10, run_dir)
    assert not study.run_finished(run_dir, cmd, 20)
    _write_lines(os.path.join(run_dir, study.RUN_FILE), [json.dumps({"command": cmd, "wall_s": 5.0})])
    _write_lines(os.path.join(run_dir, "eval_metrics.jsonl"), ['{"step": 10, "AP": 0.1}'])
    assert not study.run_finished(run_dir, cmd, 20)          # interrupted after the first evaluation: resume
    _write_lines(os.path.join(run_dir, "eval_metrics.jsonl"), ['{"step": 10, "AP": 0.1}', '{"step": 20, "AP": 0.2}'])
    assert study.run_finished(run_dir, cmd, 20)
    same_elsewhere = study.run_command("c.py", "poto", 0, 20, 10, os.path.relpath(run_dir))
    assert study.run_finished(run_dir, same_elsewhere, 20)   # the workdir's spelling is not a setting
    other = study.run_command("c.py", "poto", 0, 40, 10, run_dir)
    with pytest.raises(ValueError, match="other settings"):
        study.run_finished(run_dir, other, 40)


def test_pin_base_config_keeps_the_first_copy(tmp_path, capsys):
    config = tmp_path / "demo.py"
    config.write_text("A = 1\n")
    workdir = str(tmp_path / "study")
    os.makedirs(workdir)
    copy = study.pin_base_config(workdir, str(config))
    assert copy == os.path.join(workdir, "base_config.py") and open(copy).read() == "A = 1\n"
    config.write_text("A = 2\n")                         # edited while the study runs
    assert study.pin_base_config(workdir, str(config)) == copy and open(copy).read() == "A = 1\n"
    assert "changed since the study began" in capsys.readouterr().out


def test_collect_runs_reads_every_run_directory(tmp_path):
    for variant, seed, ap in (("poto", 0, 0.1), ("poto", 1, 0.3), ("date_fcos", 0, 0.5)):
        run_dir = tmp_path / variant / f"seed{seed}"
        _write_lines(str(run_dir / "eval_metrics.jsonl"), [json.dumps({"step": 10, "AP": ap, "AP50": 2 * ap})])
        _write_lines(str(run_dir / "train_metrics.jsonl"), [json.dumps({"step": 10, "loss": 1.0})])
        _write_lines(str(run_dir / study.RUN_FILE), [json.dumps({"command": [], "wall_s": 7.5})])
    os.makedirs(tmp_path / "poto" / "notes")                  # not a run directory
    runs = study.collect_runs(str(tmp_path))
    assert sorted(runs) == ["date_fcos", "poto"] and sorted(runs["poto"]) == [0, 1]
    assert runs["poto"][1]["eval"] == [{"step": 10, "AP": 0.3, "AP50": 0.6}]
    assert runs["poto"][1]["train"] == [{"step": 10, "loss": 1.0}] and runs["poto"][1]["wall_s"] == 7.5


def test_summarize_matches_numpy_over_seeds():
    runs = {"poto": {0: _run([(10, 0.10, 0.3), (20, 0.20, 0.5)]), 1: _run([(10, 0.16, 0.4), (20, 0.26, 0.6)]),
                     2: _run([(10, 0.13, 0.2)])}}
    summary = study.summarize(runs, "AP")["poto"]
    at10 = np.array([0.10, 0.16, 0.13])
    # 95% t quantiles by hand: 4.302653 (2 degrees of freedom), 12.706205 (1)
    np.testing.assert_allclose(summary[10], (at10.mean(), at10.std(ddof=1), 0.10, 0.16, 3,
                                             4.302653 * at10.std(ddof=1) / np.sqrt(3)), rtol=1e-6)
    np.testing.assert_allclose(summary[20], (0.23, np.std([0.2, 0.26], ddof=1), 0.20, 0.26, 2,
                                             12.706205 * 0.03), rtol=1e-6)


def test_t_interval_by_hand():
    mean, half = study.t_interval([1.0, 2.0, 3.0])       # std 1, se 1/sqrt(3), t(0.975, 2) = 4.302653
    assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    mean, half = study.t_interval([0.4])
    assert mean == 0.4 and np.isnan(half)


def test_paired_differences_use_only_seeds_both_variants_reached():
    runs = {"date_fcos": {0: _run([(10, 0.30, 0.5)]), 1: _run([(10, 0.20, 0.4)]), 2: _run([(10, 0.25, 0.6)])},
            "poto": {0: _run([(10, 0.10, 0.3)]), 1: _run([(10, 0.25, 0.3)]), 3: _run([(10, 0.9, 0.9)])}}
    d = study.paired_differences(runs, "date_fcos", "poto", "AP")[10]
    assert d["diffs"] == pytest.approx({0: 0.20, 1: -0.05}) and d["positive"] == 1
    assert d["mean"] == pytest.approx(0.075) and d["ci95"] == pytest.approx(12.706205 * 0.125, rel=1e-6)
    table = study.paired_table(runs, pairs=[("date_fcos", "poto"), ("date_retina", "poto")]).splitlines()
    assert table[0] == "| step | date_fcos − poto AP | date_fcos − poto AP50 |"       # absent variants: no column
    # AP: +7.5, CI 7.5 -/+ 158.8; AP50: diffs +0.2 and +0.1 -> +15.0 [15 -/+ 12.706205 * 5]
    assert table[2] == "| 10 | +7.5 [-151.3, +166.3] 1/2 | +15.0 [-48.5, +78.5] 2/2 |"


def test_markdown_table_single_and_several_seeds():
    runs = {"poto": {0: _run([(10, 0.101, 0.3), (20, 0.2, 0.5)])},
            "date_fcos": {0: _run([(10, 0.1, 0.2), (20, 0.3, 0.4)]), 1: _run([(10, 0.2, 0.4), (20, 0.5, 0.6)])}}
    table = study.markdown_table(runs).splitlines()
    # columns follow the VARIANTS order (date_fcos before poto) whatever the dict order
    assert table[0] == ("| step | DATE (POTO + FCOS o2m) AP | DATE (POTO + FCOS o2m) AP50 | POTO alone (o2o only) AP | "
                        "POTO alone (o2o only) AP50 |")
    assert table[1] == "|---|---|---|---|---|"
    # date_fcos step 10: AP mean 15.0, two seeds 10 points apart: se 5, 95% CI half-width 12.706205 * 5 = 63.5
    assert table[2] == "| 10 | 15.0 ± 63.5 | 30.0 ± 127.1 | 10.1 | 30.0 |"
    assert table[3] == "| 20 | 40.0 ± 127.1 | 50.0 ± 127.1 | 20.0 | 50.0 |"
    assert len(table) == 4


def test_markdown_table_leaves_missing_evaluations_empty():
    runs = {"poto": {0: _run([(10, 0.1, 0.2)])}, "fcos_nms": {0: _run([(10, 0.3, 0.4), (20, 0.5, 0.6)])}}
    assert study.markdown_table(runs).splitlines()[3] == "| 20 |  |  | 50.0 | 60.0 |"


def test_o2o_loss_table_averages_seeds_and_skips_variants_without_o2o():
    def train(records):
        return {"eval": [], "train": records, "wall_s": 0.0}
    runs = {"poto": {0: train([{"step": 20, "o2o_cls": 1.0, "o2o_box": 0.5, "o2o_iou": 0.25}]),
                     1: train([{"step": 20, "o2o_cls": 2.0, "o2o_box": 0.7, "o2o_iou": 0.75}])},
            "fcos_nms": {0: train([{"step": 20, "fcos_cls": 1.0}])},
            "date_fcos": {0: train([{"step": 20, "o2o_cls": 0.5, "o2o_box": 0.1, "o2o_iou": 0.2},
                                    {"step": 40, "o2o_cls": 0.25, "o2o_box": 0.05, "o2o_iou": 0.1}])}}
    table = study.o2o_loss_table(runs).splitlines()
    assert table[0] == ("| step | date_fcos o2o_cls | date_fcos o2o_box | date_fcos o2o_iou | poto o2o_cls | "
                        "poto o2o_box | poto o2o_iou |")
    assert table[2] == "| 20 | 0.500 | 0.100 | 0.200 | 1.500 | 0.600 | 0.500 |"
    assert table[3] == "| 40 | 0.250 | 0.050 | 0.100 |  |  |  |"
    assert len(table) == 4


def test_plot_curves_draws_the_mean_in_percent_with_a_confidence_band(tmp_path):
    runs = {"poto": {0: _run([(10, 0.1, 0.3), (20, 0.2, 0.5)]), 1: _run([(10, 0.3, 0.5), (20, 0.4, 0.7)])},
            "fcos_nms": {0: _run([(10, 0.05, 0.1)])}}
    path = str(tmp_path / "out" / "curves.png")
    fig = study.plot_curves(runs, path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ap_axes, ap50_axes = fig.axes               # no date_fcos: no paired panel
    lines = {line.get_label(): line for line in ap_axes.get_lines()}
    poto = lines["POTO alone (o2o only)"]
    np.testing.assert_allclose(poto.get_xdata(), [10, 20])
    np.testing.assert_allclose(poto.get_ydata(), [20.0, 30.0])
    np.testing.assert_allclose(lines["FCOS alone + NMS"].get_ydata(), [5.0])
    band = ap_axes.collections[0].get_paths()[0].vertices    # poto at 10: 20 -/+ 12.706205 * 10 (se of 10 and 30)
    np.testing.assert_allclose(ap_axes.collections[0].get_facecolor()[0][:3], to_rgb(poto.get_color()))
    assert band[:, 1].min() == pytest.approx(20 - 127.06205) and band[:, 1].max() == pytest.approx(30 + 127.06205)
    np.testing.assert_allclose({l.get_label(): l for l in ap50_axes.get_lines()}["POTO alone (o2o only)"].get_ydata(),
                               [40.0, 60.0])
    runs["date_fcos"] = {0: _run([(10, 0.2, 0.4), (20, 0.3, 0.6)]), 1: _run([(10, 0.3, 0.8), (20, 0.4, 0.9)])}
    fig = study.plot_curves(runs, path)
    paired = fig.axes[2]                        # AP50 of date_fcos - poto per seed: step 10: +0.1, +0.3; 20: +0.1, +0.2
    np.testing.assert_allclose(paired.get_lines()[0].get_ydata(), [20.0, 15.0])
    dots = np.concatenate([c.get_offsets() for c in paired.collections[1:]])
    np.testing.assert_allclose(sorted(dots[:, 1]), [10.0, 10.0, 20.0, 30.0])


@pytest.mark.slow
def test_tiny_study_end_to_end_then_resume_skips(tmp_path):
    """One variant, 2 steps on a 24-image synthetic set at 64 px: records, outputs; a second call trains nothing."""
    workdir = str(tmp_path / "study")
    sets = ["data.root=" + str(tmp_path / "synthetic"), "data.synthetic.num_train=24", "data.synthetic.num_val=4",
            "data.synthetic.image_size=64", "data.train_short_sizes=(64,)", "data.test_short_size=64",
            "data.max_size=96", "data.batch_size=4", "data.eval_batch_size=4", "optim.warmup_steps=1",
            "log_every_steps=1", "num_summary_images=0", "model.neck.out_channels=16", "model.head.feat_channels=16",
            "model.head.num_groups=4"]
    argv = [sys.executable, study.__file__, "--workdir", workdir, "--steps", "2", "--eval_every", "1",
            "--variants", "poto", *(a for s in sets for a in ("--set", s))]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    with open(os.path.join(workdir, "convergence.json")) as f:
        out = json.load(f)
    run = out["runs"]["poto"]["0"]
    assert [r["step"] for r in run["eval"]] == [1, 2] and all("AP50" in r for r in run["eval"])
    assert [r["step"] for r in run["train"]] == [1, 2] and "o2o_cls" in run["train"][0]
    assert "fcos_cls" not in run["train"][0] and run["wall_s"] > 0
    assert out["settings"]["steps"] == 2
    with open(os.path.join(workdir, "convergence.md")) as f:
        md = f.read()
    assert md.splitlines()[2].startswith("| step | POTO alone (o2o only) AP |") and "| poto o2o_cls |" in md
    assert os.path.getsize(os.path.join(workdir, "convergence.png")) > 1000
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and "finished before, skipped" in second.stdout, second.stdout + second.stderr
    assert os.path.isfile(os.path.join(workdir, "base_config.py"))
