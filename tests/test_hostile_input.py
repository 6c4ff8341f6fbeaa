"""Bad and hostile input through the CLI: exit code 2, one line naming the problem, nothing written.
Names and ids that would reach outside the results root, sweeps whose files another user could have
written, oversized or explosive specs, numbers YAML 1.2 reads (and the ones it must not), and result
files that are not Parquet."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_check import _write_sweep
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()
REPO = Path(__file__).parent.parent


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in root.rglob("*")}


def _refused(args: list[str], root: Path, *, code: int = 2, text: str = "") -> str:
    """Run the CLI; assert the exit code, one line on stderr starting `Error:`, and that nothing under
    `root` changed. Returns the line."""
    before = _snapshot(root)
    result = runner.invoke(app, args)
    assert result.exit_code == code, (args, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
    assert "Traceback" not in result.output
    assert text in lines[0], (text, lines[0])
    assert _snapshot(root) == before, args
    return lines[0]


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "results"
    _write_sweep(root)  # sweep "chk": 4 real tiny jobs, compacted
    return root


BAD_NAMES = ["..", "../x", "../../etc", "/", "/etc/passwd", "a/b", ".hidden", "x\x00y", "a" * 300, ""]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_names_and_ids_cannot_leave_the_root(sweep_root: Path, tmp_path: Path, bad: str) -> None:
    r = str(sweep_root)
    spec = REPO / "examples" / "tiny-grid.yaml"
    commands = [
        ["resume", bad, "--results", r], ["status", bad, "--results", r], ["check", bad, "--results", r],
        ["check", bad, "--repair", "--results", r], ["rm", bad, "--yes", "--results", r],
        ["logs", bad, "c0000-s0-000000", "--results", r], ["logs", "chk", bad, "--results", r],
        ["study", bad, "--x", "weight_decay", "--results", r],
        ["phase", bad, "--x", "weight_decay", "--y", "seed", "--results", r],
        ["plot", bad, "--output", str(tmp_path / "p.png"), "--results", r],
        ["plot", "chk", "--trial", bad, "--output", str(tmp_path / "p.png"), "--results", r],
        ["sweep", str(spec), "--name", bad, "--results", r],
        ["train", "--preset", "tiny", "--set", "max_steps=20", "--name", bad, "--results", r],
    ]
    for args in commands:
        _refused(args, sweep_root)
    assert not (tmp_path / "p.png").exists()


def _spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_oversized_deep_and_alias_bomb_specs_are_refused_quickly(tmp_path: Path) -> None:
    root = tmp_path / "results"
    root.mkdir()
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    cases = {"bytes; at most": "name: big\ndescription: " + "x" * 300_000 + "\n",
             "levels deep": "name: deep\nbase: " + "[" * 100_000 + "]" * 100_000 + "\n",
             "levels deep ": "name: deep\n" + "".join(" " * i + f"k{i}:\n" for i in range(400)),
             "alias bomb": laughs}
    for text, spec in cases.items():
        started = time.perf_counter()
        _refused(["sweep", _spec(tmp_path, spec), "--results", str(root)], root, text=text.strip())
        assert time.perf_counter() - started < 2


def test_yaml_1_2_numbers_are_numbers(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "name: sci\nbase: {preset: tiny, lr: 1e-3, max_steps: 1e3}\n"
                           "parameters: {weight_decay: {values: [1e-1, 3E-1]}}\n")
    result = runner.invoke(app, ["sweep", spec, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "0.1" in result.output and "0.3" in result.output


@pytest.mark.parametrize("value,where", [(".nan", "base.lr"), (".inf", "base.lr"), ("-.inf", "base.lr"),
                                         ("true", "base.lr"), ("yes", "base.lr"), ("'0.1'", "base.lr"),
                                         ("fast", "base.lr")])
def test_non_numbers_where_numbers_belong_name_the_key(tmp_path: Path, value: str, where: str) -> None:
    root = tmp_path / "results"
    root.mkdir()
    spec = _spec(tmp_path, f"name: bad\nbase: {{preset: tiny, lr: {value}}}\n")
    result = runner.invoke(app, ["sweep", spec, "--results", str(root)])
    assert result.exit_code == 2
    assert f"{where}: a finite number" in result.stderr, result.stderr
    assert list(root.iterdir()) == []
    for spec_text, key in (("parameters: {weight_decay: {values: [0.1, .nan]}}", "parameters.weight_decay.values[1]"),
                           ("method: random\nnum_samples: 2\nparameters: {lr: {min: 0.001, max: .inf}}",
                            "parameters.lr.max"),
                           ("report_every_s: .nan", "report_every_s"), ("resources: {cpu: .inf}", "resources.cpu")):
        result = runner.invoke(app, ["sweep", _spec(tmp_path, f"name: bad\nbase: {{preset: tiny}}\n{spec_text}\n"),
                                     "--results", str(root)])
        assert result.exit_code == 2 and key in result.stderr, result.stderr


def test_sweeps_others_could_write_are_refused(sweep_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "results"
    shutil.copytree(sweep_root, root)
    log = root / "sweeps" / "chk" / "spec.yaml"
    commands = [["resume", "chk"], ["check", "chk", "--repair"], ["rm", "chk", "--yes"]]
    os.chmod(log, 0o664)  # group-writable
    for args in commands:
        _refused([*args, "--results", str(root)], root, text="group- or world-writable")
    os.chmod(log, 0o644)
    os.chown(log, 4242, os.getgid()) if os.geteuid() == 0 else pytest.skip("needs root to give a file away")
    for args in commands:
        _refused([*args, "--results", str(root)], root, text="belongs to uid 4242")
    os.chown(log, os.geteuid(), os.getgid())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "sweeps" / "chk" / "tune").symlink_to(outside)
    for args in commands:
        _refused([*args, "--results", str(root)], root, text="resolves outside the results root")
    (root / "sweeps" / "chk" / "tune").unlink()
    assert runner.invoke(app, ["check", "chk", "--repair", "--results", str(root)]).exit_code == 0


@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "not parquet"])
def test_corrupt_files_are_named_and_can_be_skipped(sweep_root: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    root = tmp_path / "results"
    shutil.copytree(sweep_root, root)
    (good,) = (root / "trials" / "chk").glob("*.parquet")
    bad = root / "trials" / "chk" / "c9999-s0-ffffff.parquet"
    bad.write_bytes({"zero bytes": b"", "truncated": good.read_bytes()[: good.stat().st_size // 2],
                     "not parquet": b"trial_id,status\nx,completed\n"}[damage])
    r = str(root)
    commands = [["query", "select count(*) as n from trials", "--results", r], ["status", "chk", "--results", r],
                ["check", "chk", "--results", r], ["study", "chk", "--x", "weight_decay", "--results", r],
                ["phase", "chk", "--x", "weight_decay", "--y", "seed", "--results", r],
                ["plot", "chk", "--output", str(tmp_path / "c.png"), "--results", r]]
    for args in commands:
        line = _refused(args, root, text=str(bad))
        assert "--skip-corrupt" in line and "not a readable Parquet file" in line
        skipped = runner.invoke(app, [*args, "--skip-corrupt"])
        assert skipped.exit_code == 0, (args, skipped.output)
        assert f"Warning: skipped {bad}" in skipped.stderr
    counted = runner.invoke(app, ["query", "select count(*) as n from trials", "--results", r, "--skip-corrupt",
                                  "--format", "csv"])
    assert counted.stdout.split() == ["n", "4"]
