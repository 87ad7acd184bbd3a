"""One module per pipeline stage: `register_arguments(parser)` and `run(args)`, wired by cli.py."""
