"""``harnet ablate``: rows x seeds as resumable runs, then a mean ± std table, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harnet.tools.ablation import (
    ROW_NAMES,
    Ablation,
    AblationRow,
    custom_row,
    markdown,
    plan,
    run_ablation,
    summarize,
    train_job,
    write_report,
)
from harnet.tools.cli import main
from tests_support import tiny_overrides

ROWS = ["torchvision_retinanet", "retinanet", "hybrid"]


def test_plan_is_seed_major_and_covers_the_paper_rows(tmp_path: Path) -> None:
    specs = plan(tmp_path, [0, 1])
    assert [s.seed for s in specs] == [0] * len(ROW_NAMES) + [1] * len(ROW_NAMES)
    assert {"retinanet", "spatial", "channel", "aligned", "hybrid", "torchvision_retinanet",
            "hybrid_no_spatial", "hybrid_no_channel", "hybrid_no_aligned", "hybrid_no_dual"} == set(ROW_NAMES)
    assert specs[0].run_dir == tmp_path / specs[0].row.name / "seed0"


def test_a_stopped_run_resumes_and_one_without_a_checkpoint_starts_over(tmp_path: Path) -> None:
    """Run folders are never reused silently: ablate resumes its own runs (last.pt) and restarts, with
    --overwrite, those stopped before their first checkpoint (config.yaml but nothing to resume)."""
    spec = plan(tmp_path, [0], ["hybrid"])[0]
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.yaml").write_text("{}")
    job = train_job(spec, tmp_path / "c.yaml", [], "cpu", None)
    assert not job.resume and job.config == tmp_path / "c.yaml" and f"output_dir={spec.run_dir}" in job.overrides
    (spec.run_dir / "last.pt").write_bytes(b"")
    job = train_job(spec, tmp_path / "c.yaml", [], "cpu", None)
    assert job.resume and job.config == spec.run_dir / "config.yaml"


@pytest.mark.slow
def test_ablation_runs_resumes_and_reports(shapes_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(shapes_root, tmp_path / "unused"), "model.loss.box_loss=l1", "train.max_steps=2",
                 "train.eval_every=1", "model.head.norm=gn", "model.head.norm_groups=8", "model.channel.gn_groups=8",
                 "model.head.num_convs=4"]
    config = tmp_path / "tiny.yaml"
    config.write_text("train: {threads: 1}\n")
    out = tmp_path / "ablate"
    done = run_ablation(config, out, seeds=[0], rows=ROWS, overrides=overrides, jobs=2, device="cpu",
                        log=lambda m: None, soft_nms=True)
    assert sorted(d["row"] for d in done) == sorted(ROWS)
    # The authors' test recipe scored each HAR-Net run (torchvision's RetinaNet has hard NMS only).
    assert (out / "hybrid" / "seed0" / "soft_nms" / "metrics.json").is_file()
    assert not (out / "torchvision_retinanet" / "seed0" / "soft_nms").exists()
    assert all(d["steps"] == 2 and [s for s, _ in d["curve"]] == [1, 2] for d in done)
    assert all(d["stopped_by"] == "max_steps" and d["train_seconds"] > 0 for d in done)
    assert "run folder:" in (out / "hybrid" / "seed0" / "train.log").read_text()
    # Finished runs are not redone: done.json (and the run's log) stay untouched.
    stamp = (out / "hybrid" / "seed0" / "done.json").stat().st_mtime_ns
    again = run_ablation(config, out, seeds=[0], rows=ROWS, overrides=overrides, device="cpu", log=lambda m: None)
    assert len(again) == 3 and (out / "hybrid" / "seed0" / "done.json").stat().st_mtime_ns == stamp

    summary = summarize(out, [0], ROWS, latency_repeats=1)
    by_name = {e["name"]: e for e in summary["rows"]}
    assert by_name["retinanet"]["params_m"] == pytest.approx(by_name["torchvision_retinanet"]["params_m"])
    assert by_name["hybrid"]["gflops"] > by_name["retinanet"]["gflops"]
    table = markdown(summary)
    assert "| hybrid |" in table and "hybrid vs retinanet" in table and "± 0.0" in table
    assert by_name["hybrid"]["soft_nms_AP"]["seeds"] == 1 and "AP Soft-NMS + voting" in table
    write_report(out, summary, "tiny")
    assert (out / "ap_vs_step.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["rows"][0]["name"] == "torchvision_retinanet"


def test_report_only_cli_on_finished_runs(tmp_path: Path) -> None:
    """--report-only rebuilds the report from done.json files and trains nothing."""
    config = tmp_path / "c.yaml"
    config.write_text("model: {backbone: {name: resnet18}, fpn: {channels: 16}, channel: {gn_groups: 8},"
                      " aligned: {mid_channels: 16, gn_groups: 8}, transform: {min_size: [64], max_size: 64}}\n")
    for row, ap in (("retinanet", 0.10), ("hybrid", 0.15), ("hybrid_control", 0.12), ("two_phase", 0.13)):
        run = tmp_path / "out" / row / "seed0"
        run.mkdir(parents=True)
        preset = "retinanet" if row == "retinanet" else "hybrid"
        (run / "config.yaml").write_text(config.read_text().replace("model: {", f"model: {{preset: {preset}, ")
                                         .replace("fpn:", "num_classes: 3, fpn:"))
        stats = {k: ap for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        (run / "done.json").write_text(json.dumps({"row": row, "seed": 0, "stats": stats,
                                                   "curve": [[5, ap]], "steps": 5}))
        (run / "soft_nms").mkdir()
        (run / "soft_nms" / "metrics.json").write_text(json.dumps({"stats": {"AP": ap + 0.01}}))
    argv = ["ablate", "--config", str(config), "--seeds", "1", "--rows", "retinanet", "hybrid", "--report-only",
            "--row", "hybrid_control", "model.preset=hybrid",
            "--row", "two_phase", "model.preset=hybrid", "train.init_from={out}/retinanet/seed{seed}",
            "--out", str(tmp_path / "out"), "--latency-repeats", "0", "--device", "cpu"]
    assert main(argv) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| hybrid | 15.0 ± 0.0" in text and "+5.0" in text and "misses the +2.0 target" not in text
    assert "| 16.0 ± 0.0 (1) | +5.0 |" in text and "with Soft-NMS + voting +5.0" in text
    assert "- hybrid vs hybrid_control: +3.0 AP" in text
    assert "| 0.3 | - | 1 |" in text  # --latency-repeats 0: no latency measured
    # A two-phase row is drawn from where the run it started from ended.
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["rows"][-1]["starts_from"] == {"row": "retinanet", "steps": 5}


def test_custom_rows_are_planned_after_the_chosen_rows_with_seed_and_out_filled_in(tmp_path: Path) -> None:
    """``--row NAME KEY=VALUE ...``: a named variant (or the second phase of two-phase training) beside the
    paper's rows; ``{seed}``/``{out}`` become the run's seed and the ablation folder."""
    control = custom_row("control", ["model.preset=retinanet"])
    two_phase = custom_row("two_phase", ["model.preset=hybrid", "train.init_from={out}/retinanet/seed{seed}"])
    assert two_phase.init_from_row == "retinanet" and two_phase.overrides == ("model.preset=hybrid",)
    assert control.init_from_row is None
    specs = plan(tmp_path, [0, 1], ["retinanet"], [two_phase, control])
    # A run that starts from another comes after every independent one (it would hold a job slot waiting).
    assert [(s.row.name, s.seed) for s in specs] == [("retinanet", 0), ("control", 0), ("retinanet", 1),
                                                     ("control", 1), ("two_phase", 0), ("two_phase", 1)]
    assert specs[5].after == tmp_path / "retinanet" / "seed1" and specs[0].after is None
    assert [s.row.name for s in plan(tmp_path, [0], None, [two_phase])] == ["two_phase"]
    job = train_job(specs[5], tmp_path / "c.yaml", [], "cpu", None)
    assert f"train.init_from={tmp_path}/retinanet/seed1" in job.overrides
    with pytest.raises(ValueError, match="new name"):
        custom_row("hybrid", ["model.preset=hybrid"])
    with pytest.raises(ValueError, match="row's own runs"):
        custom_row("loop", ["train.init_from={out}/loop/seed{seed}"])
    # Any other init_from is a plain override: a checkpoint from elsewhere, nothing to wait for.
    elsewhere = custom_row("fine_tune", ["train.init_from=/models/base.pt"])
    assert elsewhere.init_from_row is None and elsewhere.overrides == ("train.init_from=/models/base.pt",)


def test_the_dependency_is_the_rows_init_from_row_field(tmp_path: Path) -> None:
    """A row (built-in or not) says which row's run it starts from; no override text is parsed for it."""
    second = AblationRow("second", ("model.preset=hybrid",), "phase two", init_from_row="retinanet")
    retinanet, spec = plan(tmp_path, [3], ["retinanet"], [second])
    assert spec.after == retinanet.run_dir == tmp_path / "retinanet" / "seed3"
    job = train_job(spec, tmp_path / "c.yaml", ["train.max_steps=5"], "cpu", 1)
    assert job.overrides == ("train.max_steps=5", "model.preset=hybrid", f"train.init_from={retinanet.run_dir}",
                             "train.seed=3", f"output_dir={spec.run_dir}", "train.device=cpu", "train.threads=1")


