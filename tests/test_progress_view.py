"""The live view's text: fits 80 columns, caps the job lines at the terminal's height, names values, not ids
only, and estimates the time left from the jobs ended so far."""

from __future__ import annotations

from orchestrator.callbacks import RunningJob, _eta, render_progress


def test_live_view_fits_80_columns_and_the_terminal_height():
    running = [RunningJob(f"c{i:04d}-s{i % 3}-4be1a0", f"weight_decay=0.3 lr=0.00{i} train_fraction=0.35 s{i % 3}",
                          step=420 + i, max_steps=100_000, train_acc=1.0, val_acc=0.1234) for i in range(30)]
    counts = {"grokked": 12, "censored": 3, "pruned": 0, "failed": 1}
    best = "steps_to_generalize 610: weight_decay=1 lr=0.001 s2"
    lines = render_progress("sweep wd-study (grid): 500 jobs, 500 this run", 16, 500, counts, running,
                            elapsed_s=125, eta_s=_eta(484, [30.0, 50.0, 40.0], 2), best=best, width=80, height=24)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert lines[-1] == f"+{30 - (24 - 4 - 1)} more running"
    assert "ETA 2:41:20" in lines[2] and "elapsed 0:02:05" in lines[2]  # 484 jobs x 40 s / 2
    assert lines[3] == f"best: {best}"  # hyperparameters, not an id
    job_line = lines[4]
    assert job_line.startswith("c0000-s0-4be1a0 weight_decay=0.3") and "420/100000" in job_line
    assert job_line.endswith("tr 1.000 val 0.123")
    assert "grokked 12" in lines[1] and "failed 1" in lines[1]
    assert _eta(10, [], 2) is None and _eta(0, [], 2) == 0.0
