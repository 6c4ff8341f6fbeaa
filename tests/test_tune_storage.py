"""The filesystem Tune writes sweep state through: a writer killed mid-file leaves the previous file whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.fs as pafs

from orchestrator.tune_storage import TEMP_MARK, _ReplaceOnClose, location, remove_leftovers


def test_a_writer_killed_mid_file_leaves_the_previous_file_whole(tmp_path):
    state = tmp_path / "experiment_state-x.json"
    state.write_text('{"trial_data": ["old"]}')
    killed = textwrap.dedent(f"""
        import os
        from orchestrator.tune_storage import location
        _, fs = location({str(tmp_path)!r})
        out = fs.open_output_stream({str(state)!r})
        out.write(b'{{"trial_data": ["new", ')
        out.flush()
        os._exit(9)  # SIGKILL-like: no close, no cleanup
    """)
    assert subprocess.run([sys.executable, "-c", killed]).returncode == 9
    assert state.read_text() == '{"trial_data": ["old"]}'
    _, fs = location(str(tmp_path))
    listed = [info.base_name for info in fs.get_file_info(pafs.FileSelector(str(tmp_path)))]
    assert listed == [state.name]  # the leftover temporary file is invisible to Tune
    assert any(TEMP_MARK in p.name for p in tmp_path.iterdir())

    abandoned = _ReplaceOnClose(str(state))  # a writer that failed and was dropped: discarded, not published
    abandoned.write(b"{")
    del abandoned
    assert state.read_text() == '{"trial_data": ["old"]}'

    with fs.open_output_stream(str(state)) as out:  # a completed write replaces it
        out.write(b'{"trial_data": ["new"]}')
    assert state.read_text() == '{"trial_data": ["new"]}'
    assert remove_leftovers(str(tmp_path)) == 1  # what resume does before restoring
    assert [p.name for p in tmp_path.iterdir()] == [state.name]


def test_directory_upload_round_trips_and_uris(tmp_path):
    source = tmp_path / "staging"
    (source / "checkpoint_000001").mkdir(parents=True)
    (source / "checkpoint_000001" / "state.pt").write_bytes(bytes(range(256)) * 5000)
    (source / "searcher-state-x.pkl").write_bytes(b"searcher")
    path, fs = location(f"file://{tmp_path}/sweeps/s")
    assert path == f"{tmp_path}/sweeps/s"
    fs.create_dir(f"{path}/tune", recursive=True)
    pafs.copy_files(str(source), f"{path}/tune", destination_filesystem=fs)
    copied = tmp_path / "sweeps" / "s" / "tune"
    assert (copied / "checkpoint_000001" / "state.pt").read_bytes() == bytes(range(256)) * 5000
    assert (copied / "searcher-state-x.pkl").read_bytes() == b"searcher"
    assert not [p for p in copied.rglob("*") if TEMP_MARK in p.name]
    assert location("s3://bucket/results/sweeps/s") == ("s3://bucket/results/sweeps/s", None)
