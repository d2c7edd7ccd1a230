"""Command-line misuse and untrusted files: one line naming the problem, the right exit code, no traceback.

Most cases call ``harnet.tools.cli.main`` in-process (same code path and return code as the console script,
seconds faster); two run the real ``python -m harnet`` to prove no traceback escapes the process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from badfiles import coco_args, make_coco_split, write_rgb

from harnet.config.io import ConfigError
from harnet.tools.cli import main


class Evil:
    """Pickles to a call of ``os.system``: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _evil_yaml(tmp: Path) -> str:
    path = tmp / "evil.yaml"
    path.write_text(f'model: !!python/object/apply:os.system ["touch {tmp / "PWNED"}"]\n')
    return str(path)


def _evil_ckpt(tmp: Path) -> str:
    path = tmp / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Evil(tmp / "PWNED")}, path)
    return str(path)


def _file(name: str, content: bytes | str) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)
    return make


def _write(tmp: Path, name: str, content: str) -> str:
    (tmp / name).write_text(content)
    return str(tmp / name)


# (case name, argv builder given (tmp dir, tiny checkpoint), exit code, text the one-line message contains)
CLI_CASES: list[tuple[str, Callable[[Path, Path], list[str]], int, str]] = [
    ("unknown_builtin_config", lambda t, c: ["train", "--config", "nope"], 2, "no built-in config 'nope'"),
    ("missing_config_file", lambda t, c: ["train", "--config", str(t / "none.yaml")], 2, "config file not found"),
    ("malformed_yaml", lambda t, c: ["train", "--config", _write(t, "bad.yaml", "train: {lr: [1,\n")], 2,
     "bad.yaml: not valid YAML"),
    ("yaml_not_a_mapping", lambda t, c: ["train", "--config", _write(t, "list.yaml", "- 1\n- 2\n")], 2,
     "list.yaml: expected a mapping at the top level"),
    ("yaml_not_utf8", lambda t, c: ["train", "--config", _file("l1.yaml", "a: é".encode("latin-1"))(t)], 2,
     "l1.yaml: not UTF-8 text"),
    ("yaml_python_tag", lambda t, c: ["train", "--config", _evil_yaml(t)], 2,
     "evil.yaml: refused to load (could not determine a constructor for the tag"),
    ("override_python_tag", lambda t, c: ["train", "--config", "demo", "--set", "train.lr=!!python/name:os.system"],
     2, "refused to load"),
    ("unknown_config_key", lambda t, c: ["train", "--config", "demo", "--set", "model.spatal=1"], 2,
     "unknown config key 'model.spatal'"),
    ("unknown_nested_key", lambda t, c: ["train", "--config", "demo", "--set", "train.lr_step=[3]"], 2,
     "unknown config key 'train.lr_step'"),
    ("wrong_type_float", lambda t, c: ["train", "--config", "demo", "--set", "train.lr=fast"], 2,
     "train.lr: expected float, got 'fast'"),
    ("wrong_type_int", lambda t, c: ["train", "--config", "demo", "--set", "train.max_steps=1.5"], 2,
     "train.max_steps: expected int, got 1.5"),
    ("wrong_type_bool", lambda t, c: ["train", "--config", "demo", "--set", "train.amp=maybe"], 2,
     "train.amp: expected bool"),
    ("wrong_literal", lambda t, c: ["train", "--config", "demo", "--set", "data.format=kitti"], 2,
     "data.format: 'kitti' is not one of"),
    ("unknown_preset", lambda t, c: ["train", "--config", "demo", "--set", "model.preset=nope"], 2,
     "unknown preset 'nope'"),
    ("zero_batch_size", lambda t, c: ["train", "--config", "demo", "--set", "train.batch_size=0"], 2,
     "train.batch_size: must be >= 1, got 0"),
    ("zero_log_every", lambda t, c: ["train", "--config", "demo", "--set", "train.log_every=0"], 2,
     "train.log_every: must be >= 1, got 0"),
    ("negative_lr", lambda t, c: ["train", "--config", "demo", "--set", "train.lr=-0.1"], 2,
     "train.lr: must be > 0"),
    ("negative_workers", lambda t, c: ["train", "--config", "demo", "--set", "data.num_workers=-1"], 2,
     "data.num_workers: must be >= 0"),
    ("override_without_equals", lambda t, c: ["train", "--config", "demo", "--set", "train.lr"], 2,
     "must look like key=value"),
    ("override_bad_yaml", lambda t, c: ["train", "--config", "demo", "--set", "train.lr_steps=[1,"], 2,
     "not valid YAML"),
    ("no_config_no_resume", lambda t, c: ["train"], 2, "train needs --config"),
    ("annotations_not_set", lambda t, c: ["train", "--config", "demo", "--set", "data.format=coco",
                                          "--set", f"data.train_images={t}"], 2,
     "data.train_annotations is not set"),
    ("annotation_file_missing", lambda t, c: ["train", "--config", "demo", "--set", "data.format=csv",
                                              "--set", f"data.train_annotations={t / 'x.csv'}"], 2,
     "data.train_annotations: file not found"),
    ("image_folder_missing", lambda t, c: ["train", "--config", "demo", "--set", "data.format=voc",
                                           "--set", f"data.train_images={t / 'voc'}"], 2,
     "data.train_images: folder not found"),
    ("resume_missing_folder", lambda t, c: ["train", "--resume", str(t / "run")], 2, "not a run folder"),
    ("eval_missing_checkpoint", lambda t, c: ["eval", str(t / "none.pt")], 2, "checkpoint not found"),
    ("eval_empty_run_folder", lambda t, c: ["eval", str(t)], 2, "no best.pt or last.pt"),
    ("eval_pickled_code", lambda t, c: ["eval", _evil_ckpt(t)], 2, "refused to load: it carries pickled Python code"),
    ("predict_pickled_code", lambda t, c: ["predict", _evil_ckpt(t), "x.png"], 2, "refused to load"),
    ("eval_zero_byte_checkpoint", lambda t, c: ["eval", _file("empty.pt", b"")(t)], 2, "not a readable checkpoint"),
    ("eval_random_bytes", lambda t, c: ["eval", _file("noise.pt", bytes(range(256)) * 8)(t)], 2,
     "not a readable checkpoint"),
    ("eval_plain_pickle", lambda t, c: ["eval", _file("list.pt", pickle.dumps([1, 2]))(t)], 2, "list.pt"),
    ("eval_truncated_checkpoint", lambda t, c: ["eval", _file("half.pt", c.read_bytes()[:5000])(t)], 2,
     "not a readable checkpoint"),
    ("eval_foreign_checkpoint", lambda t, c: ["eval", _foreign(t)], 2, "no model config"),
    ("predict_missing_input", lambda t, c: ["predict", str(c), str(t / "none.png")], 2,
     "none.png: no such file, folder or matching glob"),
    ("predict_only_bad_inputs", lambda t, c: ["predict", str(c), _file("bad.png", b"xx")(t), "--out", str(t / "o")],
     1, "skipped"),
]