def test_a_run_waits_for_the_run_it_starts_from_and_skips_when_that_cannot_finish(tmp_path: Path) -> None:
    two_phase = custom_row("two_phase", ["train.init_from={out}/retinanet/seed{seed}"])
    retinanet, second = plan(tmp_path, [0], ["retinanet"], [two_phase])
    said: list[str] = []
    # Not part of this ablation and not finished: it would wait forever, so it is skipped, saying why.
    assert not Ablation(frozenset({second.run_dir}), said.append).wait_for(second)
    assert "starts from" in said[-1] and str(retinanet.run_dir) in said[-1]
    ablation = Ablation(frozenset({retinanet.run_dir, second.run_dir}), said.append)
    ablation.unfinished.add(retinanet.run_dir)  # failed or stopped in this call
    assert not ablation.wait_for(second)
    ablation = Ablation(frozenset({retinanet.run_dir, second.run_dir}), said.append)
    retinanet.run_dir.mkdir(parents=True)
    (retinanet.run_dir / "done.json").write_text("{}")
    assert ablation.wait_for(second) and ablation.wait_for(retinanet)
    ablation.stopping.set()
    assert not ablation.wait_for(retinanet), "nothing starts once the ablation is stopping"


def test_a_child_stopped_by_the_signal_is_not_reported_as_failed() -> None:
    """``timeout`` signals the whole process group: a training exits 130 (saved, resumable), an evaluation
    dies of the signal, both possibly before the ablation itself has noticed it is stopping."""
    from harnet.tools.ablation import _stopped

    assert _stopped(130) and _stopped(-15) and _stopped(-9) and _stopped(1, stopping=True)
    assert not _stopped(1) and not _stopped(2)
