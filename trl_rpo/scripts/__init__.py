"""The training scripts behind `trl-rpo dpo` and `trl-rpo tailorpo` (and the matching files in `examples/`).

Each module has `ScriptArguments`, `main(script_args, training_args, model_args)`, `make_parser()` and `run(argv)`,
as TRL's `trl/scripts/*.py` do.
"""
