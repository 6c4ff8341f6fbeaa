"""Everything around the trainers: the CLI, sweep specs, Ray Tune + Optuna wiring, stopping, resume,
the Parquet result store, studies and plots."""


class UserError(ValueError):
    """A problem the user can fix (bad spec, unknown sweep, bad SQL): one plain line, exit code 2."""