def _foreign(tmp: Path) -> str:
    path = tmp / "foreign.pt"
    torch.save({"model": {"w": torch.ones(1)}, "config": {"other": 1}}, path)
    return str(path)


@pytest.mark.parametrize(("name", "argv", "code", "message"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_error(name: str, argv: Callable[[Path, Path], list[str]], code: int, message: str, tmp_path: Path,
                   tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv(tmp_path, tiny_ckpt)) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    if name == "predict_only_bad_inputs":  # one line per skipped file, nothing else
        assert err.strip() == f"skipped {tmp_path / 'bad.png'}: not a readable image file (cannot identify image " \
                              f"file '{tmp_path / 'bad.png'}')"
    else:
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "PWNED").exists(), "untrusted file ran code"


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["info", "--preset", "nope"], ["eval"], ["frobnicate"]])
def test_argparse_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "harnet" in err and "error:" in err and "Traceback" not in err


def test_debug_shows_the_exception() -> None:
    with pytest.raises(ConfigError, match="no built-in config"):
        main(["--debug", "train", "--config", "nope"])


def test_unexpected_errors_are_one_line_too(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A bug (here a KeyError from deep inside) still prints one line, with the hint to use --debug."""
    import harnet.tools.cli

    def broken(args: object) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(harnet.tools.cli, "cmd_info", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "harnet: error: KeyError: 'boom' (unexpected; rerun with --debug for the traceback)"


def test_predict_folder_with_every_kind_of_bad_file(tiny_ckpt: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from badfiles import HANDLED, IMAGE_CASES

    folder = tmp_path / "images"
    folder.mkdir()
    write_rgb(folder / "good.png")
    bad = []
    # All broken files; a few odd-but-fine ones (every one would only cost time: see test_robust_images).
    # float32_tiff is a dataset's band mismatch beside 8-bit images; alone, predict reads it.
    handled = ("gray16", "cmyk_jpeg", "exif_rotated", "tiny_1px", "palette_transparent", "float32_tiff")
    for case in IMAGE_CASES:
        if case.name in ("missing", "exif_annotated_as_stored", "wrong_size_in_json") or (
                case.outcome == HANDLED and case.name not in handled):
            continue  # nothing on disk / only wrong with respect to an annotation file / covered elsewhere
        path = folder / f"{case.name}{case.suffix}"
        case.write(path)
        if case.outcome != HANDLED and case.name not in handled:
            bad.append(path)
    out = tmp_path / "out"
    assert main(["predict", str(tiny_ckpt), str(folder), "--out", str(out), "--score", "0.99"]) == 0
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split(": ")[0] for line in skipped) == sorted(map(str, bad))
    assert len(list(out.glob("*_pred.png"))) == len(handled) + 1
    assert capsys.readouterr().err.count("skipped ") == len(bad)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harnet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_real_process_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    """The console entry point: a config error exits 2, a bad image exits 1 before training; one line."""
    done = _run(["train", "--config", "demo", "--set", "train.lr=fast"], tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == "harnet: error: train.lr: expected float, got 'fast'"

    make_coco_split(tmp_path / "data", "train", 3)
    make_coco_split(tmp_path / "data", "val", 2)
    (tmp_path / "data" / "train" / "train_2.png").write_bytes(b"")
    done = _run(coco_args(tmp_path / "data", tmp_path / "run"), tmp_path)
    bad = tmp_path / "data" / "train" / "train_2.png"
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"harnet: error: {bad}: empty file (0 bytes)"
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.csv").exists()
